"""Bad input on every bound socket of the product: the learner's ROUTER, the runner's control ROUTER and
the emulated robot's ROUTER, each served by its real server on a thread and reached over loopback.

Hypothesis (derandomised, bounded, no deadline) draws malformed, truncated, oversized, wrong-version,
wrong-type, wrong-field-type, huge-shape, empty, extra-frame and foreign-identity messages from one
valid message of each socket's protocol. Every draw must be refused and counted exactly once by the
server's reject counter, change none of the server's state, and leave it answering a valid request.
A peer whose CURVE key is unknown gets nothing through. Every wait has a deadline.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from helpers import SMALL_AGENT, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.sim.emulated_robot import EmulatedRobotServer
from robot_wsrl.sim.emulated_wire import MESSAGE_TYPES as ROBOT_TYPES
from robot_wsrl.sim.emulated_wire import encode as robot_encode
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.protocol import (
    MESSAGE_TYPES,
    Ack,
    Command,
    Credit,
    HeartbeatMessage,
    Reply,
    Status,
    StatusRequest,
    Transitions,
    decode,
    encode,
)

WAIT_S = 10.0
EXAMPLES = 60
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SPEC = EnvSpec("fuzz", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.01)
LOOPBACK = "tcp://127.0.0.1:0"


def request(sock: zmq.Socket, frames: list[bytes], answer: Callable[[list[zmq.Frame]], bool]) -> None:
    """Send `frames` and wait for a reply that `answer` accepts (other replies are skipped)."""
    assert transport.send_frames(sock, frames, WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        reply = transport.recv_frames(sock, deadline - time.monotonic())
        if reply is not None and answer(reply):
            return
    raise AssertionError("no answer to a valid request")


def is_a(kind: type) -> Callable[[list[zmq.Frame]], bool]:
    def check(frames: list[zmq.Frame]) -> bool:
        try:
            return isinstance(decode(frames), kind)
        except ValueError:
            return False

    return check


# ----- mutations of a valid message: each result is invalid by construction -----

INT64 = st.integers(-(2**63), 2**63 - 1)
NOT_INT = st.one_of(st.none(), st.text(max_size=8), st.floats(), st.lists(INT64, max_size=2))
NOT_TEXT = st.one_of(st.none(), INT64, st.floats(), st.binary(max_size=8), st.lists(st.text(), max_size=2))
HUGE_SHAPE = st.lists(
    st.sampled_from([2**20, 2**31 - 1, 2**31, 2**40, 2**63 - 1, 2**64 - 1, -1]), min_size=1, max_size=2
)


@dataclass(frozen=True)
class Wire:
    """One socket's message format: how to take a valid message apart and which header values are wrong."""

    header_keys: dict[str, st.SearchStrategy[Any]]  # header key -> values that key must never accept
    body_keys: dict[str, st.SearchStrategy[Any]]  # body field -> wrong values ("body" in the header)
    array_dtypes: tuple[str, ...]  # dtypes the descriptors may not claim (wrong or unknown)
    optional: tuple[str, ...] = ()  # header keys with a default: leaving them out is no error
    strict_keys: bool = True  # an unknown header key is an error


