"""Offline pre-training end to end on a tiny dataset, and fine-tuning from its checkpoint."""

import pytest

from robot_wsrl.learn.checkpoint import CheckpointError, load_actor, load_checkpoint
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.finetune import finetune
from robot_wsrl.learn.pretrain import pretrain


@pytest.mark.parametrize("agent", ["cql", "calql"])
def test_pretrain_writes_a_complete_checkpoint(agent, small_overrides, pendulum_dataset, tmp_path):
    cfg = compose_config(
        "pretrain",
        [
            "env=inverted_pendulum",
            f"agent={agent}",
            *small_overrides,
            f"run.dataset={pendulum_dataset}",
            "run.steps=12",
            "run.eval_every=6",
            "run.eval_episodes=1",
            "run.log_every=3",
            "run.checkpoint_every=0",
        ],
    )
    summary = pretrain(cfg)
    payload = load_checkpoint(summary["checkpoint"])
    assert payload["step"] == 12 and payload["agent_config"]["regularizer"] == agent
    for key in (
        "actor",
        "critic",
        "target_critic",
        "log_temperature",
        "actor_opt",
        "critic_opt",
        "temperature_opt",
    ):
        assert key in payload["agent"]
    assert payload["config_hash"] == (tmp_path / "run" / "config_hash.txt").read_text().strip()
    _, spec, meta = load_actor(summary["checkpoint"])
    assert spec.obs_dim == 4 and spec.act_dim == 1 and meta["step"] == 12
    assert (tmp_path / "run" / "eval.csv").read_text().count("\n") == 3  # header + 2 evaluations
    # calibration: logged every log_every updates and at the end, plotted, summarised
    assert (tmp_path / "run" / "calibration.csv").read_text().count("\n") == 1 + 4 + 1
    assert (tmp_path / "run" / "calibration.png").stat().st_size > 0
    calibration = summary["calibration"]
    assert calibration["mc_return_mean"] > 0 and set(calibration) >= {"q_data_mean", "q_calibration"}
    assert summary["calibrated"] == (abs(calibration["q_calibration"] - 1) <= 0.25)


def test_finetune_starts_from_pretrained_checkpoint(small_overrides, pendulum_dataset, tmp_path):
    pre = pretrain(
        compose_config(
            "pretrain",
            [
                "env=inverted_pendulum",
                *small_overrides,
                f"run.dataset={pendulum_dataset}",
                "run.steps=5",
                "run.eval_every=0",
                f"out_dir={tmp_path / 'pre'}",
            ],
        )
    )
    fine = finetune(
        compose_config(
            "finetune",
            [
                "env=inverted_pendulum",
                *small_overrides,
                f"run.checkpoint={pre['checkpoint']}",
                "run.steps=30",
                "run.warmup_steps=20",
                "run.eval_every=0",
                f"out_dir={tmp_path / 'fine'}",
            ],
        )
    )
    assert fine["updates"] == 11


def test_checkpoint_for_another_robot_is_refused(small_overrides, pendulum_dataset, tmp_path):
    pre = pretrain(
        compose_config(
            "pretrain",
            [
                "env=inverted_pendulum",
                *small_overrides,
                f"run.dataset={pendulum_dataset}",
                "run.steps=2",
                "run.eval_every=0",
                f"out_dir={tmp_path / 'pre'}",
            ],
        )
    )
    with pytest.raises(CheckpointError, match="obs_dim=4"):
        finetune(
            compose_config(
                "finetune",
                [
                    "env=hopper",
                    *small_overrides,
                    f"run.checkpoint={pre['checkpoint']}",
                    "run.steps=5",
                    f"out_dir={tmp_path / 'fine'}",
                ],
            )
        )


def test_pretrain_without_dataset_says_so(small_overrides):
    with pytest.raises(ValueError, match=r"run\.dataset"):
        pretrain(compose_config("pretrain", ["env=inverted_pendulum", *small_overrides]))


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
