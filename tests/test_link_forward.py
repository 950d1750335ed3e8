"""The runner's link takes policies only forward, only from its own run, and no commands from the learner.

A fake learner (a plain ROUTER on loopback, driven from the test) signs policies with the learner's key
and sends them to a real LearnerLink; the (run_id, version) a link took is kept in a DurableRecord, so a
new link on the same state folder holds to it. Every wait has a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from helpers import PERIOD_S, FakeLearner, free_port, signed_policy, wait_for

from robot_wsrl.core.artifacts import POLICY_RECORD
from robot_wsrl.core.durable import DurableRecord
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.link import LearnerLink, LinkOptions
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.protocol import Command, PolicyMessage
from robot_wsrl.wire.spool import TransitionSpool


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
