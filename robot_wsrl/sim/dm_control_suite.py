"""Driver for a dm_control suite task (cartpole-swingup, walker-walk, ...); numpy/dm_control only.

dm_control speaks dm_env: observations are dicts and episode ends are told by `discount`. This driver
flattens the dict into one float32 vector in a fixed key order and maps a last step with discount 0 to
`terminated` (a true terminal state) and a last step with discount > 0 to `truncated` (the time limit).
Without `cameras` it never renders (a headless machine may set MUJOCO_GL=disable before importing it);
with them, observations are {"state": ..., camera: uint8 (H, W, 3)} rendered from the domain's named
cameras by robot_wsrl.sim.camera, which needs MUJOCO_GL=egl on a headless machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import dm_env
import numpy as np
from dm_control import suite

from robot_wsrl.core.driver import StepResult
from robot_wsrl.core.spec import STATE, CameraSpec, EnvSpec, Observation
from robot_wsrl.sim.camera import CameraRig
from robot_wsrl.sim.shift import VisualShift


def classify_last_step(timestep: dm_env.TimeStep) -> tuple[bool, bool]:
    """(terminated, truncated) of a dm_env time step: bootstrapping is wrong only after a true terminal."""
    if not timestep.last():
        return False, False
    discount = 1.0 if timestep.discount is None else float(timestep.discount)
    return (True, False) if discount == 0.0 else (False, True)


class DmControlDriver:
    """A dm_control suite task behind the Driver protocol.

    The observation vector concatenates the task's observation entries in the order of its
    `observation_spec()` (recorded in `obs_keys`; dm_control keeps that order fixed per task), each
    flattened, scalars as one entry; that vector is the `state` part of a camera observation. Every
    observation it returns has passed `spec.check_observation`.
    """

    def __init__(
        self,
        domain: str,
        task: str,
        *,
        seed: int | None = None,
        time_limit_s: float | None = None,
        cameras: Sequence[CameraSpec] = (),
        visual: VisualShift | None = None,
    ) -> None:
        task_kwargs: dict[str, Any] = {"random": seed}
        if time_limit_s is not None:
            task_kwargs["time_limit"] = float(time_limit_s)
        self.env = suite.load(domain, task, task_kwargs=task_kwargs)
        obs_spec = self.env.observation_spec()
        self.obs_keys: tuple[str, ...] = tuple(obs_spec.keys())
        self._obs_sizes = tuple(int(np.prod(obs_spec[k].shape, dtype=np.int64)) for k in self.obs_keys)
        act_spec = self.env.action_spec()
        if len(act_spec.shape) != 1:
            raise ValueError(f"{domain}-{task}: need a 1-D action spec, got shape {act_spec.shape}")
        act_dim = int(act_spec.shape[0])
        low = np.broadcast_to(np.asarray(act_spec.minimum, dtype=np.float32), (act_dim,))
        high = np.broadcast_to(np.asarray(act_spec.maximum, dtype=np.float32), (act_dim,))
        self.spec = EnvSpec(
            name=f"dm_control/{domain}-{task}",
            obs_dim=int(sum(self._obs_sizes)),
            act_dim=act_dim,
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
            control_period_s=float(self.env.control_timestep()),
            cameras=tuple(cameras),
        )
        try:
            model, data = self.physics.model.ptr, self.physics.data.ptr
            self.cameras = CameraRig(model, data, self.spec.cameras, where=self.spec.name, visual=visual)
            self.cameras.reseed(seed)
        except Exception:
            self.env.close()
            raise
        self._act_dtype = act_spec.dtype
        self._needs_reset = True
        self._closed = False
        self.safe_stop_count = 0
        self.last_safe_stop_time: float | None = None

    @property
    def physics(self) -> Any:
        return self.env.physics

    def flatten(self, observation: dict[str, Any]) -> np.ndarray:
        """The observation dict as one float32 vector, in `obs_keys` order."""
        if len(observation) != len(self.obs_keys) or any(k not in observation for k in self.obs_keys):
            raise ValueError(
                f"{self.spec.name}: observation keys {list(observation)} != {list(self.obs_keys)}"
            )
        return np.concatenate(
            [np.asarray(observation[k], dtype=np.float32).reshape(-1) for k in self.obs_keys]
        ).astype(np.float32, copy=False)

    def reset(self, seed: int | None = None) -> tuple[Observation, dict[str, Any]]:
        """Start an episode; a seed re-seeds the task's initial-state randomness (and the pixel noise)."""
        self._check_open()
        if seed is not None:
            self.env.task._random = np.random.RandomState(int(seed))  # dm_control keeps it on the task
            self.cameras.reseed(int(seed))
        timestep = self.env.reset()
        self._needs_reset = False
        return self._observe(timestep.observation), {}

    def step(self, action: np.ndarray) -> StepResult:
        """Clip `action` to the action spec, apply it for one control period, report what was applied."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError(f"{self.spec.name}: call reset() first (episode not started or already over)")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self.spec.act_dim,):
            raise ValueError(f"{self.spec.name}: action shape {a.shape}, expected ({self.spec.act_dim},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.spec.name}: non-finite action {a}")
        executed = np.clip(a, self.spec.low, self.spec.high).astype(np.float32)
        timestep = self.env.step(executed.astype(self._act_dtype))
        terminated, truncated = classify_last_step(timestep)
        self._needs_reset = terminated or truncated
        info = {
            "discount": None if timestep.discount is None else float(timestep.discount),
            "applied_ctrl": np.array(self.physics.data.ctrl, dtype=np.float64),
        }
        return StepResult(
            obs=self._observe(timestep.observation),
            reward=float(timestep.reward or 0.0),
            terminated=terminated,
            truncated=truncated,
            executed_action=executed,
            info=info,
        )

    def safe_stop(self) -> None:
        """Hold: zero actuator command without advancing time (a simulator only moves when stepped)."""
        self.last_safe_stop_time = time.perf_counter()
        self.safe_stop_count += 1
        if not self._closed:
            self.physics.data.ctrl[:] = 0.0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.cameras.close()
            self.env.close()

    def _observe(self, observation: dict[str, Any]) -> Observation:
        state = self.flatten(observation)
        out: Observation = {STATE: state, **self.cameras.render()} if self.spec.cameras else state
        self.spec.check_observation(out, f"driver {self.spec.name}")
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.spec.name}: driver is closed")
