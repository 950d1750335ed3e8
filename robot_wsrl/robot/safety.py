"""The runner's safety layer (numpy only): the action envelope, the runner states and the e-stop latch.

The envelope sits between the policy and the driver on every command and never raises: a bad number
becomes a hold command plus a fault record, because an exception in a control loop leaves a robot with
whatever it was last told. The latch is the opposite: once entered it stays entered, has the driver stop
the robot exactly once per entry, and only an operator's explicit release leaves it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robot_wsrl.core.driver import DriverFault
from robot_wsrl.core.durable import DurableRecord, RecordError
from robot_wsrl.core.spec import EnvSpec

log = logging.getLogger(__name__)

HoldMode = Literal["previous", "zeros"]
EVENT_LOG_SIZE = 1024


class RunnerState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"  # stepping its policy with no learner: no warmup or fine-tuning phase
    WARMUP = "warmup"
    FINE_TUNING = "fine_tuning"
    PAUSED = "paused"
    ESTOPPED = "estopped"
    FAULTED = "faulted"


class FaultKind(str, Enum):
    NONFINITE_OBS = "nonfinite_obs"
    NONFINITE_ACTION = "nonfinite_action"
    OBS_OUT_OF_LIMITS = "obs_out_of_limits"
    EXECUTED_OUT_OF_LIMITS = "executed_out_of_limits"


# Faults that mean the robot is somewhere it must not be, or the driver disobeyed the envelope: holding
# is not enough, the runner latches an e-stop.
LATCHING_FAULTS = frozenset({FaultKind.OBS_OUT_OF_LIMITS, FaultKind.EXECUTED_OUT_OF_LIMITS})


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    detail: str
    time: float = field(default_factory=time.time)

    @property
    def latches(self) -> bool:
        return self.kind in LATCHING_FAULTS


@dataclass
class SafetyCounters:
    """Event counts the validation gate reports next to a policy's returns."""

    clipped: int = 0
    rate_limited: int = 0
    nonfinite_obs: int = 0
    nonfinite_action: int = 0
    limit_violations: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SafetyConfig:
    """Envelope settings in robot units; `max_delta_per_step=None` disables the rate limit."""

    max_delta_per_step: float | Sequence[float] | None = None
    hold: HoldMode = "previous"
    obs_low: Sequence[float] | None = None
    obs_high: Sequence[float] | None = None
    limit_tolerance: float = 1e-4


