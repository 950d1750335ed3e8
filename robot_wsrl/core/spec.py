"""Observation/action specification shared by the learner, the exporter and the robot side (numpy only).

The agent always works in a normalised action space [-1, 1]^act_dim; the spec carries the robot's real
limits so that every consumer maps actions the same way.

An observation has named parts. Every task has the float32 proprioceptive part `state` of `obs_dim`
entries; a camera task adds one uint8 (H, W, C) image per camera in `cameras`. A state-only task's
observation is the `state` array itself (so every state-only consumer is unchanged); a camera task's is a
dict holding exactly `state` and each camera's name. `check_observation` is the one check every boundary
(driver, wire, dataset, policy) applies, so a wrong part is refused where it enters, by name and shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import numpy as np

STATE = "state"
Observation: TypeAlias = "np.ndarray | dict[str, np.ndarray]"
_CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}\Z")
MAX_IMAGE_SIDE = 1024


class ObservationError(ValueError):
    """An observation (or one of its parts) does not match the task's spec; the text names the part."""


@dataclass(frozen=True)
class CameraSpec:
    """One camera's image part: uint8 pixels, height x width x channels (3: RGB, 1: grey)."""

    name: str
    height: int
    width: int
    channels: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _CAMERA_NAME.match(self.name) or self.name == STATE:
            raise ValueError(
                f"camera name {self.name!r} must be 1-32 characters of [A-Za-z0-9_], start with a letter "
                f"and not be {STATE!r}"
            )
        for side in ("height", "width"):
            value = getattr(self, side)
            if not (isinstance(value, int) and 1 <= value <= MAX_IMAGE_SIDE):
                raise ValueError(
                    f"camera {self.name!r}: {side} must be an int in 1..{MAX_IMAGE_SIDE}, got {value!r}"
                )
        if self.channels not in (1, 3):
            raise ValueError(f"camera {self.name!r}: channels must be 1 or 3, got {self.channels!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about the robot it drives."""

    name: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_period_s: float
    cameras: tuple[CameraSpec, ...] = ()

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
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: camera names must be unique, got {names}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise ObservationError(
            f"{self.name}: no camera {name!r}; the task's cameras are {list(self.camera_names)}"
        )

    def obs_parts(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Each part's (shape, dtype), `state` first: what a driver, the wire and a policy agree on."""
        parts: dict[str, tuple[tuple[int, ...], str]] = {STATE: ((self.obs_dim,), "float32")}
        parts.update({c.name: (c.shape, "uint8") for c in self.cameras})
        return parts

    def check_observation(self, obs: Any, where: str) -> None:
        """Refuse an observation that does not match the spec, naming `where` it came from and the part.

        Checks presence, dtype and shape only (values are the consumer's business: a float part may be
        checked for finiteness where that matters)."""
        if not self.cameras:
            _check_part(self.name, where, STATE, obs, (self.obs_dim,), np.float32, allow_float64=True)
            return
        if not isinstance(obs, Mapping):
            raise ObservationError(
                f"{where}: {self.name} observations are parts {list(self.obs_parts())}, "
                f"got {type(obs).__name__}"
            )
        expected = self.obs_parts()
        unknown = sorted(set(obs) - set(expected))
        missing = [k for k in expected if k not in obs]
        if unknown or missing:
            raise ObservationError(
                f"{where}: {self.name} observation parts must be {list(expected)}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        _check_part(self.name, where, STATE, obs[STATE], (self.obs_dim,), np.float32, allow_float64=True)
        for cam in self.cameras:
            _check_part(self.name, where, cam.name, obs[cam.name], cam.shape, np.uint8)

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
        if self.cameras:
            d["cameras"] = [asdict(c) for c in self.cameras]
        else:
            del d["cameras"]  # a state-only spec reads and writes as it always has
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
            cameras=tuple(
                CameraSpec(str(c["name"]), int(c["height"]), int(c["width"]), int(c.get("channels", 3)))
                for c in d.get("cameras", ())
            ),
        )


def _check_part(
    task: str,
    where: str,
    part: str,
    value: Any,
    shape: tuple[int, ...],
    dtype: type,
    *,
    allow_float64: bool = False,
) -> None:
    allowed = (np.dtype(dtype), np.dtype(np.float64)) if allow_float64 else (np.dtype(dtype),)
    if not isinstance(value, np.ndarray) or value.dtype not in allowed or value.shape != shape:
        got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ObservationError(
            f"{where}: {task} observation part {part!r} must be {np.dtype(dtype).name} {shape}, got {got}"
        )
