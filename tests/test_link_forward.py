"""The runner's link takes policies only forward, only from its own run, and no commands from the learner.

A fake learner (a plain ROUTER on loopback, driven from the test) signs policies with the learner's key
and sends them to a real LearnerLink; the (run_id, version) a link took is kept in a DurableRecord, so a
new link on the same state folder holds to it. Every wait has a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
import zmq
from helpers import free_port

from robot_wsrl.bench.estop import write_policy
from robot_wsrl.core.durable import DurableRecord
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.link import POLICY_RECORD, LearnerLink, LinkOptions
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner
from robot_wsrl.wire import keys, signing, transport
from robot_wsrl.wire.protocol import (
    Ack,
    Command,
    Credit,
    HeartbeatMessage,
    PolicyMessage,
    Reply,
    Transitions,
    decode,
    encode,
)
from robot_wsrl.wire.spool import TransitionSpool

WAIT_S = 30.0
PERIOD_S = 0.01
SPEC = NullDriver(3, 1, control_period_s=PERIOD_S).spec


def wait_for(condition: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "condition") -> Any:
    return helpers.wait_for(condition, timeout_s, what)


def signed_policy(keydir: Path, out: Path, version: int, run_id: str | None) -> PolicyMessage:
    """A valid policy of `version`, its sidecar carrying `run_id`, signed by the learner's key."""
    onnx = write_policy(out / f"{run_id}-v{version}", SPEC, version)
    sidecar = json.loads(onnx.with_suffix(".json").read_text())
    if run_id is not None:
        sidecar["run_id"] = run_id
    text = json.dumps(sidecar)
    onnx.with_suffix(".json").write_text(text)
    return signing.signed_policy_message(
        "learner", keys.load_signing_key(keydir, "learner"), onnx.read_bytes(), text
    )


