"""`robot-wsrl validate`: the sim-first gate a policy must pass before a hardware runner may load it.

The policy runs in the onboard `Runner` over the same drivers a robot uses (MuJoCo, nominal and shifted
dynamics), not in a separate evaluation loop, so what is judged is what would be deployed: the safety
envelope, the policy step, the executed actions. Each episode gets its own seed, identical for the
candidate and the reference, so the comparison is paired. Verdict: absolute thresholds (return per variant,
success, safety events) and a one-sided paired-bootstrap bound against the reference policy, all from
`configs/validate.yaml`. Writes `report.json` and `report.png`; exit 0 pass, 1 fail, 2 bad input.
Robot side: numpy, onnxruntime, mujoco; never torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from robot_wsrl.core.driver import Driver, DriverFault, StepResult
from robot_wsrl.core.files import write_atomic
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.gate.registry import (
    PLOT_NAME,
    REPORT_NAME,
    VALIDATION_DIR,
    load_trusted,
    policy_file,
    require_trusted,
)
from robot_wsrl.learn.config import CONFIG_DIR, EnvConfig
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner
from robot_wsrl.robot.safety import SafetyConfig
from robot_wsrl.sim.shift import preset_names

REPORT_FORMAT = "robot-wsrl-validation/1"
MIN_PAIRED_EPISODES = 3  # a confidence bound over fewer paired episodes would be a single-episode verdict
BOOTSTRAP_SEED = 0


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
    margin: float = 0.05
    confidence: float = 0.95
    resamples: int = 10_000


@dataclass
class ValidateConfig:
    env: str | None = None
    variants: list[str] = field(default_factory=lambda: ["nominal", "real_mild", "real"])
    episodes: int = 10
    seed: int = 1000
    deterministic: bool = True
    max_episode_steps: int | None = None
    max_delta_per_step: float | None = None
    success_return: dict[str, float] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    def check(self) -> None:
        t, r = self.thresholds, self.reference
        problems = {
            "variants must be a non-empty list without repeats": bool(self.variants)
            and len(set(self.variants)) == len(self.variants),
            "episodes must be positive": self.episodes > 0,
            "max_episode_steps must be positive": self.max_episode_steps is None
            or self.max_episode_steps > 0,
            "max_delta_per_step must be positive": self.max_delta_per_step is None
            or self.max_delta_per_step > 0,
            "thresholds.min_return names variants that are not validated": set(t.min_return)
            <= set(self.variants),
            "thresholds.min_success_rate must be in [0, 1]": t.min_success_rate is None
            or 0.0 <= t.min_success_rate <= 1.0,
            "thresholds.max_faults must be >= 0": t.max_faults >= 0,
            "thresholds fractions must be in [0, 1]": 0.0 <= t.max_clipped_fraction <= 1.0
            and 0.0 <= t.max_rate_limited_fraction <= 1.0,
            "reference.margin must be >= 0": r.margin >= 0,
            "reference.confidence must be in (0.5, 1)": 0.5 < r.confidence < 1.0,
            "reference.resamples must be >= 100": r.resamples >= 100,
        }
        bad = [msg for msg, ok in problems.items() if not ok]
        if bad:
            raise ValueError("validate config: " + "; ".join(bad))


def load_config(config_file: Path | None = None, overrides: list[str] | None = None) -> ValidateConfig:
    """configs/validate.yaml, then `config_file` merged over it, then `key=value` overrides; typed."""
    try:
        layers = [OmegaConf.structured(ValidateConfig), OmegaConf.load(CONFIG_DIR / "validate.yaml")]
        if config_file is not None:
            layers.append(OmegaConf.load(config_file))
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        cfg: ValidateConfig = OmegaConf.to_object(OmegaConf.merge(*layers))  # type: ignore[assignment]
    except (OmegaConfBaseException, OSError) as exc:
        raise ValueError(f"validate config: {exc}".splitlines()[0]) from exc
    cfg.check()
    return cfg


def resolve_env(cfg: ValidateConfig, spec: EnvSpec) -> EnvConfig:
    """The env config named by `cfg.env`, or the one whose driver runs the policy's spec (gym:NAME)."""
    env_dir = CONFIG_DIR / "env"
    if cfg.env is not None:
        path = env_dir / f"{cfg.env}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in env_dir.glob("*.yaml"))
            raise ValueError(f"no env config {cfg.env!r} in {env_dir} (known: {known})")
        candidates = [path]
    else:
        candidates = [
            p for p in sorted(env_dir.glob("*.yaml")) if OmegaConf.load(p).get("driver") == f"gym:{spec.name}"
        ]
        if not candidates:
            raise ValueError(f"no env config in {env_dir} drives {spec.name!r}: pass env=NAME")
    return OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(EnvConfig), OmegaConf.load(candidates[0]))
    )  # type: ignore[return-value]


