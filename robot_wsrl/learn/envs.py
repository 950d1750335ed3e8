"""The learner's view of a simulated robot: a driver built from the env config, and evaluation on it.

Training talks to the same Driver protocol as the onboard runner: the agent's [-1, 1] action is mapped to
the robot's limits with `EnvSpec.to_robot_action`, and the action the driver reports as executed is mapped
back and stored, so in-process runs and robot runs record data the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_wsrl.core.driver import Driver, StepResult
from robot_wsrl.core.spec import Observation
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.sim.env_config import EnvConfig


def make_env(env_cfg: EnvConfig, seed: int | None = None) -> Driver:
    return make_driver(
        env_cfg.driver, seed=seed, max_episode_steps=env_cfg.max_episode_steps, shift_preset=env_cfg.shift
    )


def step_normalised(driver: Driver, action: np.ndarray) -> tuple[StepResult, np.ndarray]:
    """Command a [-1, 1] action; returns the step and the executed action, normalised again."""
    result = driver.step(driver.spec.to_robot_action(action))
    return result, driver.spec.to_normalised(result.executed_action)


@dataclass(frozen=True)
class Evaluation:
    """Episode returns, and for a task with a success signal (its driver's `info["success"]`) whether each
    episode succeeded at its last step."""

    returns: np.ndarray
    successes: np.ndarray | None

    def summary(self) -> dict[str, float]:
        row = {
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "return_min": float(self.returns.min()),
            "return_max": float(self.returns.max()),
        }
        if self.successes is not None:
            row["success_rate"] = float(self.successes.mean())
        return row


def evaluate(
    policy: Callable[[Observation], np.ndarray], driver: Driver, episodes: int, seed: int
) -> Evaluation:
    """`episodes` episodes of `policy` (obs -> [-1, 1] action) with seeds seed, seed+1, ..."""
    returns = np.zeros(episodes)
    successes: list[bool] = []
    for i in range(episodes):
        obs, _ = driver.reset(seed=seed + i)
        done = False
        while not done:
            result, _ = step_normalised(driver, policy(obs))
            obs, returns[i] = result.obs, returns[i] + result.reward
            done = result.terminated or result.truncated
        if "success" in result.info:
            successes.append(bool(result.info["success"]))
    return Evaluation(returns, np.array(successes) if len(successes) == episodes else None)
