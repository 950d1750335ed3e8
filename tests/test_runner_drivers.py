"""The runner on real drivers: the CLI on gymnasium, dm_control and the emulated robot, a robot killed
mid-run, and NaN observations from a simulator.

Loopback only, free ports, a timeout on every wait; every robot process, driver and runner thread is
cleaned up by a fixture or a `finally`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import free_port

from robot_wsrl.apps.runner import cli
from robot_wsrl.core.driver import Driver, StepResult
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.checkpoint import build_actor
from robot_wsrl.learn.export import export_policy
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner
from robot_wsrl.robot.safety import RunnerState
from robot_wsrl.sim.emulated_robot import EmulatedRobotProcess, spawn_emulated_robot
from robot_wsrl.sim.gym_mujoco import GymMujocoDriver

CLI_STEPS = 100  # ticks per CLI run: long enough (about a second) for the live status line to redraw
DEADLINE_MARGIN_S = 1.0  # scheduling slack on a loaded 2-core CI machine (busy loops beside the test)


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One exported policy per robot, built against the spec its driver reports."""
    out = tmp_path_factory.mktemp("policies")
    paths = {}
    for key, name in (("hopper", "gym:Hopper-v5"), ("cartpole", "dmc:cartpole-swingup")):
        driver = make_driver(name)
        try:
            torch.manual_seed(0)
            actor = build_actor(driver.spec, [64, 64])
            paths[key] = export_policy(actor, out / key, spec=driver.spec, step=0, config_hash="test")
        finally:
            driver.close()
    return paths


@pytest.fixture
def robots() -> Iterator[Callable[..., tuple[EmulatedRobotProcess, str]]]:
    """Spawn emulated robots on free loopback ports; stop (or reap) every one at the end."""
    procs: list[EmulatedRobotProcess] = []

    def spawn(**kwargs: Any) -> tuple[EmulatedRobotProcess, str]:
        proc, endpoint = spawn_emulated_robot("Hopper-v5", startup_timeout_s=30.0, seed=0, **kwargs)
        procs.append(proc)
        return proc, endpoint

    yield spawn
    for proc in procs:
        proc.stop(timeout_s=5.0)
        assert not proc.alive()


# ----- (a) the CLI on each kind of driver -----