# ----- running episodes -----


class TimedPolicy(OnnxPolicy):
    """An OnnxPolicy that records how long each `act` takes: the onboard policy step, timed in the loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_ns: list[int] = []

    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        start = time.perf_counter_ns()
        action = super().act(obs, deterministic)
        self.step_ns.append(time.perf_counter_ns() - start)
        return action


class _EndRunOnStop:
    """The driver as is, except that its safe stop also ends the runner's run: after an e-stop the episode
    is over for validation, and an idle latched loop would only burn its remaining ticks."""

    def __init__(self, driver: Driver, stop: threading.Event) -> None:
        self._driver, self._stop = driver, stop
        self.spec = driver.spec

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return self._driver.reset(seed=seed)

    def step(self, action: np.ndarray) -> StepResult:
        return self._driver.step(action)

    def safe_stop(self) -> None:
        self._stop.set()
        self._driver.safe_stop()

    def close(self) -> None:
        self._driver.close()


@dataclass(frozen=True)
class Episode:
    seed: int
    ret: float
    steps: int
    end: str  # "time limit", "terminated", or "e-stop (cause): detail"
    success: bool | None
    safety: dict[str, int]  # the runner's envelope counters, plus "estops"

    @property
    def faults(self) -> int:
        s = self.safety
        return s["nonfinite_obs"] + s["nonfinite_action"] + s["limit_violations"] + s["estops"]


@dataclass(frozen=True)
class Setup:
    """Everything that decides an episode's outcome besides the policy: equal setups give equal episodes."""

    driver: str
    max_episode_steps: int
    variants: list[str]
    episodes: int
    seed: int
    deterministic: bool
    max_delta_per_step: float | None
    success_return: float | None

    @classmethod
    def of(cls, cfg: ValidateConfig, env: EnvConfig) -> Setup:
        steps = cfg.max_episode_steps or env.max_episode_steps
        if steps is None:
            raise ValueError(f"env {env.name!r} has no max_episode_steps: set max_episode_steps")
        unknown = sorted(set(cfg.variants) - set(preset_names()))
        if unknown:
            raise ValueError(f"variants {unknown} are not shift presets (configs/shift/: {preset_names()})")
        success = cfg.success_return.get(env.name)
        return cls(
            env.driver, steps, list(cfg.variants), cfg.episodes, cfg.seed, cfg.deterministic,
            cfg.max_delta_per_step, success,
        )  # fmt: skip


def run_episode(driver: Driver, policy: TimedPolicy, setup: Setup, seed: int) -> Episode:
    """One episode through a fresh Runner (its own envelope counters, the driver reset with `seed`)."""
    stop = threading.Event()
    runner = Runner(
        _EndRunOnStop(driver, stop),
        policy,
        deterministic=setup.deterministic,
        seed=seed,
        safety=SafetyConfig(max_delta_per_step=setup.max_delta_per_step),
        realtime=False,
        transition_buffer=1,
    )
    status = runner.run(max_steps=setup.max_episode_steps, max_episodes=1, stop_event=stop)
    latched = runner.latch.latched
    if latched:
        end = f"e-stop ({status['last_stop_cause']}): {status['last_stop_detail']}"
        ret = float(status["episode_return"])
    else:
        last = runner.transitions[-1] if runner.transitions else None
        end = "terminated" if last is not None and last.terminated else "time limit"
        ret = float(status["last_episode_return"] if status["episodes_done"] else status["episode_return"])
    success = None if setup.success_return is None else (not latched and ret >= setup.success_return)
    safety = {**status["safety"], "estops": int(latched)}
    return Episode(seed, ret, int(status["steps"]), end, success, safety)


