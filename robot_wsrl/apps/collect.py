"""`robot-wsrl collect`: a behaviour SAC on a nominal sim task, then D4RL-style datasets (learn/collect.py);
`collect --fetch MANIFEST` makes sure a shipped policy's dataset is on disk by replaying the `collect`
command line its manifest recorded, so that command line is parsed here, in one place.

Options are argparse; the KEY=VALUE arguments are Hydra overrides passed on, untouched, to the behaviour
training (a `finetune` run).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="robot-wsrl collect",
        description="Train a behaviour SAC on a nominal sim task and write D4RL-style medium and "
        "medium-replay datasets with a manifest. Extra Hydra overrides configure the behaviour training, "
        "e.g.: env=hopper run.steps=300000 run.eval_every=10000. With --fetch MANIFEST: make sure the "
        "dataset a shipped policy names is on disk (cached when its sha256 matches, else regenerated).",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder (default data/collect-<time>)")
    parser.add_argument("--medium-size", type=int, default=100_000, help="transitions in medium.npz")
    parser.add_argument("--fraction", type=float, default=1 / 3, help="medium = this fraction of the best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fetch", type=Path, default=None, help="a shipped policy's manifest.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the behaviour SAC")
    return parser


def fetch(entry: dict[str, str]) -> bool:
    """Make `entry["path"]` hold the dataset whose sha256 is `entry["sha256"]`: a cached file that matches is
    kept; otherwise `entry["command"]` regenerates it (paths relative to the current directory, the
    repository root). Returns whether the result matches. Regeneration is bit-identical only with the same
    seed, threads=1 and the same CPU and library builds (float rounding differs between machines)."""
    from robot_wsrl.learn.collect import collect, file_sha256

    path = Path(entry["path"])
    if path.is_file() and file_sha256(path) == entry["sha256"]:
        print(f"{path}: cached, sha256 matches")
        return True
    words = shlex.split(entry["command"])
    args = _parser().parse_args(words[2:])
    if words[:2] != ["robot-wsrl", "collect"] or args.out is None or args.out != path.parent:
        raise ValueError(f"{path}: the dataset command does not write it: {entry['command']!r}")
    print(
        f"{path}: {'sha256 differs' if path.is_file() else 'missing'}; regenerating with: {entry['command']}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    collect(args.overrides, args.out, args.medium_size, args.fraction, args.seed)
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        print(
            f"warning: {path} was regenerated but is NOT bit-identical to the shipped policy's dataset "
            f"(sha256 {actual}, expected {entry['sha256']}): a different CPU or library build rounds "
            "the behaviour training differently. It is a dataset made by the same recipe, not the same data.",
            file=sys.stderr,
        )
        return False
    print(f"{path}: regenerated, sha256 matches")
    return True


def _fetch(manifest_path: Path, overrides: list[str]) -> int:
    if overrides:
        raise ValueError("--fetch takes no overrides: the command recorded in the manifest is replayed")
    try:
        entry = json.loads(manifest_path.read_text())["dataset"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{manifest_path}: cannot fetch its dataset: {exc}") from exc
    return 0 if fetch(entry) else 1


@reports_errors("collect")
def cli(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.fetch is not None:
        return _fetch(args.fetch, args.overrides)
    from robot_wsrl.learn.collect import collect

    out = args.out or Path("data") / f"collect-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    manifest = collect(args.overrides, out, args.medium_size, args.fraction, args.seed)
    snap = manifest["medium_snapshot"]
    print(f"medium snapshot: step {snap['step']}, return {snap['return']:.1f}")
    for name, d in manifest["datasets"].items():
        print(f"  {name:<14} {d['size']:>8} transitions  {out / d['file']}")
    print(f"manifest: {out / 'manifest.json'}")
    return 0
