"""Runner: timing, executed-action transitions, fault handling, e-stop, pause and policy hot-swap."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robot_wsrl.apps.runner import cli
from robot_wsrl.core.driver import DriverFault, StepResult
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.checkpoint import build_actor
from robot_wsrl.learn.export import export_policy
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner, realtime_priority
from robot_wsrl.robot.safety import RunnerState, SafetyConfig
from robot_wsrl.wire.protocol import Transition

SPEC = EnvSpec("fake", 4, 2, (-2.0, -1.0), (2.0, 3.0), 0.002)


class FakeDriver:
    """Executes half of each command (a driver-side limit), so executed != commanded; scriptable faults."""

    def __init__(
        self,
        episode_len: int = 5,
        fault_at: int | None = None,
        nan_obs_at: int | None = None,
        execute_outside_at: int | None = None,
    ) -> None:
        self.spec = SPEC
        self.episode_len = episode_len
        self.fault_at, self.nan_obs_at, self.execute_outside_at = fault_at, nan_obs_at, execute_outside_at
        self.total = 0
        self.t = 0
        self.resets: list[int | None] = []
        self.safe_stops = 0
        self.commands: list[np.ndarray] = []
        self.executed: list[np.ndarray] = []

    def _obs(self) -> np.ndarray:
        return np.array([self.t, 0.5, -0.5, 0.1 * self.total], dtype=np.float32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.resets.append(seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> StepResult:
        self.total += 1
        if self.total == self.fault_at:
            raise DriverFault("EtherCAT link lost")
        self.commands.append(action.copy())
        executed = 0.5 * action if self.total != self.execute_outside_at else np.array([9.0, 0.0], np.float32)
        self.executed.append(executed)
        self.t += 1
        obs = self._obs()
        if self.total == self.nan_obs_at:
            obs[1] = np.nan
        return StepResult(obs, 1.0, self.t >= self.episode_len, False, executed)

    def safe_stop(self) -> None:
        self.safe_stops += 1

    def close(self) -> None:
        pass


def _export(out: Path, seed: int, version: int, spec: EnvSpec = SPEC) -> Path:
    torch.manual_seed(seed)
    return export_policy(build_actor(spec, [16, 16]), out / f"v{version}", spec=spec, version=version)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("policies")
    wrong = EnvSpec("fake", 5, 2, SPEC.action_low, SPEC.action_high, SPEC.control_period_s)
    return {"v1": _export(out, 0, 1), "v2": _export(out, 1, 2), "wrong_obs": _export(out, 2, 3, wrong)}


def _runner(paths: dict[str, Path], driver: FakeDriver, **kwargs: Any) -> Runner:
    return Runner(driver, OnnxPolicy.load(paths["v1"]), realtime=False, **kwargs)


def test_realtime_loop_runs_n_steps_at_the_period(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=1000)
    runner = Runner(driver, OnnxPolicy.load(paths["v1"]), seed=1)
    start = time.perf_counter()
    status = runner.run(max_steps=100)
    elapsed = time.perf_counter() - start
    assert status["steps"] == 100 and driver.total == 100
    assert elapsed >= 99 * SPEC.control_period_s
    assert status["loop_rate_hz"] > 0 and status["jitter_p99_us"] >= status["jitter_p50_us"] >= 0
    assert status["state"] == "idle" and driver.safe_stops == 1  # leaving run stops the robot


def test_transitions_record_the_executed_action(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=4)
    seen: list[Transition] = []
    runner = _runner(paths, driver, seed=0, on_transition=seen.append)
    status = runner.run(max_episodes=2)
    assert status["episodes_done"] == 2 and status["last_episode_return"] == 4.0
    assert len(seen) == 8 and runner.transitions == seen
    assert [(t.episode, t.step) for t in seen] == [(e, s) for e in range(2) for s in range(4)]
    for t, executed, command in zip(seen, driver.executed, driver.commands, strict=True):
        np.testing.assert_allclose(t.action, SPEC.to_normalised(executed))
        assert not np.allclose(t.action, SPEC.to_normalised(command))
        assert np.all(command >= SPEC.low) and np.all(command <= SPEC.high)
    assert [t.terminated for t in seen[:4]] == [False, False, False, True]
    np.testing.assert_array_equal(seen[0].next_obs, seen[1].obs)
    assert driver.resets == [0, None]  # the first episode is seeded, later ones continue the stream


def test_seeded_runs_are_reproducible(paths: dict[str, Path]) -> None:
    actions = []
    for _ in range(2):
        runner = _runner(paths, FakeDriver(), seed=5)
        runner.run(max_steps=10)
        actions.append(np.stack([t.action for t in runner.transitions]))
    np.testing.assert_array_equal(actions[0], actions[1])


def test_deterministic_mode_uses_tanh_mean(paths: dict[str, Path]) -> None:
    driver = FakeDriver()
    runner = _runner(paths, driver, deterministic=True)
    runner.run(max_steps=1)
    policy = OnnxPolicy.load(paths["v1"])
    want = SPEC.to_robot_action(policy.act(np.array([0, 0.5, -0.5, 0], np.float32), deterministic=True))
    np.testing.assert_allclose(driver.commands[0], want, atol=1e-6)


def test_nan_observation_gives_a_hold_command_not_a_crash(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=100, nan_obs_at=3)
    runner = _runner(paths, driver)
    status = runner.run(max_steps=6)
    assert driver.total == 6 and status["safety"]["nonfinite_obs"] == 1
    np.testing.assert_array_equal(
        driver.commands[3], driver.executed[2]
    )  # held the previous executed command
    assert status["last_fault"].startswith("nonfinite_obs") and status["last_stop_cause"] is None
    assert status["dropped_transitions"] == 2  # the step into the NaN and the step out of it
    assert all(np.all(np.isfinite(t.next_obs)) and np.all(np.isfinite(t.obs)) for t in runner.transitions)


def test_driver_fault_latches_faulted_and_stops_once(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=100, fault_at=4)
    runner = _runner(paths, driver)
    status = runner.run(max_steps=20)
    assert status["state"] == "faulted" and status["last_stop_cause"] == "driver_fault"
    assert "EtherCAT link lost" in status["last_stop_detail"]
    assert driver.safe_stops == 1 and driver.total == 4 and status["ticks"] == 20
    runner.run(max_steps=5)
    assert driver.total == 4 and driver.safe_stops == 1  # still latched: no steps, no second stop
    assert runner.release("carol")
    status = runner.run(max_steps=3)
    assert status["state"] == "idle" and driver.total == 7 and len(driver.resets) == 2


def test_executed_action_outside_limits_latches_estop(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=100, execute_outside_at=2)
    status = _runner(paths, driver).run(max_steps=10)
    assert status["state"] == "estopped" and status["last_stop_cause"] == "limit_violation"
    assert driver.total == 2 and driver.safe_stops == 1


def test_estop_command_during_run_stops_stepping(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=100)
    holder: dict[str, Runner] = {}

    def on_transition(t: Transition) -> None:
        if t.step == 2:
            holder["runner"].estop("operator pressed the button")

    runner = holder["runner"] = _runner(paths, driver, on_transition=on_transition)
    status = runner.run(max_steps=10)
    assert status["state"] == "estopped" and status["last_stop_cause"] == "command"
    assert driver.total == 3 and driver.safe_stops == 1
    assert runner.latch.events[0].detail == "operator pressed the button"


def test_watchdog_trips_in_the_loop(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=1000)
    runner = Runner(driver, OnnxPolicy.load(paths["v1"]), watchdog_deadline_s=0.02)
    start = time.time()
    status = runner.run(max_steps=40)
    assert status["state"] == "estopped" and status["last_stop_cause"] == "watchdog"
    assert driver.total < 40 and driver.safe_stops == 1
    assert runner.latch.events[0].time - start >= 0.02  # never before its deadline


def test_pause_holds_the_robot_until_resume(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=100)
    runner = _runner(paths, driver)
    runner.pause()
    assert driver.safe_stops == 1
    runner.run(max_steps=5)
    assert driver.total == 0 and driver.safe_stops == 1
    runner.resume()
    runner.run(max_steps=5)
    assert driver.total == 5


def test_waiting_for_credit_keeps_the_episode_and_a_full_pause_upgrades_the_wait(
    paths: dict[str, Path],
) -> None:
    driver = FakeDriver(episode_len=100)
    runner = _runner(paths, driver)
    seen: list[tuple[int, int, bool]] = []

    def on_transition(t: Transition) -> None:  # the link's role: hold at step 3, let it go on shortly
        seen.append((t.episode, t.step, runner.status()["waiting"]))
        if len(seen) == 3:
            runner.pause(keep_episode=True)  # a simulator waiting for credit: no safe stop, no reset
            assert runner.state is not RunnerState.PAUSED and runner.status()["waiting"]
            threading.Timer(0.05, runner.resume).start()

    runner._on_transition = on_transition
    runner.run(max_steps=80)  # waiting ticks count: about 50 of them pass while it waits
    assert driver.total < 80 and len(driver.resets) == 1 and driver.safe_stops == 1  # the end of the run
    assert [(e, i) for e, i, _ in seen] == [(0, i) for i in range(driver.total)]  # one unbroken episode

    runner.pause(keep_episode=True)
    runner.pause()  # e.g. the spool filled while waiting: now the robot is brought to its safe state
    assert not runner.status()["waiting"] and driver.safe_stops == 2


def test_state_while_running_and_phase(paths: dict[str, Path]) -> None:
    runner = _runner(paths, FakeDriver(episode_len=100), phase=RunnerState.WARMUP)
    states: list[str] = []
    runner._on_transition = lambda t: states.append(runner.status()["state"])
    runner.run(max_steps=2)
    runner.set_phase(RunnerState.FINE_TUNING)
    runner.run(max_steps=1)
    assert states == ["warmup", "warmup", "fine_tuning"]
    with pytest.raises(ValueError, match="phase"):
        runner.set_phase(RunnerState.PAUSED)


def test_a_runner_without_a_learner_says_running_and_no_phase(paths: dict[str, Path]) -> None:
    runner = _runner(paths, FakeDriver(episode_len=3), phase=None)  # what `robot-wsrl runner` makes
    seen: list[tuple[str, Any, int, int]] = []
    runner._on_transition = lambda t: seen.append(
        ((s := runner.status())["state"], s["phase"], s["episode"], s["episodes_done"])
    )
    assert runner.status()["episode"] == 0 and runner.status()["phase"] is None  # none started yet
    end = runner.run(max_episodes=2)
    assert {(state, phase) for state, phase, _, _ in seen} == {("running", None)}
    # the episode under way counts from 1; a finished one is counted by both (no off-by-one at the end)
    assert [(episode, done) for _, _, episode, done in seen] == [(1, 0)] * 3 + [(2, 1)] * 3
    assert (end["state"], end["phase"], end["episode"], end["episodes_done"]) == ("idle", None, 2, 2)


def _swap_test(paths: dict[str, Path], swap_mode: str) -> list[tuple[int, int, int]]:
    """Offer v2 during step 1 of episode 0; returns (episode, step, policy version) per transition."""
    v2 = OnnxPolicy.load(paths["v2"])
    holder: dict[str, Runner] = {}

    def on_transition(t: Transition) -> None:
        if (t.episode, t.step) == (0, 1):
            assert holder["runner"].offer_policy(v2).accepted

    runner = holder["runner"] = _runner(
        paths, FakeDriver(episode_len=4), swap_mode=swap_mode, on_transition=on_transition
    )
    status = runner.run(max_episodes=2)
    assert status["policy_version"] == 2 and status["previous_policy_version"] == 1 and status["swaps"] == 1
    return [(t.episode, t.step, t.policy_version) for t in runner.transitions]


def test_swap_between_episodes(paths: dict[str, Path]) -> None:
    versions = _swap_test(paths, "between_episodes")
    assert [v for e, _, v in versions if e == 0] == [1, 1, 1, 1]
    assert [v for e, _, v in versions if e == 1] == [2, 2, 2, 2]


def test_swap_immediately(paths: dict[str, Path]) -> None:
    versions = _swap_test(paths, "immediate")
    assert [v for e, _, v in versions if e == 0] == [1, 1, 2, 2]


def test_bad_candidates_are_rejected_and_the_running_policy_kept(
    paths: dict[str, Path], tmp_path: Path
) -> None:
    runner = _runner(paths, FakeDriver())
    result = runner.offer_policy(paths["wrong_obs"])
    assert not result.accepted and "obs_dim 5 != expected 4" in result.reason
    corrupt = tmp_path / "policy.onnx"
    corrupt.write_bytes(paths["v2"].read_bytes()[:-10])
    (tmp_path / "policy.json").write_bytes(paths["v2"].with_suffix(".json").read_bytes())
    result = runner.offer_policy(corrupt)
    assert not result.accepted and "sha256 mismatch" in result.reason
    assert not runner.offer_policy(tmp_path / "missing.onnx").accepted
    status = runner.run(max_steps=3)
    assert status["policy_version"] == 1 and status["pending_policy_version"] is None
    assert status["rejected_policies"] == 3 and status["swaps"] == 0 and status["steps"] == 3


def test_rollback_restores_the_previous_policy(paths: dict[str, Path]) -> None:
    runner = _runner(paths, FakeDriver(episode_len=3))
    assert not runner.rollback().accepted  # nothing to roll back to yet
    assert runner.offer_policy(paths["v2"]).accepted
    runner.run(max_episodes=1)
    assert runner.status()["policy_version"] == 2
    assert runner.rollback().accepted
    status = runner.run(max_episodes=1)
    assert status["policy_version"] == 1 and status["previous_policy_version"] is None
    assert [t.policy_version for t in runner.transitions] == [2, 2, 2, 1, 1, 1]
    assert not runner.rollback().accepted


def test_offer_from_another_thread_while_running(paths: dict[str, Path]) -> None:
    runner = Runner(FakeDriver(episode_len=20), OnnxPolicy.load(paths["v1"]))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, kwargs={"stop_event": stop})
    thread.start()
    try:
        assert runner.offer_policy(paths["v2"]).accepted
        deadline = time.monotonic() + 5
        while runner.status()["policy_version"] != 2 and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join(5)
    assert runner.status()["policy_version"] == 2 and not thread.is_alive()


def test_runner_refuses_a_policy_for_another_robot(paths: dict[str, Path]) -> None:
    from robot_wsrl.robot.policy import PolicyError

    with pytest.raises(PolicyError, match="obs_dim"):
        Runner(FakeDriver(), OnnxPolicy.load(paths["wrong_obs"]))


def test_rate_limit_config_reaches_the_envelope(paths: dict[str, Path]) -> None:
    driver = FakeDriver(episode_len=100)
    runner = _runner(paths, driver, safety=SafetyConfig(max_delta_per_step=0.01))
    runner.run(max_steps=5)
    commands, executed = np.stack(driver.commands), np.stack(driver.executed)
    assert np.all(np.abs(commands[1:] - executed[:-1]) <= 0.01 + 1e-6)  # against the previous executed action


def test_null_driver_from_the_cli_factory(paths: dict[str, Path]) -> None:
    policy = OnnxPolicy.load(paths["v1"])
    with pytest.raises(ValueError, match="unknown driver"):
        make_driver("warp:drive", spec=policy.spec)
    null_spec = EnvSpec("n", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.002)
    driver = make_driver("null", spec=null_spec)
    assert (driver.spec.obs_dim, driver.spec.act_dim, driver.spec.control_period_s) == (4, 2, 0.002)


def test_a_failing_transition_consumer_stops_the_robot(paths: dict[str, Path]) -> None:
    def broken(t: Transition) -> None:
        raise OSError("spool disk full")

    driver = FakeDriver(episode_len=100)
    status = _runner(paths, driver, on_transition=broken).run(max_steps=5)
    assert status["state"] == "faulted" and status["last_stop_cause"] == "internal_error"
    assert "spool disk full" in status["last_stop_detail"] and driver.total == 1 and driver.safe_stops == 1


def test_realtime_priority_is_optional_and_restored() -> None:
    before = os.sched_getscheduler(0)
    with realtime_priority(None) as applied:
        assert applied is False
    with realtime_priority(10) as applied:
        assert os.sched_getscheduler(0) == (os.SCHED_FIFO if applied else before)
    assert os.sched_getscheduler(0) == before


def test_failing_safe_stop_on_pause_latches_a_driver_fault(paths: dict[str, Path]) -> None:
    driver = FakeDriver()

    def broken() -> None:
        raise DriverFault("brake controller offline")

    driver.safe_stop = broken  # type: ignore[method-assign]
    runner = _runner(paths, driver)
    runner.pause()
    assert runner.state is RunnerState.FAULTED and "brake controller offline" in runner.latch.detail


def test_cli_runs_a_policy_on_the_null_driver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = EnvSpec("any", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.001)
    path = _export(tmp_path, 0, 4, spec)
    state = ["--state", str(tmp_path / "state")]
    assert cli(["--policy", str(path), "--driver", "null", "--steps", "50", *state]) == 0
    out = capsys.readouterr().out
    assert "version 4 on null" in out and "steps                50" in out
    assert cli(["--policy", str(tmp_path / "missing.onnx"), "--driver", "null", "--steps", "5", *state]) == 2


@pytest.mark.parametrize(
    ("limits", "option"),
    [(["--steps", "-5"], "--steps"), (["--episodes", "-1"], "--episodes"), (["--steps", "0"], "--steps")],
)
def test_cli_refuses_a_limit_below_one_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limits: list[str], option: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["--policy", str(tmp_path / "policy.onnx"), "--driver", "null", *limits])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.splitlines() == [
        f"robot-wsrl runner: argument {option}: must be a positive integer, got {limits[1]}"
    ]
    assert not (tmp_path / "runs").exists()  # refused before anything was set up