@dataclass
class VariantResult:
    episodes: list[Episode]
    step_us: list[float]  # policy step durations, microseconds

    def summary(self) -> dict[str, Any]:
        returns = np.array([e.ret for e in self.episodes])
        steps = sum(e.steps for e in self.episodes)
        safety = {k: sum(e.safety[k] for e in self.episodes) for k in self.episodes[0].safety}
        successes = [e.success for e in self.episodes]
        lat = np.array(self.step_us) if self.step_us else np.array([np.nan])
        return {
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "returns": returns.tolist(),
            "steps": steps,
            "success_rate": None if successes[0] is None else float(np.mean(successes)),
            "safety": safety,
            "faults": sum(e.faults for e in self.episodes),
            "clipped_fraction": safety["clipped"] / max(steps, 1),
            "rate_limited_fraction": safety["rate_limited"] / max(steps, 1),
            "step_latency_us": {
                "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)),
                "max": float(lat.max()),
            },
            "episodes": [asdict(e) for e in self.episodes],
        }


def measure(policy_path: Path, setup: Setup, label: str) -> dict[str, Any]:
    """Run the policy for `setup.episodes` episodes on every variant; per-episode progress on stderr."""
    policy: TimedPolicy = TimedPolicy.load(policy_path)  # type: ignore[assignment]
    results = {}
    for variant in setup.variants:
        driver = make_driver(
            setup.driver, seed=setup.seed, max_episode_steps=setup.max_episode_steps, shift_preset=variant
        )
        try:
            policy.validate(driver.spec)
            policy.step_ns.clear()
            episodes = []
            for i in range(setup.episodes):
                episode = run_episode(driver, policy, setup, setup.seed + i)
                episodes.append(episode)
                print(
                    f"validate {label:<9} v{policy.version} {variant:<9} episode {i + 1}/{setup.episodes} "
                    f"seed {episode.seed}: return {episode.ret:9.2f} in {episode.steps} steps, "
                    f"{episode.end}, faults {episode.faults}",
                    file=sys.stderr,
                    flush=True,
                )
            results[variant] = VariantResult(episodes, [ns / 1e3 for ns in policy.step_ns]).summary()
        finally:
            driver.close()
    return {
        "path": str(policy_path),
        "sha256": policy.sha256,
        "version": policy.version,
        "parent_version": policy.metadata.parent_version,
        "step": policy.metadata.step,
        "variants": results,
    }


# ----- the verdict -----


def paired_lower_bound(
    candidate: np.ndarray, reference: np.ndarray, confidence: float, resamples: int
) -> float:
    """One-sided bootstrap lower confidence bound of mean(candidate - reference) over paired episodes."""
    diff = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(np.quantile(means, 1.0 - confidence))


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def judge(cfg: ValidateConfig, candidate: dict[str, Any], reference: dict[str, Any] | None) -> list[Check]:
    """Every check of the gate, passed or not, so a report says why as well as whether."""
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
                    "thresholds.min_success_rate is set but success_return names no return for this env"
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
        if reference is not None:
            r = reference["variants"][variant]
            bound = paired_lower_bound(
                np.array(c["returns"]),
                np.array(r["returns"]),
                cfg.reference.confidence,
                cfg.reference.resamples,
            )
            allowed = -cfg.reference.margin * abs(r["return_mean"])
            checks.append(
                Check(
                    f"vs_reference[{variant}]",
                    bound >= allowed,
                    f"mean difference {c['return_mean'] - r['return_mean']:+.2f}, "
                    f"{cfg.reference.confidence:.0%} lower bound {bound:+.2f} vs allowed {allowed:+.2f} "
                    f"(reference mean {r['return_mean']:.2f})",
                )
            )
    return checks


# ----- the whole gate -----


