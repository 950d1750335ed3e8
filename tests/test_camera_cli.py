"""Camera tasks from the command line, as a new user meets them: a MUJOCO_GL that cannot render is one line
naming it and the fix (exit 2) in every command that builds a camera driver, unset it renders headless with
EGL without GLFW's noise, a state task runs whatever MUJOCO_GL says, `link-runner --codec` for a camera the
driver lacks is refused before the robot moves, and --help lists the driver names the commands take.

mujoco reads MUJOCO_GL once, when imported, so each MUJOCO_GL case runs the command in a subprocess (the
suite itself runs with MUJOCO_GL=disable); robot_wsrl.sim.gl's choices are also checked in-process with
its library probe stubbed. Every subprocess and wait has a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from helpers import BALANCES, RENDER_TIMEOUT_S, FakeLearner, egl_env, free_port, write_linear_policy
from onnx import TensorProto, helper

from robot_wsrl.apps import link_runner, runner
from robot_wsrl.apps.errors import DEBUG_ENV
from robot_wsrl.bench.estop import write_policy
from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import PolicyMetadata, sha256_bytes
from robot_wsrl.sim import gl
from robot_wsrl.wire import keys, signing

DRIVER = "cam:reacher@top:24x24"
CAM_SPEC = EnvSpec("cam:reacher", 8, 2, (-1.0, -1.0), (1.0, 1.0), 0.02, cameras=(CameraSpec("top", 24, 24),))
STATE_SPEC = EnvSpec("null", 3, 1, (-1.0,), (1.0,), 0.02)
NO_DISPLAY = ("DISPLAY", "WAYLAND_DISPLAY", gl.KEPT, DEBUG_ENV)


def _env(mujoco_gl: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command run by a user on this (display-less) machine with `mujoco_gl`."""
    env = {k: v for k, v in (base or os.environ).items() if k not in (*NO_DISPLAY, gl.VAR)}
    return env if mujoco_gl is None else {**env, gl.VAR: mujoco_gl}


