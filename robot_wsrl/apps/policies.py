"""`robot-wsrl policies`: every shipped and produced policy version as a table (or JSON): version, parent,
training step, validation, sha256 (TAMPERED when the file disagrees with its sidecar) and signature.
Exit 0 listed, 2 on a missing folder or an unreadable key."""

from __future__ import annotations

import json
from pathlib import Path

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser
from robot_wsrl.gate.registry import PolicyEntry, RegistryError, load_trusted, produced, shipped

SHIPPED = Path("policies")  # listed when it exists and --shipped names no other folder


def _row(e: PolicyEntry) -> tuple[str, ...]:
    signer = f" ({e.signature.signer})" if e.signature.signer else ""
    parent = "-" if e.parent is None else str(e.parent)
    return (
        e.name, e.kind, str(e.version), parent, str(e.step), e.validation, e.sha256[:12],
        e.integrity.split(":")[0], e.signature.state + signer, str(e.directory),
    )  # fmt: skip


def _format(entries: list[PolicyEntry]) -> str:
    header = (
        "name",
        "kind",
        "version",
        "parent",
        "step",
        "validation",
        "sha256",
        "integrity",
        "signature",
        "path",
    )
    rows = [header, *map(_row, entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def parser() -> CommandParser:
    p = CommandParser(
        prog="robot-wsrl policies",
        description="List shipped and produced policies: version, parent, training step, validation, sha256 "
        "(TAMPERED when the file disagrees with its sidecar) and signature.",
    )
    p.add_argument(
        "--shipped", type=Path, default=None, help=f"shipped policies (default: {SHIPPED}/, if any)"
    )
    p.add_argument("--runs", type=Path, nargs="*", default=[], help="learner run or session folders")
    p.add_argument("--keys", type=Path, default=None, help="key dir whose *.sign.pub verify signatures")
    p.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    return p


@reports_errors("policies")
def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    trusted = load_trusted(args.keys)
    for folder in [args.shipped, *args.runs]:
        if folder is not None and not folder.is_dir():
            raise RegistryError(f"{folder}: no such folder")
    shipped_dir = args.shipped or SHIPPED
    entries = shipped(shipped_dir, trusted) if shipped_dir.is_dir() else []
    for run in args.runs:
        entries += produced(run, trusted)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    elif entries:
        print(_format(entries))
    else:
        print(f"no policies under {', '.join(map(str, [shipped_dir, *args.runs]))}")
    return 0
