"""Shared test setup: headless MuJoCo, small agents, tiny datasets."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")
# Test-sized networks gain nothing from a second thread, and OpenMP threads that spin-wait for a busy
# core make a shared 2-core machine crawl: one thread keeps the suite's time predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
    """A small InvertedPendulum dataset from a noisy controller (short episodes, falls and time-outs)."""
    from robot_wsrl.learn.collect import record_pendulum_controller_dataset

    return record_pendulum_controller_dataset(tmp_path / "pendulum.npz", 600, seed=0, max_episode_steps=100)
