"""Shipping a pre-trained checkpoint: files, ONNX export and returns on every shift preset."""

import json

from robot_wsrl.apps.ship import cli as ship_cli
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.pretrain import pretrain
from robot_wsrl.learn.ship import ship
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.sim.shift import preset_names


def test_ship_writes_checkpoint_policy_and_manifest(small_overrides, pendulum_dataset, tmp_path):
    pre = pretrain(
        compose_config(
            "pretrain",
            [
                "env=inverted_pendulum",
                *small_overrides,
                f"run.dataset={pendulum_dataset}",
                "run.steps=3",
                "run.eval_every=0",
            ],
        )
    )
    out = tmp_path / "policies" / "pendulum"
    manifest = ship(tmp_path / "run" / "checkpoint.pt", out, {"recipe": "test"}, episodes=1, seed=0)
    assert pre["steps"] == manifest["pretrain_steps"] == 3
    assert set(manifest["returns"]) == set(preset_names("gym:InvertedPendulum-v5")) >= {"nominal", "real"}
    assert "reacher_real" not in manifest["returns"]  # the camera arm's presets describe another robot
    assert all(r["return_mean"] > 0 for r in manifest["returns"].values())
    assert json.loads((out / "manifest.json").read_text())["recipe"] == {"recipe": "test"}
    policy = OnnxPolicy.load(out / "policy.onnx")
    assert policy.spec.obs_dim == 4 and policy.version == 0


def test_ship_refuses_a_dataset_without_its_collect_manifest(pendulum_dataset, tmp_path, capsys):
    code = ship_cli(["x.pt", "--out", str(tmp_path / "p"), "--dataset", str(pendulum_dataset)])
    assert code == 2 and "no collect manifest beside it" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
