"""The emulated robot over loopback ZeroMQ: wire format, executed actions, latency, drops, link loss.

Servers run in a thread with realtime=False unless a test is about processes or pacing; every server,
client and subprocess is cleaned up by a fixture finalizer and every wait has a timeout.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from robot_wsrl.core.driver import Driver, DriverFault
from robot_wsrl.robot.drivers.emulated_robot import EmulatedRobotDriver
from robot_wsrl.sim.emulated_robot import EmulatedRobotProcess, EmulatedRobotServer, spawn_emulated_robot
from robot_wsrl.sim.emulated_wire import ProtocolError, decode, encode
from robot_wsrl.sim.gym_mujoco import GymMujocoDriver

ACTIONS = (np.random.default_rng(5).uniform(-1.5, 1.5, size=(30, 3))).astype(np.float32)


@pytest.fixture
def make_server() -> Iterator[Callable[..., EmulatedRobotServer]]:
    """Start servers in threads; stop and join them all at the end."""
    started: list[tuple[EmulatedRobotServer, threading.Thread]] = []

    def start(**kwargs: Any) -> EmulatedRobotServer:
        kwargs.setdefault("realtime", False)
        kwargs.setdefault("seed", 0)
        server = EmulatedRobotServer("Hopper-v5", **kwargs)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.stop()
        thread.join(timeout=5.0)
        assert not thread.is_alive()


@pytest.fixture
def connect() -> Iterator[Callable[..., EmulatedRobotDriver]]:
    drivers: list[EmulatedRobotDriver] = []

    def make(endpoint: str, **kwargs: Any) -> EmulatedRobotDriver:
        d = EmulatedRobotDriver(endpoint, **kwargs)
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.close()


@pytest.fixture
def spawned() -> Iterator[Callable[..., tuple[EmulatedRobotProcess, str]]]:
    procs: list[EmulatedRobotProcess] = []

    def spawn(*args: Any, **kwargs: Any) -> tuple[EmulatedRobotProcess, str]:
        proc, endpoint = spawn_emulated_robot(*args, startup_timeout_s=30.0, **kwargs)
        procs.append(proc)
        return proc, endpoint

    yield spawn
    for proc in procs:
        proc.stop(timeout_s=5.0)
        assert not proc.alive()


@pytest.fixture
def raw_socket() -> Iterator[Callable[[str], zmq.Socket]]:
    socks: list[zmq.Socket] = []

    def make(endpoint: str) -> zmq.Socket:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(linger=0)


def local_rollout(seed: int, actions: np.ndarray) -> np.ndarray:
    d = GymMujocoDriver("Hopper-v5")
    try:
        out = [d.reset(seed=seed)[0]]
        for a in actions:
            r = d.step(a)
            out.append(r.obs)
            if r.terminated or r.truncated:
                break
        return np.stack(out)
    finally:
        d.close()


def remote_rollout(d: EmulatedRobotDriver, seed: int, actions: np.ndarray) -> np.ndarray:
    out = [d.reset(seed=seed)[0]]
    for a in actions:
        r = d.step(a)
        out.append(r.obs)
        if r.terminated or r.truncated:
            break
    return np.stack(out)


def request(
    sock: zmq.Socket, header: dict[str, Any], arrays: list[np.ndarray] | None = None
) -> list[bytes] | None:
    sock.send_multipart(encode(header, arrays or []))
    if not sock.poll(2000):
        return None
    return sock.recv_multipart()


# ------------------------------------------------------------------------------------------------- wire


def test_wire_round_trip_and_refusals() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    header, arrays = decode(encode({"type": "x", "n": 1}, [a]))
    assert header["type"] == "x" and header["n"] == 1
    np.testing.assert_array_equal(arrays[0], a)
    frames = encode({"type": "x"}, [a])
    with pytest.raises(ProtocolError, match="bytes"):
        decode([frames[0], frames[1][:-4]])
    with pytest.raises(ProtocolError, match="buffers"):
        decode(frames[:1])
    bad_dtype = msgpack.packb({"v": 1, "arrays": [{"dtype": "object", "shape": [1]}]})
    with pytest.raises(ProtocolError, match="float32"):
        decode([bad_dtype, b"\x00" * 8])
    with pytest.raises(ProtocolError, match="version"):
        decode([msgpack.packb({"v": 99})])
    with pytest.raises(ProtocolError):
        decode([b"\x80\x04\x95\x10\x00\x00\x00"])  # a pickle stream is just a bad header


def test_server_survives_malformed_requests(
    make_server: Callable[..., EmulatedRobotServer], raw_socket
) -> None:
    server = make_server()
    sock = raw_socket(server.endpoint)
    for bad in ([b"\x80\x04\x95garbage"], [msgpack.packb({"v": 1, "type": "step"})], [b"\xc1"]):
        sock.send_multipart(bad)
        assert sock.poll(2000)
        header, _ = decode(sock.recv_multipart())
        assert header["ok"] is False and header["kind"] == "protocol"
    reply = request(sock, {"type": "ping", "client": "raw", "seq": 0})
    assert reply is not None and decode(reply)[0]["ok"] is True


def test_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmulatedRobotServer("Hopper-v5", endpoint="tcp://0.0.0.0:0")


# -------------------------------------------------------------------------------------------- behaviour


def test_spec_shapes_and_executed_action(make_server, connect) -> None:
    server = make_server()
    d = connect(server.endpoint)
    assert isinstance(d, Driver)
    assert d.spec == server.spec and d.spec.obs_dim == 11 and d.spec.act_dim == 3
    assert d.spec.control_period_s == pytest.approx(0.008)
    obs, info = d.reset(seed=1)
    assert obs.shape == (11,) and obs.dtype == np.float32 and isinstance(info, dict)
    r = d.step(np.array([2.0, -3.0, 0.5]))
    assert r.obs.shape == (11,) and r.obs.dtype == np.float32 and r.executed_action.dtype == np.float32
    np.testing.assert_array_equal(r.executed_action, np.array([1.0, -1.0, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(r.executed_action, r.info["applied_ctrl"])  # what the physics got
    np.testing.assert_array_equal(r.executed_action, r.info["commanded_action"])


def test_nominal_robot_matches_the_local_simulator(make_server, connect) -> None:
    d = connect(make_server(preset="nominal").endpoint)
    np.testing.assert_array_equal(remote_rollout(d, 3, ACTIONS), local_rollout(3, ACTIONS))


def test_terminated_and_truncated_cross_the_wire(make_server, connect) -> None:
    d = connect(make_server(max_episode_steps=4).endpoint)
    d.reset(seed=0)
    ends = [d.step(np.zeros(3)) for _ in range(4)]
    assert ends[-1].truncated and not ends[-1].terminated
    with pytest.raises(RuntimeError, match="reset"):
        d.step(np.zeros(3))
    d2 = connect(make_server().endpoint)
    d2.reset(seed=0)
    for _ in range(100):
        r = d2.step(np.array([1.0, -1.0, 1.0]))
        if r.terminated or r.truncated:
            break
    assert r.terminated and not r.truncated


def test_bad_commands_are_refused_before_the_wire(make_server, connect) -> None:
    server = make_server()
    d = connect(server.endpoint)
    d.reset()
    with pytest.raises(ValueError, match="shape"):
        d.step(np.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        d.step(np.array([np.nan, 0, 0]))
    assert d.ping()["steps"] == 0


def test_action_latency_applies_the_command_from_k_ticks_ago(make_server, connect) -> None:
    d = connect(make_server(action_latency_steps=2).endpoint)
    d.reset(seed=0)
    commands = np.clip(ACTIONS[:8], -1, 1)
    for t, a in enumerate(commands):
        r = d.step(a)
        expected = commands[t - 2] if t >= 2 else np.zeros(3, dtype=np.float32)
        np.testing.assert_array_equal(r.executed_action, expected)
        np.testing.assert_array_equal(r.executed_action, r.info["applied_ctrl"])
        np.testing.assert_array_equal(r.info["commanded_action"], a)


def test_safe_stop_discards_pending_commands(make_server, connect) -> None:
    d = connect(make_server(action_latency_steps=2).endpoint)
    d.reset(seed=0)
    d.step(np.full(3, 0.7))
    d.step(np.full(3, 0.9))
    d.safe_stop()
    r = d.step(np.full(3, 0.1))
    np.testing.assert_array_equal(r.executed_action, np.zeros(3))  # not the stale 0.7
    assert d.ping()["safe_stop_count"] == 1 and d.safe_stop_count == 1


def test_preset_shift_and_sensor_noise_reach_the_robot(make_server, connect) -> None:
    real = connect(
        make_server(preset="real", drop_prob=0.0, action_latency_steps=0, sensor_noise_std=0.0).endpoint
    )
    assert real.server_params["dynamics"]["body_mass_scale"] == pytest.approx(1.25)
    shifted = remote_rollout(real, 3, ACTIONS[:15])
    nominal = local_rollout(3, ACTIONS[:15])
    np.testing.assert_array_equal(shifted[0], nominal[0])
    n = min(len(shifted), len(nominal))
    assert np.max(np.abs(shifted[:n] - nominal[:n])) > 1e-3
    noisy = connect(make_server(sensor_noise_std=0.05).endpoint)
    diff = remote_rollout(noisy, 3, ACTIONS[:10]) - local_rollout(3, ACTIONS[:10])
    assert 0.03 < diff.std() < 0.07


def test_dropped_packets_are_retried_and_never_executed_twice(make_server, connect) -> None:
    server = make_server(drop_prob=0.2, seed=0)  # seed 0: several drops, never two in a row
    d = connect(server.endpoint, timeout_s=0.1, retries=1)
    remote = remote_rollout(d, 3, ACTIONS[:20])
    stats = d.ping()
    assert stats["dropped"] >= 2 and d.retries_used >= stats["dropped"]
    np.testing.assert_array_equal(remote, local_rollout(3, ACTIONS[:20]))  # no step applied twice or lost


def test_repeated_seq_is_answered_from_cache(make_server, raw_socket) -> None:
    server = make_server()
    sock = raw_socket(server.endpoint)
    client = uuid.uuid4().hex
    assert request(sock, {"type": "reset", "client": client, "seq": 1, "seed": 0}) is not None
    step = {"type": "step", "client": client, "seq": 2}
    first = request(sock, step, [np.zeros(3, np.float32)])
    again = request(sock, {**step, "attempt": 1}, [np.zeros(3, np.float32)])
    assert first is not None and first == again
    assert server.stats["steps"] == 1 and server.stats["duplicates"] == 1
    sock.send_multipart(encode({"type": "step", "client": client, "seq": 1}, [np.zeros(3, np.float32)]))
    assert not sock.poll(200)  # stale: ignored


def test_lost_link_raises_driver_fault_within_deadline(make_server, connect) -> None:
    server = make_server()
    d = connect(server.endpoint, timeout_s=0.1, retries=1)
    d.reset()
    server.stop()
    time.sleep(0.2)
    t0 = time.perf_counter()
    with pytest.raises(DriverFault, match="link lost"):
        d.step(np.zeros(3))
    assert time.perf_counter() - t0 < d.worst_case_s + 0.3


# ------------------------------------------------------------------------------------------- processes


def test_spawned_robot_paces_in_real_time_and_stops_cleanly(spawned, connect) -> None:
    proc, endpoint = spawned("Hopper-v5", "nominal", seed=0)
    d = connect(endpoint, timeout_s=0.5)
    assert d.server_realtime
    d.reset(seed=0)
    n = 25
    t0 = time.perf_counter()
    for _ in range(n):
        d.step(np.zeros(3))
    elapsed = time.perf_counter() - t0
    period = d.spec.control_period_s
    assert 0.9 * n * period <= elapsed <= 4 * n * period + 0.5
    assert proc.stop(timeout_s=5.0) == 0 and not proc.alive()


def test_killed_robot_raises_driver_fault_within_deadline(spawned, connect) -> None:
    proc, endpoint = spawned("Hopper-v5", "real", seed=0, realtime=False, drop_prob=0.0)
    d = connect(endpoint, timeout_s=0.2, retries=1)
    d.reset(seed=0)
    d.step(np.zeros(3))
    proc.kill()
    for call in (lambda: d.step(np.zeros(3)), d.safe_stop):
        t0 = time.perf_counter()
        with pytest.raises(DriverFault):
            call()
        assert time.perf_counter() - t0 < d.worst_case_s + 0.3


def test_the_emulated_driver_runs_without_the_simulator(
    make_server: Callable[..., EmulatedRobotServer],
) -> None:
    """The `emulated:` driver is for a robot image without the sim extra: it never imports the simulator."""
    server = make_server()
    code = (
        "import sys\n"
        "for name in ('gymnasium', 'mujoco', 'dm_control'):\n"
        "    sys.modules[name] = None  # any import of it now raises\n"
        "import numpy as np\n"
        "from robot_wsrl.robot.drivers import make_driver\n"
        f"driver = make_driver('emulated:{server.endpoint}', timeout_s=5.0)\n"
        "obs, _ = driver.reset(seed=0)\n"
        "result = driver.step(np.zeros(driver.spec.act_dim, dtype=np.float32))\n"
        "driver.close()\n"
        "print(driver.spec.name, obs.shape, result.obs.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "Hopper-v5" and server.stats["steps"] == 1
