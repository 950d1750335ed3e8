"""The sim-first gate a policy must pass before a hardware runner may load it.

The policy runs in the onboard `Runner` over the same drivers a robot uses, as the robot will run it: the
same action sampling (stochastic unless the robot runs deterministically) and the same shift preset
(dynamics, sensor noise, action latency). See robot_wsrl.gate.episodes for the episodes and their seeds,
robot_wsrl.gate.stats for the statistics. Against the reference (the deployed version) the candidate runs
paired episodes, a batch at a time in worker processes, and a sequential test stops as soon as its bounds
decide: the robot's own preset must improve or tie within a margin, every other preset is a safety net
(no faults, no collapse). Absolute thresholds (return, success, safety events) apply to every variant.
All of it from `configs/validate.yaml`. Writes `report.json` (with each look of the test) and `report.png`.
Robot side: numpy, onnxruntime, mujoco; never torch.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from robot_wsrl.core.artifacts import REPORT, REPORT_PLOT, VALIDATION_DIR
from robot_wsrl.core.files import write_atomic
from robot_wsrl.core.paths import CONFIG_DIR
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.gate.episodes import Episode, EpisodePool, EpisodeSetup, Result, Task, default_workers
from robot_wsrl.gate.registry import load_trusted, policy_file, require_trusted
from robot_wsrl.gate.stats import SequentialTest, look_schedule, t_quantile
from robot_wsrl.robot.drivers import simulator_name
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError, SpecMismatch, sha256_bytes
from robot_wsrl.sim.env_config import EnvConfig
from robot_wsrl.sim.shift import load_shift_preset, preset_applies, preset_hint, preset_names

REPORT_FORMAT = "robot-wsrl-validation/1"
MIN_PAIRED_EPISODES = 3  # a confidence bound over fewer paired episodes would be a single-episode verdict


# ----- configuration (configs/validate.yaml) -----


@dataclass
class Thresholds:
    min_return: dict[str, float] = field(default_factory=dict)  # variant -> minimum mean return
    min_success_rate: float | None = None
    max_faults: int = 0  # NaN guards, limit violations, e-stops and driver faults, per variant
    max_clipped_fraction: float = 0.05
    max_rate_limited_fraction: float = 0.25


@dataclass
class ReferenceConfig:
    margin: float = 0.05  # the robot's preset: mean(c) >= mean(r) - margin * mean|r|, shown
    safety_floor: float = 0.5  # other variants: fail only once shown below safety_floor * mean(r)
    success_margin: float = 0.1  # tasks with success: fail once shown below the reference's rate - margin
    confidence: float = 0.95  # of each decision, over all its looks
    looks: int = 4  # interim analyses, each at twice the pairs of the last, up to the budget (`episodes`)


@dataclass
class ValidateConfig:
    env: str | None = None
    driver: str | None = None  # None: the policy's own (`resolve_env`)
    preset: str | None = None  # None: the robot's (`for_robot`)
    robot_presets: list[str] = field(default_factory=lambda: ["reacher_real", "real"])
    variants: list[str] = field(default_factory=lambda: ["nominal"])
    episodes: int = 128
    workers: int = 0
    seed: int = 1000
    deterministic: bool = False
    max_episode_steps: int | None = None
    max_delta_per_step: float | None = None
    success_return: dict[str, float] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def judged(self) -> list[str]:
        """The variants validated: the robot's preset first, then the other `variants` in their order."""
        if self.preset is None:
            raise ValueError("validate config: no robot preset yet: resolve it with for_robot(driver)")
        return [self.preset, *(v for v in self.variants if v != self.preset)]

    def for_robot(self, driver: str) -> ValidateConfig:
        """This config on the robot `driver` drives: `preset` null becomes the first of `robot_presets` that
        describes that robot (a preset's `for_driver`, as `ship` measures on every preset describing it),
        `nominal` when none does. Checked again, the robot's preset now known."""
        preset = self.preset or next(
            (p for p in self.robot_presets if preset_applies(load_shift_preset(p), driver)), "nominal"
        )
        resolved = dataclasses.replace(self, preset=preset)
        resolved.check()
        return resolved

    def check(self) -> None:
        t, r = self.thresholds, self.reference
        problems = {
            "variants must be a list without repeats": len(set(self.variants)) == len(self.variants),
            "episodes must be positive": self.episodes > 0,
            "workers must be >= 0 (0: one per core)": self.workers >= 0,
            "max_episode_steps must be positive": self.max_episode_steps is None
            or self.max_episode_steps > 0,
            "max_delta_per_step must be positive": self.max_delta_per_step is None
            or self.max_delta_per_step > 0,
            "thresholds.min_return names variants that are not validated": self.preset is None
            or set(t.min_return) <= set(self.judged()),
            "thresholds.min_success_rate must be in [0, 1]": t.min_success_rate is None
            or 0.0 <= t.min_success_rate <= 1.0,
            "thresholds.max_faults must be >= 0": t.max_faults >= 0,
            "thresholds fractions must be in [0, 1]": 0.0 <= t.max_clipped_fraction <= 1.0
            and 0.0 <= t.max_rate_limited_fraction <= 1.0,
            "reference.margin must be >= 0": r.margin >= 0.0,
            "reference.safety_floor must be in [0, 1]": 0.0 <= r.safety_floor <= 1.0,
            "reference.success_margin must be in [0, 1]": 0.0 <= r.success_margin <= 1.0,
            "reference.confidence must be in (0.5, 1)": 0.5 < r.confidence < 1.0,
            "reference.looks must be >= 1": r.looks >= 1,
        }
        bad = [msg for msg, ok in problems.items() if not ok]
        if bad:
            raise ValueError("validate config: " + "; ".join(bad))


