"""The runner's own control channel: consoles stop, release, pause and query it directly (no torch).

Safety must not depend on the learner being alive, so every runner process binds its own ROUTER (CURVE,
known console keys only; plain only on loopback when asked) and one thread serves it, never the control
loop. The thread applies operator `Command`s, answers `StatusRequest`s and watches console heartbeats.
An e-stop runs `runner.estop` on this thread: the latch calls the driver's safe stop at once, not at the
next tick.

The server owns the runner's e-stop latch (durable when it has a store) from before the runner and its
driver exist: a stop sent while a link-runner waits for its first policy is taken, recorded and holds the
runner that is built afterwards.

Deadman: a console connection whose heartbeat `state` is "supervising" becomes a supervisor of this
runner, and the deadman is armed: with the runner's own deadline (`--deadman-s`), or DEFAULT_DEADMAN_S
when it was started without one. When a supervisor's heartbeats stop for longer than the deadline, the
runner e-stops with cause "console deadman: NAME silent for X s". Consoles and supervisors are tracked per
connection (the ROUTER's routing id), not per key name: several tools may share one. The thread wakes at
the earliest deadline, so the trip comes within about a millisecond of it, whatever the control period.

The thread does nothing but serve the channel, and runs at a raised priority where the process may
(SCHED_FIFO, else a lower nice value), so a busy host still hears an e-stop. From the command line the
channel also has its own ZeroMQ context, whose I/O thread gets SCHED_FIFO where permitted: the learner's
bulk traffic runs on another context and never competes with a stop at that priority.

`apply_command` is the one mapping of an operator's Command onto a runner. Both talk to `Controlled`, the
few calls they make, which the Runner has: this module never imports the runner (nor onnxruntime, so
consoles may import its constants). The command line's part (options, binding) is in robot_wsrl.apps.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import zmq

from robot_wsrl.core.artifacts import LATCH_STATE, RUNNER_LOCK
from robot_wsrl.core.durable import DurableRecord, RecordError
from robot_wsrl.robot.safety import EStopCause, EStopLatch, RunnerState
from robot_wsrl.wire import transport
from robot_wsrl.wire.protocol import (
    Command,
    HeartbeatMessage,
    RejectCounter,
    Reply,
    Status,
    StatusRequest,
    encode,
)

log = logging.getLogger(__name__)

SUPERVISING = "supervising"  # a console heartbeat state: this console holds the deadman
WATCHING = "watching"  # a console heartbeat state: status only, no deadman
POLL_S = 0.05  # longest sleep of the control thread
SEND_TIMEOUT_S = 0.05
MIN_DEADMAN_S = 0.5  # a console beats every 0.2 s: a shorter deadline would trip on scheduling noise
DEFAULT_DEADMAN_S = 1.0  # armed by a supervising console when the runner was started without a deadline
STOP_HISTORY = 32  # latch events reported in status, so a console sees stops between two polls
CONSOLE_FORGET_S = 60.0  # a console connection silent this long is dropped from status
CONTROL_RT_PRIORITY = 10  # SCHED_FIFO priority of the control thread, where permitted
CONTROL_NICE = -10  # its nice value otherwise, where permitted
SWITCH_INTERVAL_S = 2e-4  # GIL hand-off in a runner process: the control thread waits at most this long
_STATE_LOCKS: dict[int, int] = {}  # id(latch) -> the descriptor holding its folder's lock

Hold = Callable[[bool], None]


class Outcome(Protocol):
    """Whether a request was taken, and why not."""

    @property
    def accepted(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class Controlled(Protocol):
    """What the control channel drives (the Runner, structurally): its latch, pause, rollback, phase."""

    @property
    def latch(self) -> EStopLatch: ...

    def release(self, operator: str) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def rollback(self) -> Outcome: ...

    def set_phase(self, phase: RunnerState) -> None: ...

    def status(self) -> dict[str, Any]: ...


def apply_command(
    runner: Controlled | None,
    cmd: Command,
    *,
    name: str,
    by: str,
    hold: Hold | None = None,
    latch: EStopLatch | None = None,
) -> Reply:
    """Apply an operator's `cmd` (from `by`, the name its key was issued to) to `runner` and say how it
    went; `hold(on)` pauses and resumes (the link's operator hold), else the runner's own pause. E-stop and
    release need only the `latch` (the runner's, by default): they work before the runner exists."""
    latch = latch if latch is not None else (None if runner is None else runner.latch)
    try:
        if cmd.name == "estop" and latch is not None:
            reason = cmd.args.get("reason")
            latch.command(f"e-stop from {by}" + (f": {reason}" if isinstance(reason, str) and reason else ""))
        elif cmd.name == "release" and latch is not None:
            operator = str(cmd.args.get("operator") or by)
            if not (latch.release(operator) if runner is None else runner.release(operator)):
                return Reply(name, False, "not e-stopped: nothing to release", cmd.ref)
        elif runner is None:
            return Reply(name, False, "no runner attached yet", cmd.ref)
        elif cmd.name in ("pause", "resume"):
            on = cmd.name == "pause"
            if hold is not None:
                hold(on)
            elif on:
                runner.pause()
            else:
                runner.resume()
        elif cmd.name == "rollback":
            result = runner.rollback()
            if not result.accepted:
                return Reply(name, False, result.reason, cmd.ref)
        elif cmd.name == "set_phase":
            runner.set_phase(RunnerState(cmd.args.get("phase")))
    except ValueError as exc:
        return Reply(name, False, str(exc), cmd.ref)
    return Reply(name, True, None, cmd.ref)


class ControlServer:
    """Serves one runner's control ROUTER `sock` on its own thread; see the module docstring.

    `secure` says the socket is a CURVE server, whose messages carry the sender's key name as User-Id: a
    message whose `sender` differs from it is refused. `extra_status()` adds to every Status (the link's
    state). `latch` is the runner's e-stop latch, to be passed to the Runner attached later (without one,
    the attached runner's own: then only status is served before `attach`). `boost` raises the thread's
    scheduling priority where permitted; with `owns_context`, `close` also shuts `ctx` down. Use:
    `start()`, `attach(runner)`, `close()`.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        name: str,
        *,
        secure: bool,
        deadman_s: float | None = None,
        hold: Hold | None = None,
        extra_status: Callable[[], dict[str, Any]] | None = None,
        ctx: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
        latch: EStopLatch | None = None,
        boost: bool = False,
        owns_context: bool = False,
    ) -> None:
        if deadman_s is not None and deadman_s < MIN_DEADMAN_S:
            raise ValueError(f"deadman deadline {deadman_s} s is below the minimum {MIN_DEADMAN_S} s")
        self.sock, self.name, self.secure, self.deadman_s = sock, name, secure, deadman_s
        self._hold, self._extra_status, self._ctx, self._clock = hold, extra_status, ctx, clock
        self._latch, self._boost, self._owns_context = latch, boost, owns_context
        self.rejects = RejectCounter()
        self._runner: Controlled | None = None
        self._consoles: dict[bytes, tuple[str, float]] = {}  # connection -> (key name, last heard)
        self._supervisors: dict[bytes, tuple[str, float]] = {}  # connections holding the deadman
        self.priority = "normal"  # what the control thread got: "fifo", "nice" or "normal"
        self._last_command: dict[str, Any] | None = None
        self.deadman_trips = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"control-{name}", daemon=True)

    @property
    def latch(self) -> EStopLatch | None:
        return (
            self._latch if self._latch is not None else (None if self._runner is None else self._runner.latch)
        )

    @property
    def armed_deadman_s(self) -> float | None:
        """The deadline in force: the runner's own, else the default once a console supervises, else None."""
        if self.deadman_s is not None:
            return self.deadman_s
        return DEFAULT_DEADMAN_S if self._supervisors else None

    def attach(self, runner: Controlled) -> None:
        if self._latch is not None and runner.latch is not self._latch:
            raise ValueError("the runner must be built with this control server's latch")
        self._runner = runner

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._owns_context and self._ctx is not None:
            transport.shutdown(self._ctx)

    def status(self) -> dict[str, Any]:
        """The control channel's part of a Status: consoles, deadman, last command, recent stops."""
        now = self._clock()
        latch = self.latch
        consoles: dict[str, float] = {}
        for name, seen in list(self._consoles.values()):
            consoles[name] = min(consoles.get(name, now - seen), now - seen)
        return {
            "deadman_s": self.armed_deadman_s,
            "supervisors": [
                {"name": name, "silent_s": now - seen} for name, seen in list(self._supervisors.values())
            ],
            "consoles": consoles,
            "deadman_trips": self.deadman_trips,
            "last_command": self._last_command,
            "stops": [] if latch is None else [e.to_dict() for e in latch.events[-STOP_HISTORY:]],
            "latch_persist_errors": None if latch is None else latch.persist_errors,
            "priority": self.priority,
            "rejected": self.rejects.as_dict(),
            "rejected_keys": 0 if self._ctx is None else transport.rejected_keys(self._ctx),
        }

    # ----- the control thread -----

    def _loop(self) -> None:
        if self._boost:
            self.priority = raise_thread_priority()
        while not self._stop.is_set():
            try:
                frames = transport.recv_frames(self.sock, self._wait_s())
                while frames is not None:
                    self._handle(frames)
                    frames = transport.recv_frames(self.sock, 0.0)
                self._check_deadman()
            except Exception:  # keep serving: a dead control thread would leave nobody able to stop
                log.exception("%s: control step failed", self.name)
                time.sleep(POLL_S)

    def _wait_s(self) -> float:
        """Sleep until the next message or the earliest deadman deadline (1 ms late, never early)."""
        deadline = self.armed_deadman_s
        if deadline is None or not self._supervisors:
            return POLL_S
        due = min(seen for _, seen in self._supervisors.values()) + deadline - self._clock()
        return min(POLL_S, max(0.0, due) + 1e-3)

    def _handle(self, frames: list[Any]) -> None:
        routed = transport.routed_message(frames, self.rejects, self.secure)
        if routed is None:
            return
        identity, msg = routed
        by = msg.sender  # with CURVE, the name its key was issued to
        now = self._clock()
        self._consoles[identity] = (by, now)
        if isinstance(msg, HeartbeatMessage) and msg.role == "console":
            if msg.state == SUPERVISING:
                new = identity not in self._supervisors
                self._supervisors[identity] = (by, now)
                if new:
                    log.warning(
                        "%s: console %s holds the deadman (%.2f s)", self.name, by, self.armed_deadman_s
                    )
            elif msg.state == WATCHING:
                self._supervisors.pop(identity, None)
        elif isinstance(msg, Command):
            reply = apply_command(self._runner, msg, name=self.name, by=by, hold=self._hold, latch=self.latch)
            self._last_command = {"name": msg.name, "by": by, "ok": reply.ok, "error": reply.error}
            log.warning("%s: %s from %s: %s", self.name, msg.name, by, "ok" if reply.ok else reply.error)
            self._send(identity, reply)
        elif isinstance(msg, StatusRequest):
            self._send(identity, Status(self.name, self.full_status()))
        else:
            self.rejects.add("unexpected")

    def full_status(self) -> dict[str, Any]:
        """What a console sees: the runner's status, the control channel's and any extra."""
        runner, latch = self._runner, self.latch
        status: dict[str, Any] = {"runner_id": self.name, "attached": runner is not None}
        if runner is not None:
            status |= runner.status()
        elif latch is not None:  # no robot yet, but a stop may already stand
            status |= {
                "state": (latch.state or RunnerState.IDLE).value,
                "last_stop_cause": None if latch.cause is None else latch.cause.value,
                "last_stop_detail": latch.detail,
            }
        status["control"] = self.status()
        if self._extra_status is not None:
            status |= self._extra_status()
        return status

    def _check_deadman(self) -> None:
        deadline, latch, now = self.armed_deadman_s, self.latch, self._clock()
        for identity, (_, seen) in list(self._consoles.items()):
            if now - seen > CONSOLE_FORGET_S and identity not in self._supervisors:
                del self._consoles[identity]
        if deadline is None or latch is None:
            return
        for identity, (name, seen) in list(self._supervisors.items()):
            silent = now - seen
            if silent > deadline:
                del self._supervisors[identity]  # its next heartbeat makes it a supervisor again
                self.deadman_trips += 1
                latch.trigger(
                    EStopCause.WATCHDOG,
                    f"console deadman: {name} silent for {silent:.2f} s (deadline {deadline} s)",
                )

    def _send(self, identity: bytes, msg: Reply | Status) -> None:
        if not transport.send_frames(self.sock, [identity, *encode(msg)], SEND_TIMEOUT_S):
            log.warning("%s: could not reply to %r", self.name, identity)


# ----- the runner process: priority, reserved resources, the durable latch -----


def raise_thread_priority() -> str:
    """Give the calling thread SCHED_FIFO, else a lower nice value, where the process may (quietly not)."""
    tid = threading.get_native_id()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(CONTROL_RT_PRIORITY))
        return "fifo"
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, tid, CONTROL_NICE)  # Linux: per thread, by its id
        return "nice"
    return "normal"


