"""Confidence intervals over seeds for the learning benchmarks.

Five seeds of an RL run are too few for a normal approximation and too noisy for a mean alone: a
percentile bootstrap over seeds (resampling whole runs, as rliable does) gives an interval that says how
far the mean could move with other seeds, and the interquartile mean (IQM) is robust to one diverged run.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 10_000


def iqm(values: np.ndarray) -> float:
    """Mean of the middle 50% of `values` (trimmed 25% on each side, fractional ends weighted)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    n = ordered.size
    if n == 0:
        return float("nan")
    low, high = 0.25 * n, 0.75 * n
    positions = np.arange(n)
    weights = np.clip(np.minimum(positions + 1, high) - np.maximum(positions, low), 0.0, 1.0)
    return float(np.sum(weights * ordered) / np.sum(weights))


def bootstrap_ci(
    values: np.ndarray, statistic=np.mean, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `values` (one per seed); NaNs for < 2 values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, values.size, size=(BOOTSTRAP_SAMPLES, values.size))]
    stats = np.array([statistic(draw) for draw in draws])
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))
