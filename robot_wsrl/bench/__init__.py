"""`robot-wsrl bench NAME [KEY=VALUE ...] [--json]`: each benchmark is a function returning a dict of
measurements.

Benchmarks are imported only when named, so `bench runner` never imports the learner's stack. Those in
CONFIGURABLE take the command line's KEY=VALUE overrides of their config file (configs/bench/NAME.yaml).
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

BENCHMARKS: dict[str, str] = {
    "runner": "robot_wsrl.bench.runner:run_runner_benchmark",
    "learner": "robot_wsrl.bench.learner:run_learner_benchmark",
    "pretrain": "robot_wsrl.bench.pretrain:run_pretrain_benchmark",
    "finetune": "robot_wsrl.bench.finetune:main",
    "estop": "robot_wsrl.bench.estop:run_estop_benchmark",
    "transport": "robot_wsrl.bench.transport:run_transport_benchmark",
    "soak": "robot_wsrl.bench.soak:main",
    "gate": "robot_wsrl.bench.gate:run_gate_benchmark",
}
CONFIGURABLE = {"finetune", "soak"}


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


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robot-wsrl bench", description="Run a benchmark and print its results."
    )
    parser.add_argument("name", choices=sorted(BENCHMARKS))
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
