"""The sim-first gate inside the in-process fine-tuning loop: the reproduction benchmark's guarded variant.

The robot (the loop's env) runs the *deployed* policy, as a hardware runner would: the ONNX file of the
last version that passed `robot-wsrl validate`, sampled stochastically by onnxruntime. Every
`run.gate_every` online steps the learner's current actor is exported and validated in simulation against
the deployed one (`run.gate_args` are the validation's overrides, e.g. its variants and episodes); only a
pass makes it the deployed policy. The robot's episode returns are then the "deployed return", to be
compared with unguarded WSRL, where the robot always runs the newest actor. The validation blocks the loop
here (the benchmark measures returns against environment steps, not wall time); in a session the learner's
validation worker runs it beside the updates instead. The judge is the caller's (the app composes
`robot-wsrl validate`'s): the learner side knows only what a verdict must say (`Judge`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robot_wsrl.core.artifacts import POLICY_ONNX, version_dir
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.export import export_policy
from robot_wsrl.robot.policy import OnnxPolicy

GATE_DIR = "gate"


class Judge(Protocol):
    """Validates the candidate ONNX policy against the reference (deployed) one, in simulation: a report
    with `passed`, `reasons` and `candidate.variants.NAME.return_mean` (`robot-wsrl validate`'s)."""

    def __call__(self, candidate: Path, reference: Path) -> Mapping[str, Any]: ...


class DeployedPolicy:
    """What the robot runs: version 0 is the pre-trained actor; `consider` promotes a candidate `judge`
    passes."""

    def __init__(self, out: Path, spec: EnvSpec, judge: Judge, seed: int) -> None:
        self.root = out / GATE_DIR
        self.spec = spec
        self.judge = judge
        self._seed = seed
        self.version = 0
        self.policy: OnnxPolicy | None = None

    def _dir(self, version: int) -> Path:
        return version_dir(self.root, version)

    def start(self, actor: Any, version: int = 0) -> None:
        """Deploy `actor` as `version` without validation: the pre-trained policy (or, on resume, the
        version that was deployed, whose files are already there)."""
        if not (self._dir(version) / POLICY_ONNX).exists():
            export_policy(actor, self._dir(version), version=version, spec=self.spec)
        self._load(version)

    def _load(self, version: int) -> None:
        self.version = version
        self.policy = OnnxPolicy.load(self._dir(version) / POLICY_ONNX, expected_spec=self.spec)
        self.policy.reseed(self._seed + version)

    def act(self, obs: np.ndarray) -> np.ndarray:
        assert self.policy is not None, "start() first"
        return self.policy.act(obs, deterministic=False)

    def consider(self, actor: Any, step: int) -> dict[str, Any]:
        """Validate the current actor against the deployed version; deploy it if it passes. A metrics row."""
        version = step  # candidates are named by the step they were taken at: unique and increasing
        directory = self._dir(version)
        export_policy(
            actor, directory, version=version, parent_version=self.version, spec=self.spec, step=step
        )
        report = self.judge(directory / POLICY_ONNX, self._dir(self.version) / POLICY_ONNX)
        row = {
            "candidate": version,
            "reference": self.version,
            "passed": bool(report["passed"]),
            "reasons": "; ".join(report["reasons"]),
            **{
                f"return_{variant}": result["return_mean"]
                for variant, result in report["candidate"]["variants"].items()
            },
        }
        if report["passed"]:
            self._load(version)
        row["deployed"] = self.version
        return row
