"""A driver with no physics, for timing the control loop and the e-stop path (numpy only).

Every call returns at once with a constant observation, so what a benchmark measures is the runner, not a
simulator. `safe_stop_count` and `last_safe_stop_time` (time.perf_counter) let an e-stop latency
benchmark see when the stop reached the driver.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robot_wsrl.core.driver import StepResult
from robot_wsrl.core.spec import EnvSpec


class NullDriver:
    """Limits [-1, 1]; obs is all zeros; never terminates; truncates after `max_episode_steps` if given."""

    def __init__(
        self,
        obs_dim: int = 11,
        act_dim: int = 3,
        control_period_s: float = 0.001,
        *,
        max_episode_steps: int | None = None,
    ) -> None:
        self.spec = EnvSpec(
            name="null",
            obs_dim=obs_dim,
            act_dim=act_dim,
            action_low=(-1.0,) * act_dim,
            action_high=(1.0,) * act_dim,
            control_period_s=control_period_s,
        )
        self.max_episode_steps = max_episode_steps
        self._obs = np.zeros(obs_dim, dtype=np.float32)
        self._low, self._high = self.spec.low, self.spec.high
        self._act_shape = (act_dim,)
        self.step_count = 0  # steps in the current episode
        self.total_steps = 0
        self.reset_count = 0
        self.safe_stop_count = 0
        self.last_safe_stop_time: float | None = None
        self.closed = False

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.step_count = 0
        self.reset_count += 1
        return self._obs.copy(), {}

    def step(self, action: np.ndarray) -> StepResult:
        """Clip and report the action; no shape/finite checks beyond numpy's, to stay cheap."""
        executed = np.clip(np.asarray(action, dtype=np.float32), self._low, self._high)
        if executed.shape != self._act_shape:
            raise ValueError(f"null: action shape {executed.shape}, expected ({self.spec.act_dim},)")
        self.step_count += 1
        self.total_steps += 1
        truncated = self.max_episode_steps is not None and self.step_count >= self.max_episode_steps
        return StepResult(
            obs=self._obs.copy(), reward=0.0, terminated=False, truncated=truncated, executed_action=executed
        )

    def safe_stop(self) -> None:
        """Record the stop: the time first, so a reader that sees the new count also sees its time."""
        self.last_safe_stop_time = time.perf_counter()
        self.safe_stop_count += 1

    def close(self) -> None:
        self.closed = True
