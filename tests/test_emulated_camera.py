"""The emulated robot serving a camera task: raw uint8 frames on its wire, the driver's spec carries the
cameras, and a reply whose parts do not match that spec is refused by name.

The end-to-end checks spawn the robot with MUJOCO_GL=egl (the suite runs with MUJOCO_GL=disable and mujoco
picks its GL backend when imported); a machine without EGL skips them with the robot's own reason.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from robot_wsrl.core.driver import DriverFault
from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.drivers.emulated_robot import EmulatedRobotDriver
from robot_wsrl.sim.emulated_robot import EmulatedRobotProcess, EmulatedRobotServer, spawn_emulated_robot
from robot_wsrl.sim.emulated_wire import ProtocolError, decode, encode

CAM_SPEC = EnvSpec("cam:test", 3, 2, (-1.0, -1.0), (1.0, 1.0), 0.02, cameras=(CameraSpec("top", 6, 4),))
STARTUP_S = 120.0  # a loaded 2-core box importing gymnasium and starting EGL


# ----- the wire: raw frames -----


def test_frames_travel_as_raw_uint8_buffers() -> None:
    frame = np.random.default_rng(0).integers(0, 256, size=(84, 84, 3), dtype=np.uint8)
    state = np.arange(8, dtype=np.float32)
    msg = encode({"type": "reset", "seq": 0}, [state, frame])
    assert len(msg) == 3 and msg[2] == frame.tobytes()  # one frame, byte for byte: no per-pixel msgpack
    assert len(msg[0]) < 200  # the header only describes the buffers
    header, arrays = decode(msg)
    assert header["arrays"][1] == {"dtype": "uint8", "shape": [84, 84, 3]}
    assert arrays[1].dtype == np.uint8 and np.array_equal(arrays[1], frame) and arrays[1].flags.writeable
    assert arrays[0].dtype == np.float32 and np.array_equal(arrays[0], state)


@pytest.mark.parametrize(
    ("desc", "buffer", "problem"),
    [
        ({"dtype": "uint8", "shape": [84, 84, 3]}, b"\0" * (84 * 84 * 3 - 1), "bytes for uint8 shape"),
        ({"dtype": "uint8", "shape": [4096, 4096, 3]}, b"", "bytes for uint8 shape"),
        ({"dtype": "uint16", "shape": [2]}, b"\0" * 4, "only ['float32', 'uint8'] are accepted"),
        ({"dtype": ["uint8"], "shape": [2]}, b"\0" * 2, "only ['float32', 'uint8'] are accepted"),
    ],
)
def test_bad_frame_descriptions_are_protocol_errors(
    desc: dict[str, Any], buffer: bytes, problem: str
) -> None:
    header = msgpack.packb({"v": 1, "arrays": [desc]})
    with pytest.raises(ProtocolError) as info:
        decode([header, buffer])
    assert problem in str(info.value)


def test_the_robot_takes_float32_requests_only() -> None:
    ctx = zmq.Context()
    server = EmulatedRobotServer("InvertedPendulum-v5", seed=0, realtime=False, context=ctx)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(server.endpoint)
        sock.send_multipart(encode({"type": "step", "client": "c", "seq": 0}, [np.zeros(1, np.uint8)]))
        assert sock.poll(10_000)
        header, _ = decode(sock.recv_multipart())
        assert header["ok"] is False and header["kind"] == "protocol" and "float32" in header["error"]
        assert server.stats["steps"] == 0
    finally:
        sock.close(linger=0)
        server.stop()
        thread.join(10.0)
        ctx.term()


# ----- the driver: the spec carries the cameras, malformed replies are refused by part -----


Reply = Callable[[str], list[np.ndarray]]


@pytest.fixture()
def fake_robot() -> Iterator[Callable[[Reply], EmulatedRobotDriver]]:
    """A robot that answers `spec` with CAM_SPEC and reset/step with the arrays `reply(type)` gives."""
    ctx = zmq.Context()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    drivers: list[EmulatedRobotDriver] = []

    def start(reply: Reply) -> EmulatedRobotDriver:
        sock = ctx.socket(zmq.ROUTER)
        port = sock.bind_to_random_port("tcp://127.0.0.1")

        def serve() -> None:
            try:
                while not stop.is_set():
                    if not sock.poll(50):
                        continue
                    identity, *frames = sock.recv_multipart()
                    header, _ = decode(frames)
                    typ, seq = header["type"], header["seq"]
                    fields: dict[str, Any] = {"ok": True, "type": typ, "seq": seq}
                    if typ == "spec":
                        sock.send_multipart([identity, *encode({**fields, "spec": CAM_SPEC.to_dict()})])
                    else:
                        ends = {"reward": 0.0, "terminated": False, "truncated": False}
                        extra = ends if typ == "step" else {}
                        sock.send_multipart([identity, *encode({**fields, **extra}, reply(typ))])
            finally:
                sock.close(linger=0)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        driver = EmulatedRobotDriver(f"tcp://127.0.0.1:{port}", timeout_s=5.0, retries=0, context=ctx)
        drivers.append(driver)
        return driver

    try:
        yield start
    finally:
        for driver in drivers:
            driver.close()
        stop.set()
        for thread in threads:
            thread.join(10.0)
        ctx.term()


def _parts(frame: np.ndarray, *, action: bool) -> Reply:
    state = np.zeros(3, np.float32)
    return lambda typ: [state, frame, *([np.zeros(2, np.float32)] if typ == "step" and action else [])]


def test_the_driver_spec_carries_the_cameras_and_well_formed_frames_pass(fake_robot) -> None:
    frame = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    driver = fake_robot(_parts(frame, action=True))
    assert driver.spec == CAM_SPEC
    obs, _ = driver.reset(seed=0)
    assert set(obs) == {"state", "top"} and np.array_equal(obs["top"], frame)
    result = driver.step(np.zeros(2, np.float32))
    assert np.array_equal(result.obs["top"], frame) and result.obs["state"].dtype == np.float32


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (np.zeros((6, 4, 4), np.uint8), "part 'top' must be uint8 (6, 4, 3), got uint8 (6, 4, 4)"),
        (np.zeros((4, 6, 3), np.uint8), "part 'top' must be uint8 (6, 4, 3), got uint8 (4, 6, 3)"),
        (np.zeros((6, 4, 3), np.float32), "part 'top' must be uint8 (6, 4, 3), got float32 (6, 4, 3)"),
    ],
)
def test_a_frame_of_the_wrong_shape_or_dtype_is_refused_by_name(
    fake_robot, frame: np.ndarray, problem: str
) -> None:
    driver = fake_robot(_parts(frame, action=True))
    with pytest.raises(DriverFault) as info:
        driver.reset(seed=0)
    assert "emulated robot reset reply" in str(info.value) and problem in str(info.value)
    with pytest.raises(DriverFault, match=r"emulated robot step reply.*part 'top'"):
        driver.step(np.zeros(2, np.float32))


def test_a_reply_missing_its_frame_or_action_is_refused(fake_robot) -> None:
    state, action = np.zeros(3, np.float32), np.zeros(2, np.float32)
    driver = fake_robot(lambda typ: [state, action] if typ == "step" else [state])  # no frame
    with pytest.raises(DriverFault, match=r"1 observation arrays .* expected the parts \['state', 'top'\]"):
        driver.reset()
    with pytest.raises(DriverFault, match=r"1 observation arrays .* expected the parts \['state', 'top'\]"):
        driver.step(action)
    driver = fake_robot(_parts(np.zeros((6, 4, 3), np.uint8), action=False))
    with pytest.raises(DriverFault, match=r"executed action \[\(6, 4, 3\)\], expected float32 \(2,\)"):
        driver.step(action)


# ----- end to end: the camera robot in its own process -----


@pytest.fixture()
def spawn_camera_robot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Start cam:reacher robots rendering with EGL; skip (with the robot's reason) where EGL is missing."""
    monkeypatch.setenv("MUJOCO_GL", "egl")  # the robot's process; this one's mujoco is already imported
    procs: list[EmulatedRobotProcess] = []

    def spawn(preset: str) -> str:
        with tempfile.TemporaryFile() as err:
            try:
                proc, endpoint = spawn_emulated_robot(
                    "cam:reacher", preset, seed=0, realtime=False, startup_timeout_s=STARTUP_S, stderr=err
                )
            except RuntimeError:
                err.seek(0)
                why = err.read().decode(errors="replace").strip()
                if "cannot render camera" in why:
                    pytest.skip(f"no headless OpenGL (MUJOCO_GL=egl) here: {why.splitlines()[-1]}")
                raise AssertionError(why) from None
        procs.append(proc)
        return endpoint

    try:
        yield spawn
    finally:
        for proc in procs:
            proc.stop()


