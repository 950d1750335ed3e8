"""GymMujocoDriver and dynamics shifts: spec, executed actions, episode ends, shifts that really shift."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

import mujoco
import numpy as np
import pytest

from robot_wsrl.core.driver import Driver
from robot_wsrl.sim.gym_mujoco import GymMujocoDriver
from robot_wsrl.sim.shift import (
    SHIFT_DIR,
    DynamicsShift,
    load_shift_preset,
    normalise_preset,
    parse_simple_yaml,
    preset_names,
)

ACTIONS = np.random.default_rng(123).uniform(-1, 1, size=(25, 3)).astype(np.float32)


@pytest.fixture
def hopper() -> Iterator[GymMujocoDriver]:
    d = GymMujocoDriver("Hopper-v5", seed=0)
    yield d
    d.close()


def rollout(driver: GymMujocoDriver, seed: int = 0, actions: np.ndarray = ACTIONS) -> np.ndarray:
    obs, _ = driver.reset(seed=seed)
    out = [obs]
    for a in actions:
        r = driver.step(a)
        out.append(r.obs)
        if r.terminated or r.truncated:
            break
    return np.stack(out)


def test_spec_comes_from_the_env(hopper: GymMujocoDriver) -> None:
    assert isinstance(hopper, Driver)
    s = hopper.spec
    assert (s.name, s.obs_dim, s.act_dim) == ("Hopper-v5", 11, 3)
    assert s.action_low == (-1.0, -1.0, -1.0) and s.action_high == (1.0, 1.0, 1.0)
    assert s.control_period_s == pytest.approx(hopper.env.unwrapped.dt) == pytest.approx(0.008)


def test_reset_and_step_shapes_and_dtypes(hopper: GymMujocoDriver) -> None:
    obs, info = hopper.reset()
    assert obs.shape == (11,) and obs.dtype == np.float32 and isinstance(info, dict)
    r = hopper.step(np.zeros(3, dtype=np.float32))
    assert r.obs.shape == (11,) and r.obs.dtype == np.float32
    assert r.executed_action.shape == (3,) and r.executed_action.dtype == np.float32
    assert isinstance(r.reward, float) and isinstance(r.terminated, bool) and isinstance(r.truncated, bool)


def test_executed_action_is_the_clipped_command_the_physics_got(hopper: GymMujocoDriver) -> None:
    hopper.reset()
    r = hopper.step(np.array([2.5, -7.0, 0.25]))
    np.testing.assert_array_equal(r.executed_action, np.array([1.0, -1.0, 0.25], dtype=np.float32))
    np.testing.assert_array_equal(r.executed_action.astype(np.float64), hopper.data.ctrl)
    np.testing.assert_array_equal(r.info["applied_ctrl"], hopper.data.ctrl)


def test_bad_commands_are_refused(hopper: GymMujocoDriver) -> None:
    with pytest.raises(RuntimeError, match="reset"):
        hopper.step(np.zeros(3))
    hopper.reset()
    with pytest.raises(ValueError, match="shape"):
        hopper.step(np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        hopper.step(np.array([0.0, np.nan, 0.0]))


def test_hopper_that_falls_is_terminated_not_truncated(hopper: GymMujocoDriver) -> None:
    hopper.reset(seed=0)
    for _ in range(100):
        r = hopper.step(np.array([1.0, -1.0, 1.0]))
        if r.terminated or r.truncated:
            break
    assert r.terminated and not r.truncated
    with pytest.raises(RuntimeError, match="reset"):
        hopper.step(np.zeros(3))


def test_time_limit_is_truncated_not_terminated() -> None:
    d = GymMujocoDriver("Hopper-v5", max_episode_steps=5, seed=0)
    try:
        d.reset()
        ends = [d.step(np.zeros(3)) for _ in range(5)]
        assert not any(r.terminated or r.truncated for r in ends[:4])
        assert ends[4].truncated and not ends[4].terminated
    finally:
        d.close()


def test_same_seed_same_trajectory() -> None:
    a, b = GymMujocoDriver("Hopper-v5"), GymMujocoDriver("Hopper-v5")
    try:
        np.testing.assert_array_equal(rollout(a, seed=7), rollout(b, seed=7))
        assert not np.array_equal(rollout(a, seed=7)[0], rollout(a, seed=8)[0])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("field", [f.name for f in fields(DynamicsShift)])
def test_each_scale_changes_the_dynamics(field: str) -> None:
    nominal, shifted = (
        GymMujocoDriver("Hopper-v5"),
        GymMujocoDriver("Hopper-v5", shift=DynamicsShift(**{field: 1.6})),
    )
    try:
        ref, alt = rollout(nominal), rollout(shifted)
        np.testing.assert_array_equal(ref[0], alt[0])  # same start: the shift acts through the dynamics
        n = min(len(ref), len(alt))
        assert np.max(np.abs(ref[:n] - alt[:n])) > 1e-3
    finally:
        nominal.close()
        shifted.close()


def test_shift_scales_from_the_original_and_is_idempotent(hopper: GymMujocoDriver) -> None:
    m = hopper.model
    orig = {
        k: np.array(getattr(m, k)) for k in ("body_mass", "geom_friction", "actuator_gainprm", "dof_damping")
    }
    shift = DynamicsShift(
        body_mass_scale=1.25, friction_scale=0.8, actuator_gain_scale=0.85, joint_damping_scale=1.5
    )
    shift.apply(m)
    once = {k: np.array(getattr(m, k)) for k in orig}
    shift.apply(m)
    for k in orig:
        np.testing.assert_array_equal(getattr(m, k), once[k])
    np.testing.assert_allclose(m.body_mass, orig["body_mass"] * 1.25)
    np.testing.assert_allclose(m.geom_friction, orig["geom_friction"] * 0.8)
    np.testing.assert_allclose(m.actuator_gainprm[:, 0], orig["actuator_gainprm"][:, 0] * 0.85)
    np.testing.assert_allclose(m.dof_damping, orig["dof_damping"] * 1.5)
    DynamicsShift().apply(m)  # nominal restores the model exactly
    for k in orig:
        np.testing.assert_array_equal(getattr(m, k), orig[k])


def test_position_servo_keeps_tracking_its_target_under_a_gain_shift() -> None:
    m = mujoco.MjModel.from_xml_string(
        """<mujoco><worldbody><body><joint name="j" type="hinge"/><geom size="0.1"/></body></worldbody>
        <actuator><position joint="j" kp="10" kv="2"/><motor joint="j" gear="1"/></actuator></mujoco>"""
    )
    DynamicsShift(actuator_gain_scale=0.5).apply(m)
    assert m.actuator_gainprm[0, 0] == pytest.approx(5.0) and m.actuator_biasprm[0, 1] == pytest.approx(-5.0)
    assert m.actuator_biasprm[0, 2] == pytest.approx(-1.0)
    assert m.actuator_gainprm[1, 0] == pytest.approx(0.5) and np.all(m.actuator_biasprm[1] == 0)


def test_invalid_shift_is_refused() -> None:
    with pytest.raises(ValueError, match="body_mass_scale"):
        DynamicsShift(body_mass_scale=0.0)
    with pytest.raises(ValueError, match="unknown"):
        DynamicsShift.from_dict({"mass": 2.0})


def test_sensor_noise_changes_observations_not_physics() -> None:
    clean = GymMujocoDriver("Hopper-v5", seed=3)
    noisy = GymMujocoDriver("Hopper-v5", seed=3, obs_noise_std=0.05)
    try:
        diff = rollout(clean, seed=3, actions=ACTIONS[:10]) - rollout(noisy, seed=3, actions=ACTIONS[:10])
        assert 0.03 < diff.std() < 0.07
        np.testing.assert_array_equal(clean.data.qpos, noisy.data.qpos)
    finally:
        clean.close()
        noisy.close()


def test_safe_stop_holds_with_zero_command_without_stepping(hopper: GymMujocoDriver) -> None:
    hopper.reset()
    hopper.step(np.ones(3))
    t = hopper.data.time
    hopper.safe_stop()
    assert hopper.data.time == t and np.all(hopper.data.ctrl == 0)
    assert hopper.safe_stop_count == 1 and hopper.last_safe_stop_time is not None
    hopper.step(np.ones(3))  # a stop is not a latch: the runner owns the e-stop state


def test_shipped_presets_load_and_parse_without_pyyaml() -> None:
    yaml = pytest.importorskip("yaml")
    assert {"nominal", "real_mild", "real"} <= set(preset_names())
    for name in preset_names():
        text = (SHIFT_DIR / f"{name}.yaml").read_text()
        assert parse_simple_yaml(text) == yaml.safe_load(text)
        p = load_shift_preset(name)
        assert set(p) == {
            "dynamics",
            "visual",
            "description",
            "for_driver",
            "sensor_noise_std",
            "action_latency_steps",
            "jitter_ms",
            "drop_prob",
        }
    nominal, real = load_shift_preset("nominal"), load_shift_preset("real")
    assert (
        nominal["dynamics"].is_nominal and nominal["drop_prob"] == 0 and nominal["action_latency_steps"] == 0
    )
    assert (
        not real["dynamics"].is_nominal and real["sensor_noise_std"] > 0 and real["action_latency_steps"] >= 1
    )


def test_bad_presets_give_clear_errors() -> None:
    with pytest.raises(FileNotFoundError, match="available"):
        load_shift_preset("no_such_preset")
    with pytest.raises(ValueError, match="invalid"):
        load_shift_preset("../nominal")
    with pytest.raises(ValueError, match="unknown keys"):
        normalise_preset({"latency": 1})
    with pytest.raises(ValueError, match="drop_prob"):
        normalise_preset({"drop_prob": 1.5})


def test_an_unknown_env_id_is_one_clear_error() -> None:
    from robot_wsrl.robot.drivers import make_driver

    with pytest.raises(ValueError, match=r"gym:Hoper-v5: .*Did you mean: `Hopper`"):
        make_driver("gym:Hoper-v5")