class SafetyEnvelope:
    """Clip, rate-limit and NaN-guard every command; check observations and the executed action."""

    def __init__(
        self,
        spec: EnvSpec,
        max_delta_per_step: float | Sequence[float] | None = None,
        *,
        hold: HoldMode = "previous",
        obs_low: Sequence[float] | None = None,
        obs_high: Sequence[float] | None = None,
        limit_tolerance: float = 1e-4,
    ) -> None:
        if hold not in ("previous", "zeros"):
            raise ValueError(f"hold must be 'previous' or 'zeros', got {hold!r}")
        self.spec = spec
        self.low, self.high = spec.low, spec.high
        self.max_delta = (
            None
            if max_delta_per_step is None
            else np.broadcast_to(np.asarray(max_delta_per_step, dtype=np.float32), (spec.act_dim,)).copy()
        )
        if self.max_delta is not None and not np.all(self.max_delta > 0):
            raise ValueError(f"max_delta_per_step must be positive, got {max_delta_per_step}")
        self.hold_mode = hold
        self.obs_low = None if obs_low is None else np.asarray(obs_low, dtype=np.float32)
        self.obs_high = None if obs_high is None else np.asarray(obs_high, dtype=np.float32)
        self.tolerance = limit_tolerance * (self.high - self.low)
        # "zeros" is zero in robot units, moved inside the limits when they exclude it.
        self._zeros = np.clip(np.zeros(spec.act_dim, dtype=np.float32), self.low, self.high)
        self._previous: np.ndarray | None = None
        self.counters = SafetyCounters()

    @classmethod
    def from_config(cls, spec: EnvSpec, config: SafetyConfig) -> SafetyEnvelope:
        return cls(
            spec,
            config.max_delta_per_step,
            hold=config.hold,
            obs_low=config.obs_low,
            obs_high=config.obs_high,
            limit_tolerance=config.limit_tolerance,
        )

    def reset(self, previous: np.ndarray | None = None) -> None:
        """New episode: with no `previous` command the first one is clipped but not rate-limited."""
        self._previous = None if previous is None else np.asarray(previous, dtype=np.float32).copy()

    def hold_action(self) -> np.ndarray:
        """The command used instead of a bad one: the previous command, or zeros if configured or none yet."""
        if self.hold_mode == "previous" and self._previous is not None:
            return self._previous.copy()
        return self._zeros.copy()

    def check_obs(self, obs: np.ndarray) -> Fault | None:
        """A non-finite or out-of-limits observation gives a fault (the runner holds instead of acting)."""
        obs = np.asarray(obs)
        if not np.all(np.isfinite(obs)):
            self.counters.nonfinite_obs += 1
            return Fault(FaultKind.NONFINITE_OBS, f"non-finite observation at indices {_bad_indices(obs)}")
        outside = self._obs_outside(obs)
        if outside:
            self.counters.limit_violations += 1
            return Fault(FaultKind.OBS_OUT_OF_LIMITS, f"observation outside its limits at indices {outside}")
        return None

    def apply(self, action: np.ndarray) -> tuple[np.ndarray, Fault | None]:
        """Robot-unit command -> (safe command, fault or None). Never raises for any numeric input."""
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (self.spec.act_dim,) or not np.all(np.isfinite(action)):
            self.counters.nonfinite_action += 1
            detail = (
                f"action has shape {action.shape}, expected ({self.spec.act_dim},)"
                if action.shape != (self.spec.act_dim,)
                else f"non-finite action at indices {_bad_indices(action)}"
            )
            safe = self.hold_action()
            self._previous = safe
            return safe.copy(), Fault(FaultKind.NONFINITE_ACTION, detail)
        safe = np.clip(action, self.low, self.high)
        if not np.array_equal(safe, action):
            self.counters.clipped += 1
        if self.max_delta is not None and self._previous is not None:
            limited = np.clip(safe, self._previous - self.max_delta, self._previous + self.max_delta)
            if not np.array_equal(limited, safe):
                self.counters.rate_limited += 1
                safe = np.clip(limited, self.low, self.high)
        self._previous = safe
        return safe.copy(), None

    def record_executed(self, executed: np.ndarray) -> Fault | None:
        """Rate-limit later commands against what the driver really did; flag a driver outside the limits."""
        executed = np.asarray(executed, dtype=np.float32).reshape(-1)
        if executed.shape != (self.spec.act_dim,) or not np.all(np.isfinite(executed)):
            self.counters.limit_violations += 1
            return Fault(
                FaultKind.EXECUTED_OUT_OF_LIMITS, f"driver reports a malformed executed action {executed}"
            )
        outside = np.flatnonzero(
            (executed < self.low - self.tolerance) | (executed > self.high + self.tolerance)
        )
        if outside.size:
            self.counters.limit_violations += 1
            return Fault(
                FaultKind.EXECUTED_OUT_OF_LIMITS,
                f"driver executed {executed[outside].tolist()} outside the limits "
                f"at indices {outside.tolist()}",
            )
        self._previous = executed.copy()
        return None

    def _obs_outside(self, obs: np.ndarray) -> list[int]:
        if self.obs_low is None and self.obs_high is None:
            return []
        below = obs < self.obs_low if self.obs_low is not None else np.zeros(obs.shape, dtype=bool)
        above = obs > self.obs_high if self.obs_high is not None else np.zeros(obs.shape, dtype=bool)
        return np.flatnonzero(below | above).tolist()


def _bad_indices(x: np.ndarray) -> list[int]:
    return np.flatnonzero(~np.isfinite(x)).tolist()


class EStopCause(str, Enum):
    COMMAND = "command"
    WATCHDOG = "watchdog"
    DRIVER_FAULT = "driver_fault"
    LIMIT_VIOLATION = "limit_violation"
    INTERNAL_ERROR = "internal_error"


# Causes that mean the machinery failed (rather than someone or something asking for a stop).
FAULT_CAUSES = frozenset({EStopCause.DRIVER_FAULT, EStopCause.INTERNAL_ERROR})


