"""The runner's own control channel: consoles stop, release, pause and query it directly (no torch).

Safety must not depend on the learner being alive, so every runner process binds its own ROUTER (CURVE,
known console keys only; plain only on loopback when asked) and one thread serves it, never the control
loop. The thread applies operator `Command`s, answers `StatusRequest`s and watches console heartbeats.
An e-stop runs `runner.estop` on this thread: the latch calls the driver's safe stop at once, not at the
next tick.

Deadman: a console whose heartbeat `state` is "supervising" becomes a supervisor of this runner; when
the runner was started with a deadman deadline and a supervisor's heartbeats stop for longer than it,
the runner e-stops with cause "console deadman: NAME silent for X s". The thread wakes at the earliest
deadline, so the trip comes within about a millisecond of it, whatever the control period.

`apply_command` is the one mapping of a Command onto a runner; the learner link uses it too.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from robot_wsrl import keys, transport
from robot_wsrl.protocol import (
    Command,
    HeartbeatMessage,
    RejectCounter,
    Reply,
    Status,
    StatusRequest,
    encode,
)
from robot_wsrl.safety import EStopCause, RunnerState

if TYPE_CHECKING:  # consoles import this module's constants: keep onnxruntime out of them
    from robot_wsrl.runner import Runner

log = logging.getLogger(__name__)

SUPERVISING = "supervising"  # a console heartbeat state: this console holds the deadman
WATCHING = "watching"  # a console heartbeat state: status only, no deadman
POLL_S = 0.05  # longest sleep of the control thread
SEND_TIMEOUT_S = 0.05
MIN_DEADMAN_S = 0.5  # a console beats every 0.2 s: a shorter deadline would trip on scheduling noise
STOP_HISTORY = 32  # latch events reported in status, so a console sees stops between two polls

Hold = Callable[[bool], None]


def apply_command(
    runner: Runner | None, cmd: Command, *, name: str, by: str, hold: Hold | None = None
) -> Reply:
    """Apply `cmd` (from `by`, an authenticated name where the channel has one) to `runner` and say how it
    went; `hold(on)` pauses and resumes (the link's operator hold), else the runner's own pause."""
    if runner is None:
        return Reply(name, False, "no runner attached yet", cmd.ref)
    try:
        if cmd.name == "estop":
            reason = cmd.args.get("reason")
            runner.estop(f"e-stop from {by}" + (f": {reason}" if isinstance(reason, str) and reason else ""))
        elif cmd.name == "release":
            if not runner.release(str(cmd.args.get("operator") or by)):
                return Reply(name, False, "not e-stopped: nothing to release", cmd.ref)
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
    state). Use: `start()`, `attach(runner)` (commands before it are refused), `close()`.
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
    ) -> None:
        if deadman_s is not None and deadman_s < MIN_DEADMAN_S:
            raise ValueError(f"deadman deadline {deadman_s} s is below the minimum {MIN_DEADMAN_S} s")
        self.sock, self.name, self.secure, self.deadman_s = sock, name, secure, deadman_s
        self._hold, self._extra_status, self._ctx, self._clock = hold, extra_status, ctx, clock
        self.rejects = RejectCounter()
        self._runner: Runner | None = None
        self._consoles: dict[str, float] = {}  # console name -> last heard (clock)
        self._supervisors: dict[str, float] = {}  # consoles holding the deadman -> last heartbeat
        self._last_command: dict[str, Any] | None = None
        self.deadman_trips = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"control-{name}", daemon=True)

    def attach(self, runner: Runner) -> None:
        self._runner = runner

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def status(self) -> dict[str, Any]:
        """The control channel's part of a Status: consoles, deadman, last command, recent stops."""
        now = self._clock()
        runner = self._runner
        stops = [] if runner is None else runner.latch.events[-STOP_HISTORY:]
        return {
            "deadman_s": self.deadman_s,
            "supervisors": {name: now - seen for name, seen in dict(self._supervisors).items()},
            "consoles": {name: now - seen for name, seen in dict(self._consoles).items()},
            "deadman_trips": self.deadman_trips,
            "last_command": self._last_command,
            "stops": [
                {
                    "kind": e.kind,
                    "cause": None if e.cause is None else e.cause.value,
                    "detail": e.detail,
                    "time": e.time,
                    "operator": e.operator,
                }
                for e in stops
            ],
            "rejected": self.rejects.as_dict(),
            "rejected_keys": 0 if self._ctx is None else transport.rejected_keys(self._ctx),
        }

    # ----- the control thread -----

    def _loop(self) -> None:
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
        if self.deadman_s is None or not self._supervisors:
            return POLL_S
        due = min(self._supervisors.values()) + self.deadman_s - self._clock()
        return min(POLL_S, max(0.0, due) + 1e-3)

    def _handle(self, frames: list[Any]) -> None:
        routed = transport.routed_message(frames, self.rejects, self.secure)
        if routed is None:
            return
        identity, msg = routed
        by = msg.sender  # with CURVE, the name its key was issued to
        now = self._clock()
        self._consoles[by] = now
        if isinstance(msg, HeartbeatMessage) and msg.role == "console":
            if msg.state == SUPERVISING and self.deadman_s is not None:
                if by not in self._supervisors:
                    log.warning("%s: console %s holds the deadman (%.2f s)", self.name, by, self.deadman_s)
                self._supervisors[by] = now
            elif msg.state == WATCHING:
                self._supervisors.pop(by, None)
        elif isinstance(msg, Command):
            reply = apply_command(self._runner, msg, name=self.name, by=by, hold=self._hold)
            self._last_command = {"name": msg.name, "by": by, "ok": reply.ok, "error": reply.error}
            log.warning("%s: %s from %s: %s", self.name, msg.name, by, "ok" if reply.ok else reply.error)
            self._send(identity, reply)
        elif isinstance(msg, StatusRequest):
            self._send(identity, Status(self.name, self.full_status()))
        else:
            self.rejects.add("unexpected")

    def full_status(self) -> dict[str, Any]:
        """What a console sees: the runner's status, the control channel's and any extra."""
        runner = self._runner
        status: dict[str, Any] = {"runner_id": self.name, "attached": runner is not None}
        if runner is not None:
            status |= runner.status()
        status["control"] = self.status()
        if self._extra_status is not None:
            status |= self._extra_status()
        return status

    def _check_deadman(self) -> None:
        if self.deadman_s is None or self._runner is None:
            return
        now = self._clock()
        for name, seen in list(self._supervisors.items()):
            silent = now - seen
            if silent > self.deadman_s:
                del self._supervisors[name]  # its next heartbeat makes it a supervisor again
                self.deadman_trips += 1
                self._runner.latch.trigger(
                    EStopCause.WATCHDOG,
                    f"console deadman: {name} silent for {silent:.2f} s (deadline {self.deadman_s} s)",
                )

    def _send(self, identity: bytes, msg: Reply | Status) -> None:
        if not transport.send_frames(self.sock, [identity, *encode(msg)], SEND_TIMEOUT_S):
            log.warning("%s: could not reply to %r", self.name, identity)


# ----- starting one from a command line (runner and link-runner) -----


def bind(ctx: zmq.Context, endpoint: str, name: str, keydir: Path | None, plain: bool) -> zmq.Socket:
    """The runner's control ROUTER: CURVE admitting only console keys, or plain on loopback."""
    if plain:
        return transport.plain_server(ctx, zmq.ROUTER, endpoint)
    if keydir is None:
        raise ValueError("--control needs --keys (or --plain on a loopback endpoint)")
    consoles = keys.load_public_keys(keydir, roles=("console",))
    if not consoles:
        raise keys.KeyFileError(
            f"{keydir}: no console keys (robot-wsrl keys new NAME --dir {keydir} --role console): "
            "nobody could stop this runner"
        )
    return transport.secure_server(ctx, zmq.ROUTER, endpoint, keys.load_curve_keys(keydir, name), consoles)


def add_arguments(parser: argparse.ArgumentParser, *, identity: bool) -> None:
    """--control and --deadman-s (and, for a command without them, --keys, --name and --plain)."""
    parser.add_argument(
        "--control", metavar="ENDPOINT", default=None, help="bind the operator control channel (consoles)"
    )
    parser.add_argument(
        "--deadman-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"e-stop when a supervising console is silent this long (>= {MIN_DEADMAN_S}; needs --control)",
    )
    if identity:
        parser.add_argument("--keys", type=Path, default=None, help="key dir: NAME.key_secret, console keys")
        parser.add_argument("--name", default="runner", help="this runner's key name (its runner id)")
        parser.add_argument("--plain", action="store_true", help="no CURVE (loopback endpoints only)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.deadman_s is not None and args.control is None:
        parser.error("--deadman-s needs --control")
    if args.deadman_s is not None and args.deadman_s < MIN_DEADMAN_S:
        parser.error(f"--deadman-s must be at least {MIN_DEADMAN_S} s")
    if args.control is not None and not args.plain and args.keys is None:
        parser.error("--control needs --keys (or --plain on a loopback endpoint)")


def serve_from_args(
    ctx: zmq.Context,
    args: argparse.Namespace,
    runner: Runner | None,
    *,
    hold: Hold | None = None,
    extra_status: Callable[[], dict[str, Any]] | None = None,
) -> ControlServer:
    """Bind `args.control` and serve `runner` (None: `attach` it later; commands wait for it). Raises
    KeyFileError, TransportError or ZMQError."""
    sock = bind(ctx, args.control, args.name, args.keys, args.plain)
    server = ControlServer(
        sock,
        args.name,
        secure=not args.plain,
        deadman_s=args.deadman_s,
        hold=hold,
        extra_status=extra_status,
        ctx=ctx,
    )
    if runner is not None:
        server.attach(runner)
    server.start()
    log.warning("%s: control channel on %s (deadman %s)", args.name, args.control, args.deadman_s or "off")
    return server
