"""Robot and simulator drivers, one module per robot; `make_driver` builds one from its name.

Names: `gym:ENV_ID` (any gymnasium MuJoCo env), `dmc:DOMAIN-TASK` (dm_control suite), `cam:TASK` (a camera
task of robot_wsrl.sim.camera_tasks, e.g. `cam:reacher`), `null` (timing), `emulated:ENDPOINT` (the
emulated robot served over ZeroMQ). A simulator name may ask for named cameras after `@`:
`gym:Hopper-v5@track:84x84`, `dmc:cartpole-swingup@fixed:64x64+lookatcart:64x64`, `cam:reacher@top:128x128`
(robot_wsrl.sim.camera.parse_cameras); its observations are then {"state": ..., camera: uint8 (H, W, 3)}.
Driver modules are imported only when named, so a robot computer needs only the packages of its own driver.
"""

from __future__ import annotations

import importlib
from typing import Any

from robot_wsrl.core.driver import Driver
from robot_wsrl.core.spec import EnvSpec

# The driver names make_driver takes, for the commands' help and its own errors (the one list).
DRIVER_FORMS = ("gym:ENV_ID", "dmc:DOMAIN-TASK", "cam:TASK", "null", "emulated:ENDPOINT")
CAMERA_REQUESTS = "a simulator name may end in @NAME:HxW camera requests, e.g. cam:reacher@top:84x84"


def make_driver(
    name: str,
    *,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    shift_preset: str | None = None,
    spec: EnvSpec | None = None,
    timeout_s: float | None = None,
    retries: int | None = None,
) -> Driver:
    """Build a driver. `shift_preset` (configs/shift/NAME.yaml) applies its dynamics, sensor noise, action
    latency and visual shift to a gym or cam driver it describes (the robot the preset describes, as the
    emulated robot runs it); `spec` gives the null driver its sizes and control period; `timeout_s` is the
    emulated driver's per-request deadline and `retries` its resends (the only driver behind a link that
    can go quiet)."""
    head, at, request = name.partition("@")
    kind, _, arg = head.partition(":")
    if (timeout_s is not None or retries is not None) and kind != "emulated":
        raise ValueError(f"driver {name!r}: a request deadline or retries apply to emulated:* drivers only")
    if kind in ("gym", "cam", "dmc") and arg:
        kwargs: dict[str, Any] = {"seed": seed}
        if at:
            parse_cameras = _load("robot_wsrl.sim.camera", "parse_cameras")
            kwargs["cameras"] = parse_cameras(request, where=f"driver {name!r}")
        if kind == "dmc":
            domain, dash, task = arg.partition("-")
            if shift_preset not in (None, "", "nominal"):
                raise ValueError(f"driver {name!r}: a shift preset applies to gym:* and cam:* drivers only")
            if dash and domain and task:
                return _load("robot_wsrl.sim.dm_control_suite", "DmControlDriver")(domain, task, **kwargs)
            raise ValueError(f"driver {name!r}: use dmc:DOMAIN-TASK, e.g. dmc:cartpole-swingup")
        kwargs["max_episode_steps"] = max_episode_steps
        latency = 0
        if shift_preset:
            preset = _load("robot_wsrl.sim.shift", "load_shift_preset")(shift_preset)
            if not _load("robot_wsrl.sim.shift", "preset_applies")(preset, name):
                raise ValueError(
                    f"shift preset {shift_preset!r} describes {preset['for_driver']} robots, not {name!r}"
                )
            kwargs |= {
                "shift": preset["dynamics"],
                "obs_noise_std": preset["sensor_noise_std"],
                "visual": preset["visual"],
            }
            latency = int(preset["action_latency_steps"])
        if kind == "cam":
            driver = _load("robot_wsrl.sim.camera_tasks", "make_camera_task")(arg, **kwargs)
        else:
            driver = _load("robot_wsrl.sim.gym_mujoco", "GymMujocoDriver")(arg, **kwargs)
        return _load("robot_wsrl.sim.latency", "ActionLatency")(driver, latency) if latency else driver
    if at and kind in ("null", "emulated"):
        raise ValueError(
            f"driver {name!r} cannot render cameras: a camera request (@NAME:HxW) applies to gym:*, dmc:* "
            "and cam:* drivers; an emulated robot's cameras are those of the task it serves"
        )
    if shift_preset not in (None, "", "nominal"):
        raise ValueError(f"driver {name!r}: a shift preset applies to gym:* and cam:* drivers only")
    if kind == "emulated" and arg:
        emulated = _load("robot_wsrl.robot.drivers.emulated_robot", "EmulatedRobotDriver")
        link: dict[str, Any] = {"timeout_s": timeout_s, "retries": retries}
        return emulated(arg, **{k: v for k, v in link.items() if v is not None})
    if kind == "null" and not arg:
        null = _load("robot_wsrl.robot.drivers.null", "NullDriver")
        if spec is None:
            return null(max_episode_steps=max_episode_steps)
        return null(spec.obs_dim, spec.act_dim, spec.control_period_s, max_episode_steps=max_episode_steps)
    forms = f"{', '.join(DRIVER_FORMS[:-1])} or {DRIVER_FORMS[-1]}"
    raise ValueError(f"unknown driver {name!r}: use {forms} ({CAMERA_REQUESTS})")


def probe_driver(name: str, *, seed: int = 0, **kwargs: Any) -> EnvSpec:
    """Open the driver `name` (make_driver's arguments), reset it once and close it; its spec. A check
    before long work (an export, a session's children): a simulator that cannot run here (a camera under
    an unusable MUJOCO_GL renders its first frame at reset, a missing extra) fails now, in a second."""
    driver = make_driver(name, seed=seed, **kwargs)
    try:
        driver.reset(seed=seed)
        return driver.spec
    finally:
        driver.close()


def simulator_name(spec: EnvSpec) -> str:
    """The simulator driver whose observations are `spec`'s, its cameras at their sizes (`gym:Hopper-v5`,
    `cam:reacher@top:24x24`): what a policy made for `spec` runs on in simulation. The inverse of the names
    the simulators give their specs: a gymnasium env id, `dm_control/DOMAIN-TASK`, a camera task's own
    driver name."""
    name = spec.name
    if name.startswith("dm_control/"):
        head = "dmc:" + name.removeprefix("dm_control/")
    else:
        head = name if ":" in name else f"gym:{name}"
    if not spec.cameras:
        return head
    return head + "@" + "+".join(f"{c.name}:{c.height}x{c.width}" for c in spec.cameras)


def _load(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(module), attr)