def mutate(valid: list[bytes], wire: Wire, data: st.DataObject) -> list[bytes]:
    """A mutation of `valid` that its server must refuse: which one is drawn."""
    header = msgpack.unpackb(valid[0], raw=False)
    arrays = valid[1:]
    kinds = ["garbage", "empty", "truncated", "header_value", "header_missing", "extra_frame", "not_a_map"]
    kinds += ["header_extra"] if wire.strict_keys else []
    kinds += ["body_value"] if wire.body_keys else []
    kinds += ["huge_shape", "array_dtype", "missing_frame"] if arrays else []
    kind = data.draw(st.sampled_from(kinds), "mutation")
    pack = msgpack.packb
    if kind == "garbage":  # random bytes; a valid header from random bytes is not a realistic draw
        return data.draw(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4))
    if kind == "empty":
        return [b""] * data.draw(st.integers(1, 3))
    if kind == "truncated":
        if arrays and data.draw(st.booleans(), "cut an array"):
            index = data.draw(st.integers(1, len(valid) - 1))
            frame = valid[index]
            return [*valid[:index], frame[: data.draw(st.integers(0, len(frame) - 1))], *valid[index + 1 :]]
        return [valid[0][: data.draw(st.integers(0, len(valid[0]) - 1))], *arrays]
    if kind == "header_value":
        key = data.draw(st.sampled_from(sorted(wire.header_keys)))
        return [pack({**header, key: data.draw(wire.header_keys[key], key)}), *arrays]
    if kind == "header_missing":
        key = data.draw(st.sampled_from(sorted(set(wire.header_keys) - set(wire.optional))))
        return [pack({k: v for k, v in header.items() if k != key}), *arrays]
    if kind == "header_extra":
        return [pack({**header, "extra": data.draw(INT64)}), *arrays]
    if kind == "body_value":
        key = data.draw(st.sampled_from(sorted(wire.body_keys)))
        body = {**header["body"], key: data.draw(wire.body_keys[key], key)}
        return [pack({**header, "body": body}), *arrays]
    if kind == "not_a_map":
        return [pack(data.draw(st.lists(INT64, max_size=3))), *arrays]
    if kind == "extra_frame":
        return [*valid, data.draw(st.binary(max_size=32))]
    descriptors = [dict(d) for d in header["arrays"]]
    index = data.draw(st.integers(0, len(descriptors) - 1), "array")
    if kind == "huge_shape":
        descriptors[index]["shape"] = data.draw(HUGE_SHAPE, "shape")
        return [pack({**header, "arrays": descriptors}), *arrays]
    if kind == "array_dtype":
        wrong = [d for d in wire.array_dtypes if d != descriptors[index]["dtype"]]
        descriptors[index]["dtype"] = data.draw(st.sampled_from(wrong))
        return [pack({**header, "arrays": descriptors}), *arrays]
    return valid[:-1]  # missing_frame


# The project's protocol (robot_wsrl.wire.protocol): the learner and the control channel speak it.
PROTOCOL_WIRE = Wire(
    header_keys={
        "v": st.one_of(INT64.filter(lambda v: v != 1), NOT_INT),
        "type": st.one_of(st.text(max_size=12).filter(lambda t: t not in MESSAGE_TYPES), NOT_TEXT),
        "sender": st.one_of(NOT_TEXT, st.just(""), st.just("bad name!"), st.just("x" * 65)),
        "body": st.one_of(st.none(), INT64, st.lists(INT64, max_size=2)),
        "arrays": st.one_of(st.none(), INT64, st.text(max_size=4)),
    },
    body_keys={},  # per message type, below
    array_dtypes=("float64", "int64", "bool", "uint8", "float16", "object", ""),
)
TRANSITIONS_BODY = {
    "runner_id": st.one_of(NOT_TEXT, st.just("")),
    "episode_ids": st.one_of(st.none(), INT64, st.lists(st.text(max_size=2), min_size=1)),
    "first_seq": st.one_of(NOT_INT, st.integers(-(2**63), -1), st.integers(2**63, 2**64 - 1)),
    "count": st.one_of(NOT_INT, st.integers(-(2**63), -1)),
}
COMMAND_BODY = {
    "name": st.one_of(NOT_TEXT, st.sampled_from(["shutdown", "ESTOP", "", "estop "])),
    "args": st.one_of(st.none(), INT64, st.lists(INT64, max_size=2)),
    "ref": st.one_of(NOT_INT, st.integers(-(2**63), -1)),
}


def transitions(sender: str, runner_id: str | None = None, first_seq: int = 0, n: int = 3) -> Transitions:
    rng = np.random.default_rng(first_seq)
    return Transitions.make(
        runner_id or sender,
        first_seq,
        obs=rng.standard_normal((n, SPEC.obs_dim)),
        action=rng.uniform(-1, 1, (n, SPEC.act_dim)),
        reward=rng.standard_normal(n),
        next_obs=rng.standard_normal((n, SPEC.obs_dim)),
        terminated=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
        episode_id=np.zeros(n, np.int64),
        policy_version=np.zeros(n, np.int64),
        sender=sender,
    )


# ----- fixtures: keys, and each server on a thread -----


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys")
    keys.new_identity(path, "learner", "learner")
    keys.new_identity(path, "robot1", "runner")
    keys.new_identity(path, "console", "console")
    return path


def client(ctx: zmq.Context, endpoint: str, keydir: Path, name: str, server: str) -> zmq.Socket:
    return transport.secure_client(
        ctx,
        zmq.DEALER,
        endpoint,
        keys.load_curve_keys(keydir, name),
        keys.load_public_key(keydir, server),
    )


