"""Driver for any gymnasium MuJoCo environment (Hopper-v5, HalfCheetah-v5, ...); numpy/mujoco only.

The simulator stands in for a robot: the spec comes from the env's spaces and `dt`, commands are clipped to
the action limits before they reach the physics, and the clipped action is reported back as executed.
With `cameras`, an observation is {"state": float32, camera: uint8 (H, W, 3), ...} rendered by
robot_wsrl.sim.camera (which needs MUJOCO_GL=egl on a headless machine); without, it is the state vector.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from robot_wsrl.core.driver import StepResult
from robot_wsrl.core.spec import STATE, CameraSpec, EnvSpec, Observation
from robot_wsrl.sim.camera import CameraRig, FreeView
from robot_wsrl.sim.shift import DynamicsShift, VisualShift


class GymMujocoDriver:
    """A gymnasium MuJoCo env behind the Driver protocol, optionally with a dynamics shift, sensor noise
    and named cameras (the model's own, or the free `views` a task adds) seen through a visual shift.

    `terminated`/`truncated` come straight from gymnasium (truncation is its TimeLimit wrapper, set by
    `max_episode_steps` or the env's registered default). Every observation it returns has passed
    `spec.check_observation`.
    """

    def __init__(
        self,
        env_id: str,
        *,
        max_episode_steps: int | None = None,
        seed: int | None = None,
        shift: DynamicsShift | None = None,
        obs_noise_std: float = 0.0,
        cameras: Sequence[CameraSpec] = (),
        views: Mapping[str, FreeView] | None = None,
        visual: VisualShift | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not (np.isfinite(obs_noise_std) and obs_noise_std >= 0):
            raise ValueError(f"obs_noise_std must be >= 0, got {obs_noise_std}")
        kwargs: dict[str, Any] = dict(env_kwargs or {})  # the env's own options, e.g. its reward weights
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = int(max_episode_steps)
        try:
            self.env = gym.make(env_id, **kwargs)
        except gym.error.Error as exc:  # unknown id or version: one line with gymnasium's "did you mean"
            raise ValueError(f"gym:{env_id}: {exc}") from None
        try:
            self.spec = replace(self._build_spec(env_id), cameras=tuple(cameras))
            self.shift = shift if shift is not None else DynamicsShift()
            self.shift.apply(self.model)
            self.cameras = CameraRig(
                self.model, self.data, self.spec.cameras, where=self.spec.name, views=views, visual=visual
            )
        except Exception:
            self.env.close()
            raise
        self.obs_noise_std = float(obs_noise_std)
        self._seed = seed
        self._noise_rng = np.random.default_rng(_noise_seed(seed))
        self._needs_reset = True
        self._closed = False
        self.safe_stop_count = 0
        self.last_safe_stop_time: float | None = None

    def _build_spec(self, env_id: str) -> EnvSpec:
        unwrapped = self.env.unwrapped
        if not isinstance(getattr(unwrapped, "model", None), mujoco.MjModel):
            raise ValueError(f"{env_id} is not a MuJoCo environment (no MjModel at env.unwrapped.model)")
        obs_space, act_space = self.env.observation_space, self.env.action_space
        if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
            raise ValueError(f"{env_id}: need a 1-D Box observation space, got {obs_space}")
        if not (isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1):
            raise ValueError(f"{env_id}: need a 1-D Box action space, got {act_space}")
        if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
            raise ValueError(f"{env_id}: action limits must be finite, got {act_space}")
        return EnvSpec(
            name=env_id,
            obs_dim=int(obs_space.shape[0]),
            act_dim=int(act_space.shape[0]),
            action_low=tuple(float(x) for x in np.asarray(act_space.low, dtype=np.float32)),
            action_high=tuple(float(x) for x in np.asarray(act_space.high, dtype=np.float32)),
            control_period_s=float(unwrapped.dt),
        )

    @property
    def model(self) -> mujoco.MjModel:
        return self.env.unwrapped.model

    @property
    def data(self) -> mujoco.MjData:
        return self.env.unwrapped.data

    def reset(self, seed: int | None = None) -> tuple[Observation, dict[str, Any]]:
        """Start an episode. Without a seed the first reset uses the driver's seed, later ones continue."""
        self._check_open()
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None
        if seed is not None:
            self._noise_rng = np.random.default_rng(_noise_seed(seed))
            self.cameras.reseed(seed)
        obs, info = self.env.reset(seed=seed)
        self._needs_reset = False
        return self._observe(obs), dict(info)

    def step(self, action: np.ndarray) -> StepResult:
        """Clip `action` to the limits, apply it for one control period, report what was applied."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError(f"{self.spec.name}: call reset() first (episode not started or already over)")
        executed = self.clip(action)
        obs, reward, terminated, truncated, info = self.env.step(executed)
        self._needs_reset = bool(terminated or truncated)
        info = dict(info)
        info["applied_ctrl"] = np.array(self.data.ctrl, dtype=np.float64)
        return StepResult(
            obs=self._observe(obs),
            reward=float(reward),
            terminated=bool(terminated),
            truncated=bool(truncated),
            executed_action=executed,
            info=info,
        )

    def clip(self, action: np.ndarray) -> np.ndarray:
        """The command as this robot would execute it: shape-checked, finite, clipped to the limits."""
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self.spec.act_dim,):
            raise ValueError(f"{self.spec.name}: action shape {a.shape}, expected ({self.spec.act_dim},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.spec.name}: non-finite action {a}")
        return np.clip(a, self.spec.low, self.spec.high).astype(np.float32)

    def safe_stop(self) -> None:
        """Hold: command zero actuation without advancing time.

        A simulator only moves when stepped, so between steps it is already holding still; zeroing the
        actuator command makes anything that does advance the physics see zero actuation, and never steps
        the episode behind the runner's back. The next `step()` commands whatever it is given.
        """
        self.last_safe_stop_time = time.perf_counter()
        self.safe_stop_count += 1
        if not self._closed:
            self.data.ctrl[:] = 0.0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.cameras.close()
            self.env.close()

    def _state(self, obs: np.ndarray) -> np.ndarray:
        """The proprioceptive `state` from gymnasium's observation (a task may hide entries of it)."""
        return np.asarray(obs, dtype=np.float32).reshape(self.spec.obs_dim)

    def _observe(self, obs: np.ndarray) -> Observation:
        o = self._state(obs)
        if self.obs_noise_std > 0:
            o = (o + self._noise_rng.normal(0.0, self.obs_noise_std, size=o.shape)).astype(np.float32)
        out: Observation = {STATE: o, **self.cameras.render()} if self.spec.cameras else o
        self.spec.check_observation(out, f"driver {self.spec.name}")
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.spec.name}: driver is closed")


def _noise_seed(seed: int | None) -> np.random.SeedSequence | None:
    """Sensor noise gets its own stream, derived from but independent of the physics seed."""
    return None if seed is None else np.random.SeedSequence([int(seed), 0x5E45])