# The learner's `env.KEY` overrides and the keys of this config that say the same here.
ENV_KEYS = {"name": "env", "driver": "driver", "max_episode_steps": "max_episode_steps", "shift": "preset"}


def load_config(config_file: Path | None = None, overrides: list[str] | None = None) -> ValidateConfig:
    """configs/validate.yaml, then `config_file` merged over it, then `key=value` overrides; typed.

    A bad override raises omegaconf's own error (the key it concerns, the known keys beside it), as the
    learner's Hydra overrides do: apps/errors.py words both the same way."""
    malformed = [o for o in overrides or [] if "=" not in o]
    if malformed:
        raise ValueError(f"override {malformed[0]!r} has no '=': give KEY=VALUE, e.g. episodes=20")
    for override in overrides or []:
        key, _, value = override.partition("=")
        if key.startswith("env."):  # the learner's env group: here env is only a name, its keys are ours
            ours = ENV_KEYS.get(key.removeprefix("env."))
            hint = f": did you mean {ours}={value}?" if ours else ""
            raise ValueError(f"override {override!r}: validate's env is a config name (env=NAME){hint}")
    layers = [OmegaConf.structured(ValidateConfig), OmegaConf.load(CONFIG_DIR / "validate.yaml")]
    if config_file is not None:
        layers.append(OmegaConf.load(config_file))
    layers.append(OmegaConf.from_dotlist(list(overrides or [])))
    cfg: ValidateConfig = OmegaConf.to_object(OmegaConf.merge(*layers))  # type: ignore[assignment]
    cfg.check()
    return cfg


def resolve_env(cfg: ValidateConfig, spec: EnvSpec) -> EnvConfig:
    """Where the policy runs: the env config `cfg.env` names, else the one whose driver runs the policy's
    task. Its driver is `cfg.driver` when given, else the policy's own (`simulator_name`: its task, its
    cameras at their sizes) when the env drives that task, else the env's own (which the policy must fit)."""
    env_dir = CONFIG_DIR / "env"
    own = simulator_name(spec)
    task = _task(cfg.driver or own)
    if cfg.env is not None:
        path = env_dir / f"{cfg.env}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in env_dir.glob("*.yaml"))
            raise ValueError(f"no env config {cfg.env!r} in {env_dir} (known: {known})")
        candidates = [path]
    else:
        candidates = [
            p for p in sorted(env_dir.glob("*.yaml")) if _task(OmegaConf.load(p).get("driver")) == task
        ]
        if not candidates:
            raise ValueError(f"no env config in {env_dir} drives {task!r}: pass env=NAME")
    env: EnvConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(EnvConfig), OmegaConf.load(candidates[0]))
    )  # type: ignore[assignment]
    if cfg.driver is not None:
        env.driver = cfg.driver
    elif _task(env.driver) == _task(own):
        env.driver = own
    return env


def _task(driver: str | None) -> str:
    """A driver name without its camera requests: `cam:reacher@top:24x24` -> `cam:reacher`."""
    return str(driver or "").partition("@")[0]


# ----- the setup and the measurements -----