def _robot_wsrl(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "robot_wsrl.apps.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, env=env)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


def _camera_policy(directory: Path) -> Path:
    """A policy for `DRIVER` that needs no torch: mean = 0 * (obs, image brightness), log_std = -1."""
    nodes = [
        helper.make_node("Cast", ["top"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["mean4"], ["brightness"], axis=1),
        helper.make_node("Concat", ["obs", "brightness"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "zero"], ["mean"]),
        helper.make_node("Add", ["mean", "minus_one"], ["log_std"]),
    ]
    graph = helper.make_graph(
        nodes,
        "camera-policy",
        [
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("top", TensorProto.UINT8, ["batch", 24, 24, 3]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("mean", "log_std")],
        [
            helper.make_tensor("zero", TensorProto.FLOAT, [9, 2], [0.0] * 18),
            helper.make_tensor("minus_one", TensorProto.FLOAT, [], [-1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = PolicyMetadata(CAM_SPEC, 0, None, 0, "test").to_dict()
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.onnx").write_bytes(data)
    (directory / "policy.json").write_text(json.dumps({**meta, "sha256": sha256_bytes(data)}))
    return directory


# ----- MUJOCO_GL: one line and the fix, where the camera's renderer is made -----


def _gl_cases() -> list[tuple[str, str]]:
    cases = [
        ("foo", "MUJOCO_GL=foo is not an OpenGL backend mujoco knows"),
        ("glfw", "MUJOCO_GL=glfw needs a display and DISPLAY is not set"),
        ("disable", "MUJOCO_GL=disable turns rendering off"),
    ]
    if not gl._loadable("OSMesa"):  # the trial's case: osmesa named, libOSMesa not installed
        cases.append(("osmesa", "MUJOCO_GL=osmesa needs libOSMesa, which does not load here"))
    return cases


@pytest.mark.parametrize(("mujoco_gl", "problem"), _gl_cases(), ids=lambda v: v.split()[0])
def test_collect_names_a_mujoco_gl_that_cannot_render_and_the_fix(
    mujoco_gl: str, problem: str, tmp_path: Path
) -> None:
    argv = ["collect", "--driver", DRIVER, "--behaviour", "expert", "--transitions", "5"]
    line = _one_line(_robot_wsrl(_env(mujoco_gl), *argv, "--out", str(tmp_path / "data")))
    assert line.startswith(f"robot-wsrl collect: cam:reacher: cannot render camera 'top': {problem}")
    assert line.endswith(gl.FIX) and "set MUJOCO_GL=egl" in line
    assert not (tmp_path / "data" / "expert.npz").exists()


def test_runner_refuses_a_bogus_mujoco_gl_in_one_line_and_debug_shows_why(tmp_path: Path) -> None:
    policy = _camera_policy(tmp_path / "policy")
    argv = ["runner", "--policy", str(policy), "--driver", DRIVER, "--allow-unsigned", "--steps", "3"]
    argv += ["--state", str(tmp_path / "state"), "--json"]
    line = _one_line(_robot_wsrl(_env("foo"), *argv))
    assert line.startswith("robot-wsrl runner: cam:reacher: cannot render camera 'top': MUJOCO_GL=foo is not")
    debug = _robot_wsrl(_env("foo"), *argv, "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # --debug: the renderer's own error too
    assert "MUJOCO_GL=foo is not" in debug.stderr.strip().splitlines()[-1]


def test_a_state_task_runs_whatever_mujoco_gl_says(tmp_path: Path) -> None:
    """mujoco itself refuses to import with MUJOCO_GL=foo: a simulator that never renders ran into that."""
    policy = write_linear_policy(tmp_path / "policy", BALANCES).parent
    argv = ["runner", "--policy", str(policy), "--driver", "gym:InvertedPendulum-v5", "--allow-unsigned"]
    argv += ["--steps", "5", "--no-realtime", "--state", str(tmp_path), "--json"]
    done = _robot_wsrl(_env("foo"), *argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 5


def test_unset_mujoco_gl_renders_headless_with_egl_and_no_glfw_noise(tmp_path: Path) -> None:
    base = egl_env()  # skips where nothing renders headless
    argv = ["collect", "--driver", DRIVER, "--behaviour", "expert", "--transitions", "5"]
    done = _robot_wsrl(_env(None, base), *argv, "--out", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLFW" not in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "data" / "expert.npz").exists()


# ----- robot_wsrl.sim.gl's choices (in-process, the library probe stubbed) -----


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """As before mujoco's first import on a Linux machine without a display (all undone after the test)."""
    monkeypatch.delitem(sys.modules, "mujoco", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    for name in (*NO_DISPLAY, gl.VAR):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_unset_picks_egl_where_libegl_loads(fresh: pytest.MonkeyPatch) -> None:
    fresh.setattr(gl, "_loadable", lambda name: name == "EGL")
    gl.settle()
    assert os.environ[gl.VAR] == "egl" and gl.KEPT not in os.environ


def test_an_empty_value_is_unset_as_mujoco_reads_it(fresh: pytest.MonkeyPatch) -> None:
    fresh.setattr(gl, "_loadable", lambda name: name == "EGL")
    fresh.setenv(gl.VAR, "")
    gl.settle()
    assert os.environ[gl.VAR] == "egl" and gl.KEPT not in os.environ


def test_unset_without_egl_or_display_turns_rendering_off_and_says_why(fresh: pytest.MonkeyPatch) -> None:
    fresh.setattr(gl, "_loadable", lambda name: False)
    gl.settle()
    assert os.environ[gl.VAR] == "disable" and os.environ[gl.KEPT] == ""
    why = gl.render_problem(AttributeError("no GLContext"))
    assert why == "MUJOCO_GL is unset (GLFW, which needs a display) and libEGL does not load here"


def test_a_display_keeps_mujoco_s_own_default(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv("DISPLAY", ":0")
    fresh.setattr(gl, "_loadable", lambda name: True)
    gl.settle()
    assert gl.VAR not in os.environ and gl.KEPT not in os.environ


def test_a_child_process_keeps_the_reason_until_mujoco_gl_changes(fresh: pytest.MonkeyPatch) -> None:
    fresh.setattr(gl, "_loadable", lambda name: name == "EGL")
    fresh.setenv(gl.VAR, "foo")
    gl.settle()  # the parent
    assert (os.environ[gl.VAR], os.environ[gl.KEPT]) == ("disable", "foo")
    gl.settle()  # a child inherits both: its camera error still names what the user set
    assert "MUJOCO_GL=foo is not" in gl.render_problem(RuntimeError("x"))
    fresh.setenv(gl.VAR, "egl")  # a child told to use egl: the parent's reason no longer applies
    gl.settle()
    assert os.environ[gl.VAR] == "egl" and gl.KEPT not in os.environ


def test_nothing_changes_once_mujoco_is_imported(fresh: pytest.MonkeyPatch) -> None:
    fresh.setitem(sys.modules, "mujoco", sys)  # any module: mujoco has chosen its backend already
    fresh.setenv(gl.VAR, "foo")
    gl.settle()
    assert os.environ[gl.VAR] == "foo" and gl.KEPT not in os.environ


# ----- a policy on a driver it was not made for: the driver it needs -----


def test_runner_names_the_driver_a_camera_policy_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial's case: the camera policy on a state driver (nothing renders: refused before a step)."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    argv = ["--policy", str(_camera_policy(tmp_path / "policy")), "--driver", "gym:InvertedPendulum-v5"]
    argv += ["--allow-unsigned", "--steps", "3", "--no-realtime", "--json", "--state", str(tmp_path)]
    assert runner.cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robot-wsrl runner: "), lines
    assert "the policy expects camera 'top' 24x24x3 and state (8,) -> action (2,)" in lines[0]
    assert lines[0].endswith(f"run it with --driver {DRIVER}")


def test_runner_names_the_driver_a_state_policy_needs_on_a_camera_driver(tmp_path: Path) -> None:
    policy = write_linear_policy(tmp_path / "policy", BALANCES).parent
    argv = ["runner", "--policy", str(policy), "--driver", DRIVER, "--allow-unsigned", "--steps", "3"]
    line = _one_line(_robot_wsrl(egl_env(), *argv, "--state", str(tmp_path / "state"), "--json"))
    assert "cameras [] != expected ['top 24x24x3']" in line and "the policy expects state (4,)" in line
    assert line.endswith("run it with --driver gym:InvertedPendulum-v5")


# ----- link-runner --codec: a camera the driver lacks is refused before anything moves -----


def _link_runner(tmp_path: Path, policy: Path, driver: str, codec: str, env: dict[str, str]) -> str:
    """A live link-runner fed `policy` (signed) by a fake learner; the last line of its stderr."""
    keydir = tmp_path / "keys"
    keys.new_identity(keydir, "learner", "learner")
    message = signing.signed_policy_message(
        "learner",
        keys.load_signing_key(keydir, "learner"),
        (policy / "policy.onnx").read_bytes(),
        (policy / "policy.json").read_text(),
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    learner = FakeLearner(endpoint)
    learner.send(message)
    try:
        argv = ["link-runner", "--learner", endpoint, "--keys", str(keydir), "--plain", "--name", "robot1"]
        argv += ["--driver", driver, "--steps", "1000", "--no-lockstep", "--state", str(tmp_path / "state")]
        done = _robot_wsrl(env, *argv, "--codec", codec)
    finally:
        learner.close()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert learner.received_seq == -1  # not one transition: it never ran
    return done.stderr.strip().splitlines()[-1]


def test_link_runner_refuses_a_codec_for_a_camera_a_state_driver_lacks(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy", STATE_SPEC).parent
    line = _link_runner(tmp_path, policy, "null", "top=jpeg", _env("disable"))
    assert line.startswith("robot-wsrl link-runner: link codecs {'top': 'jpeg'}: ")
    assert line.endswith("null has no camera 'top'; its cameras: none")


def test_link_runner_refuses_a_codec_for_a_camera_the_camera_driver_lacks(tmp_path: Path) -> None:
    env = egl_env()  # skips where nothing renders headless
    line = _link_runner(tmp_path, _camera_policy(tmp_path / "policy"), DRIVER, "side=jpeg", env)
    assert line.startswith("robot-wsrl link-runner: link codecs {'side': 'jpeg'}: ")
    assert line.endswith("cam:reacher has no camera 'side'; its cameras: top")


def test_link_runner_names_the_driver_the_learners_policy_needs(tmp_path: Path) -> None:
    policy = write_linear_policy(tmp_path / "policy", BALANCES).parent
    line = _link_runner(tmp_path, policy, DRIVER, "top=raw", egl_env())
    assert line.startswith("robot-wsrl link-runner: ") and "the policy expects state (4,)" in line
    assert line.endswith("run it with --driver gym:InvertedPendulum-v5")


# ----- --help: the driver names the commands take -----


@pytest.mark.parametrize("command", [runner, link_runner], ids=["runner", "link-runner"])
def test_help_lists_every_driver_name_and_camera_requests(command: object) -> None:
    text = " ".join(command.parser().format_help().split())  # type: ignore[attr-defined]
    assert "gym:ENV_ID | dmc:DOMAIN-TASK | cam:TASK | null | emulated:ENDPOINT" in text
    assert "@NAME:HxW camera requests, e.g. cam:reacher@top:84x84" in text
    with pytest.raises(ValueError) as refused:  # make_driver's own error lists the same names
        make_driver("cam")
    assert "gym:ENV_ID, dmc:DOMAIN-TASK, cam:TASK, null or emulated:ENDPOINT" in str(refused.value)
    assert "@NAME:HxW camera requests" in str(refused.value)
