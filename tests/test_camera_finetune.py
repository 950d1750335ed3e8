"""A camera task end to end, as a user runs it: `collect` records the scripted expert's frames, `pretrain`
trains the image encoder with CQL, `finetune` warm-starts WSRL on the shifted robot with the encoder frozen
and its features cached in the replay (and runs the retain-offline baseline, the dataset held as features),
`ship` exports one ONNX graph and measures it. Tiny scale (24x24 frames, a few updates); rendered headless
in subprocesses (MUJOCO_GL=egl), skipped where nothing renders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import SMALL_AGENT, egl_env

from robot_wsrl.robot.policy import OnnxPolicy

DRIVER = "cam:reacher@top:24x24"
TIMEOUT_S = 600.0  # a loaded 2-core box rendering in software


def _robot_wsrl(*argv: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", *argv],
        env=egl_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_camera_policy_is_collected_pretrained_finetuned_and_shipped(tmp_path: Path) -> None:
    env = ["env=reacher_cam", f"env.driver={DRIVER}", "threads=1", *SMALL_AGENT]
    _robot_wsrl("collect", "--driver", DRIVER, "--behaviour", "expert", "--expert-noise", "0.5",
                "--transitions", "200", "--out", str(tmp_path / "data"))  # fmt: skip
    _robot_wsrl("pretrain", *env, "recipe=camera_cpu", f"run.dataset={tmp_path / 'data' / 'expert.npz'}",
                "run.steps=4", "run.eval_every=4", "run.eval_episodes=1", "run.checkpoint_every=4",
                f"out_dir={tmp_path / 'pre'}")  # fmt: skip
    pretrained = tmp_path / "pre" / "checkpoint.pt"
    _robot_wsrl("finetune", *env, "env.shift=reacher_real", f"run.checkpoint={pretrained}", "run.steps=120",
                "run.warmup_steps=60", "run.eval_every=60", "run.eval_episodes=2",
                "agent.batch_size=16", f"out_dir={tmp_path / 'ft'}")  # fmt: skip

    with (tmp_path / "ft" / "eval.csv").open() as f:
        evals = list(csv.DictReader(f))
    assert [row["phase"] for row in evals] == ["pretrained", "online", "online"]  # warmup ends at step 60
    assert all(0.0 <= float(row["success_rate"]) <= 1.0 for row in evals)  # the task's own success signal
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["updates"] == 120 - 60 + 1  # one UTD round per online transition, on cached features
    replay = next((tmp_path / "ft").glob("replay-*.npz"))
    with np.load(replay) as saved:  # each frame once (50-step episodes: about 1 + 1/50 per transition)
        frames = next(v for k, v in saved.items() if k.startswith("frames"))
        assert frames.dtype == np.uint8 and frames.shape[1:] == (24, 24, 3)

    # the retain-offline baseline on a camera task: the dataset mixed in as the frozen encoder's features
    _robot_wsrl("finetune", *env, "env.shift=reacher_real", f"run.checkpoint={pretrained}", "run.steps=70",
                "run.warmup_steps=60", "run.eval_every=0", "run.offline_ratio=0.5",
                "agent.actor_objective=mean", f"run.dataset={tmp_path / 'data' / 'expert.npz'}",
                "agent.batch_size=16", f"out_dir={tmp_path / 'retain'}")  # fmt: skip
    assert json.loads((tmp_path / "retain" / "summary.json").read_text())["updates"] == 70 - 60 + 1

    _robot_wsrl("ship", str(tmp_path / "ft" / "checkpoint.pt"), "--out", str(tmp_path / "policy"),
                "--episodes", "2")  # fmt: skip
    manifest = json.loads((tmp_path / "policy" / "manifest.json").read_text())
    assert manifest["driver"] == DRIVER
    assert set(manifest["returns"]) == {"nominal", "reacher_real", "reacher_real_mild"}  # the arm's presets
    assert all("success_rate" in r for r in manifest["returns"].values())
    policy = OnnxPolicy.load(tmp_path / "policy" / "policy.onnx")
    assert policy.metadata.spec.camera_names == ("top",) and policy.metadata.spec.obs_dim == 8
