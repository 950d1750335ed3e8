"""`robot-wsrl rollback --runner ID [--run RUN]`: ONE runner swaps its previous policy back in (at its next
episode start). With --run, refused unless that previous policy is the run's previous validated version.
Exit 0 queued, 1 refused or not confirmed, 2 on bad input."""

from __future__ import annotations

import sys
from pathlib import Path

from robot_wsrl.apps.errors import report
from robot_wsrl.apps.operator import TIMEOUT_S
from robot_wsrl.apps.options import CommandParser, UsageError, add_connection, endpoints_from_args
from robot_wsrl.console.client import ClientError, ClientOptions, ControlClient
from robot_wsrl.gate.registry import RegistryError, previous_validated
from robot_wsrl.wire.endpoints import EndpointsError


def _rollback_problem(client: ControlClient, runner: str, run: Path, timeout_s: float) -> str | None:
    """Why rolling `runner` back would not make `run`'s previous validated version current, or None."""
    if not client.wait_for_status(timeout_s):
        return f"{runner} did not report its status within {timeout_s} s"
    status = client.view(runner).status or {}
    current, previous = status.get("policy_version"), status.get("previous_policy_version")
    target = None if current is None else previous_validated(run, int(current))
    if target is None:
        return f"{run}: no validated version before v{current}: nothing to roll back to"
    if previous != target.version:
        return (
            f"{runner} holds v{previous} as its previous policy, but the previous validated version in "
            f"{run} is v{target.version}: refused"
        )
    return None


def parser() -> CommandParser:
    p = CommandParser(
        prog="robot-wsrl rollback",
        description="Make ONE runner's previous policy current again (swapped in at its next episode start). "
        "With --run, refuse unless that previous policy is the run's previous validated version.",
    )
    add_connection(p, learner=False, timeout_s=TIMEOUT_S)
    p.add_argument("--run", type=Path, default=None, help="the learner run whose verdicts to check")
    return p


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.run is not None and not args.run.is_dir():
            raise RegistryError(f"{args.run}: no such run folder")
        client = ControlClient(
            endpoints_from_args(args), args.name, ClientOptions(reply_timeout_s=args.timeout)
        )
    except (RegistryError, EndpointsError, UsageError, ClientError) as exc:
        return report("rollback", exc)
    try:
        if len(client.runner_names) != 1:
            print("robot-wsrl rollback: rollback is per runner: name exactly one --runner", file=sys.stderr)
            return 2
        (runner,) = client.runner_names
        problem = None if args.run is None else _rollback_problem(client, runner, args.run, args.timeout)
        if problem is not None:
            print(f"robot-wsrl rollback: {problem}", file=sys.stderr)
            return 1
        (result,) = client.command("rollback", [runner])
    finally:
        client.close()
    if not result.ok:
        print(f"{runner}: NOT rolled back: {result.error}", file=sys.stderr)
        return 1
    print(f"{runner}: rollback queued (confirmed in {result.latency_s * 1e3:.1f} ms)")
    return 0
