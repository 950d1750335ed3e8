"""Are the pre-trained critics calibrated? Mean Q on the dataset's own (s, a) against their Monte-Carlo
discounted returns-to-go.

WSRL's warm start assumes a fitted Q: a critic far below the data's returns (under-trained CQL) gives the
warmup nothing to protect, and one far above it has diverged. The probe is a fixed set of dataset rows, so
the trace over pre-training compares like with like. Rows close to a timeout are left out: their
returns-to-go are cut off by the time limit (the true value continues past it), so the Monte-Carlo figure
there would understate what a correct critic predicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.replay import ReplayBuffer

PROBE_ROWS = 4096
TRUNCATION_TOLERANCE = 0.05  # rows kept: a time-limit cut removes at most this share of their discounting
CALIBRATION_TOLERANCE = 0.25  # |mean Q / mean MC return - 1| within this counts as calibrated (issue 14)


@dataclass(frozen=True)
class CalibrationProbe:
    """Fixed dataset rows and the mean of their Monte-Carlo discounted returns-to-go."""

    rows: np.ndarray
    mc_return_mean: float


def truncation_horizon(discount: float, tolerance: float = TRUNCATION_TOLERANCE) -> int:
    """Steps before a timeout beyond which the discounted remainder weighs less than `tolerance`."""
    if not 0.0 < discount < 1.0:
        return 0
    return math.ceil(math.log(tolerance) / math.log(discount))


def make_probe(buffer: ReplayBuffer, seed: int = 0, rows: int = PROBE_ROWS) -> CalibrationProbe:
    """Up to `rows` dataset rows, drawn once (seeded), none within the truncation horizon of a timeout."""
    n = len(buffer)
    if n == 0:
        raise ValueError("calibration probe: the dataset is empty")
    steps_to_timeout = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    next_timeout = None
    truncated = buffer.truncated[:n].astype(bool)
    terminated = buffer.terminated[:n].astype(bool)
    for i in range(n - 1, -1, -1):
        if terminated[i]:
            next_timeout = None
        if truncated[i]:
            next_timeout = i
        if next_timeout is not None:
            steps_to_timeout[i] = next_timeout - i
    eligible = np.flatnonzero(steps_to_timeout >= truncation_horizon(buffer.discount))
    if eligible.size == 0:  # every episode is shorter than the horizon: judge on what there is
        eligible = np.arange(n)
    chosen = np.random.default_rng(seed).choice(eligible, size=min(rows, eligible.size), replace=False)
    chosen.sort()
    return CalibrationProbe(chosen, float(buffer.mc_return[chosen].mean()))


def measure(
    agent: Agent, buffer: ReplayBuffer, probe: CalibrationProbe, obs: np.ndarray | None = None
) -> dict[str, float]:
    """`q_data_mean` (ensemble mean Q on the probe rows), `mc_return_mean` and their ratio `q_calibration`
    (1.0 is calibrated; the issue's band is 0.75 to 1.25). `obs`: the probe rows' observations as the
    critics read them when the buffer holds something else (a camera task's [state, features])."""
    batch = agent.to_batch(buffer.gather(probe.rows) | ({} if obs is None else {"obs": obs}))
    q = agent.mean_q(batch["obs"], batch["action"])
    ratio = q / probe.mc_return_mean if probe.mc_return_mean else float("nan")
    return {"q_data_mean": q, "mc_return_mean": probe.mc_return_mean, "q_calibration": ratio}


def calibrated(ratio: float, tolerance: float = CALIBRATION_TOLERANCE) -> bool:
    return bool(np.isfinite(ratio)) and abs(ratio - 1.0) <= tolerance
