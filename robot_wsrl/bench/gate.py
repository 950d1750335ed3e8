"""`robot-wsrl bench gate`: does the validation gate promote known-better policies and hold back known-worse
ones, and how long does a decision take?

Fixtures come in families (benchmarks/gate/NAME/, README.md there says how each was made and what it
measured): a `reference/` policy the family's candidates are judged against, stored known-better candidates
and known-worse ones, most derived here, deterministically, from the reference (its weights with Gaussian
noise, its actions scaled down; configs/bench/gate.yaml lists them). Every candidate is judged in several
trials, each on its own environment seeds (validation `seed`), against its reference, with the gate's
default configuration (configs/validate.yaml). As in a session,
the reference's own validation (the whole budget, no comparison) runs first in each trial and is reused by
that trial's decisions; a decision's seconds are the candidate's `robot-wsrl validate` as a whole.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from omegaconf import DictConfig, OmegaConf
from onnx import helper, numpy_helper

from robot_wsrl.bench.machine import cpu_description
from robot_wsrl.core.artifacts import POLICY_ONNX, sidecar_path
from robot_wsrl.core.paths import CONFIG_DIR, REPO_ROOT
from robot_wsrl.gate.episodes import EpisodePool, Task, default_workers
from robot_wsrl.gate.validate import Setup, resolve_env, validate
from robot_wsrl.gate.validate import load_config as load_config_validate
from robot_wsrl.robot.policy import OnnxPolicy, sha256_bytes

FIXTURES = REPO_ROOT / "benchmarks" / "gate"
BENCH_CONFIG = CONFIG_DIR / "bench" / "gate.yaml"
TRIAL_SEED = 100_000  # trial k validates with seed TRIAL_SEED + 1000 k: no environment seed is shared


def write_policy(model: onnx.ModelProto, source: Path, out: Path) -> Path:
    """`model` as DIR/policy.onnx with `source`'s sidecar, its size and sha256 updated for these bytes."""
    data = model.SerializeToString()
    out.mkdir(parents=True, exist_ok=True)
    (out / POLICY_ONNX).write_bytes(data)
    side = json.loads(sidecar_path(source / POLICY_ONNX).read_text())
    side |= {"size_bytes": len(data), "sha256": sha256_bytes(data)}
    sidecar_path(out / POLICY_ONNX).write_text(json.dumps(side, indent=2) + "\n")
    return out


def noisy_weights(source: Path, out: Path, relative_std: float, seed: int) -> Path:
    """Every weight matrix and bias of the network plus N(0, (relative_std * its own std)^2) noise. An
    export older than the removal of the observation normaliser (the shipped policies) carries its identity
    constants: they are left alone, drawing no noise, so a seed gives the variants it always gave."""
    model = onnx.load(source / POLICY_ONNX)
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.name.startswith("normalizer."):
            continue
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.size < 2:
            continue
        noisy = w + rng.normal(0.0, relative_std * float(w.std()), size=w.shape).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    return write_policy(model, source, out)


def _rewire_output(model: onnx.ModelProto, output: str, op: str, constant: float) -> None:
    """Replace graph output `output` by `op(output, constant)` (Mul or Add), under the same name."""
    raw = f"{output}_before_{op.lower()}"
    for node in model.graph.node:
        node.output[:] = [raw if name == output else name for name in node.output]
        node.input[:] = [raw if name == output else name for name in node.input]
    const = numpy_helper.from_array(np.array(constant, dtype=np.float32), f"{output}_{op.lower()}_by")
    model.graph.initializer.append(const)
    model.graph.node.append(helper.make_node(op, [raw, const.name], [output]))


def scaled_actions(source: Path, out: Path, factor: float) -> Path:
    """The policy with its pre-squash mean scaled by `factor`: the same gait, commanded `factor` as hard."""
    model = onnx.load(source / POLICY_ONNX)
    _rewire_output(model, "mean", "Mul", factor)
    return write_policy(model, source, out)


def sharper_sampling(source: Path, out: Path, log_std_shift: float) -> Path:
    """The same mean action with its sampling std times exp(log_std_shift): on a robot that samples its
    actions, less noise around the same gait."""
    model = onnx.load(source / POLICY_ONNX)
    _rewire_output(model, "log_std", "Add", log_std_shift)
    return write_policy(model, source, out)


@dataclass(frozen=True)
class Family:
    """One reference and the candidates judged against it: benchmarks/gate/NAME/ holds `reference/` and the
    stored `better_*/` (and any stored `worse_*/`); `worse` (configs/bench/gate.yaml) derives more known-worse
    candidates from the reference, deterministically."""

    name: str
    worse: Mapping[str, Any]

    @property
    def root(self) -> Path:
        return FIXTURES / self.name

    @property
    def reference(self) -> Path:
        return self.root / "reference"

    def stored(self, kind: str) -> dict[str, Path]:
        return {
            f"{self.name}/{p.name}": p
            for p in sorted(self.root.glob(f"{kind}_*"))
            if (p / POLICY_ONNX).is_file()
        }

    def candidates(self, workdir: Path) -> dict[str, dict[str, Path]]:
        """{"better": ..., "worse": ...}: the stored ones and those derived into `workdir`."""
        worse = self.stored("worse")
        for std, seed in self.worse.get("weights_noise", []):
            made = noisy_weights(self.reference, workdir / f"noise{std:g}-{seed}", std, seed)
            worse[f"{self.name}/weights_noise_{std:g}_seed{seed}"] = made
        for factor in self.worse.get("actions_scale", []):
            out = workdir / f"actions{factor:g}"
            worse[f"{self.name}/actions_x{factor:g}"] = scaled_actions(self.reference, out, factor)
        return {"better": self.stored("better"), "worse": worse}