def test_the_camera_robot_sends_shifted_frames_deterministically_per_seed(spawn_camera_robot) -> None:
    assert os.environ["MUJOCO_GL"] == "egl"
    nominal = make_driver(f"emulated:{spawn_camera_robot('nominal')}", timeout_s=30.0)
    real = make_driver(f"emulated:{spawn_camera_robot('reacher_real')}", timeout_s=30.0)
    try:
        assert nominal.spec.cameras == (CameraSpec("top", 84, 84),) and nominal.spec.obs_dim == 8
        assert real.spec == nominal.spec
        assert real.server_params["visual"]["pixel_noise_std"] > 0
        first, _ = real.reset(seed=5)
        again, _ = real.reset(seed=5)
        other, _ = real.reset(seed=6)
        plain, _ = nominal.reset(seed=5)
        assert first["top"].shape == (84, 84, 3) and first["top"].dtype == np.uint8
        assert np.array_equal(first["top"], again["top"])  # the seed decides the pixel noise too
        assert not np.array_equal(first["top"], other["top"])
        assert np.abs(first["top"].astype(int) - plain["top"].astype(int)).mean() > 2.0
        step = real.step(np.zeros(2, np.float32))
        assert set(step.obs) == {"state", "top"} and isinstance(step.info["success"], bool)
    finally:
        nominal.close()
        real.close()
