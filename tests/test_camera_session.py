"""`robot-wsrl session` on the camera task (issue 16), end to end: the emulated robot renders `top` frames,
the runner streams camera transitions, the learner caches the frozen encoder's features in its replay and
exports camera ONNX versions, the gate judges them on the camera preset (return and success rate) and a
promoted version reaches the robot. A tiny untrained agent on 24x24 frames: the test is of the plumbing,
not of the learning. Rendered headless in subprocesses (MUJOCO_GL=egl), skipped where nothing renders."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_LEARNER, egl_env

from robot_wsrl.apps.session import env_id_problem
from robot_wsrl.apps.session_summary import validated_versions, validation_results
from robot_wsrl.core.artifacts import CHECKPOINT, POLICY_DIR, POLICY_ONNX, POLICY_SIDECAR, REPORT, VERDICT
from robot_wsrl.robot.drivers.emulated_robot import EmulatedRobotDriver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.sim.emulated_robot import spawn_emulated_robot

DRIVER = "cam:reacher@top:24x24"
PRESET = "reacher_real"
TINY_ENCODER = ["agent.encoder.channels=[4,4]", "agent.encoder.strides=[2,2]", "agent.encoder.feature_dim=3"]
STEPS, WARMUP = 800, 60  # enough for v0's measurement and one candidate's validation while the robot runs
TIMEOUT_S = 300.0  # generous: a loaded 2-core box rendering in software; the session takes about a minute
# An untrained checkpoint for the camera task, its spec from the task itself (rendering: a subprocess).
MAKE_POLICY = """
import sys
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.envs import make_env
from robot_wsrl.learn.networks import build_networks
from robot_wsrl.learn.training import save_training_checkpoint

cfg = compose_config("finetune", sys.argv[2:])
env = make_env(cfg.env)
networks = build_networks(env.spec.obs_dim, env.spec.act_dim, cfg.agent, "cpu", cameras=env.spec.cameras)
save_training_checkpoint(sys.argv[1], Agent(networks, cfg.agent), env.spec, cfg, 0, {})
env.close()
"""


@pytest.fixture(scope="module")
def camera_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = egl_env()  # skips where nothing renders
    folder = tmp_path_factory.mktemp("camera-policy")
    overrides = ["env=reacher_cam", f"env.driver={DRIVER}", *TINY_LEARNER, *TINY_ENCODER]
    done = subprocess.run(
        [sys.executable, "-c", MAKE_POLICY, str(folder / CHECKPOINT), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_a_camera_session_streams_frames_caches_features_and_promotes_a_validated_version(
    camera_policy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "session"
    command = [sys.executable, "-m", "robot_wsrl.apps.cli", "session", "--policy-dir", str(camera_policy)]
    command += ["--preset", PRESET, "--out", str(out), "--steps", str(STEPS), "--warmup", str(WARMUP)]
    command += ["--publish-every", "40", "--validate-arg=episodes=3", "--validate-arg=variants=[]"]
    # A margin this wide lets the untrained versions pass the improve rule on 3 pairs: promotion is sure.
    command += ["--validate-arg=reference.margin=2", *TINY_LEARNER]
    done = subprocess.run(command, env=egl_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"] is None and summary["env_id"] == DRIVER, summary
    assert summary["steps"] == STEPS and summary["updates"] == STEPS - WARMUP + 1  # lockstep, exact
    assert summary["exit_codes"] == {"runner": 0, "learner": 0, "robot": 0}
    for name, pid in summary["pids"].items():  # nothing left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert summary["peak_rss_mb"][name] > 0, summary["peak_rss_mb"]

    # The frames reached the learner's replay once each, as the frozen encoder's cached features.
    replay = summary["replay"]
    assert replay["cameras"] == ["top"] and replay["feature_dim"] == 8 + 3, replay  # state + features
    assert replay["capacity"] == STEPS  # all the session gets, not a million transitions' frames
    assert 1.0 <= replay["frames_per_transition"] <= 1.1, replay  # 50-step episodes: 1 + 1/50
    assert replay["bytes_per_transition"] > 24 * 24 * 3

    # Every version is one camera ONNX graph; the gate judged them on the camera preset, success included.
    versions = sorted((out / "learner" / POLICY_DIR).glob(f"v*/{POLICY_ONNX}"))
    assert len(versions) == summary["versions"] + 1 >= 3
    for path in (versions[0], versions[-1], out / "policy" / POLICY_ONNX):
        policy = OnnxPolicy.load(path)
        assert policy.metadata.spec.camera_names == ("top",) and policy.metadata.spec.obs_dim == 8
    validated = summary["gate"]["validated"]
    assert validated and {r["version"] for r in validated} >= {0}, validated
    for result in validated:
        assert set(result["variants"]) == {PRESET}, result
        assert 0.0 <= result["variants"][PRESET]["success_rate"] <= 1.0, result

    # A promoted version reached the robot, and the robot ran nothing else but the pre-trained v0.
    with (out / "returns.csv").open() as f:
        rows = list(csv.DictReader(f))
    ran = {int(row["policy_version"]) for row in rows}
    promoted = summary["promoted_versions"]
    assert 0 in ran and ran - {0} and ran - {0} <= set(promoted), (ran, summary["gate"])
    assert summary["policy_version"] == max(promoted) == OnnxPolicy.load(out / "policy" / POLICY_ONNX).version
    assert f"validation success rate on {PRESET}: v0 " in done.stdout

    # The robot's own episodes' outcomes (the task's success signal at their last step) came with their
    # transitions: per episode in returns.csv, per version and against the baseline in summary.json.
    assert rows and {row["success"] for row in rows} <= {"0", "1"}, rows
    outcomes = [int(row["success"]) for row in rows]
    on_v0 = [int(row["success"]) for row in rows if row["policy_version"] == "0"]
    assert summary["baseline_success_rate"] == pytest.approx(sum(on_v0) / len(on_v0))
    for version in summary["versions_ran"]:
        assert 0.0 <= version["success_rate"] <= 1.0, version
    last = summary["robot_success_rate_last_third"]
    assert last is not None and 0.0 <= last <= 1.0 and summary["robot_episodes_last_third"] > 0
    assert sum(v["success_rate"] * v["episodes"] for v in summary["versions_ran"]) == pytest.approx(
        sum(outcomes)
    )
    assert "robot success rate: last third " in done.stdout and " vs pre-trained v0 " in done.stdout
    if summary["baseline_return"] < 0:  # the usual case: negative returns have a difference, not a ratio
        assert (
            summary["last_third_over_baseline"] is None
            and "not positive" in (summary["last_third_over_baseline_note"])
        )
    assert summary["last_third_minus_baseline"] == pytest.approx(
        summary["robot_return_last_third"] - summary["baseline_return"]
    )
    assert (out / "returns.png").stat().st_size > 0


def test_the_camera_robot_reports_the_action_it_executed_not_a_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step reply carries the state, each camera's frame, then the executed action: the runner's safety
    check of that action (a frame there e-stops the robot at its first step)."""
    monkeypatch.setenv("MUJOCO_GL", egl_env()["MUJOCO_GL"])  # the robot's process renders
    robot, endpoint = spawn_emulated_robot(
        DRIVER, "nominal", seed=0, realtime=False, startup_timeout_s=TIMEOUT_S
    )
    driver = EmulatedRobotDriver(endpoint, timeout_s=30.0)
    try:
        driver.reset(seed=0)
        command = np.array([0.5, -2.0], np.float32)
        result = driver.step(command)
        np.testing.assert_array_equal(result.executed_action, [0.5, -1.0])  # nominal: no latency; clipped
        assert result.obs["top"].shape == (24, 24, 3)
        assert type(result.info["success"]) is bool  # the task's success signal crosses the robot's socket
    finally:
        driver.close()
        robot.stop()