@dataclass
class Target:
    """A server under fuzz: a client socket of a known peer, the server's reject count and state."""

    sock: zmq.Socket
    rejected: Callable[[], int]
    state: Callable[[], Any]
    answers: Callable[[], None]  # a valid request is answered (raises otherwise)
    alive: Callable[[], bool]


def fuzz_one(target: Target, frames: list[bytes], before: Any, timeout_s: float = WAIT_S) -> None:
    """Send one bad message: counted exactly once, state unchanged, the server still up."""
    count = target.rejected()
    assert transport.send_frames(target.sock, frames, WAIT_S)
    wait_for(
        lambda: target.rejected() > count or not target.alive(), timeout_s, "the reject to be counted", 0.002
    )
    assert target.alive(), "the server died"
    time.sleep(0.001)  # a second count of the same message would show here (or at the next draw)
    assert target.rejected() == count + 1, frames
    assert target.state() == before, frames


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory, keydir: Path) -> Iterator[Target]:
    """A real Learner (no update: warmup never ends) serving its CURVE ROUTER on a thread."""
    from robot_wsrl.learn.agent import Agent
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.learner import Learner, LearnerOptions
    from robot_wsrl.learn.networks import build_networks
    from robot_wsrl.learn.training import save_training_checkpoint

    root = tmp_path_factory.mktemp("learner")
    cfg = compose_config("finetune", SMALL_AGENT)
    agent = Agent(build_networks(SPEC.obs_dim, SPEC.act_dim, cfg.agent), cfg.agent)
    checkpoint = save_training_checkpoint(root / "checkpoint.pt", agent, SPEC, cfg, 0, {})
    cfg = compose_config(
        "finetune",
        [
            *SMALL_AGENT,
            f"run.checkpoint={checkpoint}",
            "run.warmup_steps=1000000",
            "run.buffer_capacity=1000",
            f"out_dir={root / 'out'}",
            "device=cpu",
            "threads=1",
        ],
    )
    ctx = zmq.Context()
    sock = transport.secure_server(
        ctx,
        zmq.ROUTER,
        LOOPBACK,
        keys.load_curve_keys(keydir, "learner"),
        keys.load_public_keys(keydir, roles=("runner", "console")),
    )
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    server = Learner(
        cfg,
        sock,
        root / "out",
        keys.load_signing_key(keydir, "learner"),
        LearnerOptions(),
        secure=True,
        roles=keys.load_key_roles(keydir, ("runner", "console")),
    )
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    robot = client(ctx, endpoint, keydir, "robot1", "learner")
    console = client(ctx, endpoint, keydir, "console", "learner")

    def state() -> tuple[Any, ...]:
        return (
            server.transitions,
            len(server.buffer),
            server.log.records,
            server.dedup.watermark("robot1"),
            server.dedup.watermark("robot2"),
            server.version,
        )

    target = Target(
        robot,
        lambda: server.rejects.total,
        state,
        lambda: request(console, encode(StatusRequest("console")), is_a(Status)),
        thread.is_alive,
    )
    try:
        # robot1 is a known runner with data (a batch in and acknowledged), the console a known peer
        request(robot, encode(transitions("robot1")), is_a(Ack))
        target.answers()
        yield target
    finally:
        stop.set()
        thread.join(WAIT_S)
        server.close()
        transport.shutdown(ctx)


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory, keydir: Path) -> Iterator[Target]:
    """The runner's control channel (CURVE, console keys only) with an idle Runner attached."""
    from robot_wsrl.apps.options import bind_control
    from robot_wsrl.learn.checkpoint import build_actor
    from robot_wsrl.learn.export import export_policy
    from robot_wsrl.robot.control import ControlServer
    from robot_wsrl.robot.drivers.null import NullDriver
    from robot_wsrl.robot.policy import OnnxPolicy
    from robot_wsrl.robot.runner import Runner

    path = export_policy(build_actor(SPEC, [8, 8]), tmp_path_factory.mktemp("policy"), spec=SPEC)
    driver = NullDriver(SPEC.obs_dim, SPEC.act_dim, SPEC.control_period_s)
    runner = Runner(driver, OnnxPolicy.load(path, expected_spec=driver.spec))
    ctx = zmq.Context()
    sock = bind_control(ctx, LOOPBACK, "robot1", keydir, plain=False)
    server = ControlServer(sock, "robot1", secure=True, ctx=ctx)
    server.attach(runner)
    server.start()
    console = client(ctx, sock.getsockopt_string(zmq.LAST_ENDPOINT), keydir, "console", "robot1")

    def state() -> tuple[Any, ...]:
        status = server.status()
        return (runner.state, runner.latch.latched, driver.safe_stop_count, status["last_command"])

    try:
        yield Target(
            console,
            lambda: server.rejects.total,
            state,
            lambda: request(console, encode(StatusRequest("console")), is_a(Status)),
            server._thread.is_alive,
        )
    finally:
        server.close()
        transport.shutdown(ctx)


