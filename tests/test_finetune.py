"""In-process fine-tuning: the warmup gate, online-only data, resume, and a learning smoke test."""

import csv

import gymnasium as gym
import numpy as np
import pytest
from helpers import PASS_EVERY_VERSION

from robot_wsrl.apps.finetune import sim_judge
from robot_wsrl.learn import finetune as finetune_module
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.finetune import finetune
from robot_wsrl.learn.replay import ReplayBuffer


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _cfg(overrides, *extra):
    return compose_config("finetune", ["env=inverted_pendulum", "run.eval_every=0", *overrides, *extra])


def test_warmup_gate_no_update_before_k_and_no_random_actions(small_overrides, monkeypatch, tmp_path):
    def no_random(*_a, **_k):
        raise AssertionError("warmup must not draw random actions")

    monkeypatch.setattr(gym.spaces.Box, "sample", no_random)
    acted: list[np.ndarray] = []
    original_act = Agent.act

    def recording_act(self, obs, deterministic=False):
        action = original_act(self, obs, deterministic)
        if not deterministic:
            acted.append(action.copy())
        return action

    monkeypatch.setattr(Agent, "act", recording_act)
    cfg = _cfg(small_overrides, "run.steps=60", "run.warmup_steps=40", "run.log_every=1")
    summary = finetune(cfg)
    rows = _rows(tmp_path / "run" / "train.csv")
    for row in rows:
        step, updates = int(row["step"]), int(row["updates"])
        assert updates == max(0, step - 39), row  # first UTD round once the buffer holds K = 40
        assert row["phase"] == ("warmup" if step < 40 else "online")
    assert summary["updates"] == 21
    replay = ReplayBuffer.load(next((tmp_path / "run").glob("replay-*.npz")))
    np.testing.assert_allclose(replay.action[:60], np.array(acted), atol=1e-6)  # the policy's own samples


def test_wsrl_never_loads_offline_data(small_overrides, monkeypatch):
    def forbidden(*_a, **_k):
        raise AssertionError("WSRL must not load the offline dataset")

    monkeypatch.setattr(finetune_module, "load_offline_buffer", forbidden)
    monkeypatch.setattr("robot_wsrl.learn.datasets.load_dataset", forbidden)
    summary = finetune(
        _cfg(small_overrides, "run.steps=30", "run.warmup_steps=20", "run.dataset=ignored.npz")
    )
    assert summary["steps"] == 30


def test_retain_offline_baseline_mixes_dataset(small_overrides, pendulum_dataset, monkeypatch):
    calls = []
    original = finetune_module.load_offline_buffer

    def spy(cfg, spec, agent):
        calls.append(cfg.run.dataset)
        return original(cfg, spec, agent)

    monkeypatch.setattr(finetune_module, "load_offline_buffer", spy)
    cfg = _cfg(
        small_overrides,
        "run.steps=30",
        "run.warmup_steps=20",
        "run.offline_ratio=0.5",
        f"run.dataset={pendulum_dataset}",
    )
    assert finetune(cfg)["updates"] == 11
    assert calls == [str(pendulum_dataset)]


def test_resume_after_crash_continues_the_same_step_count(small_overrides, monkeypatch, tmp_path):
    base = ["run.steps=40", "run.warmup_steps=20", "run.checkpoint_every=20", "run.log_every=1"]
    original_log = finetune_module.MetricsLogger.log

    def crash_at_30(self, stream, step, values):
        if stream == "train" and step == 30:
            raise KeyboardInterrupt  # the process dies after the step-20 checkpoint
        original_log(self, stream, step, values)

    monkeypatch.setattr(finetune_module.MetricsLogger, "log", crash_at_30)
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(small_overrides, *base))
    monkeypatch.setattr(finetune_module.MetricsLogger, "log", original_log)
    summary = finetune(compose_config("finetune", [f"run.resume={tmp_path / 'run'}"]))
    assert summary["steps"] == 40 and summary["updates"] == 21  # same count as an uninterrupted run
    replay = ReplayBuffer.load(next((tmp_path / "run").glob("replay-*.npz")))
    assert replay.total_added == 40
    steps = [int(r["step"]) for r in _rows(tmp_path / "run" / "train.csv")]
    assert steps[-10:] == list(range(31, 41)) and max(steps) == 40


def test_resume_of_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        finetune(compose_config("finetune", [f"run.resume={tmp_path}"]))


def test_learning_smoke_sac_clearly_learns_inverted_pendulum(tmp_path):
    """From scratch, a small SAC must clearly learn to balance inside CI time (an untrained policy: ~5)."""
    cfg = compose_config(
        "finetune",
        [
            "env=inverted_pendulum",
            "agent=sac",
            "agent.num_critics=2",
            "agent.critic_hidden=[64,64]",
            "agent.actor_hidden=[64,64]",
            "agent.utd=2",
            "agent.batch_size=128",
            "agent.actor_lr=1e-3",
            "agent.critic_lr=1e-3",
            "agent.temperature_lr=1e-3",
            "run.steps=4000",
            "run.warmup_steps=500",
            "run.eval_every=500",
            "run.eval_episodes=2",
            "run.log_every=1000",
            "run.checkpoint_every=0",
            "progress=false",
            "tensorboard=false",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    finetune(cfg)
    evals = [float(r["return_mean"]) for r in _rows(tmp_path / "run" / "eval.csv")]
    # three seeds at this size reached a best of 86, 110 and 1000 (untrained: 5 to 17)
    assert evals[0] < 20 and max(evals) >= 60, evals


QUICK_GATE = ("episodes=3", "variants=[nominal]", "max_episode_steps=30")


@pytest.mark.parametrize("verdict", ["pass", "fail"])
def test_guarded_variant_runs_only_validated_versions(small_overrides, monkeypatch, tmp_path, verdict):
    """The robot acts with the deployed ONNX policy only; candidates every 10 online steps are validated,
    and only a pass changes what the robot runs."""

    def no_torch_acting(self, obs, deterministic=False):
        raise AssertionError(
            "the guarded robot must act with the deployed ONNX policy, not the learner's actor"
        )

    monkeypatch.setattr(Agent, "act", no_torch_acting)
    extra = PASS_EVERY_VERSION if verdict == "pass" else ("thresholds.min_return={nominal: 1e9}",)
    gate_args = ",".join(f"'{arg}'" for arg in (*QUICK_GATE, *extra))  # Hydra's list syntax, items quoted
    cfg = _cfg(
        small_overrides,
        "run.steps=60",
        "run.warmup_steps=20",
        "env.max_episode_steps=15",
        "run.gate_every=10",
        f"run.gate_args=[{gate_args}]",
    )
    finetune(cfg, sim_judge(cfg.run.gate_args))
    gate = _rows(tmp_path / "run" / "gate.csv")
    assert [int(r["step"]) for r in gate] == [20, 30, 40, 50, 60]
    assert {r["passed"] for r in gate} == {"True" if verdict == "pass" else "False"}
    deployed = [int(r["deployed"]) for r in gate]
    assert deployed == ([20, 30, 40, 50, 60] if verdict == "pass" else [0] * 5)
    versions = [int(r["policy_version"]) for r in _rows(tmp_path / "run" / "episodes.csv")]
    assert versions == sorted(versions) and set(versions) <= {0, *deployed}
