"""`robot-wsrl export`: a checkpoint's actor to ONNX (learn/export.py), or, with --policy, the registry's
copy of a verified, validated version for deployment (gate/registry.py). The two forms live on different
sides (learn, gate) and meet only here."""

from __future__ import annotations

import json
from pathlib import Path

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser
from robot_wsrl.core.artifacts import POLICY_SIDECAR


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="robot-wsrl export",
        description="Export a checkpoint's actor to DIR/policy.onnx + DIR/policy.json. "
        "To copy a verified, validated version for deployment instead: "
        "robot-wsrl export --policy RUN_OR_POLICY_DIR [--version N] --to DIR [--keys KEYDIR] "
        "(see robot-wsrl export --policy X --help).",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--version", type=int, default=0, help="policy version (default 0)")
    parser.add_argument(
        "--parent-version", type=int, default=None, help="version this policy was fine-tuned from"
    )
    return parser


@reports_errors("export")
def cli(argv: list[str]) -> int:
    if "--policy" in argv:  # the registry form
        from robot_wsrl.gate.registry import export_cli

        return export_cli(argv)
    args = _parser().parse_args(argv)
    from robot_wsrl.learn.export import export_policy

    path = export_policy(args.checkpoint, args.out, version=args.version, parent_version=args.parent_version)
    side = json.loads((path.parent / POLICY_SIDECAR).read_text())
    print(f"{path}  version {side['version']}  step {side['step']}  sha256 {side['sha256']}")
    return 0
