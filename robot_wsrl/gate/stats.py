"""The gate's statistics: a group-sequential paired test with a pre-declared number of looks.

Candidate and reference run episode pairs (episode i of both on the same environment seed, each with its
own action noise); after n_1 < n_2 < ... < n_K pairs (each look doubling the last, up to the budget) the
gate looks at the paired differences and stops as soon as the verdict is clear. Look k uses one-sided
Student-t bounds at level alpha_k = alpha (n_k - n_(k-1)) / n_K: alpha is spent in proportion to the
pairs each look adds, so the alpha_k sum to alpha and, by the union bound over the looks, the chance that
a candidate whose true mean difference sits on the line is ever declared above it is at most alpha (and
likewise below it). Early looks stop the clear cases on few pairs; the last look, which most of alpha is
left for, decides the close ones. numpy only (the t quantile is computed here, not taken from scipy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MIN_LOOK = 8  # pairs before the first look (unless the whole budget is smaller): a t bound needs a spread


def look_schedule(budget: int, looks: int) -> list[int]:
    """Pairs at each look: `looks` points doubling up to `budget` (budget / 2^(looks - k)), none below
    MIN_LOOK (or the budget, if that is smaller), without repeats; the last is always `budget`."""
    first = min(MIN_LOOK, budget)
    points = {max(first, math.ceil(budget / 2 ** (looks - k))) for k in range(1, looks + 1)}
    return sorted(points)


def alpha_spending(looks: list[int], alpha: float) -> list[float]:
    """Each look's share of `alpha`, in proportion to the pairs it adds (they sum to alpha)."""
    added = np.diff([0, *looks])
    return [alpha * float(a) / looks[-1] for a in added]


def t_cdf(t: float, df: int) -> float:
    """Student-t CDF for an integer number of degrees of freedom (the exact finite series, A&S 26.7.3-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return 0.5 + math.copysign(0.5 * inside, t)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom, by bisection on `t_cdf`."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Look:
    """One interim analysis of the paired differences against the line 0 (the margin is already in them)."""

    pairs: int
    mean: float
    lower: float  # one-sided lower bound at this look's alpha
    upper: float  # one-sided upper bound at this look's alpha
    decision: str | None  # "above" (lower > 0), "below" (upper < 0), or None: not decisive yet


def look(differences: np.ndarray, alpha_per_look: float) -> Look:
    """Where the mean of `differences` stands against 0 at this look, with one-sided bounds."""
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n < 2:
        raise ValueError(f"a look needs at least 2 pairs, got {n}")
    mean = float(d.mean())
    half = t_quantile(1.0 - alpha_per_look, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    lower, upper = mean - half, mean + half
    decision = "above" if lower > 0.0 else "below" if upper < 0.0 else None
    return Look(n, mean, lower, upper, decision)


def margin_differences(candidate: np.ndarray, reference: np.ndarray, margin: float) -> np.ndarray:
    """Per pair c - r + margin |r|: their mean is above 0 exactly when mean(c) beats mean(r) minus `margin`
    times the reference's mean absolute return (its mean return, for the usual positive returns)."""
    c, r = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return c - r + margin * np.abs(r)


@dataclass
class SequentialTest:
    """One variant's test: after each look's pairs, `update` decides "pass" (the lower bound above the
    line), "fail" (the upper bound below it) or nothing yet; at the last look an undecided test takes
    `undecided`. `path` keeps every look, in return units, for the report."""

    looks: list[int]  # pairs at each look
    confidence: float  # of the decision, over all looks (see `alpha_spending`)
    margin: float  # the line: mean(c - r) = -margin * mean|r|
    undecided: str  # "pass" or "fail"
    path: list[dict[str, float | int | str | None]] = field(default_factory=list)
    decision: str | None = None

    @property
    def alpha(self) -> float:
        """The level of the next look's bounds (the last look's once decided)."""
        return alpha_spending(self.looks, 1.0 - self.confidence)[min(len(self.path), len(self.looks) - 1)]

    @property
    def pairs(self) -> int:
        """The pairs the next look needs (the last look's once decided)."""
        return self.looks[min(len(self.path), len(self.looks) - 1)]

    def update(self, candidate: np.ndarray, reference: np.ndarray) -> str | None:
        if self.decision is not None:
            raise RuntimeError("the test has decided already")
        c, r = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
        if not len(c) == len(r) == self.pairs:
            raise ValueError(f"look {len(self.path) + 1} takes {self.pairs} pairs, got {len(c)} and {len(r)}")
        lk = look(margin_differences(c, r, self.margin), self.alpha)
        line = -self.margin * float(np.abs(r).mean())
        last = len(self.path) + 1 == len(self.looks)
        if lk.decision is not None or last:
            self.decision = {"above": "pass", "below": "fail", None: self.undecided}[lk.decision]
        self.path.append(
            {
                "pairs": lk.pairs,
                "mean_difference": float((c - r).mean()),
                "lower": lk.lower + line,  # bounds of mean(c - r), in return units
                "upper": lk.upper + line,
                "line": line,
                "alpha": self.alpha,
                "decision": self.decision,
            }
        )
        return self.decision
