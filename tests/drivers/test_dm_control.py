"""DmControlDriver: flattened observations, spec, executed actions, and the discount → end-of-episode map."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # headless: dm_control must not look for a display

from collections.abc import Iterator

import dm_env
import numpy as np
import pytest

from robot_wsrl.core.driver import Driver
from robot_wsrl.sim.dm_control_suite import DmControlDriver, classify_last_step


@pytest.fixture
def cartpole() -> Iterator[DmControlDriver]:
    d = DmControlDriver("cartpole", "swingup", seed=0)
    yield d
    d.close()


def test_spec_from_action_spec_and_control_timestep(cartpole: DmControlDriver) -> None:
    assert isinstance(cartpole, Driver)
    s = cartpole.spec
    assert s.name == "dm_control/cartpole-swingup"
    assert (s.obs_dim, s.act_dim) == (5, 1)
    assert s.action_low == (-1.0,) and s.action_high == (1.0,)
    assert s.control_period_s == pytest.approx(cartpole.env.control_timestep()) == pytest.approx(0.01)
    assert cartpole.obs_keys == ("position", "velocity")


def test_observation_is_the_dict_flattened_in_key_order(cartpole: DmControlDriver) -> None:
    obs, info = cartpole.reset()
    assert obs.shape == (5,) and obs.dtype == np.float32 and info == {}
    expected = cartpole.env.task.get_observation(cartpole.physics)
    np.testing.assert_allclose(obs, np.concatenate([expected["position"], expected["velocity"]]), rtol=1e-6)
    r = cartpole.step(np.zeros(1))
    assert r.obs.shape == (5,) and r.obs.dtype == np.float32
    assert r.executed_action.dtype == np.float32 and isinstance(r.reward, float)


def test_executed_action_is_the_clipped_command_the_physics_got(cartpole: DmControlDriver) -> None:
    cartpole.reset()
    r = cartpole.step(np.array([3.0]))
    np.testing.assert_array_equal(r.executed_action, np.array([1.0], dtype=np.float32))
    np.testing.assert_array_equal(cartpole.physics.data.ctrl, [1.0])
    np.testing.assert_array_equal(r.info["applied_ctrl"], cartpole.physics.data.ctrl)
    with pytest.raises(ValueError, match="shape"):
        cartpole.step(np.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        cartpole.step(np.array([np.inf]))


def test_time_limit_is_truncated_not_terminated() -> None:
    d = DmControlDriver("cartpole", "balance", seed=0, time_limit_s=0.05)
    try:
        d.reset()
        results = [d.step(np.zeros(1)) for _ in range(5)]
        assert not any(r.terminated or r.truncated for r in results[:4])
        assert results[-1].truncated and not results[-1].terminated
        assert results[-1].info["discount"] > 0
        with pytest.raises(RuntimeError, match="reset"):
            d.step(np.zeros(1))
    finally:
        d.close()


def test_discount_zero_is_terminated(cartpole: DmControlDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    obs = cartpole.env.reset().observation
    cartpole.reset()
    monkeypatch.setattr(cartpole.env, "step", lambda action: dm_env.termination(reward=1.0, observation=obs))
    r = cartpole.step(np.zeros(1))
    assert r.terminated and not r.truncated and r.reward == 1.0


def test_classify_last_step() -> None:
    obs = {"x": np.zeros(1)}
    assert classify_last_step(dm_env.transition(0.0, obs)) == (False, False)
    assert classify_last_step(dm_env.termination(0.0, obs)) == (True, False)
    assert classify_last_step(dm_env.truncation(0.0, obs)) == (False, True)
    assert classify_last_step(dm_env.truncation(0.0, obs, discount=0.5)) == (False, True)


def test_seeding_is_reproducible() -> None:
    a, b = DmControlDriver("cartpole", "swingup", seed=4), DmControlDriver("cartpole", "swingup", seed=4)
    try:
        np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
        first = a.reset(seed=11)[0]
        assert not np.array_equal(first, a.reset()[0])
        np.testing.assert_array_equal(first, a.reset(seed=11)[0])
    finally:
        a.close()
        b.close()


def test_safe_stop_zeroes_command_without_stepping(cartpole: DmControlDriver) -> None:
    cartpole.reset()
    cartpole.step(np.ones(1))
    t = cartpole.physics.data.time
    cartpole.safe_stop()
    assert cartpole.physics.data.time == t and np.all(cartpole.physics.data.ctrl == 0)
    assert cartpole.safe_stop_count == 1