@dataclass(frozen=True)
class Setup:
    """What was validated and how: the episodes' setup (equal ones give equal episodes), the robot's preset,
    every variant judged (the robot's preset first) and the looks of the sequential test."""

    episode: EpisodeSetup
    preset: str
    variants: list[str]
    looks: list[int]  # pairs per variant at each look; the last is the budget

    @classmethod
    def of(cls, cfg: ValidateConfig, env: EnvConfig) -> Setup:
        steps = cfg.max_episode_steps or env.max_episode_steps
        if steps is None:
            raise ValueError(f"env {env.name!r} has no max_episode_steps: set max_episode_steps")
        variants = cfg.judged()
        presets = preset_names(env.driver)
        if variants[0] not in presets:  # the robot's preset (`preset=`)
            raise ValueError(
                f"preset={variants[0]} is not a shift preset of {env.driver}; its presets: "
                f"{preset_hint(variants[0], presets)}"
            )
        unknown = [v for v in variants if v not in presets]
        if unknown:
            raise ValueError(
                f"variants {unknown} are not shift presets of {env.driver}; its presets: "
                f"{preset_hint(unknown[0], presets)}"
            )
        episode = EpisodeSetup(
            env.driver, steps, cfg.seed, cfg.deterministic, cfg.max_delta_per_step,
            cfg.success_return.get(env.name),
        )  # fmt: skip
        return cls(episode, variants[0], variants, look_schedule(cfg.episodes, cfg.reference.looks))


class Measurement:
    """One policy's episodes so far, per variant and by index, and its policy steps' durations."""

    def __init__(self, path: Path, label: str, known: dict[str, dict[int, Episode]] | None = None) -> None:
        self.path, self.label = path, label
        self.policy = OnnxPolicy.load(path)
        self.episodes: dict[str, dict[int, Episode]] = {v: dict(e) for v, e in (known or {}).items()}
        self.reused = sum(len(e) for e in self.episodes.values())
        self.step_us: dict[str, list[float]] = {}

    def missing(self, variant: str, pairs: int) -> list[Task]:
        have = self.episodes.get(variant, {})
        return [Task(str(self.path.resolve()), variant, i) for i in range(pairs) if i not in have]

    def add(self, result: Result) -> None:
        variant = result.task.variant
        self.episodes.setdefault(variant, {})[result.task.index] = result.episode
        self.step_us.setdefault(variant, []).extend(result.step_us)

    def first(self, variant: str, pairs: int) -> list[Episode]:
        return [self.episodes[variant][i] for i in range(pairs)]

    def returns(self, variant: str, pairs: int) -> np.ndarray:
        return np.array([e.ret for e in self.first(variant, pairs)])

    def result(self, used: dict[str, int]) -> dict[str, Any]:
        """The report's record of this policy: per variant, its first `used[variant]` episodes."""
        meta = self.policy.metadata
        variants = {v: summarise(self.first(v, n), self.step_us.get(v, [])) for v, n in used.items() if n > 0}
        return {
            "path": str(self.path),
            "sha256": self.policy.sha256,
            "version": meta.version,
            "parent_version": meta.parent_version,
            "step": meta.step,
            "variants": variants,
        }


def summarise(episodes: list[Episode], step_us: list[float]) -> dict[str, Any]:
    returns = np.array([e.ret for e in episodes])
    steps = sum(e.steps for e in episodes)
    safety = {k: sum(e.safety[k] for e in episodes) for k in episodes[0].safety}
    successes = [e.success for e in episodes]
    lat = np.array(step_us) if step_us else np.array([np.nan])
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "returns": returns.tolist(),
        "steps": steps,
        "success_rate": None if successes[0] is None else float(np.mean(successes)),
        "safety": safety,
        "faults": sum(e.faults for e in episodes),
        "clipped_fraction": safety["clipped"] / max(steps, 1),
        "rate_limited_fraction": safety["rate_limited"] / max(steps, 1),
        "step_latency_us": {
            "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
        },
        "episodes": [asdict(e) for e in episodes],
    }


