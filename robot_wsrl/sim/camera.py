"""Rendering a simulator's named cameras into uint8 frames, with a visual shift (numpy + mujoco only).

A `CameraRig` renders one image per requested camera (one `mujoco.Renderer` each, reused every step,
freed by `close()`) from a model's own named cameras or from fixed free views a task defines (`FreeView`).
The rig applies a `VisualShift` to the rendered SCENE (lights, geom colours, the viewpoint) and to the
pixels (blur, seeded noise), never to the model, so a visual shift cannot change the physics.

Rendering needs an OpenGL backend chosen before mujoco is imported: `MUJOCO_GL=egl` renders headless
(Mesa's software EGL on a CPU machine; robot_wsrl.sim.gl picks it when MUJOCO_GL is unset on a machine
without a display). Without one, asking for a camera is a ValueError that says why and what to set.

Cameras are asked for by a string `NAME:HxW[+NAME:HxW...]` (`parse_cameras`), e.g. `top:84x84`: the part
after `@` in a driver name (`gym:Hopper-v5@track:84x84`), written so that it passes a Hydra override as is.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from robot_wsrl.core.spec import MAX_IMAGE_SIDE, CameraSpec
from robot_wsrl.sim import gl
from robot_wsrl.sim.shift import VisualShift

_SIZE = re.compile(r"(\d+)x(\d+)\Z")
_NOISE_STREAM = 0xC4E7A  # the pixel-noise stream of a seed, independent of physics and sensor noise


@dataclass(frozen=True)
class FreeView:
    """A fixed viewpoint that is not in the model: looks at `lookat` from `distance` metres, at `azimuth`
    and `elevation` degrees (MuJoCo's free-camera convention; elevation -90 looks straight down)."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float
    elevation: float

    def camera(self) -> mujoco.MjvCamera:
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = self.lookat
        cam.distance, cam.azimuth, cam.elevation = self.distance, self.azimuth, self.elevation
        return cam


def parse_cameras(text: str, *, where: str) -> tuple[CameraSpec, ...]:
    """`NAME:HxW[+NAME:HxW...]` -> camera specs (RGB); a ValueError names the bad entry and the format."""
    specs: list[CameraSpec] = []
    for entry in text.split("+"):
        name, sep, size = entry.strip().partition(":")
        match = _SIZE.match(size.strip())
        if not sep or not name.strip() or match is None:
            raise ValueError(
                f"{where}: bad camera request {entry.strip()!r}: expected NAME:HEIGHTxWIDTH like top:84x84 "
                "(several joined by +)"
            )
        height, width = int(match[1]), int(match[2])
        if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
            raise ValueError(
                f"{where}: camera {name.strip()!r}: size {height}x{width} is outside 1..{MAX_IMAGE_SIDE} "
                "pixels a side"
            )
        try:
            specs.append(CameraSpec(name.strip(), height, width))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    names = [c.name for c in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: camera names must be unique, got {names}")
    return tuple(specs)


def model_camera_names(model: mujoco.MjModel) -> list[str]:
    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) or f"#{i}" for i in range(model.ncam)]