def load_config(overrides: list[str] | None = None) -> DictConfig:
    from robot_wsrl import bench

    cfg = bench.load_config(BENCH_CONFIG, list(overrides or []), free=("families",))
    unknown = [name for name in cfg.include if name not in cfg.families]
    if unknown:
        raise ValueError(f"include: no family {unknown[0]!r}; defined: {', '.join(cfg.families)}")
    if int(cfg.trials) < 1:
        raise ValueError(f"trials must be at least 1, got {cfg.trials}")
    return cfg


def families(cfg: DictConfig) -> list[Family]:
    made = [Family(name, OmegaConf.to_container(cfg.families[name].worse)) for name in cfg.include]
    for family in made:
        if not (family.reference / POLICY_ONNX).is_file():
            raise ValueError(f"family {family.name!r}: no {family.reference / POLICY_ONNX}")
        if not family.stored("better"):
            raise ValueError(f"family {family.name!r}: no known-better fixture (better_*/policy.onnx)")
    return made


def measure_returns(policy: Path, variant: str, episodes: int, seed: int, workers: int = 0) -> np.ndarray:
    """`episodes` episode returns of `policy` on `variant`, as the gate runs them (the fixtures' figures)."""
    cfg = load_config_validate(overrides=[f"seed={seed}", f"preset={variant}"])
    spec = OnnxPolicy.load(policy / POLICY_ONNX).spec
    setup = Setup.of(cfg, resolve_env(cfg, spec))
    tasks = [Task(str((policy / POLICY_ONNX).resolve()), variant, i) for i in range(episodes)]
    with EpisodePool(setup.episode, workers or default_workers()) as pool:
        return np.array([r.episode.ret for r in pool.run(tasks)])


def _decide(candidate: Path, reference: Path, overrides: list[str], out: Path) -> tuple[bool, float, dict]:
    started = time.perf_counter()
    config = load_config_validate(overrides=overrides)
    report = validate(candidate / POLICY_ONNX, reference / POLICY_ONNX, config, out,
                      allow_unsigned=True)  # fmt: skip
    return bool(report["passed"]), time.perf_counter() - started, report


def main(overrides: list[str]) -> dict[str, Any]:
    """The `robot-wsrl bench gate [KEY=VALUE ...]` entry point."""
    return run_gate_benchmark(load_config(overrides))


def run_gate_benchmark(cfg: DictConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    chosen = families(cfg)
    outcomes: dict[str, dict[str, list[bool]]] = {"better": {}, "worse": {}}
    seconds: list[float] = []
    episodes: list[int] = []
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        root = Path(tmp)
        judged = [(family, family.candidates(root / family.name)) for family in chosen]
        for trial in range(int(cfg.trials)):
            overrides = [f"seed={TRIAL_SEED + 1000 * trial}"]
            for family, kinds in judged:
                reference = root / f"{family.name}-reference{trial}"  # its own folder: its report is reused
                shutil.copytree(family.reference, reference)
                validate(reference / POLICY_ONNX, None, load_config_validate(overrides=overrides),
                         allow_unsigned=True)  # fmt: skip
                for kind, candidates in kinds.items():
                    for name, path in candidates.items():
                        out = root / "reports" / f"{name.replace('/', '-')}-{trial}"
                        passed, took, report = _decide(path, reference, overrides, out)
                        outcomes[kind].setdefault(name, []).append(passed)
                        seconds.append(took)
                        runs = report["episodes_run"]
                        episodes.append(runs["candidate"] + runs["reference"])
                        pairs = {v: p["pairs"] for v, p in report["sequential"].items()}
                        verdict = "promoted" if passed else "held back"
                        log(f"bench gate trial {trial}: {kind} {name}: {verdict} in {took:.1f} s, {pairs=}")
    better = [p for runs in outcomes["better"].values() for p in runs]
    worse = [p for runs in outcomes["worse"].values() for p in runs]
    return {
        "better_promoted_rate": float(np.mean(better)),
        "worse_held_rate": 1.0 - float(np.mean(worse)) if worse else None,
        "decision_s_p50": float(np.percentile(seconds, 50)),
        "decision_s_max": float(np.max(seconds)),
        "better_decisions": len(better),
        "worse_decisions": len(worse),
        "promoted": {kind: {n: int(sum(r)) for n, r in runs.items()} for kind, runs in outcomes.items()},
        "families": [family.name for family in chosen],
        "trials": int(cfg.trials),
        "episodes_per_decision_p50": float(np.percentile(episodes, 50)),
        "episodes_per_decision_max": int(np.max(episodes)),
        "workers": default_workers(),
        "cpu": cpu_description(),
        "load_average_1min": os.getloadavg()[0],
    }