def _run(pool: EpisodePool, measurements: list[Measurement], variants: list[str], pairs: int) -> None:
    """Every episode below index `pairs` that a policy still lacks on these variants, all in one batch."""
    tasks = [(m, t) for v in variants for m in measurements for t in m.missing(v, pairs)]
    started = time.monotonic()
    for (m, _), result in zip(tasks, pool.run([t for _, t in tasks]), strict=True):
        m.add(result)
    for m in measurements:
        ran = sum(1 for owner, _ in tasks if owner is m)
        print(
            f"validate {m.label} v{m.policy.version}: {ran} episodes on {', '.join(variants)} (up to "
            f"{pairs} each) in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )


# ----- the sequential test -----


@dataclass(frozen=True)
class Rule:
    """How a variant is judged against the reference: non-inferiority with `margin` (mean(c) above mean(r)
    minus margin * mean|r|); `undecided` is the verdict when the budget ends before the bounds decide."""

    name: str  # "improve" (the robot's preset) or "safety_net" (every other variant)
    margin: float
    undecided: str  # "fail": must be shown; "pass": fails only when shown below the line

    @classmethod
    def of(cls, cfg: ValidateConfig, variant: str) -> Rule:
        if variant == cfg.preset:
            return cls("improve", cfg.reference.margin, "fail")
        return cls("safety_net", 1.0 - cfg.reference.safety_floor, "pass")


def sequential(
    cfg: ValidateConfig, setup: Setup, pool: EpisodePool, candidate: Measurement, reference: Measurement
) -> dict[str, dict[str, Any]]:
    """Look after each batch of pairs; a variant stops once its test decides (or its candidate faults), the
    gate once a variant fails or all have passed. Returns each variant's decision path (the report's
    `sequential`)."""
    rules = {v: Rule.of(cfg, v) for v in setup.variants}
    tests = {
        v: SequentialTest(setup.looks, cfg.reference.confidence, r.margin, r.undecided)
        for v, r in rules.items()
    }
    why: dict[str, str] = {}
    started = time.monotonic()
    for k, pairs in enumerate(setup.looks, 1):
        open_ = [v for v in setup.variants if tests[v].decision is None]
        _run(pool, [candidate, reference], open_, pairs)
        for v in open_:
            test = tests[v]
            test.update(candidate.returns(v, pairs), reference.returns(v, pairs))
            step = test.path[-1] | {"seconds": round(time.monotonic() - started, 3)}
            test.path[-1] = step
            where = (
                f"mean difference {step['mean_difference']:+.2f}, bounds [{step['lower']:+.2f}, "
                f"{step['upper']:+.2f}] vs the line {step['line']:+.2f} at look {k}/{len(setup.looks)} "
                f"({pairs} pairs, each bound at {step['alpha']:.4f})"
            )
            faults = sum(e.faults for e in candidate.first(v, pairs))
            if faults > cfg.thresholds.max_faults:
                test.decision = step["decision"] = "fail"
                why[v] = f"{faults} faults in {pairs} episodes; {where}"
            elif test.decision is not None:
                shown = {"pass": "above", "fail": "below"}[test.decision]
                if step["lower"] > step["line"] or step["upper"] < step["line"]:
                    why[v] = f"{shown} the line: {where}"
                else:  # the budget ended first: the rule's verdict for an undecided test
                    unshown = "below" if shown == "above" else "above"
                    why[v] = f"not shown {unshown} the line within the budget: {where}"
            print(
                f"validate {v:<9} {rules[v].name:<10} {where} -> {test.decision or 'go on'}",
                file=sys.stderr,
                flush=True,
            )
        failed = [v for v in setup.variants if tests[v].decision == "fail"]
        if failed or all(t.decision is not None for t in tests.values()):
            break
    paths = {}
    for v, test in tests.items():
        decision = test.decision or "stopped"
        paths[v] = {
            **asdict(rules[v]),
            "pairs": test.path[-1]["pairs"] if test.path else 0,
            "decision": decision,
            "why": why.get(v, f"the gate failed on {failed[0]} first" if failed else ""),
            "looks": test.path,
        }
    return paths


# ----- the verdict -----


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def judge(
    cfg: ValidateConfig,
    candidate: dict[str, Any],
    paths: dict[str, dict[str, Any]] | None,
    reference: dict[str, Any] | None = None,
) -> list[Check]:
    """Every check of the gate, passed or not, so a report says why as well as whether: absolute thresholds
    on the candidate's episodes, then each variant's sequential decision against the reference and, on a
    task with a success signal, its success rate against the reference's."""
    t, checks = cfg.thresholds, []
    for variant, c in candidate["variants"].items():
        floor = t.min_return.get(variant)
        if floor is not None:
            ok = c["return_mean"] >= floor
            checks.append(
                Check(f"min_return[{variant}]", ok, f"mean return {c['return_mean']:.2f} vs {floor:.2f}")
            )
        if t.min_success_rate is not None:
            rate = c["success_rate"]
            if rate is None:
                raise ValueError(
                    "thresholds.min_success_rate is set but this env has no success: its driver reports "
                    "none (info['success']) and success_return names no return for it"
                )
            checks.append(
                Check(
                    f"success_rate[{variant}]",
                    rate >= t.min_success_rate,
                    f"{rate:.2f} vs {t.min_success_rate:.2f}",
                )
            )
        checks.append(
            Check(
                f"faults[{variant}]", c["faults"] <= t.max_faults, f"{c['faults']} vs at most {t.max_faults}"
            )
        )
        for kind, limit in (
            ("clipped", t.max_clipped_fraction),
            ("rate_limited", t.max_rate_limited_fraction),
        ):
            value = c[f"{kind}_fraction"]
            checks.append(Check(f"{kind}[{variant}]", value <= limit, f"{value:.3f} of steps vs {limit:.3f}"))
    for variant, path in (paths or {}).items():
        if path["decision"] != "stopped":  # undecided when another variant failed: no verdict of its own
            passed, detail = path["decision"] == "pass", f"{path['name']}: {path['why']}"
            checks.append(Check(f"vs_reference[{variant}]", passed, detail))
    for variant, c in candidate["variants"].items():
        r = (reference or {}).get("variants", {}).get(variant)
        if r is not None and c["success_rate"] is not None and r["success_rate"] is not None:
            checks.append(success_check(cfg.reference, variant, c["episodes"], r["episodes"]))
    return checks


def success_check(
    ref_cfg: ReferenceConfig, variant: str, candidate: list[dict[str, Any]], reference: list[dict[str, Any]]
) -> Check:
    """Fails once the candidate's success rate is *shown* below the reference's minus `success_margin`:
    the paired differences' upper confidence bound is under -margin (paired episodes share their seeds)."""
    pairs = zip(candidate, reference, strict=True)
    diff = np.array([float(c["success"]) - float(r["success"]) for c, r in pairs])
    n, mean = len(diff), float(diff.mean())
    spread = float(diff.std(ddof=1)) / np.sqrt(n) if n > 1 else 0.0
    upper = mean + t_quantile(ref_cfg.confidence, max(n - 1, 1)) * spread
    rates = f"{np.mean([c['success'] for c in candidate]):.2f} vs the reference's "
    rates += f"{np.mean([r['success'] for r in reference]):.2f}"
    detail = f"success rate {rates} ({n} pairs): difference {mean:+.2f}, upper bound {upper:+.2f}"
    return Check(f"success_vs_reference[{variant}]", bool(upper >= -ref_cfg.success_margin),
                 f"{detail} vs -{ref_cfg.success_margin:.2f}")  # fmt: skip


# ----- the whole gate -----


def _reusable(reference: Path, setup: Setup) -> dict[str, dict[int, Episode]]:
    """The reference's episodes from its own validation report, if it measured these exact bytes with this
    exact episode setup (an episode is a function of both and its index: running it again changes
    nothing); empty otherwise."""
    path = reference.parent / VALIDATION_DIR / REPORT
    try:
        report = json.loads(path.read_text())
        own = report["candidate"]
        if own["sha256"] != sha256_bytes(reference.read_bytes()):
            return {}
        if report["setup"]["episode"] != asdict(setup.episode):
            return {}
        return {
            v: {e["index"]: Episode(**e) for e in r["episodes"]}
            for v, r in own["variants"].items()
            if v in setup.variants
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def validate(
    candidate: Path,
    reference: Path | None,
    cfg: ValidateConfig,
    out: Path | None = None,
    *,
    keydir: Path | None = None,
    allow_unsigned: bool = False,
) -> dict[str, Any]:
    """Run the gate; writes `report.json` and `report.png` into `out` (default: beside the policy, in
    validation/) and returns the report. Raises ValueError (or a subclass) on bad input."""
    started = time.monotonic()
    cand = policy_file(candidate)
    ref = None if reference is None else policy_file(reference)
    trusted = load_trusted(keydir)
    trust = {p: require_trusted(p, trusted, allow_unsigned) for p in (cand, ref) if p is not None}
    spec = OnnxPolicy.load(cand).spec
    env = resolve_env(cfg, spec)
    cfg = cfg.for_robot(env.driver)
    setup = Setup.of(cfg, env)
    if ref is not None:
        if cfg.episodes < MIN_PAIRED_EPISODES:
            raise ValueError(f"comparing with a reference needs episodes >= {MIN_PAIRED_EPISODES}")
        try:
            OnnxPolicy.load(ref, expected_spec=spec)
        except SpecMismatch as exc:  # not a driver to change: the two were made for different robots
            raise PolicyError(f"--reference {exc}: compare with a policy for the candidate's robot") from exc
    workers = cfg.workers or default_workers()
    cand_m = Measurement(cand, "candidate")
    ref_m = None if ref is None else Measurement(ref, "reference", _reusable(ref, setup))
    with EpisodePool(setup.episode, workers) as pool:
        if ref_m is None:  # no comparison: the whole budget, which a later candidate reuses as its reference
            _run(pool, [cand_m], setup.variants, setup.looks[-1])
            paths, used = None, dict.fromkeys(setup.variants, setup.looks[-1])
        else:
            paths = sequential(cfg, setup, pool, cand_m, ref_m)
            used = {v: p["pairs"] for v, p in paths.items()}
    cand_result = {**cand_m.result(used), "signature": trust[cand].state}
    ref_result = None
    if ref_m is not None and ref is not None:
        ref_result = {**ref_m.result(used), "signature": trust[ref].state, "episodes_reused": ref_m.reused}
    checks = judge(cfg, cand_result, paths, ref_result)
    report = {
        "format": REPORT_FORMAT,
        "passed": all(c.passed for c in checks),
        "reasons": [f"{c.name}: {c.detail}" for c in checks if not c.passed],
        "checks": [asdict(c) for c in checks],
        "env": env.name,
        "setup": asdict(setup),
        "thresholds": asdict(cfg.thresholds),
        "reference_test": asdict(cfg.reference),
        "sequential": paths,
        "episodes_run": {
            "candidate": sum(len(e) for e in cand_m.episodes.values()),
            "reference": None if ref_m is None else sum(map(len, ref_m.episodes.values())) - ref_m.reused,
            "workers": workers,
        },
        "candidate": cand_result,
        "reference": ref_result,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - started, 3),
    }
    out = cand.parent / VALIDATION_DIR if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT, (json.dumps(report, indent=2) + "\n").encode())
    plot_report(report, out / REPORT_PLOT)
    return report


