"""Shared test setup and pytest fixtures: headless MuJoCo, small agents, tiny datasets, a learner's keys and
checkpoint. Plain helpers (functions, classes, constants) are in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")
# Test-sized networks gain nothing from a second thread, and OpenMP threads that spin-wait for a busy
# core make a shared 2-core machine crawl: one thread keeps the suite's time predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest
import zmq
from helpers import NULL_SPEC, RUNNERS, SMALL_AGENT, tiny_checkpoint

from robot_wsrl.bench.estop import write_policy
from robot_wsrl.core.artifacts import CHECKPOINT
from robot_wsrl.wire import keys


@pytest.fixture(autouse=True, scope="session")
def _leaked_contexts_never_hang_the_suite():
    """Sockets in this process default to linger 0. A context a failed test leaves behind is terminated by
    the garbage collector, in whatever test runs then; a socket of it still holding unsent messages with
    linger -1 would block that term() forever and hang the whole suite instead of reporting the one
    failure. A socket that sets its own linger keeps it."""
    original = zmq.Context.__init__

    def without_linger(ctx: zmq.Context, *args: object, **kwargs: object) -> None:
        original(ctx, *args, **kwargs)
        ctx.setsockopt(zmq.LINGER, 0)

    zmq.Context.__init__ = without_linger
    yield
    zmq.Context.__init__ = original


@pytest.fixture
def small_overrides(tmp_path) -> list[str]:
    return [*SMALL_AGENT, f"out_dir={tmp_path / 'run'}"]


@pytest.fixture
def pendulum_dataset(tmp_path):
    """A small InvertedPendulum dataset from a noisy controller (short episodes, falls and time-outs)."""
    from robot_wsrl.learn.collect import record_pendulum_controller_dataset

    return record_pendulum_controller_dataset(tmp_path / "pendulum.npz", 600, seed=0, max_episode_steps=100)


@pytest.fixture(scope="session")
def learner_keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Key pairs of a learner, a console and the runners in helpers.RUNNERS."""
    path = tmp_path_factory.mktemp("learner-keys")
    keys.new_identity(path, "learner", "learner")
    keys.new_identity(path, "console", "console")
    for name in RUNNERS:
        keys.new_identity(path, name, "runner")
    return path


@pytest.fixture(scope="session")
def learner_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained 'pre-trained' agent: the wire, not the learning, is under test where it is used."""
    return tiny_checkpoint(tmp_path_factory.mktemp("learner-checkpoint") / CHECKPOINT)


@pytest.fixture(scope="session")
def null_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ONNX policy for the null driver at helpers.PERIOD_S (made without torch)."""
    return write_policy(tmp_path_factory.mktemp("null-policy"), NULL_SPEC)
