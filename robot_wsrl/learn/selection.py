"""Which of a pre-training run's kept checkpoints to ship, chosen offline (`ship RUN --select calibrated`).

WSRL's fine-tuning warm-starts from the pre-trained critics: its warmup protects a *fitted* Q, so the
checkpoint to ship is one whose critics are calibrated, mean Q on the dataset's (s, a) within 1 ± band of
their Monte-Carlo return (`calibration.csv`, learn/calibration.py). A simulator score would be a different
criterion, and one a real robot's offline data does not offer. Among the calibrated checkpoints the latest
is taken: the most trained critic (and actor) that still fits the data, since CQL's Q rises through the
band as pre-training goes on and overestimates past it.

Only files are read (calibration.csv and the kept checkpoints' names), so the choice is reproducible from
the run folder alone and is recorded in full in the shipped manifest.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot_wsrl.core.artifacts import CALIBRATION_LOG, KEPT_CHECKPOINT_DIR, kept_checkpoint
from robot_wsrl.learn.calibration import CALIBRATION_TOLERANCE

CALIBRATED = "calibrated"  # the one rule so far (`ship --select`)
CLOSEST_LISTED = 3  # kept checkpoints named when none is in the band


class SelectionError(ValueError):
    """No kept checkpoint satisfies the rule, or the run folder lacks what the rule reads."""


@dataclass(frozen=True)
class Candidate:
    step: int
    ratio: float | None  # q_calibration at `logged_step`; None when none (or no finite one) was logged
    logged_step: int | None  # the nearest logged step at or before `step`
    accepted: bool

    @property
    def distance(self) -> float:
        """How far the critics are from calibrated: |q_calibration - 1|, infinite when unknown."""
        return math.inf if self.ratio is None else abs(self.ratio - 1.0)

    def record(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "q_calibration": self.ratio,
            "logged_step": self.logged_step,
            "accepted": self.accepted,
        }


@dataclass(frozen=True)
class Selection:
    run_dir: Path
    checkpoint: Path
    chosen: Candidate
    band: float
    candidates: list[Candidate]

    def record(self) -> dict[str, Any]:
        """The manifest's `selection` entry: the rule, its band, the choice and every candidate."""
        return {
            "rule": CALIBRATED,
            "criterion": "the latest kept checkpoint with |q_calibration - 1| <= band (q_calibration at its "
            "step, or at the nearest logged step before it)",
            "band": self.band,
            "run": str(self.run_dir),
            "step": self.chosen.step,
            "q_calibration": self.chosen.ratio,
            "candidates": [c.record() for c in self.candidates],
        }


def kept_checkpoints(run_dir: Path) -> dict[int, Path]:
    """step -> file of the checkpoints a pre-training run kept (run.keep_checkpoints)."""
    kept = {}
    for path in (run_dir / KEPT_CHECKPOINT_DIR).glob("*.pt"):
        digits = path.stem.rpartition("-")[2]
        if digits.isdigit() and kept_checkpoint(run_dir, int(digits)) == path:
            kept[int(digits)] = path
    return kept


def calibration_trace(path: Path) -> dict[int, float]:
    """step -> q_calibration. A resumed run logs the steps after its checkpoint again: the last row of a
    step (the one that belongs to the checkpoints kept from then on) wins."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "q_calibration" not in rows[0]:
        raise SelectionError(f"{path}: no q_calibration column (not a pre-training run's {CALIBRATION_LOG})")
    return {int(row["step"]): float(row["q_calibration"] or "nan") for row in rows}


def judge(kept_steps: list[int], trace: dict[int, float], band: float) -> list[Candidate]:
    """Each kept step's calibration (at its step or the nearest logged one before) and whether it lies
    within 1 ± band, in step order."""
    logged = sorted(trace)
    candidates = []
    for step in sorted(kept_steps):
        i = bisect_right(logged, step)
        at = logged[i - 1] if i else None
        ratio = None if at is None or not math.isfinite(trace[at]) else trace[at]
        candidates.append(Candidate(step, ratio, at, ratio is not None and abs(ratio - 1.0) <= band))
    return candidates


def select_calibrated(run_dir: Path, band: float = CALIBRATION_TOLERANCE) -> Selection:
    """The latest kept checkpoint of `run_dir` whose critics are calibrated within 1 ± band."""
    if not 0 < band < math.inf:
        raise SelectionError(f"the band must be a positive number, got {band}")
    kept = kept_checkpoints(run_dir)
    if not kept:
        raise SelectionError(
            f"{run_dir}: no kept checkpoints in {KEPT_CHECKPOINT_DIR}/ (pre-train with "
            "run.keep_checkpoints=true, as recipe=cpu and recipe=paper do, or ship a checkpoint file)"
        )
    log = run_dir / CALIBRATION_LOG
    if not log.is_file():
        raise SelectionError(f"{run_dir}: no {CALIBRATION_LOG} (pre-train with run.log_every > 0)")
    candidates = judge(list(kept), calibration_trace(log), band)
    accepted = [c for c in candidates if c.accepted]
    if not accepted:
        raise SelectionError(_none_in_band(run_dir, candidates, band))
    chosen = accepted[-1]
    return Selection(run_dir, kept[chosen.step], chosen, band, candidates)


def _none_in_band(run_dir: Path, candidates: list[Candidate], band: float) -> str:
    """One line: nothing qualifies, the closest candidates, and what to do."""
    measured = [c for c in candidates if c.ratio is not None]
    closest = sorted(measured, key=lambda c: (c.distance, -c.step))[:CLOSEST_LISTED]
    listed = ", ".join(f"step {c.step} at {c.ratio:.3f}" for c in closest) or "none has a logged calibration"
    return (
        f"{run_dir}: no kept checkpoint has q_calibration within [{1 - band:g}, {1 + band:g}] "
        f"({len(candidates)} kept; closest: {listed}); widen --band or ship a checkpoint file"
    )
