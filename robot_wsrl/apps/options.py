"""Option groups every command app shares: one mechanism each, a small config where commands differ.

- `CommandParser`: an ArgumentParser whose usage errors are one line, `PROG: message`, exit 2, and that
  takes `--debug` (errors.py: a traceback instead of the one line, like ROBOT_WSRL_DEBUG=1).
- `positive_int`, `positive_float`, `endpoint`: argparse types that refuse bad values in that one line.
- Who we are on the wire: `Identity(...).add(parser)` adds --keys, --name, --plain; then
  `server_socket(ctx, kind, endpoint, args, roles)` binds and `client_socket(ctx, kind, endpoint, args,
  server)` connects, plain (loopback only) with --plain, else CURVE from the key folder.
- `ReadyFile(help).add(parser)` adds --ready-file; `write_ready_file(path, fields)` writes the JSON
  atomically once the process is up (nothing when the option was not given).
- Operator tools (console, stop, status, release, rollback): `add_connection(parser, ...)` adds --session,
  --runner, [--learner], the console's identity and --timeout; `endpoints_from_args(args)` names the peers
  (UsageError when none or an unknown runner).
- Robot side: `DriverOptions(...).add/check/open` (--driver, --driver-timeout, [--driver-retries], --seed,
  --realtime, --rt-priority, --episodes, --steps), `StateDir(root, holds).add/path` (--state), and the
  runner's control channel: `add_control`, `check_control`, `bind_control`, `serve_control`.

Only the argument handling and socket set-up live here: what a command does stays in its library module.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import zmq

from robot_wsrl.apps.errors import DEBUG_ENV, DEBUG_FLAG
from robot_wsrl.core.driver import Driver
from robot_wsrl.core.files import write_atomic
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.robot import control
from robot_wsrl.robot.drivers import CAMERA_REQUESTS, DRIVER_FORMS, make_driver
from robot_wsrl.robot.safety import EStopLatch
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.endpoints import Endpoints, check_endpoint, endpoint_problem, load_endpoints, parse_named

log = logging.getLogger(__name__)

PLAIN_HELP = "no CURVE (loopback endpoints only)"
NEEDS_KEYS = "needs --keys (or --plain on a loopback endpoint)"
RT_PRIORITIES = range(1, 100)  # Linux SCHED_FIFO


class _Debug(argparse.Action):
    """--debug: set ROBOT_WSRL_DEBUG=1 as soon as it is parsed, so the command's error reporting (errors.py)
    and its children show tracebacks."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        os.environ[DEBUG_ENV] = "1"


class CommandParser(argparse.ArgumentParser):
    """Usage errors as one line, `robot-wsrl CMD: message` (exit 2), like every other setup error; --debug
    (a sub-command's parser has it too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            DEBUG_FLAG, action=_Debug, help="on an error, show the traceback (or set ROBOT_WSRL_DEBUG=1)"
        )

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def endpoint(text: str) -> str:
    """A ZeroMQ endpoint ZeroMQ can use: a malformed one is refused here, not as zmq's 'Invalid argument'."""
    problem = endpoint_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def rt_priority(text: str) -> int:
    """--rt-priority: a SCHED_FIFO priority, checked as it is parsed (not when the loop starts)."""
    wrong = argparse.ArgumentTypeError(
        f"must be a SCHED_FIFO priority {RT_PRIORITIES[0]}-{RT_PRIORITIES[-1]}, got {text!r}"
    )
    try:
        value = int(text)
    except ValueError:
        raise wrong from None
    if value not in RT_PRIORITIES:
        raise wrong
    return value


def driver_name(text: str) -> str:
    """--driver: an `emulated:ENDPOINT` with a malformed endpoint is refused as it is parsed."""
    kind, _, address = text.partition(":")
    problem = endpoint_problem(address) if kind == "emulated" else None
    if problem is not None:
        raise argparse.ArgumentTypeError(f"emulated:ENDPOINT: {problem}")
    return text


# ----- who we are on the wire -----


class Identified(Protocol):
    """What `Identity.add` puts in the parsed arguments."""

    keys: Path | None
    name: str
    plain: bool


@dataclass(frozen=True)
class Identity:
    """--keys, --name and --plain. `name` is the default key name (None: --name is required)."""

    name: str | None
    name_help: str
    keys_help: str
    keys_required: bool = False

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--keys", type=Path, default=None, required=self.keys_required, help=self.keys_help
        )
        parser.add_argument("--name", default=self.name, required=self.name is None, help=self.name_help)
        parser.add_argument("--plain", action="store_true", help=PLAIN_HELP)