def _reusable(reference: Path, setup: Setup) -> dict[str, Any] | None:
    """The reference's own measurement from its validation report, if it measured these exact bytes with
    this exact setup (the episodes are deterministic given both, so running them again changes nothing)."""
    path = reference.parent / VALIDATION_DIR / REPORT_NAME
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    own = report.get("candidate") if isinstance(report, dict) else None
    sha = hashlib.sha256(reference.read_bytes()).hexdigest()
    if not isinstance(own, dict) or own.get("sha256") != sha or report.get("setup") != asdict(setup):
        return None
    return {**own, "reused_from": str(path)}


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
    setup = Setup.of(cfg, env)
    if ref is not None:
        if setup.episodes < MIN_PAIRED_EPISODES:
            raise ValueError(f"comparing with a reference needs episodes >= {MIN_PAIRED_EPISODES}")
        OnnxPolicy.load(ref, expected_spec=spec)
    cand_result = {**measure(cand, setup, "candidate"), "signature": trust[cand].state}
    ref_result = None
    if ref is not None:
        ref_result = {
            **(_reusable(ref, setup) or measure(ref, setup, "reference")),
            "signature": trust[ref].state,
        }
    checks = judge(cfg, cand_result, ref_result)
    report = {
        "format": REPORT_FORMAT,
        "passed": all(c.passed for c in checks),
        "reasons": [f"{c.name}: {c.detail}" for c in checks if not c.passed],
        "checks": [asdict(c) for c in checks],
        "env": env.name,
        "setup": asdict(setup),
        "thresholds": asdict(cfg.thresholds),
        "reference_test": asdict(cfg.reference),
        "candidate": cand_result,
        "reference": ref_result,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - started, 3),
    }
    out = cand.parent / VALIDATION_DIR if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT_NAME, (json.dumps(report, indent=2) + "\n").encode())
    plot_report(report, out / PLOT_NAME)
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


def _print_summary(report: dict[str, Any], out: Path) -> None:
    ref = report["reference"]
    for variant, c in report["candidate"]["variants"].items():
        line = f"  {variant:<10} candidate {c['return_mean']:9.2f} ± {c['return_std']:7.2f}"
        if ref is not None:
            r = ref["variants"][variant]
            line += f" | reference {r['return_mean']:9.2f} ± {r['return_std']:7.2f}"
        if c["success_rate"] is not None:
            line += f" | success {c['success_rate']:.0%}"
        lat = c["step_latency_us"]
        line += f" | faults {c['faults']} | policy step p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} us"
        print(line)
    for reason in report["reasons"]:
        print(f"  FAILED {reason}")
    print(f"{'PASS' if report['passed'] else 'FAIL'}: {out / REPORT_NAME}, {out / PLOT_NAME}")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robot-wsrl validate",
        description="Validate a policy in simulation before it may reach hardware: the onboard runner on "
        "nominal and shifted MuJoCo, against thresholds and the deployed reference (configs/validate.yaml). "
        "Exit 0 on pass, 1 on fail, 2 on bad input.",
    )
    parser.add_argument("policy", type=Path, help="DIR/policy.onnx or DIR (with its policy.json)")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides key=value, e.g. episodes=20 env=hopper"
    )
    parser.add_argument("--reference", type=Path, default=None, help="the deployed policy to compare with")
    parser.add_argument("--config", type=Path, default=None, help="YAML merged over configs/validate.yaml")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"report folder (default: DIR/{VALIDATION_DIR})"
    )
    parser.add_argument("--keys", type=Path, default=None, help="key dir whose *.sign.pub verify signatures")
    parser.add_argument("--allow-unsigned", action="store_true", help="accept policies without policy.sig")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        report = validate(
            args.policy, args.reference, cfg, args.out, keydir=args.keys, allow_unsigned=args.allow_unsigned
        )
    except (ValueError, OSError, ImportError, DriverFault) as exc:
        print(f"robot-wsrl validate: {exc}", file=sys.stderr)
        return 2
    _print_summary(report, args.out or policy_file(args.policy).parent / VALIDATION_DIR)
    return 0 if report["passed"] else 1
