"""Live runner processes and their control channel: a durable e-stop latch across SIGTERM and kill -9, the
stop taken before the robot exists, the default deadman of a supervising console, SIGTERM as a safe stop,
and an e-stop that still gets through a flood of raw TCP connections under a low open-file limit.

Runners are `robot-wsrl runner` / `link-runner` subprocesses (null driver, plain control channel on
loopback, free ports); consoles are raw DEALER sockets here. Every wait has a deadline; every process is
reaped by a fixture.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PERIOD_S, WAIT_S, Console, Proc, free_port, wait_for

from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.wire import keys


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    made: list[Proc] = []
    yield made
    for proc in made:
        proc.stop()


@pytest.fixture
def consoles() -> Iterator[list[Console]]:
    made: list[Console] = []
    yield made
    for console in made:
        console.close()


def start_runner(
    procs: list[Proc],
    tmp_path: Path,
    null_policy: Path,
    state: Path,
    endpoint: str,
    *extra: str,
    preexec: Callable[[], None] | None = None,
) -> Proc:
    args = ["runner", "--policy", str(null_policy), "--driver", "null", "--steps", "100000000"]
    args += ["--control", endpoint, "--plain", "--name", "robot1", "--state", str(state), *extra]
    proc = Proc(args, tmp_path / f"runner{len(procs)}.log", preexec)
    procs.append(proc)
    return proc


def up(console: Console, proc: Proc, state: str | None = None) -> dict[str, Any]:
    """The runner's status once it answers (and, if given, reports `state`)."""

    def ready() -> dict[str, Any] | None:
        assert proc.popen.poll() is None, f"runner exited:\n{proc.output()}"
        status = console.status(0.5)
        return status if status and status.get("attached") and state in (None, status["state"]) else None

    return wait_for(ready, what=f"runner up in state {state}")


# ----- the durable latch -----


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_an_estop_survives_a_restart_until_an_operator_releases_it(
    sig: int, tmp_path: Path, null_policy: Path, procs: list[Proc], consoles: list[Console]
) -> None:
    state, endpoint = tmp_path / "state", f"tcp://127.0.0.1:{free_port()}"
    console = Console(endpoint)
    consoles.append(console)
    first = start_runner(procs, tmp_path, null_policy, state, endpoint)
    up(console, first, "running")
    assert console.command("estop", reason="hand in the cell").ok
    assert console.status()["state"] == "estopped"  # type: ignore[index]
    rc = first.signal(sig)
    assert rc == (1 if sig == signal.SIGTERM else -signal.SIGKILL), first.output()
    assert "Traceback" not in first.output()

    second = start_runner(procs, tmp_path, null_policy, state, endpoint)
    status = up(console, second)
    assert status["state"] == "estopped"
    assert status["last_stop_cause"] == "command"
    assert status["last_stop_detail"] == "e-stop from console: hand in the cell"
    entered = [s for s in status["control"]["stops"] if s["kind"] == "enter"]
    assert entered and entered[-1]["detail"] == "e-stop from console: hand in the cell"
    time.sleep(0.3)  # still latched a while later: nothing but a release leaves it
    assert console.status()["state"] == "estopped"  # type: ignore[index]
    assert console.command("release", operator="alice").ok
    up(console, second, "running")
    assert second.signal(signal.SIGTERM) == 0, second.output()

    third = start_runner(procs, tmp_path, null_policy, state, endpoint)  # the release was recorded too
    status = up(console, third, "running")
    assert [s["kind"] for s in status["control"]["stops"]][-2:] == ["enter", "release"]
    assert third.signal(signal.SIGTERM) == 0 and "Traceback" not in third.output()


def test_link_runner_takes_a_stop_before_it_has_a_policy_and_keeps_it(
    tmp_path: Path, procs: list[Proc], consoles: list[Console]
) -> None:
    """No learner at all: the runner waits for its first policy, and a console's stop is taken meanwhile."""
    keydir = tmp_path / "keys"
    keys.new_identity(keydir, "learner", "learner")
    state, endpoint = tmp_path / "state", f"tcp://127.0.0.1:{free_port()}"
    args = ["link-runner", "--learner", f"tcp://127.0.0.1:{free_port()}", "--keys", str(keydir), "--plain"]
    args += ["--name", "robot1", "--driver", "null", "--steps", "100", "--state", str(state)]
    args += ["--control", endpoint, "--wait-policy", "600"]
    console = Console(endpoint)
    consoles.append(console)
    for round_ in range(2):
        proc = Proc(args, tmp_path / f"link{round_}.log")
        procs.append(proc)
        status = wait_for(lambda: console.status(0.5), what="link-runner control channel")
        assert status["attached"] is False
        if round_ == 0:
            assert status["state"] == "idle"
            reply = console.command("estop", reason="before the robot")
            assert reply.ok, reply.error
            assert not console.command("pause").ok  # nothing else is served before the runner exists
            status = console.status()
        assert status["state"] == "estopped", status  # type: ignore[index]
        assert status["last_stop_detail"] == "e-stop from console: before the robot"  # type: ignore[index]
        assert proc.signal(signal.SIGTERM) == 0, proc.output()
        assert "Traceback" not in proc.output()


# ----- SIGTERM is a safe stop -----


