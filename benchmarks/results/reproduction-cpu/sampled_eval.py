"""The reproduction's final policies as the robot runs them: sampled actions, the preset's latency.

`bench finetune` evaluates the deterministic mean action, as the paper does. The robot samples its
actions, and on the shifted robot the two disagree (the shipped policy: 305 deterministic, about 125
sampled), so this re-evaluates every run's final checkpoint the way the gate and the robot run it
(robot_wsrl.bench.gate.measure_returns: the onboard Runner on the `real` preset), on the same environment
seeds for every run. Also, from each run's episodes.csv, the mean return of the episodes the training
robot itself ran over the run's last third of steps (sampled, as `make demo`'s summary measures it).
Usage: python sampled_eval.py BENCH_OUT EPISODES > sampled.json
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from robot_wsrl.bench.gate import measure_returns
from robot_wsrl.bench.intervals import bootstrap_ci
from robot_wsrl.learn.export import export_policy

SEED = 70_000  # environment seeds 70000.. : none shared with the gate's validations or the bench's evals


def last_third(episodes_csv: Path) -> float:
    with episodes_csv.open(newline="") as f:
        rows = [(int(r["step"]), float(r["return"])) for r in csv.DictReader(f)]
    end = max(step for step, _ in rows)
    return float(np.mean([ret for step, ret in rows if step > end * 2 / 3]))


def main(out: Path, episodes: int) -> dict:
    per_run: dict[str, dict[str, float]] = {}
    robot: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in sorted(out.glob("runs/*/seed*/checkpoint.pt")):
            variant, seed = checkpoint.parts[-3], checkpoint.parts[-2]
            folder = Path(tmp) / variant / seed
            export_policy(checkpoint, folder, version=0)
            returns = measure_returns(folder, "real", episodes, SEED)
            per_run.setdefault(variant, {})[seed] = float(returns.mean())
            robot.setdefault(variant, {})[seed] = last_third(checkpoint.parent / "episodes.csv")
            print(f"{variant} {seed}: {returns.mean():.1f}", file=sys.stderr, flush=True)
    summary = {}
    for variant, seeds in per_run.items():
        values = np.array(list(seeds.values()))
        ran = np.array(list(robot[variant].values()))
        summary[variant] = {
            "sampled_final_mean": float(values.mean()),
            "sampled_final_ci95": list(bootstrap_ci(values)),
            "per_seed": seeds,
            "robot_last_third_mean": float(ran.mean()),
            "robot_last_third_ci95": list(bootstrap_ci(ran)),
            "robot_last_third_per_seed": robot[variant],
        }
    return {"preset": "real", "episodes_per_run": episodes, "seed": SEED, "variants": summary}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2])), indent=2))
