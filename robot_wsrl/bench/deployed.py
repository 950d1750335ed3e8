"""The guarded variant against unguarded WSRL, from what the robot actually ran: the deployed return.

Each run's `episodes.csv` holds the return of every episode the robot (the shifted "real" env) ran. For
unguarded WSRL that is the newest actor; for the guarded variant it is the last version that passed the
sim-first gate. Two figures of merit, per seed and averaged (the issue's goals in brackets):
- the lowest deployed return after warmup, relative to the pre-trained policy's (never below 90%);
- the steps after warmup the guarded robot needs to reach unguarded WSRL's final return, relative to the
  steps WSRL itself needed (no more than 10% more).
Returns are smoothed over the last few episodes, so one unlucky episode is not read as a dip.
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

SMOOTH_EPISODES = 5
FINAL_FRACTION = 0.1  # the last 10% of WSRL's episodes define its final return


def _episodes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["return"]) for r in rows])


def _smoothed(returns: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(np.insert(returns, 0, 0.0))
    counts = np.minimum(np.arange(1, len(returns) + 1), SMOOTH_EPISODES)
    ends = np.arange(1, len(returns) + 1)
    return (cumulative[ends] - cumulative[ends - counts]) / counts


def _first_step_at(steps: np.ndarray, smoothed: np.ndarray, level: float, after: int) -> int | None:
    """The first step past `after` (the end of warmup) where the smoothed return reaches `level`."""
    reached = np.flatnonzero((smoothed >= level) & (steps > after))
    return int(steps[reached[0]]) if len(reached) else None


def compare(out: Path, seeds: list[int], warmup: int, label: str) -> dict[str, Any] | None:
    """Writes deployed_returns.png; the figures of merit, or None unless guarded and wsrl both ran."""
    runs = out / "runs"
    per_seed: dict[int, dict[str, Any]] = {}
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"wsrl": [], "guarded": []}
    for seed in seeds:
        paths = {v: runs / v / f"seed{seed}" / "episodes.csv" for v in ("wsrl", "guarded", "frozen")}
        if not (paths["wsrl"].exists() and paths["guarded"].exists()):
            continue
        ws, wr = _episodes(paths["wsrl"])
        gs, gr = _episodes(paths["guarded"])
        # The pre-trained policy's return on this robot: the frozen run's episodes, else WSRL's warmup ones.
        frozen = _episodes(paths["frozen"])[1] if paths["frozen"].exists() else wr[ws <= warmup]
        pretrained = float(frozen.mean()) if len(frozen) else float("nan")
        # The same measure on the pre-trained policy itself: the floor that episode noise alone sets.
        noise_floor = float(_smoothed(frozen).min()) / pretrained if len(frozen) else float("nan")
        w_smooth, g_smooth = _smoothed(wr), _smoothed(gr)
        curves["wsrl"].append((ws, w_smooth))
        curves["guarded"].append((gs, g_smooth))
        final = float(wr[-max(1, int(len(wr) * FINAL_FRACTION)) :].mean())
        after = gs > warmup
        lowest = float(g_smooth[after].min()) if after.any() else float("nan")
        lowest_wsrl = float(w_smooth[ws > warmup].min()) if (ws > warmup).any() else float("nan")
        w_reach = _first_step_at(ws, w_smooth, final, warmup)
        g_reach = _first_step_at(gs, g_smooth, final, warmup)
        per_seed[seed] = {
            "pretrained_return": pretrained,
            "lowest_deployed_return": lowest,
            "lowest_relative": lowest / pretrained if pretrained else float("nan"),
            "wsrl_lowest_relative": lowest_wsrl / pretrained if pretrained else float("nan"),
            "pretrained_lowest_relative": noise_floor,
            "wsrl_final_return": final,
            "wsrl_steps_to_final": w_reach,
            "guarded_steps_to_final": g_reach,
            "steps_ratio": g_reach / w_reach if g_reach and w_reach else None,
        }
    if not per_seed:
        return None
    _plot(out / "deployed_returns.png", curves, per_seed, warmup, label)
    ratios = [s["steps_ratio"] for s in per_seed.values()]
    return {
        "seeds": per_seed,
        "lowest_relative_mean": float(np.mean([s["lowest_relative"] for s in per_seed.values()])),
        "wsrl_lowest_relative_mean": float(np.mean([s["wsrl_lowest_relative"] for s in per_seed.values()])),
        "pretrained_lowest_relative_mean": float(
            np.mean([s["pretrained_lowest_relative"] for s in per_seed.values()])
        ),
        "steps_ratio_mean": float(np.mean(ratios)) if all(r is not None for r in ratios) else None,
        "goals": {"lowest_relative_at_least": 0.9, "steps_ratio_at_most": 1.1},
    }


def _plot(
    path: Path,
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    per_seed: dict[int, dict[str, Any]],
    warmup: int,
    label: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = {"wsrl": "tab:blue", "guarded": "tab:green"}
    names = {
        "wsrl": "WSRL (robot runs the newest actor)",
        "guarded": "guarded WSRL (robot runs validated versions)",
    }
    for variant, runs in curves.items():
        for i, (steps, smoothed) in enumerate(runs):
            ax.plot(
                steps, smoothed, color=colours[variant], alpha=0.8, label=names[variant] if i == 0 else None
            )
    pretrained = float(np.mean([s["pretrained_return"] for s in per_seed.values()]))
    ax.axhline(pretrained, color="black", linewidth=1, label=f"pre-trained policy ({pretrained:.0f})")
    ax.axhline(0.9 * pretrained, color="black", linestyle=":", linewidth=1, label="90% of pre-trained")
    if warmup > 0:
        ax.axvline(warmup, color="grey", linestyle="--", label=f"end of warmup ({warmup:,})")
    ax.set_xlabel("environment steps on the shifted robot")
    ax.set_ylabel(f"deployed return (mean of last {SMOOTH_EPISODES} episodes)")
    ax.set_title("What the robot ran: guarded vs unguarded WSRL\n" + textwrap.fill(label, 120), fontsize=7)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
