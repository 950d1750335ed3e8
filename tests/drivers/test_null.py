"""NullDriver: the no-physics driver the control-loop and e-stop benchmarks time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robot_wsrl.core.driver import Driver
from robot_wsrl.robot.drivers.null import NullDriver


def test_spec_defaults() -> None:
    d = NullDriver()
    assert isinstance(d, Driver)
    assert (d.spec.obs_dim, d.spec.act_dim, d.spec.control_period_s) == (11, 3, 0.001)
    assert d.spec.action_low == (-1.0,) * 3 and d.spec.action_high == (1.0,) * 3


def test_reset_and_step_are_constant_and_clip() -> None:
    d = NullDriver(obs_dim=4, act_dim=2, control_period_s=0.002)
    obs, info = d.reset()
    assert obs.shape == (4,) and obs.dtype == np.float32 and not obs.any() and info == {}
    r = d.step(np.array([3.0, -0.5]))
    np.testing.assert_array_equal(r.executed_action, np.array([1.0, -0.5], dtype=np.float32))
    assert r.executed_action.dtype == np.float32 and r.obs.shape == (4,) and r.reward == 0.0
    assert not r.terminated and not r.truncated
    r.obs[:] = 1.0  # callers may write into what they get; the next obs is still zeros
    assert not d.step(np.zeros(2)).obs.any()
    with pytest.raises(ValueError, match="shape"):
        d.step(np.zeros(3))


def test_truncates_after_max_episode_steps() -> None:
    d = NullDriver(max_episode_steps=3)
    d.reset()
    ends = [d.step(np.zeros(3)).truncated for _ in range(3)]
    assert ends == [False, False, True]
    d.reset()
    assert d.step(np.zeros(3)).truncated is False and d.total_steps == 4


def test_safe_stop_records_count_and_time() -> None:
    d = NullDriver()
    assert d.safe_stop_count == 0 and d.last_safe_stop_time is None
    before = time.perf_counter()
    d.safe_stop()
    d.safe_stop()
    assert d.safe_stop_count == 2
    assert d.last_safe_stop_time is not None and before <= d.last_safe_stop_time <= time.perf_counter()
    d.close()
    assert d.closed
