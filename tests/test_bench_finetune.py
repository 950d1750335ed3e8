"""`robot-wsrl bench finetune` plumbing at tiny scale: one process per run, every output file, peak RSS.

Measures nothing: the numbers come from a few hundred steps of tiny networks on InvertedPendulum.
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import matplotlib.image as mpimg
import pytest
from helpers import SMALL_AGENT

from robot_wsrl.bench import cli as bench_cli
from robot_wsrl.bench.finetune import Run, _variant_summary, load_config, run_finetune_benchmark
from robot_wsrl.core.paths import REPO_ROOT
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.pretrain import pretrain

SEEDS, STEPS, WARMUP, LOG_EVERY, EVAL_EVERY = (0, 1), 100, 40, 10, 50
VARIANTS = ("wsrl", "retain_offline", "frozen", "guarded")
SWEEP_SIZES = (500, 2000)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def checkpoint(tmp_path, pendulum_dataset):
    """A tiny CQL checkpoint of the same shape as the benchmark's agent (a few updates suffice)."""
    overrides = ["env=inverted_pendulum", *SMALL_AGENT, f"run.dataset={pendulum_dataset}", "run.steps=5"]
    cfg = compose_config("pretrain", [*overrides, "run.eval_every=0", f"out_dir={tmp_path / 'pre'}"])
    return pretrain(cfg)["checkpoint"]


def _bench_overrides(tmp_path, checkpoint, dataset) -> list[str]:
    return [
        "env=inverted_pendulum",
        "shift=real",
        f"checkpoint={checkpoint}",
        f"dataset={dataset}",
        f"steps={STEPS}",
        f"warmup={WARMUP}",
        f"seeds=[{','.join(map(str, SEEDS))}]",
        f"eval_every={EVAL_EVERY}",
        "eval_episodes=1",
        f"log_every={LOG_EVERY}",
        "device=cpu",
        "jobs=2",
        "timeout_s=120",
        f"out={tmp_path / 'bench'}",
        f"include=[{','.join(VARIANTS)}]",
        "finetune.env.max_episode_steps=100",
        *(f"finetune.{o}" for o in SMALL_AGENT),
        f"memory_sweep.sizes=[{','.join(map(str, SWEEP_SIZES))}]",
        "memory_sweep.steps=60",
        "memory_sweep.warmup=20",
        "gate_every=20",
        "gate_episodes=8",
    ]


