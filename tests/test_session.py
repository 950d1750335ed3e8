"""`robot-wsrl session` end to end on a tiny InvertedPendulum agent: the outputs, and no process left over
(at the end, and after a SIGINT)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_AGENT

from robot_wsrl.apps.session import LEARNER_NICE, POLL_S, Progress, robot_state
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.wire import keys

STEPS, WARMUP = 200, 60
TIMEOUT_S = 150.0  # generous: a shared 2-core machine; the session itself takes well under a minute


def tiny_policy_dir(directory: Path) -> Path:
    """A tiny untrained 'pre-trained' agent in a policy folder (no manifest: the env comes from it)."""
    from robot_wsrl.learn.agent import Agent
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.envs import make_env
    from robot_wsrl.learn.training import save_training_checkpoint

    cfg = compose_config("finetune", ["env=inverted_pendulum", *SMALL_AGENT])
    env = make_env(cfg.env)
    agent = Agent(env.spec.obs_dim, env.spec.act_dim, cfg.agent, "cpu")
    save_training_checkpoint(directory / "checkpoint.pt", agent, env.spec, cfg, 0, {})
    env.close()
    return directory


# Sessions on the tiny agent: short validations, a version every 40 updates.
TINY_SESSION = ["--warmup", str(WARMUP), "--publish-every", "40"]
TINY_SESSION += [
    f"--validate-arg={arg}" for arg in ("episodes=3", "variants=[nominal]", "max_episode_steps=50")
]
TINY_LEARNER = [*SMALL_AGENT, "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy_dir(tmp_path_factory.mktemp("policy"))


def _session(policy_dir: Path, out: Path, steps: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "robot_wsrl.apps.cli", "session", "--policy-dir", str(policy_dir)]
    command += ["--out", str(out), "--steps", str(steps), *TINY_SESSION, *TINY_LEARNER]
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
    # The emulated robot stands for hardware: it ran only versions the gate promoted, and the pre-trained
    # version 0, which passes by definition (on a fast host the session may end before the measurement
    # of version 0 that is only informational has finished, and then it has no verdict file).
    gate = summary["gate"]
    assert all(v["reasons"] for v in gate["held_back"])
    ran = {int(line.split(",")[-1]) for line in lines[1:]}
    assert 0 in ran and ran - {0} <= set(gate["promoted"]), (ran, gate)
    # The robot's own state, last seen on its control channel: running, or idle once its budget was done.
    assert summary["robot"]["state"] in ("running", "idle"), summary["robot"]
    assert summary["robot"]["runner_state"] in ("warmup", "fine_tuning", "idle"), summary["robot"]
    _assert_private_keys(out)
    _assert_no_children_left(summary)


def _assert_private_keys(out: Path) -> None:
    """CURVE by default, with keys only this user can read."""
    endpoints = json.loads((out / "endpoints.json").read_text())
    assert endpoints["plain"] is False and endpoints["keys"] == "keys"
    keydir = out / "keys"
    assert keydir.stat().st_mode & 0o777 == 0o700
    names = {path.name for path in keydir.iterdir()}
    assert {"learner.key_secret", "robot1.key_secret", "console.key_secret", "session.key_secret"} <= names
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in keydir.iterdir())


def test_sigint_stops_everything(policy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "session"
    proc = _session(policy_dir, out, 1_000_000)
    deadline = time.monotonic() + TIMEOUT_S
    while not list((out / "learner" / "policies").glob("v000001/policy.json")):  # fine-tuning under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()[-4000:]
        time.sleep(0.2)
    # The robot comes first on the CPU: the learner (and its validations) niced, the runner not.
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, _ready_pid(out, "learner")) == min(own + LEARNER_NICE, 19)
    assert os.getpriority(os.PRIO_PROCESS, _ready_pid(out, "runner")) <= own
    # The operator's tools find the session by its folder: status, then a stop every runner confirms.
    status = _operator("status", out)
    assert status.returncode == 0 and "robot1" in status.stdout, status.stdout + status.stderr
    # Another local user, without the session's keys, reaches nothing: plain, or with a console key of
    # their own (and the peers' public keys, which are no secret).
    assert _operator("stop", out, "--plain", "--timeout", "1").returncode != 0
    assert (
        _operator("stop", out, "--keys", str(_foreign_keys(out, tmp_path)), "--timeout", "1").returncode != 0
    )
    assert _operator("status", out).returncode == 0  # still running
    stop = _operator("stop", out)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _operator("status", out).returncode == 1  # a runner e-stopped
    time.sleep(2 * POLL_S)  # the session's own status poll sees it too
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60.0)
    assert proc.returncode == 130, output.decode()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["versions"] >= 1
    # The robot's real state, not the learner's phase: e-stopped, by the operator's console key.
    assert summary["robot"]["state"] == "estopped", summary["robot"]
    assert "console" in summary["robot"]["last_stop_detail"]
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
        assert time.monotonic() < deadline, {pid: _cmdline(pid) for pid in pids if not _gone(pid)}
        time.sleep(0.2)


def _cmdline(pid: int) -> str:
    """What a process that outlived its session is, for the failure message."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return "?"


def _zombie(pid: int) -> bool:
    """Exited but not reaped (its parent, this test's session, was killed: init reaps it soon)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _ready_pid(session: Path, name: str) -> int:
    return int(json.loads((session / "logs" / f"{name}.ready.json").read_text())["pid"])


def _foreign_keys(session: Path, tmp_path: Path) -> Path:
    """A key dir with a console key the session never saw, and the session's public keys."""
    keydir = tmp_path / "foreign"
    keys.new_identity(keydir, "console", "console")
    for name in ("learner", "robot1"):
        shutil.copy(session / "keys" / f"{name}.key", keydir / f"{name}.key")
    return keydir


def _operator(command: str, session: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", command, "--session", str(session), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_robot_state_is_the_runners_own() -> None:
    """What the progress line and summary.json call the robot's state, from its control status."""
    running = {"state": "fine_tuning", "link": {"holds": []}}
    assert robot_state(running) == "running" == robot_state({"state": "warmup"})
    assert robot_state(running | {"link": {"holds": ["credit"]}}) == "running"  # lockstep's wait
    assert robot_state({"state": "estopped", "link": {"holds": ["learner_lost"]}}) == "estopped"
    assert robot_state({"state": "faulted"}) == "faulted"
    assert robot_state({"state": "paused", "link": {"holds": ["learner_lost", "credit"]}}) == (
        "holding (learner_lost)"
    )
    assert robot_state({"state": "paused", "link": {"holds": ["operator"]}}) == "paused"
    assert robot_state({"runner_id": "robot1", "attached": False}) == "starting"
    assert robot_state(None) == "unknown"


def test_progress_line_leads_with_the_robots_state() -> None:
    learner = {
        "phase": "fine_tuning",
        "step": 900,
        "updates": 800,
        "policy_version": 3,
        "gate": {"deployed_version": 2},
        "runners": {"robot1": {"recent_returns": [10.0, 20.0]}},
    }
    robot = {"state": "estopped", "last_stop_cause": "operator", "last_stop_detail": "e-stop from console"}
    stream = io.StringIO()
    Progress(stream).show(12.0, 6000, learner, robot)
    line = stream.getvalue()
    assert "robot ESTOPPED (e-stop from console)" in line and "learner fine_tuning" in line, line
    assert "recent return     15.0" in line
