"""`robot-wsrl ship CHECKPOINT --out policies/NAME`: package a pre-trained checkpoint (learn/ship.py);
`robot-wsrl ship RUN_DIR --select calibrated --out policies/NAME`: the one chosen offline among a
pre-training run's kept checkpoints (learn/selection.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser, positive_float, positive_int

DESCRIPTION = """Package a pre-trained checkpoint as a shipped policy under policies/NAME/: checkpoint.pt
(what the learner starts from), policy.onnx + policy.json (what robots run) and manifest.json (how it was
made, and its measured return on the nominal simulator and on every shift preset describing its robot).
The folder appears only once complete; one that holds a policy is replaced only with --force.

Given a pre-training run folder (pre-trained with run.keep_checkpoints=true, as recipe=cpu and
recipe=paper do), `--select calibrated` ships the latest kept checkpoint whose critics are calibrated:
q_calibration in calibration.csv (mean Q on the dataset's (s, a) over their Monte-Carlo return) within
1 +/- band. The choice and every candidate are recorded in manifest.json under `selection`."""


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="robot-wsrl ship", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", type=Path, help="a pre-training checkpoint.pt, or (--select) a run folder"
    )
    parser.add_argument(
        "--select", choices=("calibrated",), default=None, help="choose among a run folder's kept checkpoints"
    )
    parser.add_argument(
        "--band", type=positive_float, default=None, help="calibrated: |q_calibration - 1| <= BAND (0.25)"
    )
    parser.add_argument("--out", type=Path, required=True, help="policies/NAME")
    parser.add_argument(
        "--force", action="store_true", help="replace --out if it holds a policy (once the new one is built)"
    )
    parser.add_argument("--recipe", type=Path, default=None, help="JSON describing how it was made")
    parser.add_argument(
        "--episodes", type=positive_int, default=10, help="evaluation episodes per preset (default 10)"
    )
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--keys", type=Path, default=None, help="sign policy.onnx with KEYS/SIGNER.sign")
    parser.add_argument("--dataset", type=Path, default=None, help="the offline dataset (from collect)")
    parser.add_argument("--signer", default="learner", help="signing key name in --keys (default learner)")
    return parser


@reports_errors("ship")
def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from robot_wsrl.learn.collect import dataset_entry
    from robot_wsrl.learn.ship import check_out, ship
    from robot_wsrl.wire.keys import load_signing_key

    check_out(args.out, args.force)  # before any work: a slip of --out is one line, not minutes later
    recipe = json.loads(args.recipe.read_text()) if args.recipe else {}
    key = None if args.keys is None else load_signing_key(args.keys, args.signer)
    dataset = None if args.dataset is None else dataset_entry(args.dataset)
    checkpoint, selection = _source(args)
    manifest = ship(
        checkpoint, args.out, recipe, args.episodes, args.seed, key, dataset, selection, force=args.force
    )
    width = max(map(len, manifest["returns"]))
    for preset, r in manifest["returns"].items():
        success = f"  success {r['success_rate']:.0%}" if "success_rate" in r else ""
        print(f"  {preset:<{width}}  return {r['return_mean']:8.1f} ± {r['return_std']:.1f}{success}")
    print(f"shipped to {args.out}")
    return 0


def _source(args: argparse.Namespace) -> tuple[Path, dict[str, Any] | None]:
    """The checkpoint to ship and, for a run folder, the record of how it was selected."""
    from robot_wsrl.learn.calibration import CALIBRATION_TOLERANCE
    from robot_wsrl.learn.selection import select_calibrated

    source = args.checkpoint
    if not source.is_dir():
        if args.select or args.band is not None:
            raise ValueError(
                f"{source}: --select and --band choose among a pre-training run folder's kept "
                "checkpoints; give the run folder, or a checkpoint file without them"
            )
        return source, None
    if args.select is None:
        raise ValueError(
            f"{source} is a folder: did you mean --select calibrated (choose among its kept "
            "checkpoints), or its checkpoint.pt?"
        )
    picked = select_calibrated(source, CALIBRATION_TOLERANCE if args.band is None else args.band)
    print(
        f"selected step {picked.chosen.step:,} of {len(picked.candidates)} kept checkpoints: q_calibration "
        f"{picked.chosen.ratio:.3f}, within 1 +/- {picked.band:g} ({picked.checkpoint})"
    )
    return picked.checkpoint, picked.record()
