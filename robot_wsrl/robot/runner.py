"""The onboard runner: a fixed-rate control loop driving a robot with an ONNX policy (no torch, ever).

Each tick: observation -> policy -> robot units -> safety envelope -> driver.step -> transition (with the
action the driver actually executed, normalised). An observation is the state array, or for a camera task
the dict of its parts (state and one uint8 image per camera): the runner checks each one the driver gives
against the spec and keeps its own copy (a driver may reuse its buffers), which the transition carries.
The loop keeps time with perf_counter and a hybrid sleep (OS sleep to ~200 us before the deadline, then
spin), so its jitter is set by the spin, not by the OS timer. It never raises out of a tick: bad numbers
become hold commands, driver errors (a malformed observation included) latch an e-stop.
For a task whose driver reports `info["success"]`, an episode succeeds when its last step does: the
transition of that step carries the outcome (the learner logs it per episode) and status counts it.
Policies are swapped in from other threads through `offer_policy`, which validates outside the loop; the
loop itself only swaps a reference, between episodes by default.

Timing: a realtime run freezes the heap it starts with (gc.freeze), so the collector's passes during the
loop scan only what the loop allocates: a full pass over a large heap (torch imported in the same process)
takes tens of milliseconds, a burst of missed deadlines at 500 Hz. `status()` is cheap (the
percentiles of jitter and of the policy step (the policy's `act`, timed in the loop) are recomputed at most
every STATUS_CACHE_S), since a console's poll runs on the control thread beside the loop and shares its
interpreter lock.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robot_wsrl.core.driver import Driver
from robot_wsrl.core.spec import STATE, EnvSpec, Observation
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError
from robot_wsrl.robot.safety import (
    EStopCause,
    EStopLatch,
    Fault,
    FaultKind,
    RunnerState,
    SafetyConfig,
    SafetyEnvelope,
)
from robot_wsrl.wire.protocol import Transition

log = logging.getLogger(__name__)

SwapMode = Literal["between_episodes", "immediate"]
SPIN_S = 200e-6  # sleep until this long before a deadline, then spin
JITTER_WINDOW = 10_000  # ticks of timing kept for the percentiles (10 s at 1 kHz)
TRANSITION_BUFFER = 10_000
IDLE_SLEEP_S = 1e-3  # tick interval of a paused or stopped loop that keeps no schedule
STATUS_CACHE_S = 0.2  # the jitter percentiles in status are at most this old


@dataclass(frozen=True)
class OfferResult:
    accepted: bool
    reason: str


def sleep_until(deadline: float, spin_s: float = SPIN_S) -> None:
    """Wait for perf_counter() to reach `deadline`: OS sleep for the bulk, spin for the last `spin_s`."""
    remaining = deadline - time.perf_counter()
    if remaining > spin_s:
        time.sleep(remaining - spin_s)
    while time.perf_counter() < deadline:
        pass


@contextlib.contextmanager
def realtime_priority(priority: int | None) -> Iterator[bool]:
    """SCHED_FIFO at `priority` for the calling thread while inside (Linux, needs CAP_SYS_NICE or root).

    Yields whether it was applied: without the privilege the loop runs with normal scheduling and a
    warning, it does not fail. The previous policy is restored on exit.
    """
    previous = None
    if priority is not None:
        try:
            previous = (os.sched_getscheduler(0), os.sched_getparam(0))
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except (AttributeError, OSError) as exc:
            previous = None
            log.warning("SCHED_FIFO priority %d not available (%s): normal scheduling", priority, exc)
    try:
        yield previous is not None
    finally:
        if previous is not None:
            os.sched_setscheduler(0, *previous)


@contextlib.contextmanager
def frozen_heap(enabled: bool) -> Iterator[None]:
    """While inside, the collector leaves alone every object that existed on entry (see the module
    docstring), and hands them back on exit. No collection first: with torch loaded a full pass took 0.2 s
    on the busy 2-core machine; garbage frozen with the rest waits for the exit."""
    if enabled:
        gc.freeze()
    try:
        yield
    finally:
        if enabled:
            gc.unfreeze()


class LoopTiming:
    """Bounded rings of tick start times, jitter (actual minus scheduled start) and policy step durations,
    plus missed deadlines."""

    def __init__(self, window: int = JITTER_WINDOW) -> None:
        self._starts = np.zeros(window)
        self._jitter = np.zeros(window)
        self._policy = np.zeros(window)
        self._count = 0
        self._jitter_count = 0
        self._policy_count = 0
        self.overruns = 0
        self._cached: tuple[float, dict[str, float | None]] = (-STATUS_CACHE_S, {})

    def tick(self, start: float, scheduled: float | None) -> None:
        self._starts[self._count % len(self._starts)] = start
        self._count += 1
        if scheduled is not None:
            self._jitter[self._jitter_count % len(self._jitter)] = start - scheduled
            self._jitter_count += 1

    def policy_step(self, seconds: float) -> None:
        self._policy[self._policy_count % len(self._policy)] = seconds
        self._policy_count += 1

    def rate_hz(self) -> float:
        n = min(self._count, len(self._starts))
        if n < 2:
            return 0.0
        newest = (self._count - 1) % len(self._starts)
        oldest = (self._count - n) % len(self._starts)
        span = self._starts[newest] - self._starts[oldest]
        return float((n - 1) / span) if span > 0 else 0.0

    def percentiles_us(self, max_age_s: float = 0.0) -> dict[str, float | None]:
        """p50 and p99 of jitter and of the policy step in microseconds over the window (keys
        `jitter_p50_us` ... `policy_step_p99_us`), computed at most `max_age_s` ago; None before any
        realtime tick or policy step (status is strict JSON)."""
        now = time.monotonic()
        if now - self._cached[0] < max_age_s:
            return self._cached[1]
        result: dict[str, float | None] = {}
        for name, ring, count in (
            ("jitter", self._jitter, self._jitter_count),
            ("policy_step", self._policy, self._policy_count),
        ):
            n = min(count, len(ring))
            p50, p99 = (float(p) for p in np.percentile(ring[:n], [50, 99]) * 1e6) if n else (None, None)
            result[f"{name}_p50_us"], result[f"{name}_p99_us"] = p50, p99
        self._cached = (now, result)
        return result


class Runner:
    """Runs `policy` on `driver` at the driver's control period, safely; see the module docstring.

    `max_steps` of `run` counts control ticks (ticks while paused or e-stopped included), so a run ends
    on time even when the robot is stopped. A driver whose `keeps_time` attribute is true runs on the
    robot's own clock: its step returns at the robot's next tick, so the runner does not add a schedule of
    its own (two clocks in lock-step would make every reply look late); jitter is then measured against
    one period after the previous tick, and missed deadlines are the steps the robot reports with
    `info["late"]`. Leaving `run` stops the robot (driver.safe_stop) and the next
    `run` starts a new episode. `on_transition` runs in the loop thread, so it must only hand the
    transition over (to a bounded queue or spool); if it raises, the runner latches an internal-error stop.
    Controls (`estop`, `release`, `pause`, `offer_policy`, `rollback`, `heartbeat`, `status`) may be called
    from any thread.
    """

    def __init__(
        self,
        driver: Driver,
        policy: OnnxPolicy,
        *,
        deterministic: bool = False,
        seed: int = 0,
        safety: SafetyConfig | None = None,
        watchdog_deadline_s: float | None = None,
        swap_mode: SwapMode = "between_episodes",
        on_transition: Callable[[Transition], None] | None = None,
        phase: RunnerState | None = RunnerState.FINE_TUNING,
        realtime: bool = True,
        rt_priority: int | None = None,
        transition_buffer: int = TRANSITION_BUFFER,
        latch: EStopLatch | None = None,
    ) -> None:
        if swap_mode not in ("between_episodes", "immediate"):
            raise ValueError(f"swap_mode must be 'between_episodes' or 'immediate', got {swap_mode!r}")
        self.driver = driver
        self.spec: EnvSpec = driver.spec
        policy.validate(self.spec)
        self.deterministic = deterministic
        self.swap_mode = swap_mode
        self.realtime = realtime
        self.rt_priority = rt_priority
        self._fifo = False
        self._on_transition = on_transition
        self._seeds = np.random.SeedSequence(seed)
        self._reset_seed: int | None = seed
        self._envelope = SafetyEnvelope.from_config(self.spec, safety or SafetyConfig())
        # Never held while the latch is triggered or released: the latch calls safe_stop, which takes it.
        self._driver_lock = threading.Lock()
        if latch is None:
            latch = EStopLatch(watchdog_deadline_s=watchdog_deadline_s)
        elif watchdog_deadline_s is not None:
            latch.watchdog_deadline_s = watchdog_deadline_s
        latch.bind(self._safe_stop_driver)
        self._latch = latch
        # Latched before this driver existed (restored from the runner's state, or stopped while the runner
        # waited for its first policy): no safe stop reached this driver yet, so the first run holds it.
        self._hold_at_start = latch.latched
        self._swap_lock = threading.Lock()
        self._policy = policy
        self._previous_policy: OnnxPolicy | None = None
        self._pending: tuple[OnnxPolicy, bool] | None = None  # (policy, is_rollback)
        self._reseed(policy)
        self._phase = self._check_phase(phase)
        self._timing = LoopTiming()
        self._transitions: deque[Transition] = deque(maxlen=transition_buffer)
        self._robot_clock = bool(getattr(driver, "keeps_time", False))
        self._running = False
        self._paused = False
        self._waiting = False  # paused with the episode kept (see `pause`)
        self._needs_reset = True
        self._obs: Observation = np.zeros(self.spec.obs_dim, dtype=np.float32)  # until the first reset
        self._episode = -1
        self._episode_step = 0
        self._episode_return = 0.0
        self._last_episode_return: float | None = None
        self._episodes_done = 0
        self._returns_sum = 0.0  # of the episodes done
        self._last_episode_success: bool | None = None
        self._episodes_judged = 0  # done with an outcome (a task with a success signal) ...
        self._episodes_succeeded = 0  # ... and of those, successes
        self._steps = 0
        self._ticks = 0
        self._swaps = 0
        self._rejections = 0
        self._last_rejection = ""
        self._dropped_transitions = 0
        self._last_fault: Fault | None = None
        self._faults_logged: set[FaultKind] = set()

    # ----- operator and supervisor controls (any thread) -----

    @property
    def state(self) -> RunnerState:
        latched = self._latch.state
        if latched is not None:
            return latched
        if not self._running:
            return RunnerState.IDLE
        if self._paused and not self._waiting:
            return RunnerState.PAUSED
        return self._phase or RunnerState.RUNNING

    @property
    def latch(self) -> EStopLatch:
        return self._latch

    @property
    def policy(self) -> OnnxPolicy:
        return self._policy

    @property
    def transitions(self) -> list[Transition]:
        """The most recent transitions (bounded), for tests and local inspection."""
        return list(self._transitions)

    def estop(self, detail: str = "operator e-stop") -> bool:
        return self._latch.command(detail)

    def release(self, operator: str) -> bool:
        """Leave the e-stop (operator's explicit call); the next tick starts a new episode."""
        self._needs_reset = True  # first: the loop steps again only once the latch is released
        return self._latch.release(operator)

    def heartbeat(self) -> None:
        self._latch.heartbeat()

    def pause(self, keep_episode: bool = False) -> None:
        """Stop stepping the robot: it is brought to its safe state and `resume` starts a new episode.

        With `keep_episode` (a simulator waiting for the learner's credit) the episode just waits and goes on
        at `resume`: a simulator's time stands still between steps. A robot on its own clock cannot wait
        mid-episode, so there it is a full pause. A full pause while waiting upgrades the wait.
        """
        keep = keep_episode and not self._robot_clock
        with self._driver_lock:  # a step under way finishes first; none starts after this
            if self._paused and (keep or not self._waiting):
                return
            self._paused, self._waiting = True, keep
            if keep:
                return
            self._needs_reset = True
        if not self._latch.engaged:
            self._hold_robot("pause")

    def resume(self) -> None:
        self._paused = self._waiting = False

    def set_phase(self, phase: RunnerState) -> None:
        """The learner says whether this is warmup or fine-tuning (reported in status and transitions).
        A runner made with `phase=None` has no learner: its status says phase None and state running."""
        self._phase = self._check_phase(phase)

    def offer_policy(self, candidate: OnnxPolicy | str | Path) -> OfferResult:
        """Validate a new policy (here, in the caller's thread) and queue it; the running one is untouched.

        A path is loaded with `OnnxPolicy.load` against this robot's spec. Accepted policies are swapped in
        at the next episode start, or at the next tick with swap_mode="immediate".
        """
        try:
            if isinstance(candidate, OnnxPolicy):
                candidate.validate(self.spec)
                policy = candidate
            else:
                policy = OnnxPolicy.load(candidate, expected_spec=self.spec)
        except PolicyError as exc:
            self._rejections += 1
            self._last_rejection = str(exc)
            log.warning("policy rejected: %s", exc)
            return OfferResult(False, str(exc))
        with self._swap_lock:
            self._pending = (policy, False)
        log.info("policy version %d (%s) queued", policy.version, policy.sha256[:12])
        return OfferResult(True, f"version {policy.version} queued ({self.swap_mode})")

    def rollback(self) -> OfferResult:
        """Queue the previous policy again (same timing as a swap); the rolled-back one is dropped."""
        with self._swap_lock:
            if self._previous_policy is None:
                return OfferResult(False, "no previous policy to roll back to")
            self._pending = (self._previous_policy, True)
            return OfferResult(
                True, f"rollback to version {self._previous_policy.version} queued ({self.swap_mode})"
            )

    def status(self) -> dict[str, Any]:
        percentiles = self._timing.percentiles_us(STATUS_CACHE_S if self._running else 0.0)
        pending, previous, fault = self._pending, self._previous_policy, self._last_fault
        return {
            "state": self.state.value,
            "waiting": self._waiting,
            "phase": None if self._phase is None else self._phase.value,
            "policy_version": self._policy.version,
            "policy_sha256": self._policy.sha256,
            "previous_policy_version": None if previous is None else previous.version,
            "pending_policy_version": None if pending is None else pending[0].version,
            "loop_rate_hz": self._timing.rate_hz(),
            **percentiles,
            "overruns": self._timing.overruns,
            "sched_fifo": self._fifo,
            "ticks": self._ticks,
            "steps": self._steps,
            "episode": self._episode + 1,  # the current (or last) episode, counted like episodes_done
            "episode_step": self._episode_step,
            "episode_return": _finite(self._episode_return),
            "last_episode_return": _finite(self._last_episode_return),
            "mean_episode_return": (
                _finite(self._returns_sum / self._episodes_done) if self._episodes_done else None
            ),
            "episodes_done": self._episodes_done,
            "last_episode_success": self._last_episode_success,
            "success_rate": (
                self._episodes_succeeded / self._episodes_judged if self._episodes_judged else None
            ),
            "last_stop_cause": None if self._latch.cause is None else self._latch.cause.value,
            "last_stop_detail": self._latch.detail,
            "last_fault": None if fault is None else f"{fault.kind.value}: {fault.detail}",
            "safety": self._envelope.counters.as_dict(),
            "swaps": self._swaps,
            "rejected_policies": self._rejections,
            "last_rejection": self._last_rejection,
            "dropped_transitions": self._dropped_transitions,
        }

    # ----- the loop -----

    def run(
        self,
        max_steps: int | None = None,
        max_episodes: int | None = None,
        stop_event: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Tick at the control period until a limit is reached or `stop_event` is set; returns `status()`."""
        if self._running:
            raise RuntimeError("Runner.run is already running")
        self._timing = LoopTiming()  # status reports the timing of the current (or last) run
        self._running = True
        self._latch.heartbeat()  # the watchdog counts from the start of the run
        if self._hold_at_start and self._latch.latched:
            self._hold_robot("start under a latched e-stop")
        self._hold_at_start = False
        try:
            with (
                frozen_heap(self.realtime),
                realtime_priority(self.rt_priority if self.realtime else None) as self._fifo,
            ):
                self._loop(max_steps, max_episodes, stop_event)
        finally:
            with self._driver_lock:
                self._running = False
                self._needs_reset = True
            if not self._latch.engaged and (self._waiting or not self._paused):
                self._hold_robot("end of run")
        return self.status()

    def _loop(
        self, max_steps: int | None, max_episodes: int | None, stop_event: threading.Event | None
    ) -> None:
        period = self.spec.control_period_s
        ticks, episodes_at_start = 0, self._episodes_done
        next_tick = time.perf_counter()
        while not (stop_event is not None and stop_event.is_set()):
            if max_steps is not None and ticks >= max_steps:
                break
            if max_episodes is not None and self._episodes_done - episodes_at_start >= max_episodes:
                break
            if self.realtime:
                sleep_until(next_tick)
            elif self._paused or self._latch.engaged:
                time.sleep(IDLE_SLEEP_S)  # nothing to step and no schedule: do not spin a core
            start = time.perf_counter()
            self._timing.tick(start, next_tick if self.realtime else None)
            self._guarded_tick()
            ticks += 1
            self._ticks += 1
            if self.realtime and self._robot_clock:
                # The step returned at the robot's tick, so the next tick starts now; the schedule (which
                # only waits on ticks that did not step) follows the robot, and the robot reports misses.
                next_tick = start + period
            elif self.realtime:
                next_tick += period
                now = time.perf_counter()
                if now > next_tick:  # this tick's work ran into the next one's slot: a missed deadline
                    self._timing.overruns += 1
                    if now - next_tick > period:  # more than a period behind: re-anchor, do not burst
                        next_tick = now

    def _guarded_tick(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # a bug must stop the robot, not leave it running on its last command
            log.exception("control tick failed")
            self._needs_reset = True
            self._latch.trigger(EStopCause.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _tick(self) -> None:
        if self._latch.check_watchdog() or self._paused:
            return
        if self.swap_mode == "immediate":
            self._apply_pending()
        if self._needs_reset and not self._start_episode():
            return
        obs = self._obs
        fault = self._envelope.check_obs(_state(obs))
        if fault is None:
            started = time.perf_counter()
            normalised = self._policy.act(obs, self.deterministic)
            self._timing.policy_step(time.perf_counter() - started)
            command, fault = self._envelope.apply(self.spec.to_robot_action(normalised))
        else:
            command = self._envelope.hold_action()
        if fault is not None and self._on_fault(fault):
            return
        with self._driver_lock:
            if self._latch.engaged or self._paused:
                return
            try:
                result = self.driver.step(command)
                next_obs = self._own(result.obs, "driver step")
            # DriverFault, or any driver bug: either way the robot is not under control any more.
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
        if failure is not None:
            self._needs_reset = True
            self._latch.trigger(EStopCause.DRIVER_FAULT, f"step: {type(failure).__name__}: {failure}")
            return
        self._steps += 1
        self._episode_step += 1
        if self._robot_clock and result.info.get("late"):
            self._timing.overruns += 1  # the robot's clock says this command missed its tick
        self._episode_return += float(result.reward)
        ended = bool(result.terminated or result.truncated)
        success = episode_success(result.info) if ended else None
        violation = self._envelope.record_executed(result.executed_action)
        if violation is None and np.all(np.isfinite(_state(obs))) and np.all(np.isfinite(_state(next_obs))):
            self._record(
                Transition(
                    obs=obs,
                    action=self.spec.to_normalised(result.executed_action),
                    reward=float(result.reward),
                    next_obs=next_obs,
                    terminated=bool(result.terminated),
                    truncated=bool(result.truncated),
                    episode=self._episode,
                    step=self._episode_step - 1,
                    policy_version=self._policy.version,
                    success=success,
                )
            )
        else:
            self._dropped_transitions += 1
        self._obs = next_obs
        if violation is not None:
            self._on_fault(violation)
        if ended:
            self._episodes_done += 1
            self._last_episode_return = self._episode_return
            self._returns_sum += self._episode_return
            self._last_episode_success = success
            if success is not None:
                self._episodes_judged += 1
                self._episodes_succeeded += success
            self._needs_reset = True

    def _start_episode(self) -> bool:
        """Swap in a queued policy, reset the driver and the envelope; False if the driver failed."""
        self._apply_pending()
        with self._driver_lock:
            if self._latch.engaged:
                return False
            try:
                obs = self._own(self.driver.reset(seed=self._reset_seed)[0], "driver reset")
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
        if failure is not None:
            self._latch.trigger(EStopCause.DRIVER_FAULT, f"reset: {type(failure).__name__}: {failure}")
            return False
        self._reset_seed = None  # seed the first episode only; later ones continue the driver's stream
        self._envelope.reset()
        self._obs = obs
        self._episode += 1
        self._episode_step = 0
        self._episode_return = 0.0
        self._needs_reset = False
        self._faults_logged.clear()
        return True

    def _own(self, obs: Observation, where: str) -> Observation:
        """The runner's own copy of a driver's observation (drivers may reuse their buffers), checked
        against the spec: a malformed one raises ObservationError naming the part, a driver fault."""
        if not self.spec.cameras:
            owned = np.array(obs, dtype=np.float32)
            self.spec.check_observation(owned, where)
            return owned
        self.spec.check_observation(obs, where)  # a mapping of exactly the spec's parts from here on
        owned = {STATE: np.array(obs[STATE], dtype=np.float32)}
        owned.update((cam, np.array(obs[cam])) for cam in self.spec.camera_names)
        return owned

    def _on_fault(self, fault: Fault) -> bool:
        """Record a fault (logged once per kind per episode); latching faults e-stop. Returns `engaged`."""
        self._last_fault = fault
        if fault.kind not in self._faults_logged:
            self._faults_logged.add(fault.kind)
            log.warning("safety fault in episode %d: %s: %s", self._episode, fault.kind.value, fault.detail)
        if fault.latches:
            self._needs_reset = True
            self._latch.trigger(EStopCause.LIMIT_VIOLATION, f"{fault.kind.value}: {fault.detail}")
        return self._latch.engaged

    def _record(self, transition: Transition) -> None:
        self._transitions.append(transition)
        if self._on_transition is not None:
            self._on_transition(transition)

    def _apply_pending(self) -> None:
        with self._swap_lock:
            if self._pending is None:
                return
            policy, is_rollback = self._pending
            self._pending = None
            old = self._policy
            self._previous_policy = None if is_rollback else old
            self._policy = policy
        self._reseed(policy)
        self._swaps += 1
        log.info(
            "%s policy version %d -> %d (%s)",
            "rolled back" if is_rollback else "swapped",
            old.version,
            policy.version,
            policy.sha256[:12],
        )

    def _reseed(self, policy: OnnxPolicy) -> None:
        policy.reseed(int(self._seeds.spawn(1)[0].generate_state(1)[0]))

    def _hold_robot(self, why: str) -> None:
        """safe_stop outside an e-stop (pause, end of run); if the stop itself fails, latch a driver fault."""
        try:
            self._safe_stop_driver()
        except Exception as exc:
            self._latch.trigger(EStopCause.DRIVER_FAULT, f"safe_stop at {why}: {type(exc).__name__}: {exc}")

    def _safe_stop_driver(self) -> None:
        with self._driver_lock:
            self.driver.safe_stop()

    @staticmethod
    def _check_phase(phase: RunnerState | None) -> RunnerState | None:
        if phase not in (None, RunnerState.WARMUP, RunnerState.FINE_TUNING):
            raise ValueError(f"phase must be warmup or fine_tuning, got {phase}")
        return phase


def episode_success(info: dict[str, Any]) -> bool | None:
    """The outcome a driver reports at an episode's last step (`info["success"]`, a bool, numpy's too),
    or None: a task without a success signal, or a value that is not a truth value (never a guess)."""
    value = info.get("success")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value is not None:
        log.warning(
            "driver info['success'] is a %s, not a bool: the episode's outcome is unknown", type(value)
        )
    return None


def _state(obs: Observation) -> np.ndarray:
    """The float state part of an observation (what the envelope checks; images are bounded by dtype)."""
    return obs[STATE] if isinstance(obs, dict) else obs


def _finite(value: float | None) -> float | None:
    """Status is strict JSON: a non-finite number (a simulator's NaN reward) is reported as null."""
    return value if value is not None and math.isfinite(value) else None