def _judged(policies: Path, version: int, status: str, variants: dict[str, dict]) -> None:
    folder = policies / f"v{version:06d}"
    (folder / "validation").mkdir(parents=True)
    (folder / POLICY_SIDECAR).write_text(json.dumps({"step": 40 * version}))
    (folder / "validation" / VERDICT).write_text(json.dumps({"version": version, "status": status}))
    report = {"candidate": {"variants": variants}}
    (folder / "validation" / REPORT).write_text(json.dumps(report))


def test_validation_results_carry_each_versions_return_and_success_rate(tmp_path: Path) -> None:
    """summary.json's gate.validated and the plot's points: per judged version its step, return and
    success rate on the robot's preset (the mean over the presets when it was not judged; None for a task
    without success)."""
    real = {"return_mean": -20.0, "success_rate": 0.5}
    _judged(tmp_path, 0, "passed", {PRESET: {"return_mean": -40.0, "success_rate": 0.25}})
    _judged(tmp_path, 2, "failed", {PRESET: real, "nominal": {"return_mean": -10.0, "success_rate": 1.0}})
    _judged(tmp_path, 3, "passed", {"real": {"return_mean": 100.0, "success_rate": None}})
    superseded = tmp_path / "v000004" / "validation"  # a verdict without a report: not judged
    superseded.mkdir(parents=True)
    (superseded / VERDICT).write_text(json.dumps({"version": 4, "status": "superseded"}))
    results = validation_results(tmp_path, warmup=60, utd=2)
    assert [(r["version"], r["status"], r["made_at_step"]) for r in results] == [
        (0, "passed", 0),
        (2, "failed", 60 + 40 - 1),
        (3, "passed", 60 + 60 - 1),
    ]
    assert results[1]["variants"][PRESET] == real
    assert validated_versions(results, PRESET) == [
        (0, -40.0, "pre-trained", 0.25),  # the starting policy: never "promoted"
        (99, -20.0, "held back", 0.5),
        (119, 100.0, "promoted", None),
    ]


def test_a_camera_task_env_id_is_checked_without_rendering() -> None:
    assert env_id_problem(DRIVER) is None and env_id_problem("cam:reacher") is None
    assert "did you mean cam:reacher?" in (env_id_problem("cam:reachr") or "")
    assert "bad camera request" in (env_id_problem("cam:reacher@top:24") or "")
