"""Dynamics shifts and sim-to-real presets for the simulated robots (numpy + mujoco only, no torch).

A shift rescales a MuJoCo model's physical parameters so that a policy pre-trained on the nominal model
meets a gap like the one between simulation and hardware. Scales always apply to the model's ORIGINAL
values (remembered on first use), so applying a shift twice is the same as applying it once and applying
the nominal shift restores the model.

Presets live in `configs/shift/NAME.yaml` and hold the four dynamics scales, the link/sensor
imperfections the emulated robot adds (sensor noise, action latency, timing jitter, packet drops) and a
`visual` section: what a camera sees differently on the robot (lighting, colours, camera pose, pixel
noise, blur), applied by robot_wsrl.sim.camera when a driver renders.
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeAlias

import mujoco
import numpy as np

from robot_wsrl.core.paths import REPO_ROOT

SHIFT_DIR = REPO_ROOT / "configs" / "shift"

# Original parameters per model, so scales are never compounded. Weak keys: a freed model frees its copy.
_ORIGINALS: weakref.WeakKeyDictionary[mujoco.MjModel, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
_SCALED_FIELDS = (
    "body_mass",
    "body_inertia",
    "geom_friction",
    "actuator_gainprm",
    "actuator_biasprm",
    "dof_damping",
)


@dataclass(frozen=True)
class DynamicsShift:
    """Multiplicative scales on a MuJoCo model's dynamics; 1.0 everywhere is the nominal model."""

    body_mass_scale: float = 1.0
    friction_scale: float = 1.0
    actuator_gain_scale: float = 1.0
    joint_damping_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"DynamicsShift.{f.name} must be a finite positive number, got {v!r}")

    @property
    def is_nominal(self) -> bool:
        return all(getattr(self, f.name) == 1.0 for f in fields(self))

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DynamicsShift:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown dynamics keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**{k: float(v) for k, v in d.items()})

    def apply(self, model: mujoco.MjModel) -> None:
        """Scale `model` in place from its original values (idempotent; nominal restores the original).

        - mass: body_mass and body_inertia (same geometry, denser material), then mj_setConst so derived
          quantities (subtree masses, inverse weights) follow;
        - friction: all geom_friction coefficients (sliding, torsional, rolling);
        - actuator gain: gainprm[:, 0] of every actuator; for affine-bias actuators (position/velocity
          servos) biasprm[:, 0:3] too, so a servo's whole force law is scaled and it still tracks its
          target instead of gaining a spurious offset;
        - damping: dof_damping.
        """
        orig = _ORIGINALS.get(model)
        if orig is None:
            orig = {name: np.array(getattr(model, name), copy=True) for name in _SCALED_FIELDS}
            _ORIGINALS[model] = orig
        model.body_mass[:] = orig["body_mass"] * self.body_mass_scale
        model.body_inertia[:] = orig["body_inertia"] * self.body_mass_scale
        model.geom_friction[:] = orig["geom_friction"] * self.friction_scale
        model.actuator_gainprm[:] = orig["actuator_gainprm"]
        model.actuator_gainprm[:, 0] *= self.actuator_gain_scale
        model.actuator_biasprm[:] = orig["actuator_biasprm"]
        affine = np.asarray(model.actuator_biastype) == int(mujoco.mjtBias.mjBIAS_AFFINE)
        model.actuator_biasprm[affine, 0:3] *= self.actuator_gain_scale
        model.dof_damping[:] = orig["dof_damping"] * self.joint_damping_scale
        mujoco.mj_setConst(model, mujoco.MjData(model))


Vec3: TypeAlias = tuple[float, float, float]


