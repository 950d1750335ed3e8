"""benchmarks/gpu/run.sh without a GPU: its syntax, the commands it would run (--dry-run), and the results
it gathers. Its shrunk run (--cpu-smoke) takes minutes on a busy 2-core machine, too long for the suite:
it is run by hand (benchmarks/gpu/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"


def _run(*args: str, python: str = sys.executable, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={"PATH": "/usr/bin:/bin", "PYTHON": python, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _commands(stdout: str) -> dict[str, str]:
    """Step name -> its command as printed (`+ [NAME] CMD`, a command's embedded script included)."""
    steps: dict[str, str] = {}
    name = None
    for line in stdout.splitlines():
        if line.startswith("+ ["):
            name, _, command = line[3:].partition("] ")
            steps[name] = command
        elif name is not None:
            steps[name] += "\n" + line
    return steps


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=30).returncode == 0


def test_unknown_argument_is_refused(tmp_path):
    ran = _run("--cpu-smok", "--out", str(tmp_path))
    assert ran.returncode == 2 and "unknown argument '--cpu-smok'" in ran.stderr


def test_gpu_dry_run_uses_the_paper_sizes_on_cuda(tmp_path):
    ran = _run("--dry-run", "--out", str(tmp_path / "out"))
    assert ran.returncode == 0, ran.stderr
    steps = _commands(ran.stdout)
    assert list(steps) == ["bench_learner", "dataset", "pretrain", "finetune", "cuda_tests"]
    assert "bench learner --json" in steps["bench_learner"]
    for name in ("pretrain", "finetune"):
        for override in ("device=cuda", "agent.num_critics=10", "agent.batch_size=256", "env=hopper"):
            assert f" {override} " in steps[name], (name, override)
    assert "agent.cql.num_samples=10" in steps["pretrain"] and "run.steps=5000" in steps["pretrain"]
    assert "agent.utd=4" in steps["finetune"] and "agent=wsrl" in steps["finetune"]
    assert f"run.checkpoint={tmp_path}/out/work/pretrain/checkpoint.pt" in steps["finetune"]
    assert "-k cuda" in steps["cuda_tests"] and "tests/test_agent.py" in steps["cuda_tests"]
    assert not list((tmp_path / "out").glob("*.json"))  # a dry run runs nothing


def test_cpu_smoke_dry_run_shrinks_everything(tmp_path):
    ran = _run("--dry-run", "--out", str(tmp_path), ROBOT_WSRL_CPU_SMOKE="1")
    assert ran.returncode == 0, ran.stderr
    steps = _commands(ran.stdout)
    assert "device=cpu" in steps["pretrain"] and "agent.batch_size=32" in steps["finetune"]
    assert "agent.num_critics=10" in steps["finetune"] and "agent.utd=4" in steps["finetune"]
    assert 'compile_mode="off"' in steps["bench_learner"]


def test_installs_what_is_missing_with_the_constraints(tmp_path):
    bare = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True, timeout=120)
    ran = _run("--dry-run", "--out", str(tmp_path / "out"), python=str(bare / "bin" / "python"))
    assert ran.returncode == 0, ran.stderr
    steps = _commands(ran.stdout)
    assert "pip install torch==2.13.0" in steps["install_torch"]
    assert "-c constraints.txt -e .[learner,sim,dev]" in steps["install_project"]
    ran = _run(
        "--dry-run", "--out", str(tmp_path / "out"), python=str(bare / "bin" / "python"), CONSTRAINTS=""
    )
    assert "-c" not in _commands(ran.stdout)["install_project"].split()


def _results(out: Path, *steps: str) -> tuple[int, dict]:
    ran = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "gpu" / "results.py", out, "cpu-smoke", *steps],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return ran.returncode, json.loads((out / "results.json").read_text())


def test_results_gather_each_step(tmp_path):
    (tmp_path / "work" / "pretrain").mkdir(parents=True)
    (tmp_path / "bench_learner.json").write_text(json.dumps({"updates_per_s": 600.0}))
    (tmp_path / "work" / "pretrain" / "summary.json").write_text(json.dumps({"steps": 100}))
    (tmp_path / "cuda_tests.xml").write_text(
        '<testsuites><testsuite tests="2" failures="0" errors="0" skipped="1"/></testsuites>'
    )
    rc, results = _results(
        tmp_path,
        *("bench_learner", "0", "10.0", "12.5"),
        *("pretrain", "0", "20.0", "30.0"),
        *("cuda_tests", "0", "30.0", "31.0"),
    )
    assert rc == 0 and results["ok"] and results["mode"] == "cpu-smoke"
    steps = results["steps"]
    assert steps["bench_learner"] == {"rc": 0, "seconds": 2.5, "result": {"updates_per_s": 600.0}}
    assert steps["pretrain"]["updates_per_s_end_to_end"] == 10.0
    assert json.loads((tmp_path / "pretrain.json").read_text()) == {"steps": 100}
    assert steps["cuda_tests"]["result"] == {"tests": 2, "failures": 0, "errors": 0, "skipped": 1}


@pytest.mark.parametrize("rc", ["1", "124"])
def test_a_failed_or_cut_step_fails_the_run(tmp_path, rc):
    code, results = _results(tmp_path, "finetune", rc, "0", "150")
    assert code == 1 and not results["ok"]
    assert results["steps"]["finetune"] == {"rc": int(rc), "seconds": 150.0, "result": None}


def _recipe(out: Path, *args: str) -> list[str]:
    """The commands benchmarks/gpu/paper_recipe.sh would run for `out` (--dry-run), one per line."""
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "paper_recipe.sh"), "--dry-run", "--out", str(out), *args],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line.partition(" + ")[2] for line in result.stdout.splitlines() if " + " in line]


def test_the_paper_recipe_starts_resumes_and_skips_each_phase(tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    pretrain, finetune = (c for c in _recipe(out) if " pretrain " in c or " finetune " in c)
    assert "recipe=paper" in pretrain and "device=cuda" in pretrain and f"out_dir={out}/pretrain" in pretrain
    assert f"run.checkpoint={out}/pretrain/checkpoint.pt" in finetune and "env.shift=real" in finetune
    (out / "pretrain").mkdir(parents=True)
    (out / "pretrain" / "checkpoint.pt").write_bytes(b"")  # interrupted: continues from its checkpoint
    assert any(c.endswith(f"pretrain run.resume={out}/pretrain") for c in _recipe(out))
    (out / "pretrain" / "summary.json").write_text("{}")  # finished: skipped
    commands = _recipe(out, "--device", "cpu")
    assert not any(" pretrain " in c for c in commands) and any("device=cpu" in c for c in commands)


def test_the_paper_recipe_runs_the_camera_arm_with_its_own_data_robot_and_encoder(tmp_path: Path) -> None:
    out = tmp_path / "cam"
    commands = _recipe(out, "--task", "reacher_cam")
    pretrain, finetune = (c for c in commands if " pretrain " in c or " finetune " in c)
    assert "env=reacher_cam" in pretrain and "run.dataset=data/reacher_cam/expert.npz" in pretrain
    assert "env.shift=reacher_real" in finetune and "agent.encoder.train_online=true" in finetune
    assert "run.buffer_capacity=100000" in finetune
    assert f"run.checkpoint={out}/pretrain/checkpoint.pt" in finetune
    hopper = [c for c in _recipe(tmp_path / "hopper") if " finetune " in c]
    assert "env=hopper" in hopper[0] and "train_online" not in hopper[0]
    bad = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "paper_recipe.sh"), "--dry-run", "--task", "walker"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "no such task" in bad.stderr
