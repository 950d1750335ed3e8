"""Safety envelope (clip, rate limit, NaN guard, limit checks) and the latched e-stop."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.robot.safety import (
    EStopCause,
    EStopLatch,
    FaultKind,
    SafetyConfig,
    SafetyEnvelope,
)

SPEC = EnvSpec("arm", 3, 2, (-1.0, 0.5), (1.0, 2.5), 0.01)


def test_clip_to_the_driver_limits() -> None:
    env = SafetyEnvelope(SPEC)
    safe, fault = env.apply(np.array([3.0, 0.0]))
    np.testing.assert_array_equal(safe, [1.0, 0.5])
    assert fault is None and env.counters.clipped == 1
    safe, _ = env.apply(np.array([0.2, 1.0]))
    np.testing.assert_allclose(safe, [0.2, 1.0])
    assert env.counters.clipped == 1 and env.counters.rate_limited == 0


def test_rate_limit_against_previous_command() -> None:
    env = SafetyEnvelope(SPEC, max_delta_per_step=[0.1, 0.5])
    first, _ = env.apply(np.array([0.0, 1.0]))  # no previous command yet: only clipped
    np.testing.assert_allclose(first, [0.0, 1.0])
    second, _ = env.apply(np.array([1.0, 0.5]))
    np.testing.assert_allclose(second, [0.1, 0.5])
    assert env.counters.rate_limited == 1
    third, _ = env.apply(np.array([1.0, 0.5]))
    np.testing.assert_allclose(third, [0.2, 0.5])
    env.reset()
    np.testing.assert_allclose(env.apply(np.array([-1.0, 2.5]))[0], [-1.0, 2.5])


def test_rate_limit_follows_what_the_driver_executed() -> None:
    env = SafetyEnvelope(SPEC, max_delta_per_step=0.1)
    env.apply(np.array([0.5, 1.0]))
    assert env.record_executed(np.array([0.0, 1.0])) is None  # the driver only got to 0.0
    np.testing.assert_allclose(env.apply(np.array([0.5, 1.0]))[0], [0.1, 1.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_holds_the_previous_command(bad: float) -> None:
    env = SafetyEnvelope(SPEC, hold="previous")
    env.apply(np.array([0.3, 2.0]))
    safe, fault = env.apply(np.array([bad, 1.0]))
    np.testing.assert_allclose(safe, [0.3, 2.0])
    assert fault is not None and fault.kind is FaultKind.NONFINITE_ACTION and not fault.latches
    assert "indices [0]" in fault.detail and env.counters.nonfinite_action == 1


def test_non_finite_action_holds_zeros_inside_the_limits() -> None:
    env = SafetyEnvelope(SPEC, hold="zeros")
    env.apply(np.array([0.3, 2.0]))
    safe, fault = env.apply(np.array([np.nan, np.nan]))
    np.testing.assert_allclose(safe, [0.0, 0.5])  # zero is below the second joint's range
    assert fault is not None


def test_malformed_action_never_raises() -> None:
    env = SafetyEnvelope(SPEC)
    safe, fault = env.apply(np.array([1.0, 2.0, 3.0]))
    assert safe.shape == (2,) and fault is not None and "shape" in fault.detail


def test_observation_guard() -> None:
    env = SafetyEnvelope.from_config(SPEC, SafetyConfig(obs_low=[-1, -1, -1], obs_high=[1, 1, 10]))
    assert env.check_obs(np.array([0.0, 0.0, 5.0])) is None
    fault = env.check_obs(np.array([0.0, np.nan, 0.0]))
    assert fault is not None and fault.kind is FaultKind.NONFINITE_OBS and not fault.latches
    fault = env.check_obs(np.array([0.0, -2.0, 0.0]))
    assert fault is not None and fault.kind is FaultKind.OBS_OUT_OF_LIMITS and fault.latches
    assert env.counters.as_dict() == {
        "clipped": 0,
        "rate_limited": 0,
        "nonfinite_obs": 1,
        "nonfinite_action": 0,
        "limit_violations": 1,
    }


def test_executed_action_outside_limits_is_a_latching_fault() -> None:
    env = SafetyEnvelope(SPEC)
    fault = env.record_executed(np.array([1.5, 1.0]))
    assert fault is not None and fault.kind is FaultKind.EXECUTED_OUT_OF_LIMITS and fault.latches
    assert env.record_executed(np.array([1.0 + 1e-6, 1.0])) is None  # within tolerance
    assert env.record_executed(np.array([np.nan, 1.0])) is not None


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="hold"):
        SafetyEnvelope(SPEC, hold="limp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        SafetyEnvelope(SPEC, max_delta_per_step=0.0)


class StopCounter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_estop_by_command_latches_and_needs_release(caplog: pytest.LogCaptureFixture) -> None:
    stop = StopCounter()
    latch = EStopLatch(stop)
    with caplog.at_level(logging.ERROR, logger="robot_wsrl.robot.safety"):
        assert latch.command("console button") is True
    assert latch.latched and stop.calls == 1 and latch.cause is EStopCause.COMMAND
    assert "E-STOP (command)" in caplog.text and "console button" in caplog.text
    assert latch.trigger(EStopCause.LIMIT_VIOLATION, "again") is False
    assert stop.calls == 1  # once per entry, not per trigger
    assert latch.latched  # nothing but release leaves it
    with pytest.raises(ValueError, match="operator"):
        latch.release("  ")
    assert latch.release("alice") is True and not latch.latched
    assert latch.release("alice") is False
    latch.trigger(EStopCause.DRIVER_FAULT, "link lost")
    assert stop.calls == 2
    kinds = [(e.kind, e.cause, e.operator) for e in latch.events]
    assert kinds == [
        ("enter", EStopCause.COMMAND, None),
        ("repeat", EStopCause.LIMIT_VIOLATION, None),
        ("release", EStopCause.COMMAND, "alice"),
        ("enter", EStopCause.DRIVER_FAULT, None),
    ]
    assert latch.events[0].detail == "console button" and latch.events[0].time > 0


def test_watchdog_trips_without_heartbeat() -> None:
    now = [100.0]
    stop = StopCounter()
    latch = EStopLatch(stop, watchdog_deadline_s=0.05, clock=lambda: now[0])
    now[0] += 0.04
    assert latch.check_watchdog() is False
    latch.heartbeat()
    now[0] += 0.04
    assert latch.check_watchdog() is False
    now[0] += 0.02
    assert latch.check_watchdog() is True
    assert latch.cause is EStopCause.WATCHDOG and stop.calls == 1 and "deadline 0.05" in latch.detail
    now[0] += 1.0
    assert latch.check_watchdog() is True and stop.calls == 1
    latch.release("bob")
    assert latch.check_watchdog() is False  # counts afresh from the release
    now[0] += 0.06
    assert latch.check_watchdog() is True and stop.calls == 2


def test_latch_holds_even_if_safe_stop_fails(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("bus error")

    latch = EStopLatch(broken)
    with caplog.at_level(logging.ERROR, logger="robot_wsrl.robot.safety"):
        assert latch.trigger(EStopCause.LIMIT_VIOLATION, "joint 3 past its limit")
    assert latch.latched and latch.safe_stop_errors == 1 and "safe_stop failed" in caplog.text