# ----- the learner's ROUTER -----


@FUZZ
@given(data=st.data())
def test_learner_refuses_and_counts_bad_transitions(learner: Target, data: st.DataObject) -> None:
    before = learner.state()
    wire = Wire(PROTOCOL_WIRE.header_keys, TRANSITIONS_BODY, PROTOCOL_WIRE.array_dtypes)
    fuzz_one(learner, mutate(encode(transitions("robot1", first_seq=100)), wire, data), before)


def test_learner_refuses_semantic_bad_input(learner: Target) -> None:
    """Well-formed messages with wrong content: foreign identities, NaN, broken sequences, an oversized
    batch, a header that disagrees with its arrays."""
    valid = transitions("robot1", first_seq=100)
    arrays = dict(zip([name for name, _, _ in Transitions.ARRAYS], valid.arrays(), strict=True))
    header = msgpack.unpackb(encode(valid)[0], raw=False)

    def reframed(**changes: np.ndarray) -> list[bytes]:
        frames = encode(valid)
        for name, value in changes.items():
            i = [n for n, _, _ in Transitions.ARRAYS].index(name)
            frames[1 + i] = value.tobytes()
        return frames

    nan_obs = arrays["obs"].copy()
    nan_obs[0, 0] = np.nan
    big = 16 * 2**20 // (4 * (2 * SPEC.obs_dim + SPEC.act_dim + 1)) + 10  # just over the 16 MiB limit
    cases = {
        "another runner's name": encode(transitions("robot2")),
        "data filed under another runner": encode(transitions("robot1", runner_id="robot2")),
        "NaN observation": reframed(obs=nan_obs),
        "non-contiguous seq": reframed(seq=np.array([100, 101, 103], np.int64)),
        "bool byte 2": reframed(terminated=np.array([0, 2, 0], np.uint8)),
        "header count disagrees": [
            msgpack.packb({**header, "body": {**header["body"], "count": 4}}),
            *encode(valid)[1:],
        ],
        "oversized batch": encode(transitions("robot1", first_seq=100, n=big)),
    }
    before = learner.state()
    for frames in cases.values():
        fuzz_one(learner, frames, before)
    learner.answers()
    assert learner.state() == before


def test_learner_refuses_and_counts_messages_it_does_not_take(learner: Target) -> None:
    before = learner.state()
    for msg in (
        Ack("robot1", "robot1", 5),
        Credit("robot1", "robot1", 5),
        Reply("robot1", True),
        Status("robot1", {}),
        Command("robot1", "estop"),
    ):
        fuzz_one(learner, encode(msg), before, timeout_s=1.0)


def test_learner_answers_and_kept_its_state_after_the_fuzz(learner: Target) -> None:
    before = learner.state()
    learner.answers()
    assert learner.state() == before and before[0] == 3  # only the one valid batch of the fixture


def test_peer_with_an_unknown_key_gets_nothing_through(learner: Target, tmp_path: Path, keydir: Path) -> None:
    """A runner key the learner never saw, under a known name: the handshake fails, nothing arrives."""
    keys.new_identity(tmp_path, "robot1", "runner")
    ctx = zmq.Context()
    try:
        endpoint = learner.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        stranger = transport.secure_client(
            ctx,
            zmq.DEALER,
            endpoint,
            keys.load_curve_keys(tmp_path, "robot1"),
            keys.load_public_key(keydir, "learner"),
        )
        before, rejected = learner.state(), learner.rejected()
        transport.send_frames(stranger, encode(transitions("robot1", first_seq=3)), 0.5)
        assert transport.recv_frames(stranger, 1.0) is None  # not even a policy push or a heartbeat
        learner.answers()
        assert learner.state() == before and learner.rejected() == rejected
    finally:
        transport.shutdown(ctx)


# ----- the runner's control ROUTER -----


@FUZZ
@given(data=st.data())
def test_control_channel_refuses_and_counts_bad_commands(control: Target, data: st.DataObject) -> None:
    before = control.state()
    wire = Wire(PROTOCOL_WIRE.header_keys, COMMAND_BODY, PROTOCOL_WIRE.array_dtypes)
    fuzz_one(control, mutate(encode(Command("console", "estop")), wire, data), before)


