"""A shift preset's actuation lag around any driver (numpy only): what a simulated robot needs to lag the way
the emulated robot and the real one do."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from robot_wsrl.core.driver import Driver, StepResult


class ActionLatency:
    """Each step applies the command from `steps` steps earlier (zeros at an episode's start), as the emulated
    robot does; a safe stop forgets the commands in flight. Everything else passes through."""

    def __init__(self, driver: Driver, steps: int) -> None:
        if not (isinstance(steps, int) and steps > 0):
            raise ValueError(f"action latency must be a positive number of steps, got {steps!r}")
        self._driver, self._steps = driver, steps
        self.spec = driver.spec
        self._pending: deque[np.ndarray] = deque()
        self._flush()

    @property
    def inner(self) -> Driver:
        return self._driver

    def _flush(self) -> None:
        self._pending.clear()
        self._pending.extend(np.zeros(self.spec.act_dim, dtype=np.float32) for _ in range(self._steps))

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        self._flush()
        return self._driver.reset(seed=seed)

    def step(self, action: np.ndarray) -> StepResult:
        self._pending.append(np.array(action, dtype=np.float32))
        return self._driver.step(self._pending.popleft())

    def safe_stop(self) -> None:
        self._flush()
        self._driver.safe_stop()

    def close(self) -> None:
        self._driver.close()
