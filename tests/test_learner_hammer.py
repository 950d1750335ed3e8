"""No client can take the learner down: for a bounded time, operator tools hammer a live learner process
(CURVE) with short-lived connections (status polls, estop/release/pause/resume commands), a known client
floods its queue and hangs up, and raw TCP clients connect, send junk or half a greeting and vanish. The
learner and a legitimate runner must stay up throughout, and the runner's transitions keep being
acknowledged in every part of the window.

This is the regression test of the libzmq 4.3.5 abort `Assertion failed: !_io_error
(src/stream_engine_base.cpp:310)` (see `robot_wsrl.wire.transport`): with ZMTP heartbeats on, the flood and
hang-up cycles abort the learner within seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from helpers import LearnerProcess, free_port, start_runner_thread

from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.protocol import Command, Reply, Status, StatusRequest, decode, encode

HAMMER_S = 30.0
WINDOWS = 3  # the runner must be acknowledged in each third of the hammering
REPLY_S = 2.0
FLOOD = 20_000  # messages: many times what the learner reads in one round, so its input stops


class Hammer:
    """Abusive and legitimate operator traffic from threads until `stop`; counts what was answered."""

    def __init__(self, endpoint: str, key_dir: Path) -> None:
        self.endpoint, self.keydir = endpoint, key_dir
        self.ctx = zmq.Context()
        self.stop = threading.Event()
        self.counts = {"status": 0, "status_answered": 0, "commands": 0, "floods": 0, "raw": 0}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._loop, args=(job,), daemon=True)
            for job in (self.poll_status, self.poll_status, self.command, self.flood, self.raw_tcp)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        if self.ctx.closed:
            return
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        transport.shutdown(self.ctx)

    def _loop(self, job: Callable[[], None]) -> None:
        while not self.stop.is_set():
            job()

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def _console(self) -> zmq.Socket:
        return transport.secure_client(
            self.ctx,
            zmq.DEALER,
            self.endpoint,
            keys.load_curve_keys(self.keydir, "console"),
            keys.load_public_key(self.keydir, "learner"),
        )

    def _ask(self, sock: zmq.Socket, msg: Command | StatusRequest, answer: type) -> bool:
        if not transport.send_frames(sock, encode(msg), REPLY_S):
            return False
        deadline = time.monotonic() + REPLY_S
        while time.monotonic() < deadline:
            frames = transport.recv_frames(sock, deadline - time.monotonic())
            if frames is not None and isinstance(decode(frames), answer):
                return True
        return False

    def poll_status(self) -> None:
        """`robot-wsrl status` in a loop: a new connection per request, closed right after the reply."""
        sock = self._console()
        self._count("status")
        if self._ask(sock, StatusRequest("console"), Status):
            self._count("status_answered")
        sock.close(linger=0)
        time.sleep(0.05)

    def command(self) -> None:
        """Commands the learner refuses (estop, release: they are for runners) and pause/resume pairs."""
        sock = self._console()
        for ref, name in enumerate(("estop", "release", "pause", "resume")):
            self._ask(sock, Command("console", name, ref=ref), Reply)
            self._count("commands")
        sock.close(linger=0)

    def flood(self) -> None:
        """A known client fills its queue on the busy learner (junk frames) and hangs up at once, with
        replies it never read (so its hang-up is a reset, which wakes the learner's stopped engine)."""
        sock = self._console()
        sock.sndhwm, sock.rcvhwm = 0, 1
        for ref in range(5):
            sock.send_multipart(encode(Command("console", "estop", ref=ref)), zmq.NOBLOCK)
        for _ in range(FLOOD):
            sock.send(b"\xc1junk", zmq.NOBLOCK)
        time.sleep(0.3)
        sock.close(linger=0)
        self._count("floods")
        self.stop.wait(1.0)

    def raw_tcp(self) -> None:
        """Connect and vanish; send junk; send half a ZMTP greeting and hang up mid-handshake."""
        host, port = self.endpoint.removeprefix("tcp://").rsplit(":", 1)
        for payload in (b"", b"GET / HTTP/1.0\r\n\r\n" * 10, b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f"):
            try:
                with socket.create_connection((host, int(port)), timeout=REPLY_S) as raw:
                    if payload:
                        raw.sendall(payload)
                    time.sleep(0.02)
            except OSError:
                pass  # refused or reset by the learner: allowed
            self._count("raw")


def test_a_hammered_learner_stays_up_and_keeps_serving_its_runner(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    learner = LearnerProcess(
        endpoint, learner_keydir, learner_checkpoint, tmp_path / "learner", pacing="realtime"
    )
    runner, hammer = None, Hammer(endpoint, learner_keydir)
    try:
        fresh = learner.wait_status("up", lambda s: True)
        assert fresh["mean_q"] is None and fresh["losses"] == {}  # no data yet: null, never NaN
        json.dumps(fresh, allow_nan=False)  # strict JSON
        runner = start_runner_thread("robot1", 0, endpoint, learner_keydir, tmp_path / "robot1", "hold")
        learner.wait_status("the runner's data arriving", lambda s: s["step"] > 0)
        hammer.start()
        acked_at_window_start = runner.spool.acked_seq
        for window in range(WINDOWS):
            end = time.monotonic() + HAMMER_S / WINDOWS
            while time.monotonic() < end:
                assert learner.proc is not None and learner.proc.poll() is None, learner.output()
                assert runner.thread.is_alive(), runner.runner.status()
                time.sleep(0.5)
            acked = runner.spool.acked_seq
            assert acked > acked_at_window_start, (window, runner.link.status(), hammer.counts)
            acked_at_window_start = acked
        hammer.close()
        assert learner.proc.poll() is None, learner.output()
        counts = hammer.counts
        assert counts["floods"] >= 3 and counts["raw"] >= 30 and counts["commands"] >= 8, counts
        assert counts["status_answered"] >= 10, counts  # legitimate tools are served under the hammering
        status = learner.wait_status("answering after the hammering", lambda s: True)
        assert status["runners"]["robot1"]["connected"]
        json.dumps(status, allow_nan=False)
        assert runner.link.status()["learner_alive"]
    finally:
        hammer.close()
        if runner is not None:
            runner.close()
        learner.close()
