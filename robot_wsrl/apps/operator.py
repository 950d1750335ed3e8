"""`robot-wsrl stop`, `status` and `release`: the console's safety commands for a shell or a script.

They talk to each runner's own control channel (and to the learner for status), like the console, and
their exit codes can be trusted: `stop` sends to every targeted runner at once, resends until each one
confirmed or --timeout ran out, and exits 0 only when every one confirmed (else 1, naming the hardware
e-stop for each that did not); `status` exits 0 when every peer reported and no runner is e-stopped or
faulted, 1 when one is, 3 when a peer did not report (unreachable, or our key refused), and --json is
strict JSON (a NaN or infinity is null); `release` exits 0 only when the runner confirmed.
Bad arguments exit 2 with `robot-wsrl CMD: message`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from robot_wsrl.apps.errors import report
from robot_wsrl.apps.options import CommandParser, UsageError, add_connection, endpoints_from_args
from robot_wsrl.console.client import (
    HARDWARE_ESTOP,
    ClientError,
    ClientOptions,
    CommandResult,
    ControlClient,
    PeerView,
    tool_tag,
)
from robot_wsrl.wire.endpoints import Endpoints, EndpointsError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
STOPPED = ("estopped", "faulted")
TIMEOUT_S = 5.0  # a busy 2-core host may take seconds to start a tool and finish the CURVE handshakes


def _client(args: argparse.Namespace, endpoints: Endpoints) -> ControlClient:
    return ControlClient(endpoints, args.name, ClientOptions(reply_timeout_s=args.timeout))


def _run(prog: str, parser: CommandParser, argv: list[str], body: Any) -> int:
    """Parse, build the client, run `body(args, client)`; every setup error is `prog: message`, exit 2."""
    args = parser.parse_args(argv)
    try:
        endpoints = endpoints_from_args(args)
        client = _client(args, endpoints)
    except (EndpointsError, UsageError, ClientError) as exc:
        try:
            return report(prog, exc)
        finally:
            if prog == "stop":  # nothing was sent: the operator must not read this as a stop
                print(f"robot-wsrl stop: NOTHING STOPPED: {HARDWARE_ESTOP}", file=sys.stderr)
    try:
        return int(body(args, client))
    finally:
        client.close()


def _report(results: list[CommandResult], verb: str, failed_hint: str = "") -> int:
    """One line per peer: confirmed on stdout, failed on stderr (with `failed_hint`); the exit code."""
    for result in results:
        if result.ok:
            latency = "" if result.latency_s is None else f" in {result.latency_s * 1e3:.1f} ms"
            print(f"{result.peer}: {verb} (confirmed{latency})")
        else:
            print(f"{result.peer}: NOT {verb}: {result.error}{failed_hint}", file=sys.stderr)
    return EXIT_OK if results and all(r.ok for r in results) else EXIT_FAILED


def stop_cli(argv: list[str]) -> int:
    parser = CommandParser(
        prog="robot-wsrl stop",
        description="E-stop runners (all of them by default); exit 0 only if every one confirmed.",
    )
    add_connection(
        parser,
        learner=False,
        timeout_s=TIMEOUT_S,
        timeout_help="seconds to keep resending until every runner confirmed",
    )
    parser.add_argument("--reason", default="", help="recorded with the stop")

    def body(args: argparse.Namespace, client: ControlClient) -> int:
        reason = tool_tag("stop") + (f": {args.reason}" if args.reason else "")
        results = client.command("estop", client.runner_names, {"reason": reason}, args.timeout)
        return _report(results, "e-stopped", f" -- STOP NOT CONFIRMED: {HARDWARE_ESTOP}")

    return _run("stop", parser, argv, body)


def release_cli(argv: list[str]) -> int:
    parser = CommandParser(
        prog="robot-wsrl release",
        description="Release ONE runner's e-stop. Make sure the robot is safe to move first.",
    )
    add_connection(parser, learner=False, timeout_s=TIMEOUT_S)
    parser.add_argument("--yes", action="store_true", help="confirm without the typed prompt")

    def body(args: argparse.Namespace, client: ControlClient) -> int:
        if len(client.runner_names) != 1:
            print("robot-wsrl release: release is per runner: name exactly one --runner", file=sys.stderr)
            return EXIT_USAGE
        (runner,) = client.runner_names
        if not args.yes:
            if not sys.stdin.isatty():
                print("robot-wsrl release: not a terminal: confirm with --yes", file=sys.stderr)
                return EXIT_USAGE
            typed = input(f"The robot may move once released. Type the runner id ({runner}) to release: ")
            if typed.strip() != runner:
                print("robot-wsrl release: not confirmed, nothing released", file=sys.stderr)
                return EXIT_FAILED
        return _report(client.command("release", [runner]), "released")

    return _run("release", parser, argv, body)


def _line(view: PeerView) -> str:
    if view.status is None or view.stale:
        why = view.auth_error or ("no status yet" if view.status is None else f"silent {view.age_s:.1f} s")
        return f"{view.name:<12} STALE        {why}"
    s = view.status
    if view.role == "learner":
        return (
            f"{view.name:<12} {s.get('phase', '?'):<12} step {s.get('step')} updates {s.get('updates')} "
            f"UTD {s.get('effective_utd', 0.0):.2f} buffer {s.get('buffer')} "
            f"policy v{s.get('policy_version')}"
        )
    if not s.get("attached", True) or "state" not in s:
        return f"{view.name:<12} {'starting':<12} (no runner attached yet)"
    cause = f" | {s['last_stop_cause']}: {s['last_stop_detail']}" if s["state"] in STOPPED else ""
    return (
        f"{view.name:<12} {s['state']:<12} policy v{s['policy_version']} {s['loop_rate_hz']:.1f} Hz "
        f"ep {s['episode']} return {s['episode_return']:.1f}{cause}"
    )


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float, however deeply nested, replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def status_cli(argv: list[str]) -> int:
    parser = CommandParser(
        prog="robot-wsrl status",
        description="Every runner's and the learner's state. Exit 0: all reported, none stopped; "
        "1: a runner is e-stopped or faulted; 3: a peer did not report.",
    )
    add_connection(parser, timeout_s=TIMEOUT_S)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")

    def body(args: argparse.Namespace, client: ControlClient) -> int:
        client.wait_for_status(args.timeout)
        snapshot = client.snapshot()
        views = snapshot.runners + ([snapshot.learner] if snapshot.learner is not None else [])
        if args.json:
            report = finite({v.name: None if v.stale else v.status for v in views})
            print(json.dumps(report, default=str, allow_nan=False))
        else:
            for view in views:
                print(_line(view))
        if any(v.stale for v in views):
            return EXIT_UNREACHABLE
        stopped = any((v.status or {}).get("state") in STOPPED for v in snapshot.runners)
        return EXIT_FAILED if stopped else EXIT_OK

    return _run("status", parser, argv, body)