def server_socket(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    me: Identified,
    roles: tuple[str, ...],
    *,
    needed_because: str | None = None,
) -> zmq.Socket:
    """Bind `endpoint`: plain (loopback only) with --plain, else CURVE admitting the keys of `roles` in
    --keys. With `needed_because`, a key folder holding none of them is an error (KeyFileError) saying why.
    Raises KeyFileError, TransportError (ValueErrors) or ZMQError."""
    if me.plain:
        return transport.plain_server(ctx, kind, endpoint)
    if me.keys is None:
        raise ValueError(f"{endpoint}: {NEEDS_KEYS}")
    peers = keys.load_public_keys(me.keys, roles=roles)
    if not peers and needed_because is not None:
        raise keys.KeyFileError(
            f"{me.keys}: no {'/'.join(roles)} keys (robot-wsrl keys new NAME --dir {me.keys} "
            f"--role {roles[0]}): {needed_because}"
        )
    return transport.secure_server(ctx, kind, endpoint, keys.load_curve_keys(me.keys, me.name), peers)


def client_socket(ctx: zmq.Context, kind: int, endpoint: str, me: Identified, server: str) -> zmq.Socket:
    """Connect to `endpoint`: plain (loopback only) with --plain, else CURVE to the key named `server`."""
    if me.plain:
        return transport.plain_client(ctx, kind, endpoint)
    if me.keys is None:
        raise ValueError(f"{endpoint}: {NEEDS_KEYS}")
    return transport.secure_client(
        ctx, kind, endpoint, keys.load_curve_keys(me.keys, me.name), keys.load_public_key(me.keys, server)
    )


# ----- operator tools: which peers, and who we are -----

CONSOLE = Identity("console", "this console's key name", "key dir: our NAME.key_secret, peers' .key")


class UsageError(ValueError):
    """Arguments that name no peer, or a runner the session does not have."""


def add_connection(
    parser: argparse.ArgumentParser,
    *,
    learner: bool = True,
    timeout_s: float,
    timeout_help: str = "seconds to wait for the peers",
) -> None:
    """Where the peers are and who we are: shared by the console and the operator commands."""
    parser.add_argument("--session", type=Path, default=None, help="a session dir with endpoints.json")
    parser.add_argument(
        "--runner",
        action="append",
        default=[],
        metavar="NAME[=ENDPOINT]",
        help="a runner by name (from --session) or NAME=tcp://HOST:PORT; repeatable; default: all",
    )
    if learner:
        parser.add_argument("--learner", default=None, metavar="[NAME=]ENDPOINT", help="the learner")
    CONSOLE.add(parser)
    parser.add_argument("--timeout", type=positive_float, default=timeout_s, help=timeout_help)


def endpoints_from_args(args: argparse.Namespace) -> Endpoints:
    """The peers named on the command line (runners: those given with --runner, else all the session's).
    Raises UsageError, EndpointsError."""
    session = load_endpoints(args.session) if args.session is not None else Endpoints()
    known, chosen = dict(session.runners), {}
    for item in args.runner:
        if "=" in item:
            name, endpoint = parse_named(item, "--runner")
        elif item in known:
            name, endpoint = item, known[item]
        else:
            raise UsageError(
                f"unknown runner {item!r} (known: {', '.join(known) or 'none'}; or NAME=ENDPOINT)"
            )
        chosen[name] = endpoint
    learner = session.learner
    if getattr(args, "learner", None):
        if "=" in args.learner:
            learner = parse_named(args.learner, "--learner")
        else:
            learner = ("learner", check_endpoint(args.learner, "--learner"))
    endpoints = Endpoints(chosen or known, learner, args.plain or session.plain, args.keys or session.keys)
    if not endpoints.runners and endpoints.learner is None:
        raise UsageError("no runner to talk to: give --session DIR or --runner NAME=ENDPOINT")
    return endpoints


# ----- telling a supervisor we are up -----


@dataclass(frozen=True)
class ReadyFile:
    """--ready-file PATH: where a supervisor (a session, a test) learns what this process bound."""

    help: str

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ready-file", type=Path, default=None, help=self.help)


def write_ready_file(path: Path | None, fields: Mapping[str, Any]) -> None:
    """`fields` and our pid as JSON at `path`, atomically (a reader never sees half a file)."""
    if path is not None:
        write_atomic(path, json.dumps({**fields, "pid": os.getpid()}).encode())


# ----- the robot: driver, limits, state folder -----