def fifo_permitted() -> bool:
    """Whether this process may use SCHED_FIFO (tried on the calling thread, then put back)."""
    try:
        previous = (os.sched_getscheduler(0), os.sched_getparam(0))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(CONTROL_RT_PRIORITY))
        os.sched_setscheduler(0, *previous)
        return True
    except (AttributeError, OSError):
        return False


def control_context() -> zmq.Context:
    """A context for the control channel alone; its I/O thread runs SCHED_FIFO where permitted (asked only
    then: libzmq aborts the process when it may not apply a requested policy)."""
    ctx = zmq.Context()
    if fifo_permitted():
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
        ctx.set(zmq.THREAD_PRIORITY, CONTROL_RT_PRIORITY)
    return ctx


def reserve_process_resources() -> None:
    """For a runner process: all the file descriptors the hard limit allows (a flood of connections must
    not leave the e-stop path or the spool without one), and short GIL hand-offs (the control loop spins in
    Python; the control thread must get the interpreter within a fraction of a millisecond)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def open_latch(state_dir: Path) -> EStopLatch:
    """The runner's e-stop latch, recorded in `state_dir` (restored latched if it was), which this process
    then holds alone. RecordError if the record cannot be made or read, or another runner holds the folder:
    two runners sharing one latch record would release each other's e-stops."""
    lock = _hold_state_dir(state_dir)
    try:
        latch = EStopLatch(store=DurableRecord(state_dir / LATCH_STATE))
    except BaseException:
        os.close(lock)
        raise
    _STATE_LOCKS[id(latch)] = lock
    if latch.latched:  # a stop from before: the robot stays stopped until an operator releases it
        log.warning("e-stop latch recorded in %s (LATCHED)", state_dir.resolve())
    else:
        log.info("e-stop latch recorded in %s (clear)", state_dir.resolve())
    return latch


def close_latch(latch: EStopLatch) -> None:
    """Close the latch's record and give its state folder up (a latch from `open_latch`)."""
    latch.close()
    lock = _STATE_LOCKS.pop(id(latch), None)
    if lock is not None:
        os.close(lock)


def _hold_state_dir(state_dir: Path) -> int:
    """An exclusive lock on `state_dir` until `close_latch` (the kernel drops it when the process ends,
    however it ends), with our pid in the lock file for the error another runner gets; its descriptor."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / RUNNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise RecordError(f"state folder {state_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RecordError(
            f"state folder {state_dir} is in use by another runner (pid {holder}): each runner needs its "
            "own --state"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