@dataclass(frozen=True)
class VisualShift:
    """What a camera sees differently on the robot; the defaults are the simulator's own rendering.

    Applied to the rendered scene, never to the model (robot_wsrl.sim.camera), so it cannot change the
    physics. Lighting: `light_scale` multiplies every light (the headlight included); `key_light` > 0 adds
    a directional light of that intensity shining along `key_light_dir` (world frame). Colours: RGB
    multipliers for the fixed scenery (`floor_tint`: geoms of the world body), the target (`target_tint`:
    geoms whose own or body name starts with "target") and the robot (`arm_tint`: every other geom).
    Camera: the viewpoint moves by `camera_offset_m` (world frame) and turns by `camera_yaw_deg` (about
    the world z axis) and `camera_pitch_deg` (about the camera's right axis). Pixels: a box blur of radius
    `blur_px`, then Gaussian noise of `pixel_noise_std` (0-255 units) drawn from the episode's seed.
    """

    light_scale: float = 1.0
    key_light: float = 0.0
    key_light_dir: Vec3 = (0.0, 0.0, -1.0)
    floor_tint: Vec3 = (1.0, 1.0, 1.0)
    arm_tint: Vec3 = (1.0, 1.0, 1.0)
    target_tint: Vec3 = (1.0, 1.0, 1.0)
    camera_offset_m: Vec3 = (0.0, 0.0, 0.0)
    camera_yaw_deg: float = 0.0
    camera_pitch_deg: float = 0.0
    pixel_noise_std: float = 0.0
    blur_px: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "Vec3":
                ok = isinstance(v, tuple) and len(v) == 3 and all(_finite(x) for x in v)
                if ok and f.name.endswith("_tint"):
                    ok = all(x >= 0 for x in v)
                if ok and f.name == "key_light_dir":
                    ok = any(x != 0 for x in v)
                if not ok:
                    raise ValueError(f"visual.{f.name} must be a list of 3 finite numbers, got {v!r}")
            elif f.name == "blur_px":
                if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 8):
                    raise ValueError(f"visual.blur_px must be an int in 0..8, got {v!r}")
            elif not _finite(v) or (f.name in ("light_scale", "key_light", "pixel_noise_std") and v < 0):
                raise ValueError(f"visual.{f.name} must be a finite number (>= 0 for scales), got {v!r}")

    @property
    def is_nominal(self) -> bool:
        return self == VisualShift()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> VisualShift:
        d = dict(d or {})
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown visual keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        out: dict[str, Any] = {}
        for k, v in d.items():
            if known[k].type == "Vec3":
                if not (isinstance(v, (list, tuple)) and all(_number(x) for x in v)):
                    raise ValueError(f"visual.{k} must be a list of 3 numbers like [1, 0.9, 0.8], got {v!r}")
                out[k] = tuple(float(x) for x in v)
            elif k == "blur_px":
                out[k] = v
            else:
                out[k] = float(v) if _number(v) else v
        return cls(**out)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _number(v) and bool(np.isfinite(v))


# ---------------------------------------------------------------------------------------------- presets

_PRESET_DEFAULTS: dict[str, Any] = {
    "sensor_noise_std": 0.0,
    "action_latency_steps": 0,
    "jitter_ms": 0.0,
    "drop_prob": 0.0,
}


def preset_names(driver: str | None = None) -> list[str]:
    """The presets shipped in configs/shift; with `driver`, those that apply to it (`preset_applies`)."""
    names = sorted(p.stem for p in SHIFT_DIR.glob("*.yaml"))
    return names if driver is None else [n for n in names if preset_applies(load_shift_preset(n), driver)]


def preset_hint(name: str, presets: list[str]) -> str:
    """How to say which presets a mistyped `name` could be: `presets` listed, then the closest as a did you
    mean (`nominal, reacher_real (did you mean reacher_real?)`); one helper for every place a name is read."""
    close = difflib.get_close_matches(name, presets, n=1)
    return ", ".join(presets) + (f" (did you mean {close[0]}?)" if close else "")


def preset_applies(preset: dict[str, Any], driver: str) -> bool:
    """A preset names the simulated robot it describes by a driver-name prefix (`for_driver`, e.g.
    `cam:reacher`): a camera arm's lighting and damping mean nothing to a Hopper. None: every robot."""
    prefix = preset["for_driver"]
    return not prefix or driver == prefix or driver.startswith((prefix + "@", prefix + ":"))


