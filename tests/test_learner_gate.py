"""The learner meets the sim-first gate only through learn.gating.PolicyGate (apps/learner.py composes the
real one from gate/): hardware runners get what the gate's verdicts promoted, sim runners every version,
and a restart keeps what had passed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from helpers import SMALL_AGENT

from robot_wsrl.apps.learner import SimFirstGate
from robot_wsrl.core.artifacts import POLICY_SIDECAR, VALIDATION_DIR, VERDICT
from robot_wsrl.learn.config import compose_config, prepare_out_dir
from robot_wsrl.learn.learner import Learner, LearnerOptions, Peer
from robot_wsrl.wire import keys, transport


@dataclass(frozen=True)
class FakeVerdict:
    version: int
    status: str
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class FakeValidator:
    busy: bool = False
    submitted: list[int] = field(default_factory=list)
    verdicts: list[FakeVerdict] = field(default_factory=list)
    closed: bool = False

    def submit(self, version: int, directory: Path) -> None:
        assert directory.name == f"v{version:06d}"
        self.submitted.append(version)

    def poll(self) -> list[FakeVerdict]:
        verdicts, self.verdicts = self.verdicts, []
        return verdicts

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeGate:
    passed_dirs: set[str] = field(default_factory=set)
    started: list[tuple[int, str]] = field(default_factory=list)
    validator: FakeValidator = field(default_factory=FakeValidator)

    def passed(self, directory: Path) -> bool:
        return directory.name in self.passed_dirs

    def start(self, deployed: int, directory: Path) -> FakeValidator:
        self.started.append((deployed, directory.name))
        return self.validator


def _learner(out: Path, keydir: Path, checkpoint: Path, ctx: zmq.Context, gate: FakeGate) -> Learner:
    overrides = [f"run.checkpoint={checkpoint}", f"out_dir={out}", "device=cpu"]
    cfg = compose_config("finetune", ["env=inverted_pendulum", *SMALL_AGENT, *overrides])
    sock = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:0")
    signing = keys.load_signing_key(keydir, "learner")
    return Learner(cfg, sock, prepare_out_dir(cfg), signing, LearnerOptions(), secure=False, gate=gate)


def _peer(tag: str) -> Peer:
    return Peer(tag, transport.Heartbeat(0.5, 3.0), tag=tag)


def test_the_gate_decides_what_hardware_runs_and_a_restart_keeps_it(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path
) -> None:
    out, ctx = tmp_path / "learner", zmq.Context()
    try:
        gate = FakeGate()
        learner = _learner(out, learner_keydir, learner_checkpoint, ctx, gate)
        assert gate.started == [(0, "v000000")]  # nothing passed yet: the pre-trained version is deployed
        learner.publish()
        learner.publish()
        assert gate.validator.submitted == [1, 2]
        gate.validator.verdicts = [FakeVerdict(1, "passed"), FakeVerdict(2, "failed", ["worse on real"])]
        learner._check_gate()
        status = learner.status()["gate"]
        assert status["enabled"] and status["deployed_version"] == 1
        assert [v["status"] for v in status["verdicts"]] == ["passed", "failed"]
        assert learner._policy_for(_peer("hardware")).version == 1
        assert learner._policy_for(_peer("sim")).version == 2
        learner.close()
        learner.sock.close(linger=0)
        assert gate.validator.closed

        again = FakeGate(passed_dirs={"v000001"})
        restarted = _learner(out, learner_keydir, learner_checkpoint, ctx, again)
        assert again.started == [(1, "v000001")] and again.validator.submitted == [2]  # 2 is judged again
        assert restarted.status()["gate"]["deployed_version"] == 1
        restarted.close()
        restarted.sock.close(linger=0)
    finally:
        transport.shutdown(ctx)


def test_sim_first_gate_trusts_only_a_verdict_on_these_very_bytes(tmp_path: Path) -> None:
    version = tmp_path / "v000001"
    (version / VALIDATION_DIR).mkdir(parents=True)
    (version / POLICY_SIDECAR).write_text(json.dumps({"sha256": "a" * 64}))
    gate = SimFirstGate((), None)
    assert not gate.passed(version)  # never validated
    verdict = {"version": 1, "sha256": "a" * 64, "status": "passed"}
    (version / VALIDATION_DIR / VERDICT).write_text(json.dumps(verdict))
    assert gate.passed(version)
    (version / VALIDATION_DIR / VERDICT).write_text(json.dumps({**verdict, "sha256": "b" * 64}))
    assert not gate.passed(version)  # a verdict on other bytes
