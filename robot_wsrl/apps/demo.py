"""`robot-wsrl demo`: the whole offline-to-online pipeline in one process on a small MuJoCo task, in a few
CPU minutes (`make demo` runs the main job, `robot-wsrl session`, instead).

1. record an offline dataset with a mediocre behaviour policy (a noisy, badly tuned balance controller);
2. pre-train CQL on it (offline, no environment access);
3. WSRL: warm up with the pre-trained policy into an empty buffer, then fine-tune online only;
4. export the improved actor to ONNX and print where everything is.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser

ENV = "inverted_pendulum"
# The WSRL mechanisms at a size that trains in minutes on 2 CPU cores.
DEMO_AGENT = [
    "agent.num_critics=4",
    "agent.critic_hidden=[64,64]",
    "agent.actor_hidden=[64,64]",
    "agent.batch_size=128",
    "agent.actor_lr=1e-3",
    "agent.critic_lr=1e-3",
    "agent.temperature_lr=1e-3",
]


def _eval_returns(eval_csv: Path) -> list[float]:
    with eval_csv.open() as f:
        return [float(row["return_mean"]) for row in csv.DictReader(f)]


def run_demo(out: Path, pretrain_steps: int, finetune_steps: int, warmup_steps: int, seed: int) -> dict:
    from robot_wsrl.learn.collect import record_pendulum_controller_dataset
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.export import export_policy
    from robot_wsrl.learn.finetune import finetune
    from robot_wsrl.learn.plots import plot_eval_returns
    from robot_wsrl.learn.pretrain import pretrain

    started = time.perf_counter()
    print(f"[1/4] recording an offline dataset with a weak behaviour controller -> {out / 'dataset.npz'}")
    dataset = record_pendulum_controller_dataset(out / "dataset.npz", 20_000, seed)
    # small networks gain nothing from a second thread, and lose a lot when another process holds a core
    common = [f"env={ENV}", *DEMO_AGENT, f"seed={seed}", "threads=1", "tensorboard=true"]
    print(f"[2/4] offline CQL pre-training, {pretrain_steps} updates")
    pre = pretrain(
        compose_config(
            "pretrain",
            [
                *common,
                f"run.dataset={dataset}",
                f"run.steps={pretrain_steps}",
                f"run.eval_every={pretrain_steps}",
                f"run.checkpoint_every={pretrain_steps}",
                f"out_dir={out / 'pretrain'}",
            ],
        )
    )
    print(f"      pre-trained policy return: {pre['final_eval']['return_mean']:.1f}")
    print(
        f"[3/4] WSRL fine-tuning: warmup {warmup_steps} steps (no updates), then online-only SAC, "
        f"{finetune_steps} steps in all"
    )
    fine = finetune(
        compose_config(
            "finetune",
            [
                *common,
                "agent.utd=1",
                f"run.checkpoint={pre['checkpoint']}",
                f"run.steps={finetune_steps}",
                f"run.warmup_steps={warmup_steps}",
                f"run.eval_every={max(finetune_steps // 10, 1)}",
                f"run.checkpoint_every={finetune_steps}",
                f"out_dir={out / 'finetune'}",
            ],
        )
    )
    plot = plot_eval_returns(
        Path(fine["out_dir"]) / "eval.csv",
        out / "returns.png",
        warmup_steps,
        f"WSRL demo: InvertedPendulum-v5, {finetune_steps} steps, seed {seed}, 4 critics 2x64, CPU",
    )
    print(f"[4/4] exporting the fine-tuned actor to ONNX -> {out / 'policy'}")
    onnx_path = export_policy(fine["checkpoint"], out / "policy", version=1, parent_version=0)
    summary = {
        "pretrained_return": pre["final_eval"]["return_mean"],
        "finetuned_return": fine["final_eval"]["return_mean"],
        "finetuned_best_return": max(_eval_returns(Path(fine["out_dir"]) / "eval.csv")),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "dataset": str(dataset),
        "pretrain_dir": pre["out_dir"],
        "finetune_dir": fine["out_dir"],
        "policy": str(onnx_path),
        "plot": str(plot),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@reports_errors("demo")
def cli(argv: list[str]) -> int:
    parser = CommandParser(
        prog="robot-wsrl demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/demo/<time>)")
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--finetune-steps", type=int, default=5000)
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or Path("runs/demo") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    s = run_demo(out, args.pretrain_steps, args.finetune_steps, args.warmup_steps, args.seed)
    print(
        f"\nreturn of the pre-trained policy: {s['pretrained_return']:.1f}   "
        f"after WSRL fine-tuning: {s['finetuned_return']:.1f} "
        f"(best evaluation {s['finetuned_best_return']:.1f})   ({s['wall_time_s']:.0f} s)"
    )
    print(f"outputs under {out.resolve()}:")
    for key in ("dataset", "pretrain_dir", "finetune_dir", "policy", "plot"):
        print(f"  {key:<13} {s[key]}")
    print("  curves        finetune/eval.csv, finetune/episodes.csv, TensorBoard in */tb")
    return 0
