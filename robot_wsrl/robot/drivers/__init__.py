"""Robot and simulator drivers, one module per robot; `make_driver` builds one from its name.

Names: `gym:ENV_ID` (any gymnasium MuJoCo env), `dmc:DOMAIN-TASK` (dm_control suite), `null` (timing),
`emulated:ENDPOINT` (the emulated robot served over ZeroMQ). Driver modules are imported only when named,
so a robot computer needs only the packages of its own driver.
"""

from __future__ import annotations

import importlib
from typing import Any

from robot_wsrl.core.driver import Driver
from robot_wsrl.core.spec import EnvSpec


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
    """Build a driver. `shift_preset` (configs/shift/NAME.yaml) applies its dynamics and sensor noise to a
    gym driver; `spec` gives the null driver its sizes and control period; `timeout_s` is the emulated
    driver's per-request deadline and `retries` its resends (the only driver behind a link that can go
    quiet)."""
    kind, _, arg = name.partition(":")
    if (timeout_s is not None or retries is not None) and kind != "emulated":
        raise ValueError(f"driver {name!r}: a request deadline or retries apply to emulated:* drivers only")
    if kind == "gym" and arg:
        kwargs: dict[str, Any] = {"seed": seed, "max_episode_steps": max_episode_steps}
        if shift_preset:
            preset = _load("robot_wsrl.sim.shift", "load_shift_preset")(shift_preset)
            kwargs |= {"shift": preset["dynamics"], "obs_noise_std": preset["sensor_noise_std"]}
        return _load("robot_wsrl.sim.gym_mujoco", "GymMujocoDriver")(arg, **kwargs)
    if shift_preset not in (None, "", "nominal"):
        raise ValueError(f"driver {name!r}: a dynamics shift applies to gym:* drivers only")
    if kind == "emulated" and arg:
        emulated = _load("robot_wsrl.robot.drivers.emulated_robot", "EmulatedRobotDriver")
        link: dict[str, Any] = {"timeout_s": timeout_s, "retries": retries}
        return emulated(arg, **{k: v for k, v in link.items() if v is not None})
    if kind == "dmc" and "-" in arg:
        domain, _, task = arg.partition("-")
        return _load("robot_wsrl.sim.dm_control_suite", "DmControlDriver")(domain, task, seed=seed)
    if kind == "null" and not arg:
        null = _load("robot_wsrl.robot.drivers.null", "NullDriver")
        if spec is None:
            return null(max_episode_steps=max_episode_steps)
        return null(spec.obs_dim, spec.act_dim, spec.control_period_s, max_episode_steps=max_episode_steps)
    raise ValueError(f"unknown driver {name!r}: use gym:ENV_ID, dmc:DOMAIN-TASK, null or emulated:ENDPOINT")


def _load(module: str, attr: str) -> Any:
    return getattr(importlib.import_module(module), attr)