def test_bench_finetune_tiny_scale_writes_every_output(tmp_path, checkpoint, pendulum_dataset):
    result = run_finetune_benchmark(load_config(_bench_overrides(tmp_path, checkpoint, pendulum_dataset)))
    out = tmp_path / "bench"
    assert result["failed"] == []

    curves = _rows(out / "curves.csv")
    assert list(curves[0]) == ["variant", "seed", "step", "return"]
    assert len(curves) == len(VARIANTS) * len(SEEDS) * (STEPS // EVAL_EVERY + 1)  # + the step-0 eval

    q_trace = _rows(out / "q_trace.csv")
    assert list(q_trace[0]) == ["variant", "seed", "step", "phase", "updates", "q_online", "q_mean"]
    assert len(q_trace) == len(VARIANTS) * len(SEEDS) * (STEPS // LOG_EVERY)
    assert all(row["q_online"] for row in q_trace)  # logged in warmup too: the trace spans the switch
    wsrl_online = [r for r in q_trace if r["variant"] == "wsrl" and r["phase"] == "online"]
    assert wsrl_online and all(r["q_mean"] for r in wsrl_online)
    assert {r["phase"] for r in q_trace if r["variant"] == "frozen"} == {"warmup"}

    memory = _rows(out / "memory.csv")
    assert list(memory[0]) == ["variant", "seed", "peak_rss_mb", "wall_s"]
    assert len(memory) == len(VARIANTS) * len(SEEDS)
    sweep = _rows(out / "memory_sweep.csv")
    assert list(sweep[0]) == ["dataset_size", "variant", "peak_rss_mb", "wall_s"]
    assert sorted((int(r["dataset_size"]), r["variant"]) for r in sweep) == sorted(
        (n, v) for n in SWEEP_SIZES for v in ("wsrl", "retain_offline")
    )
    assert all(float(r["peak_rss_mb"]) > 0 for r in [*memory, *sweep])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["variants"]["frozen"]["updates"] == [0] * len(SEEDS)  # the pre-trained policy as is
    assert all(u == STEPS - WARMUP + 1 for u in summary["variants"]["wsrl"]["updates"])
    wsrl, frozen = summary["variants"]["wsrl"], summary["variants"]["frozen"]
    assert wsrl["lowest_after_switch_mean"] <= wsrl["final_mean"]  # the final eval is one
    assert frozen["lowest_after_switch_mean"] is None and frozen["initial_mean"] > 0  # no dip: null, not NaN
    low, high = wsrl["final_ci95"]
    assert wsrl["seeds"] == list(SEEDS) and low <= wsrl["final_mean"] <= high
    reproduction = json.loads((out / "reproduction.json").read_text())
    assert set(reproduction["variants"]) == set(VARIANTS)
    keys = {"final_mean", "final_ci95", "lowest_after_switch_mean", "seeds"}
    assert set(reproduction["variants"]["wsrl"]) >= keys
    ratio = wsrl["final_mean"] / frozen["final_mean"]
    assert reproduction["targets"]["wsrl_over_frozen"] == pytest.approx(ratio)
    assert set(summary["memory_growth_mb"]) == {"wsrl", "retain_offline"}
    assert f"{STEPS} steps" in summary["scale"] and "2 seeds" in summary["scale"]
    assert "4 critics 32x32" in summary["scale"] and "device: cpu" in summary["scale"]

    guarded = summary["guarded"]  # what the robot ran, guarded vs unguarded, per seed
    assert set(guarded["seeds"]) == {str(s) for s in SEEDS}
    assert all(math.isfinite(s["lowest_relative"]) for s in guarded["seeds"].values())
    for name in ("learning_curves.png", "q_trace.png", "memory_sweep.png", "deployed_returns.png"):
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # Run again with one variant changed: only its runs are repeated, every other finished run is reused.
    logs = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/seed*/process.log")}
    again = run_finetune_benchmark(
        load_config([*_bench_overrides(tmp_path, checkpoint, pendulum_dataset), "gate_every=25"])
    )
    assert again["failed"] == [] and set(again["variants"]) == set(VARIANTS)
    rerun = {path.parts[-3] for path in logs if path.stat().st_mtime_ns != logs[path]}
    assert rerun == {"guarded"}
    kept = [r for r in memory if r["variant"] != "guarded"]  # the reused runs keep their recorded figures
    assert [r for r in _rows(out / "memory.csv") if r["variant"] != "guarded"] == kept


def test_retain_offline_without_a_dataset_is_refused_before_any_run(tmp_path):
    cfg = load_config(["include=[wsrl,retain_offline]", f"out={tmp_path}"])
    with pytest.raises(ValueError, match=r"retain_offline.*dataset=FILE"):
        run_finetune_benchmark(cfg)
    assert not (tmp_path / "runs").exists()


def test_benchmarks_without_a_config_refuse_overrides(capsys):
    with pytest.raises(SystemExit):
        bench_cli(["runner", "steps=10"])
    assert "takes no overrides" in capsys.readouterr().err


def test_no_logged_rows_still_plots_and_prints_json(tmp_path, checkpoint, pendulum_dataset, capsys):
    # No evaluations (eval_every=0) and fewer steps than log_every: both curves' streams are empty.
    tiny = ["include=[wsrl]", "steps=60", "warmup=10", "seeds=[0]", "eval_every=0", "log_every=1000"]
    overrides = [*_bench_overrides(tmp_path, checkpoint, pendulum_dataset), *tiny, "memory_sweep.sizes=[]"]
    argv = ["finetune", *overrides, "--json"]
    assert bench_cli(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["failed"] == [] and result["variants"]["wsrl"]["updates"][0] > 0
    for name in ("learning_curves.png", "q_trace.png", "memory_sweep.png"):
        assert mpimg.imread(tmp_path / "bench" / name).ndim == 3


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line holds `text`."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if entry.isdigit() and text.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_sigterm_ends_the_running_children_and_removes_the_temporary_folder(tmp_path):
    out, tmp = tmp_path / "bench", tmp_path / "tmp"
    tmp.mkdir()
    argv = [  # the memory sweep only: one long run on a synthetic dataset in a temporary folder
        "include=[]",
        "memory_sweep.sizes=[500]",
        "memory_sweep.variants=[wsrl]",
        "memory_sweep.steps=1000000",
        "memory_sweep.warmup=1000000",
        "device=cpu",
        f"out={out}",
    ]
    bench = subprocess.Popen(
        [sys.executable, "-m", "robot_wsrl.apps.cli", "bench", "finetune", *argv],
        cwd=REPO_ROOT,
        env={**os.environ, "TMPDIR": str(tmp), "MUJOCO_GL": "disable"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_dir = str(out / "sweep" / "wsrl" / "n500")
        children = _until(lambda: [p for p in _processes_naming(run_dir) if p != bench.pid], 300, "the run")
        assert [p.name for p in tmp.iterdir()]  # the sweep's dataset folder, while it runs
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(timeout=30)
        for pid in _processes_naming(str(out)):  # only on a failure: leave nothing running
            os.kill(pid, signal.SIGKILL)
    assert bench.returncode == 1 and "stopped by a signal" in err, err
    _until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), 30, "the children to end")
    assert not _processes_naming(run_dir)
    assert list(tmp.iterdir()) == []


def _fake_run(tmp_path, variant, seed, successes):
    """A finished run folder whose eval.csv has a success column (a camera task's), one row per entry."""
    out = tmp_path / f"{variant}-{seed}"
    out.mkdir()
    with open(out / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "phase", "return_mean", "success_rate"])
        for i, success in enumerate(successes):
            writer.writerow([i * 10, "warmup" if i == 0 else "online", -10.0 + i, success])
    final = {"return_mean": -10.0 + len(successes) - 1, "success_rate": successes[-1]}
    (out / "summary.json").write_text(json.dumps({"final_eval": final, "updates": 5}))
    return Run(variant, seed, [], out, returncode=0)


def test_a_task_with_a_success_signal_reports_success_before_and_after(tmp_path):
    runs = [_fake_run(tmp_path, "wsrl", seed, [0.2, 0.1, s]) for seed, s in enumerate((0.6, 0.8, 0.7))]
    composed = compose_config("finetune", ["env=inverted_pendulum"])
    summary = _variant_summary("wsrl", runs, composed)
    assert summary["initial_success_mean"] == pytest.approx(0.2)
    assert summary["final_success_mean"] == pytest.approx(0.7)
    assert summary["final_success_per_seed"] == pytest.approx([0.6, 0.8, 0.7])
    low, high = summary["final_success_ci95"]
    assert 0.6 <= low <= 0.7 <= high <= 0.8 + 1e-9
    plain = _fake_run(tmp_path, "frozen", 0, [""])  # no success signal: no success keys
    assert "final_success_mean" not in _variant_summary("frozen", [plain], composed)
