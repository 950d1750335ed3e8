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


# How the returns plot draws each kind of version the gate judged: (marker, colour, legend label).
VERSION_MARKS = {
    "pre-trained": ("s", "black", "pre-trained policy (v0, the starting version)"),
    "promoted": ("^", "tab:green", "learner version: promoted"),
    "held back": ("x", "tab:red", "learner version: held back"),
}


def plot_episode_returns(
    returns_csv: Path,
    out_png: Path,
    warmup_steps: int,
    title: str,
    versions: list[tuple[int, float, str, float | None]] | None = None,
    promotions: list[tuple[int, int]] | None = None,
    baseline: float | None = None,
) -> Path:
    """Each episode's return at the step it ended, with a moving mean (once there are 20 episodes: over a
    tenth of them) and the end of warmup marked (a session has no separate evaluation: its episodes are
    the robot's own). `versions`: the learner's versions as (step published, validation return, what the
    gate made of it: VERSION_MARKS' `pre-trained` for v0, `promoted` or `held back`, validation success
    rate or None), drawn next to what the robot ran, each labelled with its success rate (a task with a
    success signal).
    `promotions`: (version, step) of each version the gate promoted, a vertical line labelled vN where the
    robot took it up; `baseline`: the robot's mean return on the pre-trained policy, a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with returns_csv.open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    returns = [float(r["return"]) for r in rows]
    window = len(returns) // 10
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(steps, returns, "o", markersize=3, alpha=0.4, label="episode return (what the robot ran)")
    if window > 1:  # of one episode, the "mean" would be the episode itself
        mean = [
            sum(returns[max(0, i - window + 1) : i + 1]) / min(window, i + 1) for i in range(len(returns))
        ]
        ax.plot(steps, mean, label=f"mean of the last {window} episodes")
    rates = " (% success)" if any(v[3] is not None for v in versions or []) else ""
    for role, (marker, color, label) in VERSION_MARKS.items():
        chosen = [(s, r) for s, r, made, _ in versions or [] if made == role]
        if chosen:
            ax.plot(
                *zip(*chosen, strict=True), marker, color=color, label=f"{label}, validation return{rates}"
            )
    for step, ret, _, success in versions or []:
        if success is not None:
            ax.annotate(f"{success:.0%}", (step, ret), xytext=(3, 3), textcoords="offset points", fontsize=7)
    if warmup_steps > 0:
        ax.axvline(warmup_steps, color="grey", linestyle="--", label=f"end of warmup ({warmup_steps} steps)")
    if baseline is not None:
        ax.axhline(
            baseline,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"baseline: pre-trained v0 ({baseline:.1f})",
        )
    for i, (version, step) in enumerate(sorted(promotions or [], key=lambda p: p[1])):
        ax.axvline(
            step,
            color="tab:green",
            linewidth=1.2,
            alpha=0.8,
            label="promoted: the robot runs it" if i == 0 else None,
        )
        ax.annotate(
            f"v{version}",
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10),
            textcoords="offset points",
            color="tab:green",
            fontsize=8,
            fontweight="bold",
        )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7)  # off the data
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_calibration(calibration_csv: Path, out_png: Path, tolerance: float, title: str) -> Path:
    """Mean Q on the dataset's (s, a) over pre-training, against their Monte-Carlo returns-to-go, with the
    band within which the critics count as calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with calibration_csv.open() as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    q = [float(r["q_data_mean"]) for r in rows]
    mc = float(rows[-1]["mc_return_mean"]) if rows else 0.0
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, q, marker=".", label="mean Q on dataset (s, a) (ensemble mean)")
    ax.axhline(mc, color="black", label=f"Monte-Carlo discounted return ({mc:.1f})")
    band = (mc * (1 - tolerance), mc * (1 + tolerance))
    ax.axhspan(*band, color="tab:green", alpha=0.15, label=f"calibrated (within ±{tolerance:.0%})")
    ax.set_xlabel("CQL updates")
    ax.set_ylabel("value")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
