"""`robot-wsrl console`: the operator's safety-stop console, a Textual terminal UI (works over SSH).

The options are read before the console extra (textual, rich) is imported, so `--help` works without it.
Exit 0 when the console closed, 2 when it could not start.
"""

from __future__ import annotations

from pathlib import Path

from robot_wsrl.apps.errors import report
from robot_wsrl.apps.options import CommandParser, UsageError, add_connection, endpoints_from_args
from robot_wsrl.console.client import BackgroundClient, ClientError, ClientOptions, ControlClient
from robot_wsrl.wire.endpoints import EndpointsError

REPLY_TIMEOUT_S = 1.0  # an e-stop unconfirmed this long raises the alarm (and is still resent)
SNAPSHOT_SIZE = (150, 44)  # columns, rows of a --snapshot


def parser() -> CommandParser:
    p = CommandParser(
        prog="robot-wsrl console",
        description="The operator's safety-stop console, a Textual terminal UI (works over SSH).",
    )
    add_connection(
        p,
        timeout_s=REPLY_TIMEOUT_S,
        timeout_help="seconds before an unconfirmed command is shown as failed (an e-stop is still resent)",
    )
    p.add_argument(
        "--deadman",
        action="store_true",
        help="ask every runner to hold a deadman on this console: if it goes, they e-stop",
    )
    p.add_argument("--stale-s", type=float, default=2.0, help="a peer silent this long is STALE")
    p.add_argument(
        "--snapshot", type=Path, default=None, help="run headless, save the screen as SVG here, exit"
    )
    p.add_argument("--snapshot-after", type=float, default=5.0, help="seconds before --snapshot")
    return p


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from robot_wsrl.console.app import ConsoleApp  # the console extra: needed from here on only

    options = ClientOptions(supervise=args.deadman, stale_s=args.stale_s, reply_timeout_s=args.timeout)
    try:
        client = BackgroundClient(ControlClient(endpoints_from_args(args), args.name, options))
    except (EndpointsError, UsageError, ClientError) as exc:
        return report("console", exc)
    client.start()
    snapshot = None if args.snapshot is None else args.snapshot.resolve()
    try:
        if snapshot is None:
            ConsoleApp(client).run()
        else:
            ConsoleApp(client, snapshot, args.snapshot_after).run(headless=True, size=SNAPSHOT_SIZE)
            print(snapshot)
    finally:
        client.close()
    return 0
