"""The driver interface every robot or simulator implements (numpy only, no torch).

A driver returns the action it actually executed, after its own clipping and rate limiting: that action,
not the one the policy asked for, is what goes into the replay buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robot_wsrl.core.spec import EnvSpec


class DriverFault(RuntimeError):
    """A driver can no longer command the robot safely (lost link, hardware error)."""


@dataclass
class StepResult:
    """One control step as the robot saw it. `executed_action` is in the robot's own units."""

    obs: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    executed_action: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Driver(Protocol):
    """A robot or simulator stepped by the runner at `spec.control_period_s`."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; returns the first observation."""
        ...

    def step(self, action: np.ndarray) -> StepResult:
        """Command `action` (robot units); raises DriverFault when the robot cannot be commanded."""
        ...

    def safe_stop(self) -> None:
        """Bring the robot to its safe state (hold or damp, whichever is safe for this robot)."""
        ...

    def close(self) -> None:
        """Release the robot or simulator."""
        ...
