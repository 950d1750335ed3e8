"""Camera tasks: simulated robot-arm tasks whose goal only the camera sees (numpy + mujoco only).

`cam:reacher` (driver `CameraTaskDriver`): gymnasium Reacher-v5, a 2-link planar arm (links 0.1 m and
0.11 m to the fingertip, torque-controlled through gear 200, actions in [-1, 1]) that must bring its
fingertip to a target drawn uniformly in a 0.2 m disc; 50 steps of 0.02 s per episode.
- state (float32, 8): cos q0, cos q1, sin q0, sin q1, q0', q1', fingertip x, fingertip y (world, m).
  Gymnasium's target position and fingertip-to-target vector are removed: only the camera sees the goal.
- camera `top` (84x84 RGB unless asked otherwise): a fixed view straight down on the arm's base from
  0.75 m, showing the reachable disc with the arena's walls at the edges. The target is drawn with radius
  0.02 m (the model's 0.009 m is under 3 pixels at 84x84); it has no contacts, so only the picture changes.
  The headlight is brighter than the model's (ambient 0.3, diffuse 0.6) so colours stand out.
- reward: gymnasium's terms reweighted, -10 distance - 0.1 |a|^2 (`REWARD_WEIGHTS`). With Reacher-v5's
  defaults (1 and 1) the control cost dominates every return (an arm held still scores better than a
  noisy expert that reaches), so offline RL learned to hold still; with these an arm that never reaches
  scores about -115 per episode, the noiseless expert -15. `info["success"]` each step: fingertip within
  0.05 m of the target; an episode succeeds when its last step succeeds.
- `expert_action`: a scripted expert for data collection, from privileged physics state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from robot_wsrl.core.driver import StepResult
from robot_wsrl.core.spec import CameraSpec, EnvSpec, Observation
from robot_wsrl.sim.camera import FreeView
from robot_wsrl.sim.gym_mujoco import GymMujocoDriver
from robot_wsrl.sim.shift import DynamicsShift, VisualShift

SUCCESS_RADIUS_M = 0.05
LINK_M = (0.1, 0.11)  # shoulder to elbow, elbow to fingertip (reacher.xml)
TARGET_DRAWN_RADIUS_M = 0.02
HEADLIGHT = (0.3, 0.6)  # ambient, diffuse
_STATE_FROM_GYM = [0, 1, 2, 3, 6, 7]  # cos q, sin q, q' of Reacher-v5's 10 entries (4:6 target, 8:10 offset)
TOP_VIEW = FreeView(lookat=(0.0, 0.0, 0.0), distance=0.75, azimuth=90.0, elevation=-90.0)
DEFAULT_CAMERAS = (CameraSpec("top", 84, 84),)
REWARD_WEIGHTS = {"reward_dist_weight": 10.0, "reward_control_weight": 0.1}  # Reacher-v5's keyword arguments


class CameraTaskDriver(GymMujocoDriver):
    """`cam:reacher`: Reacher-v5 with the target seen only by the camera (module docstring)."""

    name = "cam:reacher"

    def __init__(
        self,
        *,
        max_episode_steps: int | None = None,
        seed: int | None = None,
        shift: DynamicsShift | None = None,
        obs_noise_std: float = 0.0,
        cameras: Sequence[CameraSpec] = DEFAULT_CAMERAS,
        visual: VisualShift | None = None,
    ) -> None:
        super().__init__(
            "Reacher-v5",
            max_episode_steps=max_episode_steps,
            seed=seed,
            shift=shift,
            obs_noise_std=obs_noise_std,
            cameras=cameras,
            views={"top": TOP_VIEW},
            visual=visual,
            env_kwargs=REWARD_WEIGHTS,
        )
        target = self.model.geom("target").id
        self.model.geom_size[target, 0] = TARGET_DRAWN_RADIUS_M
        self.model.geom_rbound[target] = TARGET_DRAWN_RADIUS_M
        self.model.vis.headlight.ambient[:] = HEADLIGHT[0]  # the model's 0.1/0.4 leave the target dull red
        self.model.vis.headlight.diffuse[:] = HEADLIGHT[1]

    def _build_spec(self, env_id: str) -> EnvSpec:
        spec = super()._build_spec(env_id)
        return EnvSpec(
            name=self.name,
            obs_dim=len(_STATE_FROM_GYM) + 2,
            act_dim=spec.act_dim,
            action_low=spec.action_low,
            action_high=spec.action_high,
            control_period_s=spec.control_period_s,
        )

    def _state(self, obs: np.ndarray) -> np.ndarray:
        gym_obs = np.asarray(obs, dtype=np.float32)
        return np.concatenate([gym_obs[_STATE_FROM_GYM], self._fingertip()]).astype(np.float32)

    def reset(self, seed: int | None = None) -> tuple[Observation, dict[str, Any]]:
        obs, info = super().reset(seed=seed)
        info["success"] = self.success()
        return obs, info

    def step(self, action: np.ndarray) -> StepResult:
        result = super().step(action)
        result.info["success"] = self.success()
        result.info["distance"] = self.distance()
        return result

    def distance(self) -> float:
        """Fingertip to target, metres, in the plane (privileged: the policy does not get it)."""
        return float(np.linalg.norm(self._fingertip() - self._target()))

    def success(self) -> bool:
        return self.distance() < SUCCESS_RADIUS_M

    def expert_action(self, noise_std: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
        """A scripted expert from privileged physics state, for collecting datasets.

        Inverse kinematics of the 2-link arm to the target (the elbow solution nearer the current
        elbow angle), then a PD law on the joint errors, kp = 2 and kd = 0.2 per unit action (critically
        damped for the joints' unit armature through gear 200); plus Gaussian `noise_std` on each action
        entry (`rng` draws it), clipped to the action limits. Returns the action in robot units.
        """
        q = np.array(self.data.qpos[:2], dtype=np.float64)
        qd = np.array(self.data.qvel[:2], dtype=np.float64)
        tx, ty = self._target()
        l1, l2 = LINK_M
        c2 = np.clip((tx * tx + ty * ty - l1 * l1 - l2 * l2) / (2 * l1 * l2), -1.0, 1.0)
        elbow = math.acos(c2)
        q1 = elbow if abs(elbow - q[1]) <= abs(-elbow - q[1]) else -elbow
        q0 = math.atan2(ty, tx) - math.atan2(l2 * math.sin(q1), l1 + l2 * math.cos(q1))
        err = np.array([_wrap(q0 - q[0]), q1 - q[1]])
        action = 2.0 * err - 0.2 * qd
        if noise_std > 0:
            action = action + (rng or np.random.default_rng()).normal(0.0, noise_std, size=action.shape)
        return np.clip(action, self.spec.low, self.spec.high).astype(np.float32)

    def _fingertip(self) -> np.ndarray:
        return np.array(self.data.body("fingertip").xpos[:2], dtype=np.float32)

    def _target(self) -> np.ndarray:
        return np.array(self.data.body("target").xpos[:2], dtype=np.float32)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


CAMERA_TASKS = {"reacher": CameraTaskDriver}


def make_camera_task(task: str, **kwargs: Any) -> CameraTaskDriver:
    """The driver of `cam:TASK` (keyword arguments as CameraTaskDriver's)."""
    if task not in CAMERA_TASKS:
        raise ValueError(f"no camera task {task!r}: the camera tasks are {sorted(CAMERA_TASKS)} (cam:NAME)")
    return CAMERA_TASKS[task](**kwargs)