@dataclass(frozen=True)
class DriverOptions:
    """--driver and how to run it. `timeout_periods`: an emulated driver's default reply deadline in control
    periods (None: the driver's own); `retries` adds --driver-retries."""

    timeout_periods: int | None = None
    retries: bool = False

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--driver",
            type=driver_name,
            required=True,
            help=f"{' | '.join(DRIVER_FORMS)} ({CAMERA_REQUESTS})",
        )
        default = (
            "the driver's own" if self.timeout_periods is None else f"{self.timeout_periods} control periods"
        )
        parser.add_argument(
            "--driver-timeout",
            type=positive_float,
            default=None,
            help="emulated driver: seconds to wait for each reply before a retry, then a driver fault "
            f"(default: {default})",
        )
        if self.retries:
            parser.add_argument(
                "--driver-retries", type=int, default=None, help="emulated driver: resends of a request"
            )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--realtime",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="keep the control period (default) or step as fast as possible",
        )
        parser.add_argument(
            "--rt-priority",
            type=rt_priority,
            default=None,
            help="run the control loop SCHED_FIFO at this priority (1-99), where permitted: on a busy host "
            "its missed deadlines are run-queue waits, which only a real-time policy removes "
            "(needs the realtime loop)",
        )
        parser.add_argument("--episodes", type=positive_int, default=None, help="stop after N episodes")
        parser.add_argument("--steps", type=positive_int, default=None, help="stop after N control ticks")

    @staticmethod
    def check(parser: argparse.ArgumentParser, args: argparse.Namespace, *limits: str) -> None:
        """At least one of --episodes, --steps and the command's other `limits` (attribute names); no
        --rt-priority with --no-realtime (a loop that never waits has no deadline to keep)."""
        names = ["episodes", "steps", *limits]
        if all(getattr(args, name) is None for name in names):
            flags = [f"--{name}" for name in names]
            parser.error(f"give {', '.join(flags[:-1])} and/or {flags[-1]}")
        if args.rt_priority is not None and not args.realtime:
            parser.error("--rt-priority applies to the realtime loop: drop --no-realtime or --rt-priority")
        if args.driver == "null" and all(getattr(args, name) is None for name in names if name != "episodes"):
            parser.error("the null driver never ends an episode: give --steps, not --episodes alone")

    def open(self, args: argparse.Namespace, spec: EnvSpec) -> Driver:
        """The driver --driver names, for a policy of `spec`. Raises ValueError, ImportError, DriverFault."""
        timeout_s = args.driver_timeout
        if timeout_s is None and self.timeout_periods is not None and args.driver.startswith("emulated:"):
            timeout_s = self.timeout_periods * spec.control_period_s
        return make_driver(
            args.driver,
            seed=args.seed,
            spec=spec,
            timeout_s=timeout_s,
            retries=getattr(args, "driver_retries", None),
        )


@dataclass(frozen=True)
class StateDir:
    """--state DIR, default ROOT/NAME: what this runner keeps across restarts (`holds`, for the help)."""

    root: str
    holds: str

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--state", type=Path, default=None, help=f"{self.holds} (default {self.root}/NAME)"
        )

    def path(self, args: argparse.Namespace) -> Path:
        return args.state or Path(self.root) / args.name


# ----- the runner's control channel (consoles stop it there) -----


def add_control(parser: argparse.ArgumentParser) -> None:
    """--control and --deadman-s (the identity comes from `Identity`)."""
    parser.add_argument(
        "--control",
        type=endpoint,
        metavar="ENDPOINT",
        default=None,
        help="bind the operator control channel (consoles): tcp://HOST:PORT or ipc://PATH",
    )
    parser.add_argument(
        "--deadman-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="e-stop when a supervising console is silent this long "
        f"(>= {control.MIN_DEADMAN_S}; needs --control)",
    )


def check_control(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.deadman_s is not None and args.control is None:
        parser.error("--deadman-s needs --control")
    if args.deadman_s is not None and args.deadman_s < control.MIN_DEADMAN_S:
        parser.error(f"--deadman-s must be at least {control.MIN_DEADMAN_S} s")
    if args.control is not None and not args.plain and args.keys is None:
        parser.error(f"--control {NEEDS_KEYS}")


def bind_control(ctx: zmq.Context, endpoint: str, name: str, keydir: Path | None, plain: bool) -> zmq.Socket:
    """The control ROUTER of runner `name`: CURVE admitting only console keys, or plain on loopback."""
    me = argparse.Namespace(name=name, keys=keydir, plain=plain)
    return server_socket(
        ctx, zmq.ROUTER, endpoint, me, ("console",), needed_because="nobody could stop this runner"
    )


def serve_control(
    args: argparse.Namespace,
    latch: EStopLatch,
    *,
    hold: control.Hold | None = None,
    extra_status: Callable[[], dict[str, Any]] | None = None,
) -> control.ControlServer:
    """Bind --control on a context of its own (`control.control_context`, shut down by `close`) and serve
    `latch` at once (e-stop, release, status), the runner once it is `attach`ed. Raises KeyFileError,
    TransportError or ZMQError."""
    ctx = control.control_context()
    try:
        sock = bind_control(ctx, args.control, args.name, args.keys, args.plain)
    except BaseException:
        transport.shutdown(ctx)
        raise
    server = control.ControlServer(
        sock,
        args.name,
        secure=not args.plain,
        deadman_s=args.deadman_s,
        hold=hold,
        extra_status=extra_status,
        ctx=ctx,
        latch=latch,
        boost=True,
        owns_context=True,
    )
    server.start()
    log.warning(
        "%s: control channel on %s (deadman %s)",
        args.name,
        args.control,
        args.deadman_s or f"{control.DEFAULT_DEADMAN_S} s once a console supervises",
    )
    return server