def test_sigterm_ends_the_runner_cli_with_a_safe_stop(
    tmp_path: Path, null_policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process (so the driver can be inspected): SIGTERM ends the loop, the robot is safe-stopped,
    the driver closed, the exit clean."""
    import robot_wsrl.apps.options as options_module
    import robot_wsrl.apps.runner as runner_module

    driver = NullDriver(3, 1, control_period_s=PERIOD_S)
    monkeypatch.setattr(options_module, "make_driver", lambda *_, **__: driver)
    switch = sys.getswitchinterval()
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        args = ["--policy", str(null_policy), "--driver", "null", "--steps", "100000000"]
        rc = runner_module.cli([*args, "--state", str(tmp_path / "state")])
    finally:
        timer.cancel()
        sys.setswitchinterval(switch)
    assert rc == 0
    assert driver.total_steps > 0 and driver.safe_stop_count == 1 and driver.closed


# ----- the deadman a supervising console arms -----


def _supervising_console(endpoint: str) -> subprocess.Popen[bytes]:
    """A console in its own process that heartbeats "supervising" every 0.2 s until it is killed."""
    code = (
        "import sys, time, zmq\n"
        "from robot_wsrl.wire import transport\n"
        "from robot_wsrl.wire.protocol import HeartbeatMessage, encode\n"
        "sock = transport.plain_client(zmq.Context(), zmq.DEALER, sys.argv[1])\n"
        "while True:\n"
        "    transport.send_frames(sock, encode(HeartbeatMessage('console', 'console', time.time(),"
        " 'supervising')), 1.0)\n"
        "    time.sleep(0.2)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, endpoint])


def test_a_supervising_console_arms_the_default_deadman_and_its_death_stops_the_robot(
    tmp_path: Path, null_policy: Path, procs: list[Proc], consoles: list[Console]
) -> None:
    from robot_wsrl.robot.control import DEFAULT_DEADMAN_S

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    console = Console(endpoint)  # watching: also named "console", a separate connection
    consoles.append(console)
    runner = start_runner(procs, tmp_path, null_policy, tmp_path / "state", endpoint)  # no --deadman-s
    status = up(console, runner, "running")
    assert status["control"]["deadman_s"] is None and status["control"]["supervisors"] == []
    supervisors = [_supervising_console(endpoint) for _ in range(2)]  # same key name, two connections
    try:
        status = wait_for(
            lambda: (s := console.status()) and len(s["control"]["supervisors"]) == 2 and s,
            what="two supervisors",
        )
        assert status["control"]["deadman_s"] == DEFAULT_DEADMAN_S
        assert {s["name"] for s in status["control"]["supervisors"]} == {"console"}
        assert all(0 <= s["silent_s"] < DEFAULT_DEADMAN_S for s in status["control"]["supervisors"])
        assert status["state"] == "running"
        killed_at = time.time()
        supervisors[0].kill()  # one of the two goes silent: that alone stops the robot
        status = wait_for(
            lambda: (s := console.status()) and s["state"] == "estopped" and s, 10.0, "deadman trip"
        )
    finally:
        for proc in supervisors:
            proc.kill()
            proc.wait(WAIT_S)
    assert status["last_stop_cause"] == "watchdog"
    assert status["last_stop_detail"].startswith("console deadman: console silent for ")
    trip = [s for s in status["control"]["stops"] if s["kind"] == "enter"][-1]["time"]
    assert DEFAULT_DEADMAN_S - 0.25 <= trip - killed_at < DEFAULT_DEADMAN_S + 5.0  # liveness, not speed


# ----- a flood of raw connections under a low open-file limit -----


def _low_nofile() -> None:
    """In the runner's process before exec: soft open-file limit 128 (the hard limit stays)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))


class Flood:
    """Raw TCP connections to `port` that send half a ZMTP greeting and stall, renewed in rounds so that
    hundreds stay open however fast the server drops unauthenticated ones."""

    def __init__(self, port: int, per_round: int = 300, rounds: int = 3) -> None:
        self.port, self.per_round, self.rounds = port, per_round, rounds
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        wait_for(lambda: self.opened >= self.per_round * self.rounds, what="the flood")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)

    def _run(self) -> None:
        live: list[list[socket.socket]] = []
        while not self._stop.is_set():
            batch = []
            for _ in range(self.per_round):
                s = socket.socket()
                s.settimeout(5.0)
                try:
                    s.connect(("127.0.0.1", self.port))
                    s.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")
                except OSError:
                    pass
                batch.append(s)
            self.opened += len(batch)
            live.append(batch)
            if len(live) > self.rounds:
                for s in live.pop(0):
                    s.close()
            self._stop.wait(0.3)
        for batch in live:
            for s in batch:
                s.close()


def _nofile_limits(pid: int) -> tuple[int, int]:
    line = next(
        x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files")
    )
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_an_estop_gets_through_a_flood_of_raw_connections_under_a_low_open_file_limit(
    tmp_path: Path, null_policy: Path, procs: list[Proc], consoles: list[Console]
) -> None:
    """Started with a soft limit of 128 open files, the runner raises it to the hard limit, so hundreds of
    stalled connections (renewed as fast as the server drops them) leave room for a console's."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"hard open-file limit {hard}: no room above the flood to show the raised soft limit")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    console = Console(endpoint)
    consoles.append(console)
    runner = start_runner(procs, tmp_path, null_policy, tmp_path / "state", endpoint, preexec=_low_nofile)
    up(console, runner, "running")
    soft, hard_seen = _nofile_limits(runner.popen.pid)
    assert soft == hard_seen and soft > 128  # what lets the console in below
    with Flood(int(endpoint.rsplit(":", 1)[1])):
        for i in range(3):  # consoles connecting in the middle of the flood
            late = Console(endpoint)
            consoles.append(late)
            reply = late.command("estop", timeout_s=30.0, reason=f"under flood {i}")
            assert reply.ok, reply.error
            status = late.status(10.0)
            assert status is not None and status["state"] == "estopped"
            assert status["last_stop_detail"] == "e-stop from console: under flood 0"
    assert runner.popen.poll() is None, runner.output()
    assert runner.signal(signal.SIGTERM) == 1 and "Traceback" not in runner.output()