SAFETY_KINDS = ("clipped", "rate_limited", "nonfinite_obs", "nonfinite_action", "limit_violations", "estops")


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Returns per variant (each episode and mean ± std) and safety events, candidate vs reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = [("candidate", report["candidate"], "tab:blue", "")]
    if report["reference"] is not None:
        policies.append(("reference", report["reference"], "tab:grey", "//"))
    variants = list(report["candidate"]["variants"])
    x = np.arange(len(variants))
    width = 0.8 / len(policies)
    fig, (ax_r, ax_s) = plt.subplots(1, 2, figsize=(11, 4))
    for j, (label, result, color, hatch) in enumerate(policies):
        offset = (j - (len(policies) - 1) / 2) * width
        for i, variant in enumerate(variants):
            r = result["variants"][variant]
            spread = np.linspace(-0.25, 0.25, len(r["returns"])) * width
            ax_r.scatter(x[i] + offset + spread, r["returns"], s=10, alpha=0.5, color=color)
            ax_r.errorbar(
                x[i] + offset, r["return_mean"], yerr=r["return_std"], fmt="o", color=color, capsize=5,
                label=f"{label} v{result['version']}" if i == 0 else None,
            )  # fmt: skip
        bottom = np.zeros(len(variants))
        for k, kind in enumerate(SAFETY_KINDS):
            counts = np.array([result["variants"][v]["safety"][kind] for v in variants], dtype=float)
            ax_s.bar(
                x + offset, counts, width, bottom=bottom, color=f"C{k}", hatch=hatch, edgecolor="white",
                label=kind if j == 0 else None,
            )  # fmt: skip
            bottom += counts
    ax_r.set_xticks(x, variants)
    ax_r.set_ylabel("episode return")
    ax_r.legend(fontsize=8)
    ax_r.set_title(f"{report['env']}: {'PASS' if report['passed'] else 'FAIL'}", fontsize=10)
    ax_s.set_xticks(x, variants)
    if not ax_s.containers or max(bar.get_y() + bar.get_height() for c in ax_s.containers for bar in c) == 0:
        ax_s.set_ylim(0, 1)
        ax_s.text(0.5, 0.5, "no safety events", ha="center", transform=ax_s.transAxes)
    ax_s.set_ylabel("safety events (all episodes)")
    ax_s.set_title("safety events" + (" (reference hatched)" if len(policies) > 1 else ""), fontsize=10)
    ax_s.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