def load_shift_preset(name: str) -> dict[str, Any]:
    """Read `configs/shift/NAME.yaml` and return a validated, complete preset dict.

    Keys: `dynamics` (a DynamicsShift), `visual` (a VisualShift), `for_driver` (see `preset_applies`),
    `sensor_noise_std`,
    `action_latency_steps`, `jitter_ms`, `drop_prob` (missing ones take their nominal default). PyYAML is
    used when installed; the robot-side install may lack it, so the flat two-level subset these presets
    use is also parsed without it.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid shift preset name {name!r}")
    path = SHIFT_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shift preset {name!r} at {path}; available: {preset_hint(name, preset_names())}"
        )
    raw = _read_yaml(path)
    return normalise_preset(raw, source=str(path))


def normalise_preset(raw: dict[str, Any] | None, *, source: str = "preset") -> dict[str, Any]:
    """Validate a preset mapping and fill defaults; `dynamics` becomes a DynamicsShift, `visual` a
    VisualShift."""
    raw = dict(raw or {})
    known = {"dynamics", "visual", "description", "for_driver", *_PRESET_DEFAULTS}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
    dyn = raw.get("dynamics")
    try:
        shift = dyn if isinstance(dyn, DynamicsShift) else DynamicsShift.from_dict(dyn)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: dynamics: {e}") from e
    vis = raw.get("visual")
    try:
        visual = vis if isinstance(vis, VisualShift) else VisualShift.from_dict(vis)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: visual: {e}") from e
    out: dict[str, Any] = {
        "dynamics": shift,
        "visual": visual,
        "description": str(raw.get("description") or ""),
        "for_driver": str(raw.get("for_driver") or ""),
    }
    out["sensor_noise_std"] = float(raw.get("sensor_noise_std", _PRESET_DEFAULTS["sensor_noise_std"]))
    out["action_latency_steps"] = int(
        raw.get("action_latency_steps", _PRESET_DEFAULTS["action_latency_steps"])
    )
    out["jitter_ms"] = float(raw.get("jitter_ms", _PRESET_DEFAULTS["jitter_ms"]))
    out["drop_prob"] = float(raw.get("drop_prob", _PRESET_DEFAULTS["drop_prob"]))
    if not (np.isfinite(out["sensor_noise_std"]) and out["sensor_noise_std"] >= 0):
        raise ValueError(f"{source}: sensor_noise_std must be >= 0")
    if out["action_latency_steps"] < 0:
        raise ValueError(f"{source}: action_latency_steps must be >= 0")
    if not (np.isfinite(out["jitter_ms"]) and out["jitter_ms"] >= 0):
        raise ValueError(f"{source}: jitter_ms must be >= 0")
    if not 0.0 <= out["drop_prob"] < 1.0:
        raise ValueError(f"{source}: drop_prob must be in [0, 1)")
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        import yaml  # lazy: not part of the robot-side install
    except ImportError:
        return parse_simple_yaml(text, source=str(path))
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def parse_simple_yaml(text: str, *, source: str = "yaml") -> dict[str, Any]:
    """Parse the YAML subset of the presets: `key: scalar` lines (a scalar may be a flow list of numbers,
    `[1.0, 0.9, 0.8]`), one nested level by indentation, comments.

    Enough for the shipped presets when PyYAML is absent; anything fancier raises a clear error.
    """
    root: dict[str, Any] = {}
    section: dict[str, Any] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].rstrip()
        if not content.strip():
            continue
        indented = content[0] in " \t"
        key, sep, value = content.strip().partition(":")
        if not sep or not key:
            raise ValueError(f"{source}:{lineno}: unsupported YAML (install PyYAML for full YAML): {line!r}")
        value = value.strip()
        if indented:
            if section is None:
                raise ValueError(f"{source}:{lineno}: indented key outside a section")
            section[key] = _scalar(value)
        elif value == "":
            section = {}
            root[key] = section
        else:
            section = None
            root[key] = _scalar(value)
    return root


def _scalar(value: str) -> Any:
    if value.startswith("[") and value.endswith("]"):
        return [_scalar(item.strip()) for item in value[1:-1].split(",") if item.strip()]
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value.strip("'\"")
