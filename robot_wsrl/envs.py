"""Simulated environments for in-process training and evaluation (learner side).

The agent acts in [-1, 1]; the env is wrapped so that these actions are mapped affinely onto the robot's
limits, the same map `EnvSpec.to_robot_action` applies on the robot side.
"""

from __future__ import annotations

import numpy as np

from robot_wsrl.config import EnvConfig
from robot_wsrl.spec import EnvSpec


def make_env(env_cfg: EnvConfig, seed: int | None = None):
    """A gymnasium env with actions rescaled to [-1, 1], and the spec of the underlying robot."""
    import gymnasium as gym

    try:
        env = gym.make(env_cfg.id, max_episode_steps=env_cfg.max_episode_steps)
    except gym.error.Error as exc:
        raise ValueError(f"env.id={env_cfg.id!r}: gymnasium cannot make it ({exc})") from exc
    space = env.action_space
    spec = EnvSpec(
        name=env_cfg.name,
        obs_dim=int(np.prod(env.observation_space.shape)),
        act_dim=int(np.prod(space.shape)),
        action_low=tuple(float(x) for x in space.low),
        action_high=tuple(float(x) for x in space.high),
        control_period_s=float(getattr(env.unwrapped, "dt", 0.02)),
    )
    env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env, spec


def evaluate(policy, env, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` deterministic episodes with fixed seeds (seed, seed+1, ...)."""
    returns = np.zeros(episodes)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            returns[i] += reward
            done = terminated or truncated
    return returns