def test_control_channel_refuses_foreign_and_unexpected_messages(control: Target) -> None:
    before = control.state()
    for msg in (
        Command("robot1", "estop"),  # a console key speaking under another name
        Command("intruder", "estop"),
        transitions("console"),  # a type the control channel does not take
        Ack("console", "robot1", 1),
        HeartbeatMessage("console", "learner", 0.0, "x"),
    ):
        fuzz_one(control, encode(msg), before)
    control.answers()
    assert control.state() == before


# ----- the emulated robot's ROUTER (its own loopback wire, sim/emulated_wire.py) -----


@pytest.fixture(scope="module")
def robot() -> Iterator[Target]:
    ctx = zmq.Context()
    server = EmulatedRobotServer(
        "InvertedPendulum-v5", endpoint=LOOPBACK, seed=0, realtime=False, preset="nominal", context=ctx
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    sock = transport.plain_client(ctx, zmq.DEALER, server.endpoint)
    pings = itertools.count()

    def answers() -> None:
        ping = robot_encode({"type": "ping", "client": "checker", "seq": next(pings), "attempt": 0})
        request(sock, ping, lambda f: msgpack.unpackb(f[0], raw=False).get("ok") is True)

    def state() -> tuple[int, ...]:
        return tuple(server.stats[k] for k in ("steps", "resets", "safe_stop_count", "dropped", "duplicates"))

    try:
        yield Target(sock, lambda: server.stats["errors"], state, answers, thread.is_alive)
    finally:
        server.stop()
        thread.join(WAIT_S)
        transport.shutdown(ctx)


ROBOT_WIRE = Wire(
    header_keys={
        "v": st.one_of(INT64.filter(lambda v: v != 1), NOT_INT),
        "type": st.one_of(st.text(max_size=12).filter(lambda t: t not in ROBOT_TYPES), NOT_TEXT),
        "client": NOT_TEXT,
        "seq": NOT_INT,
        "attempt": NOT_INT,
        "arrays": st.one_of(INT64, st.text(max_size=4), st.lists(INT64, min_size=1)),
    },
    body_keys={},
    array_dtypes=("float64", "int64", "uint8", "object", ""),
    optional=("attempt", "arrays"),
    strict_keys=False,  # its requests carry extra fields (a reset's seed)
)
_clients = itertools.count()


def robot_request(kind: str, arrays: list[np.ndarray] | None = None, **fields: Any) -> list[bytes]:
    """A well-formed request from a fresh client name (so no reply cache entry is ever hit)."""
    header = {"type": kind, "client": f"fuzz{next(_clients)}", "seq": 1, "attempt": 0, **fields}
    return robot_encode(header, arrays or [])


@FUZZ
@given(data=st.data())
def test_emulated_robot_refuses_and_counts_bad_requests(robot: Target, data: st.DataObject) -> None:
    before = robot.state()
    valid = robot_request("step", [np.zeros(1, np.float32)])  # a step with no episode: never executes
    frames = mutate(valid, ROBOT_WIRE, data)
    if data.draw(st.booleans(), "also as a reset"):
        frames = mutate(robot_request("reset", seed=0), ROBOT_WIRE, data)
    fuzz_one(robot, frames, before)


def test_emulated_robot_refuses_bad_values_and_keeps_serving(robot: Target) -> None:
    before = robot.state()
    for frames in (
        robot_request("reset", seed="zero"),
        robot_request("reset", seed=-1),
        robot_request("step", [np.array([np.nan], np.float32)]),
        robot_request("step", [np.zeros(5, np.float32)]),
        robot_request("step", []),
        robot_request("step", [np.zeros(1, np.float32)]),  # no episode started
        robot_request("ping", [np.zeros(1 << 17, np.float32)]),  # more elements than any request needs
        [msgpack.packb({"v": 1, "type": "ping", "pad": "x" * (1 << 17)})],  # oversized header
    ):
        fuzz_one(robot, frames, before)
    robot.answers()
    assert robot.state() == before


def test_emulated_robot_survives_a_shape_whose_size_overflows_int64(robot: Target) -> None:
    header = {"v": 1, "type": "ping", "client": "overflow", "seq": 1, "attempt": 0}
    frames = [msgpack.packb({**header, "arrays": [{"dtype": "float32", "shape": [2**62, 4]}]}), b""]
    fuzz_one(robot, frames, robot.state(), timeout_s=2.0)
