"""Fine-tuning benchmark: WSRL against its baselines on a shifted robot, and learner memory vs dataset size.

Every (variant, seed) is a `robot-wsrl finetune` run in its own process, so that the peak RSS the kernel
reports for it (wait4's rusage, see `_LAUNCHER`) is the run's own, even with several runs at once.
Variants are data: a name and its finetune overrides (configs/bench/finetune.yaml). The memory sweep
checks the point of WSRL (DESIGN §6): the learner's memory does not grow with the offline dataset,
because WSRL never loads it, while the retain-offline baseline holds all of it.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from robot_wsrl import bench
from robot_wsrl.bench.deployed import compare as compare_deployed
from robot_wsrl.bench.intervals import bootstrap_ci, iqm
from robot_wsrl.core.artifacts import SUMMARY
from robot_wsrl.core.lifetime import stop_on_signals
from robot_wsrl.core.paths import CONFIG_DIR, repo_path
from robot_wsrl.learn.config import Config, compose_config

BENCH_CONFIG = CONFIG_DIR / "bench" / "finetune.yaml"


REPRODUCTION = "reproduction.json"  # the headline per variant and the targets (benchmarks/results/)
RUN_RECORD = "bench-run.json"  # a finished run's overrides and outcome: an identical run is not repeated


@dataclass(eq=False)  # identity: runs key the table of running processes
class Run:
    """One finetune process and what the kernel and its files tell about it."""

    variant: str
    seed: int
    overrides: list[str]
    out_dir: Path
    dataset_size: int = 0
    returncode: int | None = None
    peak_rss_mb: float = float("nan")
    wall_s: float = float("nan")
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def rows(self, stream: str) -> list[dict[str, str]]:
        path = self.out_dir / f"{stream}.csv"
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    def summary(self) -> dict[str, Any]:
        return json.loads((self.out_dir / SUMMARY).read_text())


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """configs/bench/finetune.yaml with command-line `KEY=VALUE` overrides: its keys, but any finetune key
    under `finetune` (composed per run) and new variants under `variants`."""
    return bench.load_config(BENCH_CONFIG, list(overrides or []), free=("finetune", "variants"))


def main(overrides: list[str]) -> dict[str, Any]:
    """The `robot-wsrl bench finetune [KEY=VALUE ...]` entry point."""
    return run_finetune_benchmark(load_config(overrides))


def run_finetune_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Run every included variant for every seed, then the memory sweep; write CSVs, PNGs, summary.json."""
    cfg = _with_absolute_paths(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {name: _check_variant(cfg, name) for name in cfg.include}
    for name in cfg.memory_sweep.variants:
        _known_variant(cfg, name)
    runs = [
        Run(name, int(seed), _overrides(cfg, name, seed, run_dir), run_dir)
        for name in cfg.include
        for seed in cfg.seeds
        for run_dir in [out / "runs" / name / f"seed{seed}"]
    ]
    with _stopped_by_signals() as stop:
        _run_all(runs, int(cfg.jobs), float(cfg.timeout_s), stop)
        sweep = _memory_sweep(cfg, out, stop)

    device = _device_label(str(cfg.device))
    reference = compose_config("finetune", _overrides(cfg, None, 0, out))  # the common scale, no variant
    label = _scale_label(cfg, reference, device, cfg.steps, cfg.warmup, len(cfg.seeds))
    sweep_label = _scale_label(cfg, reference, device, cfg.memory_sweep.steps, cfg.memory_sweep.warmup, 1)
    done = [r for r in runs if r.ok]
    _write_csv(out / "curves.csv", ["variant", "seed", "step", "return"], _curve_rows(done))
    _write_csv(
        out / "q_trace.csv",
        ["variant", "seed", "step", "phase", "updates", "q_online", "q_mean"],
        _q_rows(done),
    )
    _write_csv(
        out / "memory.csv",
        ["variant", "seed", "peak_rss_mb", "wall_s"],
        [[r.variant, r.seed, r.peak_rss_mb, r.wall_s] for r in runs],
    )
    _write_csv(
        out / "memory_sweep.csv",
        ["dataset_size", "variant", "peak_rss_mb", "wall_s"],
        [[r.dataset_size, r.variant, r.peak_rss_mb, r.wall_s] for r in sweep],
    )
    _plot(out, cfg, (label, sweep_label), done, sweep)

    result: dict[str, Any] = {
        "out": str(out),
        "device": device,
        "scale": label,
        "variants": {name: _variant_summary(name, done, resolved[name]) for name in cfg.include},
        "memory_sweep_mb": {
            name: {str(r.dataset_size): r.peak_rss_mb for r in sweep if r.variant == name}
            for name in cfg.memory_sweep.variants
        },
        "memory_growth_mb": _growth(sweep),
        "guarded": compare_deployed(out, [int(s) for s in cfg.seeds], int(cfg.warmup), label),
        "failed": [
            {
                "variant": r.variant,
                "seed": r.seed,
                "returncode": r.returncode,
                "timed_out": r.timed_out,
                "log": str(r.out_dir / "process.log"),
            }
            for r in [*runs, *sweep]
            if not r.ok
        ],
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    for name, content in (("summary.json", result), (REPRODUCTION, _reproduction(result))):
        (out / name).write_text(json.dumps(_strict(content), indent=2, default=float, allow_nan=False) + "\n")
    return result


# ---- configuration ------------------------------------------------------------------------------------


def _with_absolute_paths(cfg: DictConfig) -> DictConfig:
    """Runs may start elsewhere: checkpoint and dataset are found from the cwd, then from the repo root."""
    cfg = cfg.copy()
    for key in ("checkpoint", "dataset"):
        if cfg[key] is not None:
            cfg[key] = str(repo_path(cfg[key]))
    cfg.out = str(Path(cfg.out).resolve())
    return cfg


def _value(value: Any) -> str:
    """A Hydra override value: strings as they are, everything else as compact JSON (lists, null, true)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _flatten(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): _value(node)}


def _overrides(
    cfg: DictConfig, variant: str | None, seed: int, out_dir: Path, extra: dict[str, Any] | None = None
) -> list[str]:
    """Common settings, then `cfg.finetune`, then the variant's own (if any): a later value of a key wins."""
    common = {
        "env": cfg.env,
        "env.shift": cfg.shift,
        "run.checkpoint": cfg.checkpoint,
        "run.steps": cfg.steps,
        "run.warmup_steps": cfg.warmup,
        "run.eval_every": cfg.eval_every,
        "run.eval_episodes": cfg.eval_episodes,
        "run.log_every": cfg.log_every,
        "seed": seed,
        "device": cfg.device,
        "out_dir": str(out_dir),
        **(extra or {}),
    }
    merged = {key: _value(value) for key, value in common.items()}
    merged.update(_flatten(OmegaConf.to_container(cfg.finetune, resolve=True)))
    for override in OmegaConf.to_container(cfg.variants[variant], resolve=True) if variant else []:
        key, value = str(override).split("=", 1)
        merged[key] = value
    return [f"{key}={value}" for key, value in merged.items()]


def _check_variant(cfg: DictConfig, name: str) -> Config:
    """Compose the variant's finetune config here, so a bad override fails before hours of other runs."""
    _known_variant(cfg, name)
    composed = compose_config("finetune", _overrides(cfg, name, 0, Path(cfg.out)))
    if composed.run.offline_ratio > 0 and not Path(str(composed.run.dataset)).is_file():
        raise ValueError(
            f"variant {name!r} retains offline data but dataset={cfg.dataset!r} is not a "
            "file; pass dataset=FILE (the checkpoint's offline dataset) or leave the variant out of include"
        )
    return composed


def _known_variant(cfg: DictConfig, name: str) -> None:
    if name not in cfg.variants:
        close = difflib.get_close_matches(name, list(cfg.variants), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown variant {name!r}{hint}; defined: {', '.join(cfg.variants)}")


# ---- processes ----------------------------------------------------------------------------------------


# Linux charges a child the RSS of the process it was forked from (the pre-exec image counts towards its
# ru_maxrss), so a run forked from this process would report at least this process's size. A bare
# interpreter (a few MB) forks the run instead and writes the run's own peak (KiB) to a file.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the event `_run_all` watches, so the benchmark ends its runs and unwinds
    (the memory sweep's temporary folder is removed) instead of dying with its runs left behind."""
    stop = threading.Event()
    previous = stop_on_signals([stop])
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_all(runs: list[Run], jobs: int, timeout_s: float, stop: threading.Event) -> None:
    """Run `jobs` finetune processes at a time, each started by `_LAUNCHER`; a run past `timeout_s` is
    killed with its launcher (one process group). When `stop` is set, or anything goes wrong here, the
    running ones are killed the same way and the benchmark exits."""
    pending = [run for run in runs if not _reuse(run)]
    running: dict[Run, tuple[subprocess.Popen, float]] = {}
    try:
        _supervise(pending, running, jobs, timeout_s, stop)
    finally:
        for proc, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _supervise(
    pending: list[Run],
    running: dict[Run, tuple[subprocess.Popen, float]],
    jobs: int,
    timeout_s: float,
    stop: threading.Event,
) -> None:
    while pending or running:
        if stop.is_set():
            raise SystemExit("robot-wsrl bench finetune: stopped by a signal; its running runs were killed")
        while pending and len(running) < max(1, jobs):
            run = pending.pop(0)
            shutil.rmtree(run.out_dir, ignore_errors=True)  # a run repeated starts clean: no rows appended
            run.out_dir.mkdir(parents=True)
            command = [sys.executable, "-m", "robot_wsrl.apps.cli", "finetune", *run.overrides]
            with (run.out_dir / "process.log").open("w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-S", "-c", _LAUNCHER, str(run.out_dir / "peak_rss_kib"), *command],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            running[run] = (proc, time.monotonic())
        for run, (proc, started) in list(running.items()):
            if proc.poll() is None:
                if time.monotonic() - started > timeout_s and not run.timed_out:
                    run.timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                continue
            run.returncode, run.wall_s = proc.returncode, time.monotonic() - started
            peak = run.out_dir / "peak_rss_kib"
            if peak.is_file():  # absent when the launcher itself was killed
                run.peak_rss_mb = int(peak.read_text()) / 1024.0
            record = {"overrides": run.overrides, "returncode": run.returncode, "wall_s": run.wall_s}
            (run.out_dir / RUN_RECORD).write_text(json.dumps(record) + "\n")
            del running[run]
        time.sleep(0.05)


def _reuse(run: Run) -> bool:
    """A run finished earlier with exactly these overrides (the benchmark was interrupted, or re-run with a
    variant changed) is taken as it is: its files are what a new run would write again."""
    path = run.out_dir / RUN_RECORD
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    if record.get("overrides") != run.overrides or record.get("returncode") != 0:
        return False
    run.returncode, run.wall_s = 0, float(record["wall_s"])
    peak = run.out_dir / "peak_rss_kib"
    run.peak_rss_mb = int(peak.read_text()) / 1024.0 if peak.is_file() else float("nan")
    return True


def _memory_sweep(cfg: DictConfig, out: Path, stop: threading.Event) -> list[Run]:
    """Short runs on synthetic env-shaped datasets of each size; every run is given the dataset path,
    only the variants with an offline ratio load it."""
    sweep_cfg = cfg.memory_sweep
    if not sweep_cfg.sizes:
        return []
    seed = int(cfg.seeds[0])
    spec = _env_spec(compose_config("finetune", [f"env={cfg.env}", f"env.shift={cfg.shift}"]))
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        for size in sweep_cfg.sizes:
            dataset = _synthetic_dataset(spec, int(size), Path(tmp) / f"synthetic-{size}.npz", seed)
            sized = OmegaConf.merge(cfg, {"dataset": str(dataset), "steps": sweep_cfg.steps})
            extra = {
                "run.dataset": str(dataset),
                "run.warmup_steps": sweep_cfg.warmup,
                "run.eval_every": 0,
                "run.log_every": sweep_cfg.steps,
            }
            batch = [
                Run(
                    name,
                    seed,
                    _overrides(sized, name, seed, out / "sweep" / name / f"n{size}", extra),
                    out / "sweep" / name / f"n{size}",
                    dataset_size=int(size),
                )
                for name in sweep_cfg.variants
            ]
            _run_all(batch, int(cfg.jobs), float(cfg.timeout_s), stop)
            runs += batch
            dataset.unlink()
    return runs


def _env_spec(composed: Config):
    from robot_wsrl.learn.envs import make_env

    env = make_env(composed.env, seed=0)
    try:
        return env.spec
    finally:
        env.close()


def _synthetic_dataset(spec, size: int, path: Path, seed: int) -> Path:
    """Random transitions shaped like the env's (actions inside its limits), 1,000-step episodes."""
    from robot_wsrl.learn.datasets import OfflineDataset, save_dataset

    rng = np.random.default_rng(seed)
    chain = rng.standard_normal((size + 1, spec.obs_dim), dtype=np.float32)
    index = np.arange(size)
    dataset = OfflineDataset(
        observations=chain[:-1],
        actions=rng.uniform(spec.low, spec.high, (size, spec.act_dim)).astype(np.float32),
        rewards=rng.standard_normal(size, dtype=np.float32),
        next_observations=chain[1:],
        terminals=np.zeros(size, bool),
        timeouts=(index % 1000 == 999) | (index == size - 1),
        source=str(path),
    )
    return save_dataset(path, dataset)


# ---- results ------------------------------------------------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _curve_rows(runs: list[Run]) -> list[list[Any]]:
    return [
        [r.variant, r.seed, int(e["step"]), float(e["return_mean"])] for r in runs for e in r.rows("eval")
    ]


def _q_rows(runs: list[Run]) -> list[list[Any]]:
    return [
        [r.variant, r.seed, int(t["step"]), t["phase"], int(t["updates"]), t["q_online"], t.get("q_mean", "")]
        for r in runs
        for t in r.rows("train")
    ]


def _variant_summary(name: str, runs: list[Run], composed: Config) -> dict[str, Any]:
    """Per variant, over seeds: the return before any update, the lowest evaluation after the switch to
    online updates (the dip the paper describes) and the final one, each mean with a 95% bootstrap
    interval over seeds (and the final IQM, robust to one diverged seed)."""
    mine = [r for r in runs if r.variant == name]
    finals = _finals(mine, "return_mean")
    evals = [r.rows("eval") for r in mine]
    online = [[float(e["return_mean"]) for e in rows if e["phase"] == "online"] for rows in evals]
    lowest = np.array([min(returns) for returns in online if returns])  # from the first update on
    summary = {
        "seeds": [r.seed for r in mine],
        "updates": [r.summary()["updates"] for r in mine],
        "initial_mean": _mean(_initials(evals, "return_mean")),
        "final_mean": _mean(finals),
        "final_ci95": list(bootstrap_ci(finals)),
        "final_iqm": iqm(finals),
        "final_per_seed": finals.tolist(),
        "lowest_after_switch_mean": _mean(lowest),
        "lowest_after_switch_ci95": list(bootstrap_ci(lowest)),
        "peak_rss_mb_max": max((r.peak_rss_mb for r in mine), default=float("nan")),
        "warmup_steps": composed.run.warmup_steps,
    }
    if any(_has_success(rows) for rows in evals):  # a task with a success signal (e.g. cam:reacher)
        success = _finals(mine, "success_rate")
        summary |= {
            "initial_success_mean": _mean(_initials(evals, "success_rate")),
            "final_success_mean": _mean(success),
            "final_success_ci95": list(bootstrap_ci(success)),
            "final_success_per_seed": success.tolist(),
        }
    return summary


def _finals(runs: list[Run], column: str) -> np.ndarray:
    return np.array([float(r.summary()["final_eval"].get(column, float("nan"))) for r in runs])


def _initials(evals: list[list[dict[str, str]]], column: str) -> np.ndarray:
    """`column` of each seed's evaluation before any update (step 0)."""
    return np.array(
        [float(e[column]) for rows in evals for e in rows if int(e["step"]) == 0 and e.get(column)]
    )


def _has_success(rows: list[dict[str, str]]) -> bool:
    return any(row.get("success_rate") for row in rows)


def _reproduction(result: dict[str, Any]) -> dict[str, Any]:
    """The paper's claims as checks on this run: WSRL ends at least as high as retaining the offline data
    and 1.3x above the frozen pre-trained policy; without warmup the post-switch dip is deeper."""
    keys = ("seeds", "final_mean", "final_ci95", "final_iqm", "lowest_after_switch_mean", "initial_mean")
    success_keys = ("initial_success_mean", "final_success_mean", "final_success_ci95")
    variants = {
        name: {key: v[key] for key in keys + success_keys if key in v}
        for name, v in result["variants"].items()
    }
    final = {name: v["final_mean"] for name, v in variants.items()}
    targets: dict[str, Any] = {}
    if {"wsrl", "retain_offline"} <= final.keys():
        targets["wsrl_final_ge_retain_offline"] = bool(final["wsrl"] >= final["retain_offline"])
    if {"wsrl", "frozen"} <= final.keys():
        targets["wsrl_over_frozen"] = final["wsrl"] / final["frozen"]
        targets["wsrl_over_frozen_ge_1_3"] = bool(targets["wsrl_over_frozen"] >= 1.3)
    if {"wsrl", "no_warmup"} <= final.keys():
        dips = {name: variants[name]["lowest_after_switch_mean"] for name in ("wsrl", "no_warmup")}
        targets["no_warmup_dip_deeper"] = bool(dips["no_warmup"] < dips["wsrl"])
    return {
        "scale": result["scale"],
        "device": result["device"],
        "variants": variants,
        "targets": targets,
        "memory_growth_mb": result["memory_growth_mb"],
    }


def _strict(node: Any) -> Any:
    """`node` with every non-finite float as null: NaN (a variant with no dip, a run that failed) is not
    JSON, and the tools that read these files parse strictly."""
    if isinstance(node, dict):
        return {key: _strict(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_strict(value) for value in node]
    if isinstance(node, float | np.floating) and not np.isfinite(node):
        return None
    return node


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def _growth(sweep: list[Run]) -> dict[str, float]:
    """Peak RSS at the largest dataset minus at the smallest, per variant: about 0 is WSRL's claim."""
    by_variant: dict[str, list[Run]] = defaultdict(list)
    for run in sweep:
        by_variant[run.variant].append(run)
    ordered = {name: sorted(rs, key=lambda r: r.dataset_size) for name, rs in by_variant.items()}
    return {name: rs[-1].peak_rss_mb - rs[0].peak_rss_mb for name, rs in ordered.items()}


def _device_label(device: str) -> str:
    from robot_wsrl.bench.machine import cpu_description
    from robot_wsrl.learn.networks import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        import torch

        return torch.cuda.get_device_name(dev)
    return f"cpu ({cpu_description()})"


def _scale_label(cfg: DictConfig, composed: Config, device: str, steps: int, warmup: int, seeds: int) -> str:
    """What every figure states: task and shift, steps, seeds, network size and device."""
    agent = composed.agent
    hidden = "x".join(str(h) for h in agent.critic_hidden)
    actor = "x".join(str(h) for h in agent.actor_hidden)
    return (
        f"{cfg.env} on shift '{cfg.shift}' | {steps:,} steps, warmup {warmup:,}, "
        f"{seeds} seed{'s' if seeds > 1 else ''} | {agent.num_critics} critics {hidden}, actor {actor}, "
        f"UTD {agent.utd}, batch {agent.batch_size} | device: {device}"
    )


def _by_step(runs: list[Run], stream: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps logged by every seed and a [seeds, steps] array of `column` there (NaN where blank)."""
    tables = [{int(row["step"]): float(row.get(column) or "nan") for row in r.rows(stream)} for r in runs]
    steps = sorted(set.intersection(*(set(t) for t in tables)))
    return np.array(steps), np.array([[t[s] for s in steps] for t in tables])


def _plot(out: Path, cfg: DictConfig, labels: tuple[str, str], runs: list[Run], sweep: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [
        ("eval", "return_mean", "evaluation return", "learning_curves.png"),
        ("train", "q_online", "mean Q on latest online transitions", "q_trace.png"),
    ]
    if any(_has_success(r.rows("eval")) for r in runs):
        figures.append(("eval", "success_rate", "evaluation success rate", "success_curves.png"))
    for stream, column, ylabel, name in figures:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for variant in cfg.include:
            mine = [r for r in runs if r.variant == variant]
            if not mine:
                continue
            steps, values = _by_step(mine, stream, column)
            if not steps.size:  # nothing logged: eval_every=0, or fewer steps than log_every
                continue
            mean = np.nanmean(values, axis=0)
            low, high = np.array([bootstrap_ci(at_step[~np.isnan(at_step)]) for at_step in values.T]).T
            ax.plot(steps, mean, label=f"{variant} (n={len(mine)})")
            ax.fill_between(steps, low, high, alpha=0.2)
        ax.axvline(cfg.warmup, color="grey", linestyle="--", label=f"end of warmup (K={cfg.warmup:,})")
        ax.set(xlabel="environment steps", ylabel=ylabel)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        _caption(fig, f"{ylabel}: mean over seeds, band: 95% bootstrap interval", labels[0])
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for variant in cfg.memory_sweep.variants:
        mine = sorted((r for r in sweep if r.variant == variant and r.ok), key=lambda r: r.dataset_size)
        ax.plot([r.dataset_size for r in mine], [r.peak_rss_mb for r in mine], marker="o", label=variant)
    ax.set(xscale="log", xlabel="offline dataset size (transitions)", ylabel="peak RSS of the run (MB)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    _caption(fig, "learner peak memory against offline dataset size (synthetic data)", labels[1])
    fig.savefig(out / "memory_sweep.png", dpi=120)
    plt.close(fig)


def _caption(fig: Any, title: str, label: str) -> None:
    fig.suptitle(title)
    fig.text(0.5, 0.01, label, ha="center", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