@dataclass(frozen=True)
class LatchEvent:
    """One entry into, repeat trigger of, or release of the e-stop latch."""

    kind: Literal["enter", "repeat", "release"]
    cause: EStopCause | None
    detail: str
    time: float
    operator: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cause": None if self.cause is None else self.cause.value,
            "detail": self.detail,
            "time": self.time,
            "operator": self.operator,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatchEvent:
        cause = None if d["cause"] is None else EStopCause(d["cause"])
        return cls(d["kind"], cause, str(d["detail"]), float(d["time"]), d["operator"])


LATCH_FORMAT = "robot-wsrl-latch/1"
PERSISTED_EVENTS = 32  # latch events kept in the durable record (the console's stop history)
PERSISTED_DETAIL = 240  # characters of an event's detail kept in the durable record


def latch_state(latched: bool, cause: EStopCause | None) -> RunnerState | None:
    """The runner state a latch imposes (ESTOPPED or FAULTED), None when it is not latched."""
    if not latched:
        return None
    return RunnerState.FAULTED if cause in FAULT_CAUSES else RunnerState.ESTOPPED


class EStopLatch:
    """Latched e-stop. Entering calls `safe_stop` once; `release(operator)` is the only way out.

    Order of an entry: `engaged` is set at once (the control loop checks it and never steps the robot
    again), then the driver's safe stop runs, then the entry is written to `store` (a DurableRecord: the
    latch survives any exit of the process), and only then is the latch `latched`, reported, and the
    trigger returns (an e-stop is confirmed only once it is safe and durable). A latch made with a store
    that holds a latched e-stop starts latched, with its cause, detail and history.

    Thread-safe: the console or the transport may trigger it while the control loop runs. `safe_stop` runs
    in the triggering thread, so a driver's safe stop must be callable from any thread; a caller must not
    hold a lock that `safe_stop` takes. `safe_stop` may be bound later (`bind`): a latch exists, and takes
    stops, before the robot's driver does.
    """

    def __init__(
        self,
        safe_stop: Callable[[], None] | None = None,
        *,
        watchdog_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: DurableRecord | None = None,
    ) -> None:
        if watchdog_deadline_s is not None and not watchdog_deadline_s > 0:
            raise ValueError(f"watchdog_deadline_s must be positive, got {watchdog_deadline_s}")
        self._safe_stop = safe_stop
        self.watchdog_deadline_s = watchdog_deadline_s
        self._clock = clock
        self._store = store
        self._entry = threading.Lock()  # one entry or release at a time, held through safe_stop and write
        self._engaged = False
        self._latched = False
        self._cause: EStopCause | None = None
        self._detail = ""
        self._last_heartbeat = clock()
        self._events: deque[LatchEvent] = deque(maxlen=EVENT_LOG_SIZE)
        self.safe_stop_errors = 0
        self.persist_errors = 0
        self.last_persist_error = ""
        if store is not None and store.value is not None:
            self._restore(store.value, store.path)

    def bind(self, safe_stop: Callable[[], None]) -> None:
        """The driver's safe stop, once there is a driver."""
        self._safe_stop = safe_stop

    @property
    def engaged(self) -> bool:
        """True from the first instant of an entry: nothing may step the robot any more."""
        return self._engaged

    @property
    def latched(self) -> bool:
        """True once the robot was safe-stopped and the entry recorded: what the runner reports."""
        return self._latched

    @property
    def cause(self) -> EStopCause | None:
        """Cause of the current (or, once released, the last) entry."""
        return self._cause

    @property
    def detail(self) -> str:
        return self._detail

    @property
    def state(self) -> RunnerState | None:
        return latch_state(self._latched, self._cause)

    @property
    def events(self) -> list[LatchEvent]:
        return list(self._events)

    def trigger(self, cause: EStopCause, detail: str = "") -> bool:
        """Enter the latch; returns True if this call entered it (False: it was already latched).

        Returns once the robot is safe-stopped and the entry is recorded (also for a repeat that came
        while another entry was under way)."""
        self._engaged = True  # before the lock: a loop that checks it steps no more
        with self._entry:
            self._engaged = True  # again: a release may have been finishing
            event = LatchEvent("repeat" if self._latched else "enter", cause, detail, time.time())
            self._events.append(event)
            if self._latched:
                log.warning("e-stop already latched; also %s: %s", cause.value, detail)
                self._persist()
                return False
            self._cause, self._detail = cause, detail
            log.error("E-STOP (%s) at %.6f: %s", cause.value, event.time, detail)
            self._call_safe_stop(cause)
            self._latched = True
            self._persist()
            return True

    def _call_safe_stop(self, cause: EStopCause) -> None:
        if self._safe_stop is None:
            return  # no driver yet: nothing is being commanded
        try:
            self._safe_stop()
        except DriverFault as exc:  # expected when the link is what failed: the message says it all
            self.safe_stop_errors += 1
            log.error("safe_stop failed after e-stop (%s): %s", cause.value, exc)
        except Exception:  # the latch must hold even if the driver's stop fails; the operator sees it
            self.safe_stop_errors += 1
            log.exception("safe_stop failed after e-stop (%s)", cause.value)

    def command(self, detail: str = "operator e-stop") -> bool:
        return self.trigger(EStopCause.COMMAND, detail)

    def heartbeat(self) -> None:
        """The supervising side is alive; feed this more often than the watchdog deadline."""
        self._last_heartbeat = self._clock()

    def check_watchdog(self) -> bool:
        """Called every control tick: trips the latch when the heartbeat is late. Returns `engaged`."""
        if self.watchdog_deadline_s is not None and not self._engaged:
            silent = self._clock() - self._last_heartbeat
            if silent > self.watchdog_deadline_s:
                self.trigger(
                    EStopCause.WATCHDOG,
                    f"no heartbeat for {silent:.3f} s (deadline {self.watchdog_deadline_s} s)",
                )
        return self._engaged

    def release(self, operator: str) -> bool:
        """An operator's explicit release (recorded durably before it returns); False when not latched."""
        if not operator or not operator.strip():
            raise ValueError("releasing an e-stop needs the operator's name")
        with self._entry:
            if not self._latched:
                return False
            event = LatchEvent(
                "release", self._cause, f"released after {self._detail}", time.time(), operator
            )
            self._events.append(event)
            self._latched = False
            self._persist()
            self._last_heartbeat = self._clock()  # the watchdog counts afresh from the release
            self._engaged = False
            log.warning("e-stop released by %s at %.6f (was %s)", operator, event.time, self._cause)
            return True

    def close(self) -> None:
        """Close the record's file (the latch keeps working in memory)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    # ----- the durable record -----

    def _persist(self) -> None:
        """Write the latch to its store; a failing disk is counted and reported, the latch holds anyway."""
        if self._store is None:
            return
        events = [
            e.to_dict() | {"detail": e.detail[:PERSISTED_DETAIL]}
            for e in list(self._events)[-PERSISTED_EVENTS:]
        ]
        while True:
            record = {
                "format": LATCH_FORMAT,
                "latched": self._latched,
                "cause": None if self._cause is None else self._cause.value,
                "detail": self._detail[: 4 * PERSISTED_DETAIL],
                "events": events,
            }
            try:
                self._store.write(record)
                return
            except RecordError:  # very long names: keep fewer events, never fail the stop
                if not events:
                    raise
                events = events[len(events) // 2 + 1 :]
            except OSError as exc:
                self.persist_errors += 1
                self.last_persist_error = f"{type(exc).__name__}: {exc}"
                log.error("e-stop state NOT recorded on disk (%s): the latch holds in memory only", exc)
                return

    def _restore(self, record: dict[str, Any], where: Path) -> None:
        try:
            if record.get("format") != LATCH_FORMAT:
                raise ValueError(f"format {record.get('format')!r} is not {LATCH_FORMAT!r}")
            cause = None if record["cause"] is None else EStopCause(record["cause"])
            events = [LatchEvent.from_dict(e) for e in record["events"]]
            latched = bool(record["latched"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{where}: unreadable latch record ({exc})") from exc
        self._events.extend(events)
        self._cause, self._detail = cause, str(record["detail"])
        self._latched = self._engaged = latched
        if latched:
            log.error("E-STOP restored from %s (%s): %s", where, cause, self._detail)