@pytest.mark.parametrize(
    ("policy", "driver"),
    [("hopper", "gym:Hopper-v5"), ("cartpole", "dmc:cartpole-swingup"), ("hopper", "emulated")],
)
def test_cli_runs_an_exported_policy_with_a_live_status_line(
    policy: str,
    driver: str,
    policies: dict[str, Path],
    robots: Callable[..., tuple[EmulatedRobotProcess, str]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    extra = ["--state", str(tmp_path / "state")]
    if driver == "emulated":  # a robot process with the sim-to-real preset (latency, jitter, drops)
        _, endpoint = robots(preset="real")
        driver, extra = f"emulated:{endpoint}", [*extra, "--driver-timeout", "0.25"]
    argv = ["--policy", str(policies[policy]), "--driver", driver, "--steps", str(CLI_STEPS), *extra]
    assert cli(argv) == 0
    out, err = capsys.readouterr()
    assert f"version 0 on {driver}" in out and f"steps                {CLI_STEPS}" in out
    assert "last_stop_cause      None" in out
    lines = [line for line in err.splitlines() if " v0 | ep " in line]  # stderr is no terminal: lines
    assert any(line.startswith("running ") for line in lines)  # shown while running (no learner: no phase)
    assert lines[-1].startswith("idle") and err.endswith("\n")  # the final line, after the run, ended


def test_cli_refuses_an_unreachable_robot_and_a_misplaced_deadline(
    policies: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hopper = ["--policy", str(policies["hopper"]), "--steps", "5", "--state", str(tmp_path / "state")]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    assert cli([*hopper, "--driver", f"emulated:{endpoint}", "--driver-timeout", "0.05"]) == 2
    assert "link lost" in capsys.readouterr().err
    assert cli([*hopper, "--driver", "gym:Hopper-v5", "--driver-timeout", "0.05"]) == 2
    assert "emulated:* drivers only" in capsys.readouterr().err


class VirtualClock:
    """Stands in for the runner module's `time` and `sleep_until`: time moves only when someone waits, so
    the loop's schedule is checked exactly, however loaded the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    monotonic = perf_counter

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def sleep_until(self, deadline: float, spin_s: float = 0.0) -> None:
        self.now = max(self.now, deadline)


class RobotClockDriver:
    """A robot on its own clock (`keeps_time`): each step returns at the robot's next tick; the step
    numbered `late_at` reports that it missed its tick."""

    keeps_time = True

    def __init__(self, spec: EnvSpec, late_at: int, clock: VirtualClock) -> None:
        self.spec, self.late_at, self.clock = spec, late_at, clock
        self.steps = 0
        self._next_tick = 0.0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._next_tick = self.clock.now + self.spec.control_period_s
        return np.zeros(self.spec.obs_dim, np.float32), {}

    def step(self, action: np.ndarray) -> StepResult:
        self.clock.sleep_until(self._next_tick)
        self._next_tick += self.spec.control_period_s
        self.steps += 1
        executed = np.clip(action, self.spec.low, self.spec.high)
        obs = np.zeros(self.spec.obs_dim, np.float32)
        return StepResult(obs, 0.0, False, False, executed, {"late": self.steps == self.late_at})

    def safe_stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_robot_clock_paces_the_loop_and_reports_the_missed_deadlines(
    policies: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runner and robot clocks in lock-step would make every reply look late and halve the rate; the runner
    follows the robot (on a virtual clock: exact, and blind to the machine's load)."""
    import robot_wsrl.robot.runner as runner_module

    clock = VirtualClock()
    monkeypatch.setattr(runner_module, "time", clock)
    monkeypatch.setattr(runner_module, "sleep_until", clock.sleep_until)
    policy = OnnxPolicy.load(policies["hopper"])
    driver = RobotClockDriver(policy.spec, late_at=5, clock=clock)
    status = Runner(driver, policy, seed=0).run(max_steps=25)
    assert driver.steps == 25 and status["overruns"] == 1
    assert status["loop_rate_hz"] == pytest.approx(1.0 / policy.spec.control_period_s)
    assert status["jitter_p99_us"] == pytest.approx(0.0, abs=1e-6)


# ----- (b) a robot killed mid-run -----


def test_killed_robot_faults_the_runner_within_the_driver_deadline(
    policies: dict[str, Path], robots: Callable[..., tuple[EmulatedRobotProcess, str]]
) -> None:
    proc, endpoint = robots(preset="real", drop_prob=0.0)
    driver = make_driver(f"emulated:{endpoint}", timeout_s=0.1)
    assert driver.timeout_s == 0.1 and driver.keeps_time
    runner = Runner(driver, OnnxPolicy.load(policies["hopper"]), seed=0)
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(runner.run(max_steps=100_000, stop_event=stop)))
    thread.start()
    try:
        deadline = time.monotonic() + 20.0
        while runner.status()["steps"] < 20:
            assert time.monotonic() < deadline and thread.is_alive(), "runner did not start stepping"
            time.sleep(0.01)
        killed_at = time.perf_counter()
        proc.kill()
        deadline = time.monotonic() + 10.0
        while runner.state is not RunnerState.FAULTED:
            assert time.monotonic() < deadline, f"runner never faulted: {runner.status()}"
            time.sleep(0.005)
        # FAULTED is reported only once the latch has run the driver's safe stop (safe first, then report)
        assert driver.safe_stop_count == 1 and driver.last_safe_stop_time is not None
        bound = driver.worst_case_s + driver.spec.control_period_s + DEADLINE_MARGIN_S
        assert driver.last_safe_stop_time - killed_at <= bound
    finally:
        stop.set()
        thread.join(timeout=10.0)
        driver.close()
    assert not thread.is_alive()  # run() returned
    assert result["state"] == "faulted" and result["last_stop_cause"] == "driver_fault"
    assert "link lost" in result["last_stop_detail"]
    # ... once; it could not reach the dead robot, which is recorded, not raised
    assert driver.safe_stop_count == 1 and runner.latch.safe_stop_errors == 1


# ----- (c) NaN observations from a simulator -----


class NanObsDriver:
    """Wraps a driver; the observation of each step numbered in `nan_at` (from 1, over the whole run) gets a
    NaN, like a sensor dropout. Records what was commanded and executed."""

    def __init__(self, inner: Driver, nan_at: set[int]) -> None:
        self.inner, self.spec, self.nan_at = inner, inner.spec, nan_at
        self.steps = 0
        self.ended_at: list[int] = []
        self.commands: list[np.ndarray] = []
        self.executed: list[np.ndarray] = []

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return self.inner.reset(seed)

    def step(self, action: np.ndarray) -> StepResult:
        self.steps += 1
        self.commands.append(np.array(action))
        result = self.inner.step(action)
        self.executed.append(np.array(result.executed_action))
        if result.terminated or result.truncated:
            self.ended_at.append(self.steps)
        if self.steps in self.nan_at:
            obs = np.array(result.obs)
            obs[1] = np.nan
            result = dataclasses.replace(result, obs=obs)
        return result

    def safe_stop(self) -> None:
        self.inner.safe_stop()

    def close(self) -> None:
        self.inner.close()


def test_nan_observations_hold_the_robot_and_the_loop_goes_on(policies: dict[str, Path]) -> None:
    """The runner's design: a non-finite observation is a non-latching fault; that tick sends the hold
    command (the last executed action), its transitions are dropped, and the episode continues."""
    driver = NanObsDriver(GymMujocoDriver("Hopper-v5", seed=0), nan_at={2, 3, 7})
    try:
        runner = Runner(driver, OnnxPolicy.load(policies["hopper"]), seed=0, realtime=False)
        status = runner.run(max_steps=12)
    finally:
        driver.close()
    assert driver.steps == 12 and not [e for e in driver.ended_at if e <= 8]  # NaNs fed to the policy
    for step in (3, 4, 8):  # the ticks that saw a NaN observation held the previous executed action
        np.testing.assert_array_equal(driver.commands[step - 1], driver.executed[step - 2])
    assert status["safety"]["nonfinite_obs"] == 3 and status["last_fault"].startswith("nonfinite_obs")
    assert status["state"] == "idle" and status["last_stop_cause"] is None  # no e-stop, run completed
    assert status["dropped_transitions"] == 5  # every transition into or out of a NaN observation
    assert len(runner.transitions) == 7
    assert all(np.all(np.isfinite(t.obs)) and np.all(np.isfinite(t.next_obs)) for t in runner.transitions)
