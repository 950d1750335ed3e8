"""Observation/action specification shared by the learner, the exporter and the robot side (numpy only).

The agent always works in a normalised action space [-1, 1]^act_dim; the spec carries the robot's real
limits so that every consumer maps actions the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about the robot it drives."""

    name: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_period_s: float

    def __post_init__(self) -> None:
        if self.obs_dim <= 0 or self.act_dim <= 0:
            raise ValueError(
                f"{self.name}: obs_dim and act_dim must be positive, got {self.obs_dim}, {self.act_dim}"
            )
        if len(self.action_low) != self.act_dim or len(self.action_high) != self.act_dim:
            raise ValueError(f"{self.name}: action limits must have act_dim={self.act_dim} entries")
        if not all(lo < hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise ValueError(f"{self.name}: every action_low must be below its action_high")
        if not self.control_period_s > 0:
            raise ValueError(f"{self.name}: control_period_s must be positive, got {self.control_period_s}")

    @property
    def low(self) -> np.ndarray:
        return np.asarray(self.action_low, dtype=np.float32)

    @property
    def high(self) -> np.ndarray:
        return np.asarray(self.action_high, dtype=np.float32)

    def to_robot_action(self, normalised: np.ndarray) -> np.ndarray:
        """Map an action in [-1, 1] to the robot's limits (affine, the inverse of `to_normalised`)."""
        return (
            self.low + (np.asarray(normalised, dtype=np.float32) + 1.0) * 0.5 * (self.high - self.low)
        ).astype(np.float32)

    def to_normalised(self, robot_action: np.ndarray) -> np.ndarray:
        """Map an action in the robot's limits back to [-1, 1]: what the replay buffer stores."""
        a = np.asarray(robot_action, dtype=np.float32)
        return (2.0 * (a - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["action_low"] = list(self.action_low)
        d["action_high"] = list(self.action_high)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvSpec:
        return cls(
            name=str(d["name"]),
            obs_dim=int(d["obs_dim"]),
            act_dim=int(d["act_dim"]),
            action_low=tuple(float(x) for x in d["action_low"]),
            action_high=tuple(float(x) for x in d["action_high"]),
            control_period_s=float(d["control_period_s"]),
        )
