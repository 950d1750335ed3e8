"""`robot-wsrl ship CHECKPOINT --out policies/NAME`: package a pre-trained checkpoint (learn/ship.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser

DESCRIPTION = """Package a pre-trained checkpoint as a shipped policy under policies/NAME/: checkpoint.pt
(what the learner starts from), policy.onnx + policy.json (what robots run) and manifest.json (how it was
made, and its measured return on the nominal simulator and on every dynamics-shift preset)."""


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="robot-wsrl ship", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a pre-training checkpoint.pt")
    parser.add_argument("--out", type=Path, required=True, help="policies/NAME")
    parser.add_argument("--recipe", type=Path, default=None, help="JSON describing how it was made")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--keys", type=Path, default=None, help="sign policy.onnx with KEYS/SIGNER.sign")
    parser.add_argument("--dataset", type=Path, default=None, help="the offline dataset (from collect)")
    parser.add_argument("--signer", default="learner", help="signing key name in --keys (default learner)")
    return parser


@reports_errors("ship")
def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from robot_wsrl.learn.collect import dataset_entry
    from robot_wsrl.learn.ship import ship
    from robot_wsrl.wire.keys import load_signing_key

    recipe = json.loads(args.recipe.read_text()) if args.recipe else {}
    key = None if args.keys is None else load_signing_key(args.keys, args.signer)
    dataset = None if args.dataset is None else dataset_entry(args.dataset)
    manifest = ship(args.checkpoint, args.out, recipe, args.episodes, args.seed, key, dataset)
    for preset, r in manifest["returns"].items():
        print(f"  {preset:<10} return {r['return_mean']:8.1f} ± {r['return_std']:.1f}")
    print(f"shipped to {args.out}")
    return 0