class FakeLearner:
    """A plain ROUTER that keeps every runner alive (heartbeats, unlimited credit), acks what it receives
    while `acking` is set, answers replies into `replies`, and sends whatever the test asks it to."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = transport.plain_server(self.ctx, zmq.ROUTER, endpoint)
        self.acking = threading.Event()
        self.acking.set()
        self.received_seq = -1
        self.replies: list[Reply] = []
        self.peer: bytes | None = None
        self.version: int | None = None  # announced in heartbeats
        self._outbox: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, msg: Any) -> None:
        with self._lock:
            self._outbox.append(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        transport.shutdown(self.ctx)

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            frames = transport.recv_frames(self.sock, 0.02)
            if frames is not None:
                self.peer = frames[0].bytes
                msg = decode(frames[1:])
                if isinstance(msg, Transitions):
                    self.received_seq = max(self.received_seq, msg.first_seq + msg.count - 1)
                elif isinstance(msg, Reply):
                    self.replies.append(msg)
            if self.peer is None:
                continue
            with self._lock:
                out, self._outbox = self._outbox, []
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + 0.2
                out += [
                    HeartbeatMessage("learner", "learner", time.time(), "fine_tuning", self.version),
                    Credit("learner", "robot1", 1 << 40),
                ]
                if self.acking.is_set() and self.received_seq >= 0:
                    out.append(Ack("learner", "robot1", self.received_seq))
            for msg in out:
                transport.send_frames(self.sock, [self.peer, *encode(msg)], 1.0)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys")
    keys.new_identity(path, "learner", "learner")
    return path


class Rig:
    """A FakeLearner and a LearnerLink (its spool, policies and record under `state`)."""

    def __init__(self, keydir: Path, state: Path) -> None:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.learner = FakeLearner(endpoint)
        self.ctx = zmq.Context()
        sock = transport.plain_client(self.ctx, zmq.DEALER, endpoint)
        self.spool = TransitionSpool(state / "spool", "robot1")
        self.link = LearnerLink(
            sock,
            self.spool,
            keys.load_verify_keys(keydir),
            state / "policies",
            LinkOptions(heartbeat_s=0.1, lockstep=False),
            record=DurableRecord(state / POLICY_RECORD),
        )
        self.link.start()
        wait_for(lambda: self.learner.peer is not None, what="the link's first message")

    def offer(self, msg: PolicyMessage) -> None:
        self.learner.send(msg)

    def close(self) -> None:
        self.link.close()
        self.spool.close()
        transport.shutdown(self.ctx)
        self.learner.close()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def test_policies_move_forward_only_within_the_run_and_across_a_restart(
    keydir: Path, tmp_path: Path, rigs: list[Rig]
) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    rig = Rig(keydir, state)
    rigs.append(rig)
    rig.offer(signed_policy(keydir, out, 3, "run-a"))  # a runner with no policy takes any run's
    path = wait_for(lambda: rig.link.wait_for_policy(0.05), what="first policy")
    assert OnnxPolicy.load(path).run_id == "run-a" and OnnxPolicy.load(path).version == 3
    runner = Runner(NullDriver(3, 1, control_period_s=PERIOD_S), OnnxPolicy.load(path))
    rig.link.attach(runner)

    for version, run_id in ((2, "run-a"), (9, "run-b"), (9, None)):
        before = rig.link.rejected_policies
        rig.offer(signed_policy(keydir, out, version, run_id))
        wait_for(lambda b=before: rig.link.rejected_policies == b + 1, what=f"v{version} {run_id} refused")
    assert rig.link.last_error.startswith("policy of run None, but this runner runs run 'run-a'")
    assert runner.status()["pending_policy_version"] is None
    rig.offer(signed_policy(keydir, out, 4, "run-a"))
    wait_for(lambda: rig.link.status()["offered_policy_version"] == 4, what="v4 of the same run taken")
    assert runner.status()["pending_policy_version"] == 4 and rig.link.status()["policy_run_id"] == "run-a"
    rig.close()
    rigs.remove(rig)

    again = Rig(keydir, state)  # restarted on the same state: it remembers (run-a, 4)
    rigs.append(again)
    again.offer(signed_policy(keydir, out, 11, "run-b"))  # another run, even newer: refused
    wait_for(lambda: again.link.rejected_policies == 1, what="other run refused after a restart")
    assert again.link.wait_for_policy(0.1) is None
    again.offer(signed_policy(keydir, out, 3, "run-a"))  # older than what it took: refused
    wait_for(lambda: again.link.rejected_policies == 2, what="older version refused after a restart")
    again.offer(signed_policy(keydir, out, 4, "run-a"))  # the very version it ran: its first policy again
    path = wait_for(lambda: again.link.wait_for_policy(0.05), what="first policy after restart")
    assert OnnxPolicy.load(path).version == 4
    assert DurableRecord(state / POLICY_RECORD).value == {"run_id": "run-a", "version": 4}


@pytest.mark.parametrize("command", ["estop", "release", "rollback", "pause", "resume", "set_phase"])
def test_commands_on_the_learner_channel_are_refused(
    command: str, keydir: Path, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig = Rig(keydir, tmp_path / "state")
    rigs.append(rig)
    rig.offer(signed_policy(keydir, tmp_path / "out", 1, "run-a"))
    path = wait_for(lambda: rig.link.wait_for_policy(0.05), what="first policy")
    driver = NullDriver(3, 1, control_period_s=PERIOD_S)
    runner = Runner(driver, OnnxPolicy.load(path))
    rig.link.attach(runner)
    if command == "release":
        runner.estop("operator e-stop")
    rig.learner.send(Command("console", command, {"phase": "warmup", "operator": "mallory"}, 5))
    reply = wait_for(lambda: next((r for r in rig.learner.replies if r.ref == 5), None), what="the reply")
    assert not reply.ok and "control channel" in (reply.error or "")
    assert rig.link.rejected_commands == 1 and rig.link.status()["rejected_messages"].get("command") == 1
    assert runner.latch.latched is (command == "release")  # an e-stop stays; no stop came from the learner
    assert driver.safe_stop_count == (1 if command == "release" else 0)
    assert not runner.status()["waiting"] and runner.status()["phase"] == "fine_tuning"
