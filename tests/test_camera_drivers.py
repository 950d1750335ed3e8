"""Simulator drivers with named cameras (robot_wsrl.sim.camera, camera_tasks, gym/dmc drivers, make_driver).

The suite runs with MUJOCO_GL=disable, and mujoco picks its GL backend when imported, so every check that
renders runs in a subprocess with MUJOCO_GL=egl (Mesa's software EGL renders on a CPU-only machine) and
prints its findings as JSON; a machine without EGL skips those checks with the reason. What needs no
rendering (request parsing, bad input, the task's state, the expert, presets) runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import mujoco
import numpy as np
import pytest
from helpers import RENDER_TIMEOUT_S, egl_env

from robot_wsrl.core.spec import CameraSpec
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.sim.camera import _box_blur, parse_cameras
from robot_wsrl.sim.camera_tasks import SUCCESS_RADIUS_M, CameraTaskDriver
from robot_wsrl.sim.shift import (
    SHIFT_DIR,
    VisualShift,
    load_shift_preset,
    normalise_preset,
    parse_simple_yaml,
)


def render(code: str) -> Any:
    """Run `code` (which prints one JSON line last) with MUJOCO_GL=egl; its decoded output."""
    env = egl_env()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- camera requests and bad input (no rendering) -----


def test_camera_requests_parse_into_specs() -> None:
    assert parse_cameras("top:84x84", where="t") == (CameraSpec("top", 84, 84),)
    assert parse_cameras("a:64x48+b_2:8x16", where="t") == (CameraSpec("a", 64, 48), CameraSpec("b_2", 8, 16))


@pytest.mark.parametrize(
    ("request_text", "problem"),
    [
        ("top", "expected NAME:HEIGHTxWIDTH like top:84x84"),
        ("top:84", "'top:84': expected NAME:HEIGHTxWIDTH"),
        ("top:84x", "expected NAME:HEIGHTxWIDTH"),
        ("top:ax84", "expected NAME:HEIGHTxWIDTH"),
        (":84x84", "expected NAME:HEIGHTxWIDTH"),
        ("top:0x84", "outside 1..1024"),
        ("top:84x4096", "outside 1..1024"),
        ("top:8x8+top:8x8", "unique"),
        ("9lives:8x8", "must be 1-32 characters"),
        ("state:8x8", "not be 'state'"),
    ],
)
def test_bad_camera_requests_say_what_is_expected(request_text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="driver 'gym:Reacher-v5@") as info:
        make_driver(f"gym:Reacher-v5@{request_text}")
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("null@top:84x84", "cannot render cameras"),
        ("emulated:tcp://127.0.0.1:1@top:84x84", "cannot render cameras"),
        ("cam:pusher", "no camera task 'pusher': the camera tasks are ['reacher']"),
        ("dmc:cartpole@fixed:8x8", "use dmc:DOMAIN-TASK"),
        ("gym:Hopper-v5@nope:8x8", "no camera 'nope'; this simulator's cameras are ['track']"),
        ("cam:reacher@side:8x8", "no camera 'side'; this simulator's cameras are ['top']"),
        ("dmc:cartpole-swingup@nope:8x8", "cameras are ['fixed', 'lookatcart']"),
    ],
)
def test_camera_requests_a_driver_cannot_serve_are_one_clear_error(name: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        make_driver(name)
    assert problem in str(info.value)


def test_rendering_without_a_gl_backend_says_how_to_get_one() -> None:
    assert os.environ["MUJOCO_GL"] == "disable"  # conftest: the suite itself never renders
    with pytest.raises(ValueError, match=r"cannot render camera 'top'.*MUJOCO_GL=egl"):
        make_driver("cam:reacher")
    with pytest.raises(ValueError, match=r"cannot render camera 'track'.*MUJOCO_GL=egl"):
        make_driver("gym:Hopper-v5@track:84x84")


def test_a_dmc_driver_takes_no_shift_preset() -> None:
    with pytest.raises(ValueError, match="gym:\\* and cam:\\* drivers only"):
        make_driver("dmc:cartpole-swingup", shift_preset="real")


# ----- the reacher task without its camera: state layout, success, the expert -----


@pytest.fixture()
def blind_reacher() -> Iterator[CameraTaskDriver]:
    """The task without its camera (renders nothing): what the state and the expert are."""
    driver = CameraTaskDriver(seed=0, cameras=())
    yield driver
    driver.close()


def test_reacher_state_hides_the_target(blind_reacher: CameraTaskDriver) -> None:
    d = blind_reacher
    assert d.spec.name == "cam:reacher" and d.spec.obs_dim == 8 and d.spec.act_dim == 2
    state, info = d.reset(seed=3)
    q, qd = d.data.qpos[:2], d.data.qvel[:2]
    tip = d.data.body("fingertip").xpos[:2]
    expected = np.concatenate([np.cos(q), np.sin(q), qd, tip]).astype(np.float32)
    np.testing.assert_allclose(state, expected, atol=1e-6)
    assert info["success"] == (d.distance() < SUCCESS_RADIUS_M)
    # the same arm pose with the target elsewhere is the same state: only the camera can tell them apart
    gym_before = d.env.unwrapped._get_obs()
    d.data.qpos[2:] = -d.data.qpos[2:]
    mujoco.mj_forward(d.model, d.data)
    gym_after = d.env.unwrapped._get_obs()
    assert not np.allclose(gym_after[4:6], gym_before[4:6])  # gymnasium's own observation does reveal it
    np.testing.assert_array_equal(d._state(gym_after), d._state(gym_before))


def test_reacher_success_is_the_fingertip_within_5_cm(blind_reacher: CameraTaskDriver) -> None:
    d = blind_reacher
    d.reset(seed=1)
    result = d.step(np.zeros(2, dtype=np.float32))
    assert result.info["success"] == (result.info["distance"] < 0.05)
    assert result.info["distance"] == pytest.approx(
        float(np.linalg.norm(d.data.body("fingertip").xpos[:2] - d.data.body("target").xpos[:2])), abs=1e-6
    )


def test_the_scripted_expert_reaches_and_noise_degrades_it(blind_reacher: CameraTaskDriver) -> None:
    d = blind_reacher
    rng = np.random.default_rng(0)

    def episode(seed: int, noise: float) -> tuple[bool, float]:
        d.reset(seed=seed)
        ret, done = 0.0, False
        while not done:
            action = d.expert_action(noise, rng)
            assert action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
            r = d.step(action)
            ret, done = ret + r.reward, r.terminated or r.truncated
        assert r.truncated and not r.terminated  # Reacher ends on its 50-step limit only
        return bool(r.info["success"]), ret

    clean = [episode(100 + i, 0.0) for i in range(8)]
    noisy = [episode(100 + i, 3.0) for i in range(8)]
    assert all(ok for ok, _ in clean)
    assert np.mean([ret for _, ret in clean]) > -20.0
    assert np.mean([ret for _, ret in noisy]) < np.mean([ret for _, ret in clean]) - 30.0


# ----- presets: the visual section -----


def test_every_preset_has_a_valid_visual_section_and_reacher_presets_shift_the_camera() -> None:
    yaml = pytest.importorskip("yaml")
    for name in ("reacher_real_mild", "reacher_real"):
        text = (SHIFT_DIR / f"{name}.yaml").read_text()
        assert parse_simple_yaml(text) == yaml.safe_load(text)  # flow lists parse without PyYAML too
        preset = load_shift_preset(name)
        assert not preset["visual"].is_nominal and not preset["dynamics"].is_nominal
    assert load_shift_preset("reacher_real")["action_latency_steps"] == 1
    assert load_shift_preset("nominal")["visual"] == VisualShift()


@pytest.mark.parametrize(
    ("visual", "problem"),
    [
        ({"floor_tint": [1.0, 0.9]}, "visual: visual.floor_tint must be a list of 3 finite numbers"),
        ({"floor_tint": "red"}, "floor_tint must be a list of 3 numbers like [1, 0.9, 0.8]"),
        ({"arm_tint": [1.0, -1.0, 1.0]}, "arm_tint must be a list of 3 finite numbers"),
        ({"key_light_dir": [0, 0, 0]}, "key_light_dir"),
        ({"light_scale": -0.5}, "light_scale must be a finite number"),
        ({"pixel_noise_std": float("nan")}, "pixel_noise_std"),
        ({"blur_px": 1.5}, "blur_px must be an int in 0..8"),
        ({"blur_px": True}, "blur_px must be an int in 0..8"),
        ({"fog": 1}, "unknown visual keys ['fog']"),
    ],
)
def test_bad_visual_sections_are_refused_by_name(visual: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError) as info:
        normalise_preset({"visual": visual}, source="p.yaml")
    assert str(info.value).startswith("p.yaml: visual: ") and problem in str(info.value)


def test_box_blur_is_the_window_mean_with_replicated_edges() -> None:
    img = np.random.default_rng(0).uniform(0, 255, size=(7, 9, 3)).astype(np.float32)
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    naive = np.mean([padded[i : i + 7, j : j + 9] for i in range(3) for j in range(3)], axis=0)
    np.testing.assert_allclose(_box_blur(img, 1), naive, rtol=1e-5, atol=1e-3)


# ----- rendering (subprocess with MUJOCO_GL=egl) -----


def test_reacher_renders_its_top_camera_deterministically() -> None:
    out = render(
        """
        import json, numpy as np
        from robot_wsrl.robot.drivers import make_driver
        def frames(seed):
            d = make_driver("cam:reacher", seed=seed)
            obs, _ = d.reset(seed=seed)
            out = [obs]
            for _ in range(5):
                out.append(d.step(d.expert_action()).obs)
            spec, renderers = d.spec.to_dict(), len(d.cameras._renderers)
            d.close()
            return out, spec, renderers, len(d.cameras._renderers)
        a, spec, open_renderers, closed_renderers = frames(7)
        b, _, _, _ = frames(7)
        c, _, _, _ = frames(8)
        top = a[0]["top"].astype(int)
        red_, green, blue = top[..., 0], top[..., 1], top[..., 2]
        red = (red_ > 80) & (green < 0.35 * red_) & (blue < 0.35 * red_)  # the target, not the pink walls
        print(json.dumps({
            "keys": sorted(a[0]), "spec": spec, "shape": list(top.shape), "dtype": str(a[0]["top"].dtype),
            "same_seed_same_frames": all(np.array_equal(x["top"], y["top"]) for x, y in zip(a, b)),
            "other_seed_differs": not np.array_equal(a[0]["top"], c[0]["top"]),
            "arm_moves": float(np.abs(a[-1]["top"].astype(int) - top).mean()),
            "target_pixels": int(red.sum()),
            "renderers": [open_renderers, closed_renderers],
        }))
        """
    )
    assert out["keys"] == ["state", "top"]
    assert out["spec"]["cameras"] == [{"name": "top", "height": 84, "width": 84, "channels": 3}]
    assert out["shape"] == [84, 84, 3] and out["dtype"] == "uint8"
    assert out["same_seed_same_frames"] and out["other_seed_differs"]
    assert out["arm_moves"] > 0.5
    assert 8 <= out["target_pixels"] <= 100  # the red target is a visible blob (~17 px), not a dot
    assert out["renderers"] == [1, 0]


def test_gym_and_dmc_drivers_render_named_cameras_of_any_size() -> None:
    out = render(
        """
        import json
        from robot_wsrl.robot.drivers import make_driver
        shapes = {}
        for name in ("gym:Hopper-v5@track:64x48", "dmc:cartpole-swingup@fixed:48x64+lookatcart:32x32",
                     "cam:reacher@top:128x96"):
            d = make_driver(name, seed=0)
            obs, _ = d.reset(seed=0)
            step = d.step(d.spec.low * 0).obs
            shapes[name] = {k: [list(v.shape), str(v.dtype)] for k, v in step.items()}
            d.close()
        print(json.dumps(shapes))
        """
    )
    assert out["gym:Hopper-v5@track:64x48"] == {"state": [[11], "float32"], "track": [[64, 48, 3], "uint8"]}
    assert out["dmc:cartpole-swingup@fixed:48x64+lookatcart:32x32"] == {
        "state": [[5], "float32"],
        "fixed": [[48, 64, 3], "uint8"],
        "lookatcart": [[32, 32, 3], "uint8"],
    }
    assert out["cam:reacher@top:128x96"] == {"state": [[8], "float32"], "top": [[128, 96, 3], "uint8"]}


def test_shift_presets_change_what_the_camera_sees_deterministically_per_seed() -> None:
    out = render(
        """
        import json, numpy as np
        from robot_wsrl.robot.drivers import make_driver
        def first(preset, seed):
            d = make_driver("cam:reacher", seed=seed, shift_preset=preset)
            obs, _ = d.reset(seed=seed)
            d.close()
            return obs["top"].astype(int)
        nominal = first("nominal", 4)
        mild, real = first("reacher_real_mild", 4), first("reacher_real", 4)
        print(json.dumps({
            "mild": float(np.abs(mild - nominal).mean()), "real": float(np.abs(real - nominal).mean()),
            "real_again": bool(np.array_equal(real, first("reacher_real", 4))),
            "real_other_seed": float(np.abs(first("reacher_real", 5) - real).mean()),
        }))
        """
    )
    assert out["real"] > out["mild"] > 2.0  # both shift the picture, the stronger preset more
    assert out["real_again"]  # lighting, colours, pose, blur and the seed's pixel noise: all repeatable
    assert out["real_other_seed"] > 0.5


def test_a_camera_driver_built_in_one_thread_renders_and_closes_in_others() -> None:
    """The runner's loop and the gate's workers step a driver built elsewhere (EGL binds a context to the
    thread it is current in)."""
    out = render(
        """
        import json, threading, numpy as np
        from robot_wsrl.robot.drivers import make_driver
        d = make_driver("cam:reacher", seed=0)
        here, _ = d.reset(seed=0)
        seen, errors = [], []
        def step():
            try:
                obs, _ = d.reset(seed=0)
                seen.append(bool(np.array_equal(obs["top"], here["top"])))
                d.step(np.zeros(2, np.float32))
            except Exception as exc:
                errors.append(repr(exc))
        for _ in range(2):
            t = threading.Thread(target=step); t.start(); t.join()
        t = threading.Thread(target=d.close); t.start(); t.join()
        print(json.dumps({"seen": seen, "errors": errors, "open": len(d.cameras._renderers)}))
        """
    )
    assert out == {"seen": [True, True], "errors": [], "open": 0}


def test_every_visual_knob_changes_the_picture() -> None:
    out = render(
        """
        import json, numpy as np
        from robot_wsrl.sim.camera_tasks import CameraTaskDriver
        from robot_wsrl.sim.shift import VisualShift
        knobs = {
            "light_scale": 0.5, "key_light": 0.5, "key_light_dir": (1.0, 0.0, -0.2),
            "floor_tint": (1.0, 0.5, 0.5), "arm_tint": (1.0, 0.2, 0.2), "target_tint": (0.2, 1.0, 1.0),
            "camera_offset_m": (0.03, 0.0, 0.0), "camera_yaw_deg": 10.0, "camera_pitch_deg": 5.0,
            "pixel_noise_std": 5.0, "blur_px": 1,
        }
        def frame(**visual):
            d = CameraTaskDriver(seed=0, visual=VisualShift(**visual))
            obs, _ = d.reset(seed=0)
            d.close()
            return obs["top"].astype(int)
        nominal = frame()
        changed = {}
        for name, value in knobs.items():
            extra = {"key_light": 0.5} if name == "key_light_dir" else {}
            base = frame(**extra) if extra else nominal
            changed[name] = float(np.abs(frame(**extra, **{name: value}) - base).mean())
        print(json.dumps(changed))
        """
    )
    assert {name: change > 0.05 for name, change in out.items()} == dict.fromkeys(out, True), out
