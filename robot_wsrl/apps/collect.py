"""`robot-wsrl collect`: a behaviour SAC on a nominal sim task, then D4RL-style datasets (learn/collect.py);
with `--driver NAME --behaviour expert|POLICY` it records a given behaviour on any driver instead (a
camera task's images included); `collect --fetch MANIFEST` makes sure a shipped policy's dataset is on disk
by replaying the `collect` command line its manifest recorded, so that command line is parsed here, in one
place.

Options are argparse; the KEY=VALUE arguments are Hydra overrides passed on, untouched, to the behaviour
training (a `finetune` run).
"""

from __future__ import annotations

import argparse
import difflib
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser, driver_name, positive_int

PROGRESS_EVERY_S = 2.0
MEDIUM_SIZE, FRACTION = 100_000, 1 / 3  # the behaviour-SAC recipe's defaults


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="robot-wsrl collect",
        description="Train a behaviour SAC on a nominal sim task and write D4RL-style medium and "
        "medium-replay datasets with a manifest. Extra Hydra overrides configure the behaviour training, "
        "e.g.: env=hopper run.steps=300000 run.eval_every=10000. With --driver NAME --behaviour "
        "expert|POLICY: record that behaviour instead (a camera task's images included, each frame once), "
        "e.g. --driver cam:reacher --behaviour expert --expert-noise 0.3 --transitions 20000. With --fetch "
        "MANIFEST: make sure the dataset a shipped policy names is on disk (cached when its sha256 matches, "
        "else regenerated).",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder (default data/collect-<time>)")
    parser.add_argument(
        "--medium-size", type=int, default=None, help=f"transitions in medium.npz ({MEDIUM_SIZE})"
    )
    parser.add_argument(
        "--fraction", type=float, default=None, help="medium = this fraction of the best (1/3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fetch", type=Path, default=None, help="a shipped policy's manifest.json")
    record = parser.add_argument_group(
        "recording a given behaviour (instead of training one): --driver NAME --behaviour expert|POLICY"
    )
    record.add_argument("--driver", type=driver_name, default=None, help="e.g. cam:reacher, gym:Hopper-v5")
    record.add_argument(
        "--behaviour",
        default=None,
        help="'expert' (the driver's scripted expert, e.g. cam:reacher's) or an exported policy (policy.onnx "
        "or its folder), sampling its actions",
    )
    record.add_argument(
        "--expert-noise",
        type=_non_negative,
        default=None,
        help="Gaussian std on each expert action entry (0)",
    )
    record.add_argument(
        "--transitions", type=positive_int, default=None, help="transitions to record (10000)"
    )
    record.add_argument("--compress", action="store_true", help="deflate the dataset file (lossless)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the behaviour SAC")
    return parser


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


RECORD_ONLY = ("driver", "behaviour", "expert_noise", "transitions", "compress")
TRAIN_ONLY = ("medium_size", "fraction")


def _check_mode(args: argparse.Namespace) -> None:
    """Refuse options of the other recipe: recording a given behaviour (--driver) or training one."""

    def given(names: tuple[str, ...]) -> list[str]:
        return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in (None, False)]

    if args.driver is None:
        if given(RECORD_ONLY):
            raise ValueError(f"{', '.join(given(RECORD_ONLY))} record a given behaviour: add --driver NAME")
        return
    if given(TRAIN_ONLY) or args.overrides:
        extra = given(TRAIN_ONLY) + args.overrides
        raise ValueError(
            f"{' '.join(extra)}: configure the behaviour SAC, which --driver (recording a given behaviour) "
            "does not train: drop them, or drop --driver"
        )
    if args.behaviour is None:
        raise ValueError(
            "--driver records a given behaviour: add --behaviour expert or --behaviour POLICY.onnx"
        )
    if args.behaviour != "expert" and not Path(args.behaviour).exists():
        close = difflib.get_close_matches(args.behaviour, ["expert"], n=1, cutoff=0.5)
        hint = " (did you mean expert?)" if close else ""
        raise ValueError(f"--behaviour {args.behaviour}: neither 'expert' nor an existing policy file{hint}")


def _progress(total: int) -> Callable[[int], None]:
    """`collect: N/TOTAL transitions (P%), R steps/s` on stderr every PROGRESS_EVERY_S and at the end."""
    started = last = time.monotonic()

    def report(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < PROGRESS_EVERY_S and done < total:
            return
        last = now
        rate = done / max(now - started, 1e-9)
        print(
            f"collect: {done}/{total} transitions ({100 * done // total}%), {rate:.0f} steps/s",
            file=sys.stderr,
        )

    return report


def _record(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from robot_wsrl.learn.collect import record

    transitions = args.transitions or 10_000
    options = ["--out", str(out), "--driver", args.driver, "--behaviour", args.behaviour]
    if args.expert_noise is not None:
        options += ["--expert-noise", repr(args.expert_noise)]
    options += ["--transitions", str(transitions), "--seed", str(args.seed)] + (
        ["--compress"] * args.compress
    )
    return record(
        args.driver,
        args.behaviour,
        transitions,
        out,
        seed=args.seed,
        expert_noise=args.expert_noise,
        compress=args.compress,
        command=shlex.join(["robot-wsrl", "collect", *options]),
        progress=_progress(transitions),
    )


def _train(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from robot_wsrl.learn.collect import collect

    medium = MEDIUM_SIZE if args.medium_size is None else args.medium_size
    return collect(
        args.overrides, out, medium, FRACTION if args.fraction is None else args.fraction, args.seed
    )


def fetch(entry: dict[str, str]) -> bool:
    """Make `entry["path"]` hold the dataset whose sha256 is `entry["sha256"]`: a cached file that matches is
    kept; otherwise `entry["command"]` regenerates it (paths relative to the current directory, the
    repository root). Returns whether the result matches. Regeneration is bit-identical only with the same
    seed, threads=1 and the same CPU and library builds (float rounding differs between machines)."""
    from robot_wsrl.learn.collect import file_sha256

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
    _check_mode(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (_train if args.driver is None else _record)(args, args.out)
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
    _check_mode(args)
    out = args.out or Path("data") / f"collect-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    manifest = (_train if args.driver is None else _record)(args, out)
    snap = manifest.get("medium_snapshot")
    if snap is not None:
        print(f"medium snapshot: step {snap['step']}, return {snap['return']:.1f}")
    for name, d in manifest["datasets"].items():
        if "success_rate" in d:
            print(f"  {name}: success rate {d['success_rate']:.2f} over {d['finished_episodes']} episodes")
        print(f"  {name:<14} {d['size']:>8} transitions  {out / d['file']}")
    print(f"manifest: {out / 'manifest.json'}")
    return 0
