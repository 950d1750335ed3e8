"""The gate's episodes: a policy in the onboard `Runner`, on a simulated robot with one shift preset, as the
robot will run it; many at once in worker processes.

What the robot does is reproduced here: the same action sampling as the runner (stochastic unless the
robot runs deterministically), the preset's dynamics, sensor noise and action latency (`make_driver` builds
them all). The preset's jitter and packet drops change when a command arrives, not what the physics does
with it, so they are not replayed.

Episode i of a variant runs on environment seed `seed + i`, whatever the policy: the same initial state and
the same sensor noise, so a candidate's and a reference's episode i are a real pair. The action noise is
seeded from (seed, i, the policy's sha256): independent between two different policies, never a copy of
the other's. Everything is a function of the episode's index, so results do not depend on how many
workers ran them, nor in which order.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot_wsrl.core.driver import Driver, StepResult
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner, episode_success
from robot_wsrl.robot.safety import SafetyConfig


class TimedPolicy(OnnxPolicy):
    """An OnnxPolicy that records how long each `act` takes: the onboard policy step, timed in the loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_ns: list[int] = []

    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        start = time.perf_counter_ns()
        action = super().act(obs, deterministic)
        self.step_ns.append(time.perf_counter_ns() - start)
        return action


class _EndRunOnStop:
    """The driver as is, except that its safe stop also ends the runner's run: after an e-stop the episode
    is over for validation, and an idle latched loop would only burn its remaining ticks. It remembers the
    success a task's driver reports (`info["success"]`) at the episode's last step."""

    def __init__(self, driver: Driver, stop: threading.Event) -> None:
        self._driver, self._stop = driver, stop
        self.spec = driver.spec
        self.last_success: bool | None = None

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        self.last_success = None
        return self._driver.reset(seed=seed)

    def step(self, action: np.ndarray) -> StepResult:
        result = self._driver.step(action)
        if (success := episode_success(result.info)) is not None:  # read as the robot reads it
            self.last_success = success
        return result

    def safe_stop(self) -> None:
        self._stop.set()
        self._driver.safe_stop()

    def close(self) -> None:
        self._driver.close()


@dataclass(frozen=True)
class EpisodeSetup:
    """Everything that decides an episode besides the policy and its index: equal setups, equal episodes."""

    driver: str
    max_episode_steps: int
    seed: int
    deterministic: bool
    max_delta_per_step: float | None
    success_return: float | None

    def env_seed(self, index: int) -> int:
        return self.seed + index

    def action_seed(self, index: int, sha256: str) -> int:
        """The action noise of episode `index` for the policy with this sha256 (see the module docstring)."""
        words = [self.seed, index, int(sha256[:16], 16), int(sha256[16:32], 16)]
        return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])


@dataclass(frozen=True)
class Episode:
    index: int
    seed: int  # the environment's: initial state and sensor noise
    action_seed: int
    ret: float
    steps: int
    end: str  # "time limit", "terminated", or "e-stop (cause): detail"
    success: bool | None
    safety: dict[str, int]  # the runner's envelope counters, plus "estops"

    @property
    def faults(self) -> int:
        s = self.safety
        return s["nonfinite_obs"] + s["nonfinite_action"] + s["limit_violations"] + s["estops"]


def variant_driver(setup: EpisodeSetup, variant: str) -> Driver:
    """The simulated robot of one shift preset: its dynamics, sensor noise and action latency."""
    return make_driver(
        setup.driver, seed=setup.seed, max_episode_steps=setup.max_episode_steps, shift_preset=variant
    )


def run_episode(driver: Driver, policy: TimedPolicy, setup: EpisodeSetup, index: int) -> Episode:
    """Episode `index` through a fresh Runner (its own envelope counters, the driver reset with the
    episode's environment seed, the policy reseeded with its action seed)."""
    stop = threading.Event()
    seed = setup.env_seed(index)
    watched = _EndRunOnStop(driver, stop)
    runner = Runner(
        watched,
        policy,
        deterministic=setup.deterministic,
        seed=seed,
        safety=SafetyConfig(max_delta_per_step=setup.max_delta_per_step),
        realtime=False,
        transition_buffer=1,
    )
    action_seed = setup.action_seed(index, policy.sha256)
    policy.reseed(action_seed)  # after the runner's own reseed: the noise is this policy's, not the seed's
    status = runner.run(max_steps=setup.max_episode_steps, max_episodes=1, stop_event=stop)
    latched = runner.latch.latched
    if latched:
        end = f"e-stop ({status['last_stop_cause']}): {status['last_stop_detail']}"
        ret = float(status["episode_return"])
    else:
        last = runner.transitions[-1] if runner.transitions else None
        end = "terminated" if last is not None and last.terminated else "time limit"
        ret = float(status["last_episode_return"] if status["episodes_done"] else status["episode_return"])
    if watched.last_success is not None:  # the task's own success signal, at the episode's last step
        success: bool | None = not latched and watched.last_success
    else:
        success = None if setup.success_return is None else (not latched and ret >= setup.success_return)
    safety = {**status["safety"], "estops": int(latched)}
    return Episode(index, seed, action_seed, ret, int(status["steps"]), end, success, safety)


@dataclass(frozen=True)
class Task:
    policy: str  # path of the policy.onnx
    variant: str
    index: int


@dataclass(frozen=True)
class Result:
    task: Task
    episode: Episode
    step_us: list[float]  # the policy step's durations in this episode, microseconds


class _Simulators:
    """One process's drivers (one per variant, built on first use) and policies (loaded once each)."""

    def __init__(self, setup: EpisodeSetup) -> None:
        self.setup = setup
        self._drivers: dict[str, Driver] = {}
        self._policies: dict[str, TimedPolicy] = {}

    def run(self, task: Task) -> Result:
        driver = self._drivers.get(task.variant)
        if driver is None:
            driver = self._drivers[task.variant] = variant_driver(self.setup, task.variant)
        policy = self._policies.get(task.policy)
        if policy is None:
            policy = self._policies[task.policy] = TimedPolicy.load(task.policy, expected_spec=driver.spec)
        policy.step_ns.clear()
        episode = run_episode(driver, policy, self.setup, task.index)
        return Result(task, episode, [ns / 1e3 for ns in policy.step_ns])

    def close(self) -> None:
        for driver in self._drivers.values():
            driver.close()
        self._drivers.clear()


_WORKER: _Simulators | None = None  # a worker process's own
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _init_worker(setup: EpisodeSetup) -> None:
    global _WORKER
    _WORKER = _Simulators(setup)


def _run_in_worker(task: Task) -> Result:
    assert _WORKER is not None, "the pool's initializer did not run"
    return _WORKER.run(task)


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class EpisodePool:
    """Runs tasks on `workers` processes; `workers=1` runs them in this process. Results come back in the
    tasks' order. Workers are forked where the platform can (they start at once, with the simulator already
    imported; each builds its own drivers and policies, nothing of the caller's runs in them), else spawned.
    """

    def __init__(self, setup: EpisodeSetup, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._local = _Simulators(setup) if workers == 1 else None
        self._pool = (
            None
            if workers == 1
            else multiprocessing.get_context(START_METHOD).Pool(workers, _init_worker, (setup,))
        )

    def run(self, tasks: Sequence[Task]) -> list[Result]:
        if self._local is not None:
            return [self._local.run(task) for task in tasks]
        assert self._pool is not None
        return self._pool.map(_run_in_worker, tasks, chunksize=1)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()

    def __enter__(self) -> EpisodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
