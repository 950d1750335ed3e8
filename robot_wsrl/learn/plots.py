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


def plot_episode_returns(
    returns_csv: Path,
    out_png: Path,
    warmup_steps: int,
    title: str,
    versions: list[tuple[int, float, bool]] | None = None,
) -> Path:
    """Each episode's return at the step it ended, with a moving mean and the end of warmup marked
    (a session has no separate evaluation: its episodes are the robot's own). `versions`: the learner's
    versions as (step published, validation return, promoted), drawn next to what the robot ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with returns_csv.open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    returns = [float(r["return"]) for r in rows]
    window = max(1, len(returns) // 10)
    mean = [sum(returns[max(0, i - window + 1) : i + 1]) / min(window, i + 1) for i in range(len(returns))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, returns, "o", markersize=3, alpha=0.4, label="episode return (what the robot ran)")
    ax.plot(steps, mean, label=f"mean of the last {window} episodes")
    for promoted, marker, label in ((True, "^", "promoted"), (False, "x", "held back")):
        chosen = [(s, r) for s, r, p in versions or [] if p == promoted]
        if chosen:
            ax.plot(
                *zip(*chosen, strict=True),
                marker,
                color="tab:green" if promoted else "tab:red",
                label=f"learner version, validation return: {label}",
            )
    if warmup_steps > 0:
        ax.axvline(warmup_steps, color="grey", linestyle="--", label=f"end of warmup ({warmup_steps} steps)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
