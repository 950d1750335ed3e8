"""MuJoCo's OpenGL backend (MUJOCO_GL), settled before mujoco is imported (stdlib only).

mujoco reads MUJOCO_GL once, when it is first imported: a value it does not know (`foo`), or a backend
whose library is missing (`osmesa` without libOSMesa), makes `import mujoco` itself fail, with a long
traceback, in every command, even one whose simulator never renders; and unset, it uses GLFW, which on a
machine without a display prints GLFW warnings before it fails to render. `settle()` runs once, from
`robot_wsrl.sim`'s `__init__`, so before any simulator module imports mujoco (or dm_control):
- MUJOCO_GL unset on a Linux machine without a display: `egl` where libEGL loads (headless rendering),
  rendering off otherwise;
- a value that cannot work here (unknown, its library missing, a display backend without a display):
  rendering off, the value kept in ROBOT_WSRL_MUJOCO_GL (child processes inherit both), so that a state
  driver still runs and a camera request fails where its renderer is made, with `render_problem()`: one
  line naming MUJOCO_GL's value, why it cannot render, and the fix (`FIX`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

VAR = "MUJOCO_GL"
KEPT = "ROBOT_WSRL_MUJOCO_GL"  # the value settle() turned off (empty: unset), for the error and for children
OFF = ("disable", "disabled", "off", "false", "0")  # mujoco's own spellings of "no rendering"
DISPLAY_BACKENDS = ("", "enable", "enabled", "on", "true", "1", "glfw", "glx")  # mujoco's, on Linux
LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa"}  # the library PyOpenGL loads for each headless backend
PACKAGES = {"egl": "libegl1 libgl1-mesa-dri", "osmesa": "libosmesa6"}
FIX = (
    "set MUJOCO_GL=egl to render headless (Mesa's EGL: apt install libegl1 libgl1-mesa-dri), "
    "or glfw on a machine with a display"
)


def settle() -> None:
    """Choose or turn off MUJOCO_GL as the module docstring says; never raises, and does nothing once
    mujoco is imported (its backend is chosen) or off Linux (mujoco's defaults there need no help)."""
    # PyOpenGL (under mujoco's egl and osmesa) logs at INFO that its optional C accelerator is absent:
    # noise in every command that logs at INFO (link-runner, the emulated robot), never a user's problem.
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)
    if "mujoco" in sys.modules or not sys.platform.startswith("linux"):
        return
    value = os.environ.get(VAR) or None  # empty: mujoco reads it as unset, and so do we
    if value is not None and value.strip().lower() in OFF:
        return  # off by choice, or by a parent's settle() (then KEPT says why)
    os.environ.pop(KEPT, None)
    if value is None and not _has_display() and _loadable(LIBRARIES["egl"]):
        os.environ[VAR] = "egl"
    elif _problem(value) is not None:
        os.environ[KEPT] = value or ""
        os.environ[VAR] = "disable"


def render_problem(exc: BaseException) -> str:
    """Why making a renderer failed with `exc`, in words a user can act on (FIX follows it)."""
    value = os.environ.get(VAR)
    if KEPT in os.environ:
        kept = os.environ[KEPT]
        return _problem(kept or None) or f"MUJOCO_GL={kept} cannot render here"
    if value is not None and value.strip().lower() in OFF:
        return f"MUJOCO_GL={value} turns rendering off"
    return f"{type(exc).__name__}: {exc} (MUJOCO_GL={value if value is not None else 'unset'})"


def _problem(value: str | None) -> str | None:
    """Why `value` of MUJOCO_GL cannot render on this machine, or None when it may."""
    backend = (value or "").strip().lower()
    if backend in LIBRARIES:
        if _loadable(LIBRARIES[backend]):
            return None
        return (
            f"MUJOCO_GL={value} needs lib{LIBRARIES[backend]}, which does not load here "
            f"(apt install {PACKAGES[backend]})"
        )
    if backend not in DISPLAY_BACKENDS:
        known = ", ".join(("egl", "osmesa", "glfw", "glx", "disable"))
        return f"MUJOCO_GL={value} is not an OpenGL backend mujoco knows ({known})"
    if _has_display():
        return None
    if value is None:
        return "MUJOCO_GL is unset (GLFW, which needs a display) and libEGL does not load here"
    return f"MUJOCO_GL={value} needs a display and DISPLAY is not set"


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _loadable(name: str) -> bool:
    """Whether lib`name` loads the way PyOpenGL loads it (libNAME.so, then libNAME.so.9 ... .0)."""
    for filename in (f"lib{name}.so", *(f"lib{name}.so.{i}" for i in reversed(range(10)))):
        try:
            ctypes.CDLL(filename)
        except OSError:
            continue
        return True
    return False
