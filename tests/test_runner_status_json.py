"""A runner's status is strict JSON whatever happened: no NaN before the first tick, after a NaN reward from a
simulator, or while e-stopped (consoles and `status --json` parse it with strict parsers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from robot_wsrl.apps.runner import status_line
from robot_wsrl.bench.estop import write_policy
from robot_wsrl.core.driver import StepResult
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner


class NanRewardDriver(NullDriver):
    def step(self, action: np.ndarray) -> StepResult:
        result = super().step(action)
        result.reward = float("nan")
        return result


def strict(status: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(status, allow_nan=False))


def test_status_is_strict_json_before_ticks_after_a_nan_reward_and_when_stopped(tmp_path: Path) -> None:
    driver = NanRewardDriver(3, 1, control_period_s=0.002, max_episode_steps=5)
    runner = Runner(driver, OnnxPolicy.load(write_policy(tmp_path, driver.spec)))
    before = strict(runner.status())
    assert before["jitter_p50_us"] is None and before["jitter_p99_us"] is None
    assert "-" in status_line(runner.status())
    status = runner.run(max_steps=12)
    assert strict(status)["last_episode_return"] is None and status["episodes_done"] == 2
    runner.estop("test")
    assert strict(runner.status())["state"] == "estopped"
