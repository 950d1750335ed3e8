"""`robot-wsrl bench NAME [KEY=VALUE ...] [--json]`: each benchmark is a function returning a dict of
measurements.

Benchmarks are imported only when named, so `bench runner` never imports the learner's stack. Those in
CONFIGURABLE take the command line's KEY=VALUE overrides of their config file (configs/bench/NAME.yaml),
checked by `load_config`. Bad input is one line and exit 2, like every command's (apps/errors.py).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser

if TYPE_CHECKING:
    from omegaconf import DictConfig

BENCHMARKS: dict[str, str] = {
    "runner": "robot_wsrl.bench.runner:run_runner_benchmark",
    "learner": "robot_wsrl.bench.learner:run_learner_benchmark",
    "pretrain": "robot_wsrl.bench.pretrain:run_pretrain_benchmark",
    "finetune": "robot_wsrl.bench.finetune:main",
    "estop": "robot_wsrl.bench.estop:run_estop_benchmark",
    "transport": "robot_wsrl.bench.transport:run_transport_benchmark",
    "soak": "robot_wsrl.bench.soak:main",
    "gate": "robot_wsrl.bench.gate:main",
    "camera": "robot_wsrl.bench.camera:run_camera_benchmark",
}
CONFIGURABLE = {"finetune", "soak", "gate"}


def _table(result: dict[str, Any]) -> str:
    width = max((len(key) for key in result), default=0)
    lines = []
    for key, value in result.items():
        shown = (
            f"{value:.3f}"
            if isinstance(value, float)
            else json.dumps(value)
            if isinstance(value, dict)
            else value
        )
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def load_config(path: Path, overrides: list[str], free: tuple[str, ...] = ()) -> DictConfig:
    """`path` merged with command-line `KEY=VALUE` overrides (OmegaConf dotlist). A key the file lacks is
    refused (errors.py names the closest), except under the `free` sections (e.g. a benchmark's own Hydra
    overrides, checked when they are composed); so is a value of another kind than the file's: a list where
    it has a list, a number where it has a number."""
    from omegaconf import OmegaConf

    malformed = [o for o in overrides if "=" not in o]
    if malformed:
        raise ValueError(f"override {malformed[0]!r} has no '=': give KEY=VALUE")
    base = OmegaConf.load(path)
    OmegaConf.set_struct(base, True)
    for section in free:
        OmegaConf.set_struct(base[section], False)
    given = OmegaConf.from_dotlist(overrides)
    for override in overrides:
        key = override.split("=", 1)[0]
        default, value = OmegaConf.select(base, key), OmegaConf.select(given, key)
        want = _kind(default)
        if want is not None and _kind(value) != want:
            raise ValueError(f"{override}: {key} must be {want}{_shown(default)}")
    return OmegaConf.merge(base, given)


def _kind(value: Any) -> str | None:
    """What an override must give where the config file has `value` (None: anything)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, ListConfig)):
        return "a list [A,B]"
    if isinstance(value, (dict, DictConfig)):
        return "a mapping {KEY: VALUE}"
    return None


def _shown(default: Any) -> str:
    """`, like its default 600` where that is short enough to help."""
    from omegaconf import OmegaConf

    text = json.dumps(OmegaConf.to_container(default) if OmegaConf.is_config(default) else default)
    return f", like its default {text}" if len(text) <= 40 else ""


def _benchmark(name: str) -> str:
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        known = ", ".join(sorted(BENCHMARKS))
        raise argparse.ArgumentTypeError(f"no benchmark {name!r}{hint}; known: {known}")
    return name


@reports_errors("bench")
def cli(argv: list[str]) -> int:
    parser = CommandParser(prog="robot-wsrl bench", description="Run a benchmark and print its results.")
    parser.add_argument("name", type=_benchmark, metavar="NAME", help=", ".join(sorted(BENCHMARKS)))
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (configurable benchmarks)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_intermixed_args(argv)  # `bench soak --json seconds=60` too
    if args.overrides and args.name not in CONFIGURABLE:
        parser.error(
            f"bench {args.name} takes no overrides (configurable: {', '.join(sorted(CONFIGURABLE))})"
        )
    module, function = BENCHMARKS[args.name].split(":")
    benchmark = getattr(importlib.import_module(module), function)
    result = benchmark(args.overrides) if args.name in CONFIGURABLE else benchmark()
    print(json.dumps(result, sort_keys=True) if args.json else _table(result))
    return 0
