"""Shared test setup: headless MuJoCo, small agents, tiny datasets."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")

import numpy as np
import pytest

# A WSRL-shaped agent small enough for unit tests: every mechanism, tiny sizes.
SMALL_AGENT = [
    "agent.num_critics=4",
    "agent.critic_hidden=[32,32]",
    "agent.actor_hidden=[32,32]",
    "agent.batch_size=16",
    "agent.utd=2",
    "progress=false",
    "tensorboard=false",
]


@pytest.fixture
def small_overrides(tmp_path) -> list[str]:
    return [*SMALL_AGENT, f"out_dir={tmp_path / 'run'}"]


@pytest.fixture
def pendulum_dataset(tmp_path):
    """A small InvertedPendulum dataset from a noisy proportional controller (episodes end by falling)."""
    import gymnasium as gym

    from robot_wsrl.datasets import OfflineDataset, save_dataset

    env = gym.make("InvertedPendulum-v5", max_episode_steps=100)
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
    obs, _ = env.reset(seed=0)
    for _ in range(600):
        action = np.clip(2.0 * obs[1] + 0.5 * obs[3] + rng.normal(0, 0.5, 1), -3, 3).astype(np.float32)
        nxt, reward, term, trunc, _ = env.step(action)
        for k, v in zip(rows, (obs, action, reward, nxt, term, trunc), strict=True):
            rows[k].append(v)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset(seed=len(rows["obs"]))
    rows["trunc"][-1] = True
    ds = OfflineDataset(
        observations=np.array(rows["obs"]),
        actions=np.array(rows["act"]),
        rewards=np.array(rows["rew"]),
        next_observations=np.array(rows["next"]),
        terminals=np.array(rows["term"]),
        timeouts=np.array(rows["trunc"]),
    )
    return save_dataset(tmp_path / "pendulum.npz", ds)
