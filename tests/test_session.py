"""`robot-wsrl session` end to end on a tiny InvertedPendulum agent: the outputs, and no process left over
(at the end, and after a SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_AGENT

from robot_wsrl.policy import OnnxPolicy

STEPS, WARMUP = 200, 60
TIMEOUT_S = 150.0  # generous: a shared 2-core machine; the session itself takes well under a minute


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained 'pre-trained' agent in a policy folder (no manifest: the env comes from it)."""
    from robot_wsrl.agent import Agent
    from robot_wsrl.config import compose_config
    from robot_wsrl.envs import make_env
    from robot_wsrl.training import save_training_checkpoint

    cfg = compose_config("finetune", ["env=inverted_pendulum", *SMALL_AGENT])
    env = make_env(cfg.env)
    agent = Agent(env.spec.obs_dim, env.spec.act_dim, cfg.agent, "cpu")
    directory = tmp_path_factory.mktemp("policy")
    save_training_checkpoint(directory / "checkpoint.pt", agent, env.spec, cfg, 0, {})
    env.close()
    return directory


def _session(policy_dir: Path, out: Path, steps: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "robot_wsrl.cli", "session", "--policy-dir", str(policy_dir)]
    command += ["--out", str(out), "--steps", str(steps), "--warmup", str(WARMUP), "--publish-every", "40"]
    command += [
        f"--validate-arg={arg}" for arg in ("episodes=3", "variants=[nominal]", "max_episode_steps=50")
    ]
    command += [*SMALL_AGENT, "device=cpu", "threads=1"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _assert_no_children_left(summary: dict) -> None:
    assert set(summary["pids"]) == {"robot", "learner", "runner"}
    for name, pid in summary["pids"].items():
        assert _gone(pid), f"{name} (pid {pid}) is still running"


def test_session_fine_tunes_exports_and_leaves_nothing_running(policy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "session"
    proc = _session(policy_dir, out, STEPS)
    output, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, output.decode()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"] is None and not summary["interrupted"]
    assert summary["steps"] == STEPS  # the budget exactly: the runner counts the transitions it hands over
    assert summary["updates"] == STEPS - WARMUP + 1  # lockstep: one UTD round per step after warmup
    assert summary["versions"] >= 3  # 141 updates, a version every 40
    assert summary["exit_codes"] == {"runner": 0, "learner": 0, "robot": 0}
    assert (out / "returns.png").stat().st_size > 0
    lines = (out / "returns.csv").read_text().splitlines()
    assert lines[0] == "step,runner,return,length,policy_version" and len(lines) > 1
    policy = OnnxPolicy.load(out / "policy" / "policy.onnx")
    assert policy.version == summary["versions"]
    # The emulated robot stands for hardware: it ran only versions the gate promoted (0 at least).
    gate = summary["gate"]
    assert 0 in gate["promoted"] and all(v["reasons"] for v in gate["held_back"])
    ran = {int(line.split(",")[-1]) for line in lines[1:]}
    assert ran <= set(gate["promoted"]), (ran, gate)
    _assert_no_children_left(summary)


def test_sigint_stops_everything(policy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "session"
    proc = _session(policy_dir, out, 1_000_000)
    deadline = time.monotonic() + TIMEOUT_S
    while not list((out / "learner" / "policies").glob("v000001/policy.json")):  # fine-tuning under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()[-4000:]
        time.sleep(0.2)
    # The operator's tools find the session by its folder: status, then a stop every runner confirms.
    status = _operator("status", out)
    assert status.returncode == 0 and "robot1" in status.stdout, status.stdout + status.stderr
    stop = _operator("stop", out)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _operator("status", out).returncode == 1  # a runner e-stopped
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60.0)
    assert proc.returncode == 130, output.decode()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["versions"] >= 1
    assert (out / "policy" / "policy.onnx").exists()
    _assert_no_children_left(summary)


def test_a_killed_session_takes_its_learner_and_runner_with_it(policy_dir: Path, tmp_path: Path) -> None:
    """kill -9 of the session itself (it cannot clean up): the kernel stops its children for it."""
    out = tmp_path / "session"
    proc = _session(policy_dir, out, 1_000_000)
    ready = out / "logs" / "learner.ready.json"
    deadline = time.monotonic() + TIMEOUT_S
    while not (ready.exists() and (out / "runner" / "policies").exists()):  # learner up, runner started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()[-4000:]
        time.sleep(0.2)
    learner_pid = json.loads(ready.read_text())["pid"]
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    pids = {int(pid) for pid in children} | {learner_pid}
    assert len(pids) >= 3  # learner, runner and the emulated robot
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 60.0
    while not all(_gone(pid) or _zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if not _gone(pid)]
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    """Exited but not reaped (its parent, this test's session, was killed: init reaps it soon)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _operator(command: str, session: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot_wsrl.cli", command, "--session", str(session)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
