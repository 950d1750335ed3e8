"""Figures a person reads after a run (matplotlib, headless)."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_eval_returns(eval_csv: Path, out_png: Path, warmup_steps: int, title: str) -> Path:
    """Evaluation return over environment steps, with the end of warmup marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with eval_csv.open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    mean = [float(r["return_mean"]) for r in rows]
    std = [float(r["return_std"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, mean, marker="o", label="evaluation return (deterministic)")
    ax.fill_between(
        steps,
        [m - s for m, s in zip(mean, std, strict=True)],
        [m + s for m, s in zip(mean, std, strict=True)],
        alpha=0.2,
    )
    if warmup_steps > 0:
        ax.axvline(warmup_steps, color="grey", linestyle="--", label=f"end of warmup ({warmup_steps} steps)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