class CameraRig:
    """Renders `cameras` of one model/data pair; `views` names the free views a task adds to the model's
    own cameras. `render()` returns {name: uint8 (H, W, C)} in `cameras` order."""

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        cameras: Sequence[CameraSpec],
        *,
        where: str,
        views: Mapping[str, FreeView] | None = None,
        visual: VisualShift | None = None,
    ) -> None:
        self._data = data
        self.cameras = tuple(cameras)
        self.visual = visual or VisualShift()
        self._views = dict(views or {})
        available = sorted({*self._views, *model_camera_names(model)})
        self._sources: list[mujoco.MjvCamera | int] = []
        for cam in self.cameras:
            if cam.channels != 3:
                raise ValueError(f"{where}: camera {cam.name!r}: a simulator renders RGB (3 channels)")
            if cam.name in self._views:
                self._sources.append(self._views[cam.name].camera())
                continue
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam.name)
            if cam_id < 0:
                raise ValueError(
                    f"{where}: no camera {cam.name!r}; this simulator's cameras are {available or 'none'}"
                )
            self._sources.append(cam_id)
        self._tint = _geom_tints(model, self.visual)
        self._noise = np.random.default_rng()
        self._renderers: list[mujoco.Renderer] = []
        if not self.cameras:
            return
        vis = model.vis.global_  # the offscreen buffer is sized when a renderer's context is made
        vis.offheight = max(vis.offheight, *(c.height for c in self.cameras))
        vis.offwidth = max(vis.offwidth, *(c.width for c in self.cameras))
        try:
            for cam in self.cameras:
                self._renderers.append(_renderer(model, cam, where))
        except BaseException:
            self.close()
            raise
        finally:
            _release_gl_context()

    def reseed(self, seed: int | None) -> None:
        """Pixel noise of an episode follows from its seed (None: fresh entropy)."""
        stream = None if seed is None else np.random.SeedSequence([int(seed), _NOISE_STREAM])
        self._noise = np.random.default_rng(stream)

    def render(self) -> dict[str, np.ndarray]:
        frames = {}
        try:
            for cam, source, renderer in zip(self.cameras, self._sources, self._renderers, strict=True):
                renderer.update_scene(self._data, camera=source)
                self._shift_scene(renderer.scene)
                frames[cam.name] = self._shift_pixels(renderer.render())
        finally:
            _release_gl_context()
        return frames

    def close(self) -> None:
        if not self._renderers:
            return
        try:
            while self._renderers:
                renderer = self._renderers.pop()
                renderer._gl_context.make_current()  # its GL objects are freed in its own context
                renderer.close()
        finally:
            _release_gl_context()

    def _shift_scene(self, scene: mujoco.MjvScene) -> None:
        v = self.visual
        if v.is_nominal:
            return
        for light in scene.lights[: scene.nlight]:
            for part in (light.ambient, light.diffuse, light.specular):
                part *= v.light_scale
        if v.key_light > 0 and scene.nlight < len(scene.lights):
            light = scene.lights[scene.nlight]
            light.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
            light.headlight = False
            light.castshadow = False
            light.dir[:] = np.asarray(v.key_light_dir) / np.linalg.norm(v.key_light_dir)
            light.pos[:] = -light.dir * 10.0
            light.diffuse[:] = v.key_light
            light.ambient[:] = 0.0
            light.specular[:] = 0.3 * v.key_light
            light.attenuation[:] = (1.0, 0.0, 0.0)
            scene.nlight += 1
        if self._tint is not None:
            for geom in scene.geoms[: scene.ngeom]:
                if geom.objtype == mujoco.mjtObj.mjOBJ_GEOM and 0 <= geom.objid < len(self._tint):
                    geom.rgba[:3] = np.clip(geom.rgba[:3] * self._tint[geom.objid], 0.0, 1.0)
        turn = _rotation(v.camera_yaw_deg, v.camera_pitch_deg, scene.camera[0])
        for glcam in scene.camera:
            glcam.pos[:] = glcam.pos + np.asarray(v.camera_offset_m)
            glcam.forward[:] = turn @ glcam.forward
            glcam.up[:] = turn @ glcam.up

    def _shift_pixels(self, frame: np.ndarray) -> np.ndarray:
        v = self.visual
        if v.blur_px == 0 and v.pixel_noise_std == 0:
            return frame
        img = frame.astype(np.float32)
        if v.blur_px:
            img = _box_blur(img, v.blur_px)
        if v.pixel_noise_std:
            img += self._noise.normal(0.0, v.pixel_noise_std, size=img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _release_gl_context() -> None:
    """Leave no GL context current in this thread, so that the next render (which makes its renderer's
    context current) may come from any thread: a driver is built in one thread and stepped in another
    (the runner's loop, a gate worker), and EGL refuses a context still current elsewhere."""
    if os.environ.get("MUJOCO_GL", "").lower() == "egl":
        from mujoco import egl  # loaded by mujoco already when MUJOCO_GL=egl; absent elsewhere

        if egl.EGL_DISPLAY is not None:
            none = egl.EGL.EGL_NO_SURFACE
            egl.EGL.eglMakeCurrent(egl.EGL_DISPLAY, none, none, egl.EGL.EGL_NO_CONTEXT)


def _renderer(model: mujoco.MjModel, cam: CameraSpec, where: str) -> mujoco.Renderer:
    try:
        return mujoco.Renderer(model, cam.height, cam.width)
    except Exception as exc:  # no GL backend (MUJOCO_GL off, or one that cannot work here: gl.settle)
        why = gl.render_problem(exc)
        raise ValueError(f"{where}: cannot render camera {cam.name!r}: {why}; {gl.FIX}") from exc


def _geom_tints(model: mujoco.MjModel, v: VisualShift) -> np.ndarray | None:
    """Per geom its RGB multiplier: floor (world-body geoms), target (named target*), arm (the rest)."""
    if v.floor_tint == v.arm_tint == v.target_tint == (1.0, 1.0, 1.0):
        return None
    tints = np.empty((model.ngeom, 3), dtype=np.float32)
    for g in range(model.ngeom):
        body = int(model.geom_bodyid[g])
        names = (
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or "",
            mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, body) or "",
        )
        if any(n.startswith("target") for n in names):
            tints[g] = v.target_tint
        elif body == 0:
            tints[g] = v.floor_tint
        else:
            tints[g] = v.arm_tint
    return tints


def _rotation(yaw_deg: float, pitch_deg: float, glcam: mujoco.MjvGLCamera) -> np.ndarray:
    """Yaw about the world z axis, then pitch about the camera's right axis (Rodrigues)."""

    def about(axis: np.ndarray, deg: float) -> np.ndarray:
        norm = float(np.linalg.norm(axis))
        if deg == 0 or norm == 0:
            return np.eye(3)
        k = axis / norm
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        a = math.radians(deg)
        return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx

    yaw = about(np.array([0.0, 0.0, 1.0]), yaw_deg)
    right = np.cross(yaw @ np.asarray(glcam.forward), yaw @ np.asarray(glcam.up))
    return about(right, pitch_deg) @ yaw


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges replicated: the soft focus of a cheap lens."""
    k = 2 * radius + 1
    padded = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    csum = padded.cumsum(axis=0).cumsum(axis=1)
    csum = np.pad(csum, ((1, 0), (1, 0), (0, 0)))
    h, w = img.shape[:2]
    total = csum[k : k + h, k : k + w] - csum[:h, k : k + w] - csum[k : k + h, :w] + csum[:h, :w]
    return total / (k * k)
