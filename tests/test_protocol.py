"""The wire format: round trips, and every kind of bad input rejected as ProtocolError and counted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_wsrl.wire.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Command,
    HeartbeatMessage,
    Limits,
    Message,
    PolicyMessage,
    PolicyRequest,
    ProtocolError,
    RejectCounter,
    Reply,
    Status,
    StatusRequest,
    Transition,
    Transitions,
    decode,
    encode,
    try_decode,
)

ONNX = b"\x08\x07fake-onnx-bytes" * 10
SIDECAR = json.dumps({"version": 3, "parent_version": 2, "sha256": hashlib.sha256(ONNX).hexdigest()})
SMALL = Limits(max_bytes=4096, max_policy_bytes=8192, max_header_bytes=1024)


def batch(n: int = 4, first_seq: int = 10, obs_dim: int = 3, act_dim: int = 2) -> Transitions:
    rng = np.random.default_rng(0)
    return Transitions.make(
        "robot1",
        first_seq,
        obs=rng.standard_normal((n, obs_dim)),
        action=rng.uniform(-1, 1, (n, act_dim)),
        reward=rng.standard_normal(n),
        next_obs=rng.standard_normal((n, obs_dim)),
        terminated=[False] * (n - 1) + [True],
        truncated=[False] * n,
        episode_id=[7] * (n // 2) + [8] * (n - n // 2),
        policy_version=[1] * n,
    )


def policy() -> PolicyMessage:
    return PolicyMessage(
        sender="learner",
        version=3,
        parent=2,
        sha256=hashlib.sha256(ONNX).hexdigest(),
        signer="0123456789abcdef",
        signature=b"s" * 64,
        sidecar=SIDECAR,
        onnx=ONNX,
    )


SIMPLE: list[Message] = [
    Ack(sender="learner", runner_id="robot1", acked_seq=41),
    Ack(sender="learner", runner_id="robot1", acked_seq=-1),
    PolicyRequest(sender="robot1", have_version=None),
    PolicyRequest(sender="robot1", have_version=2),
    HeartbeatMessage(sender="learner", role="learner", time=12.5, state="fine_tuning", policy_version=3),
    HeartbeatMessage(sender="robot1", role="runner", time=1, state="paused"),
    StatusRequest(sender="console"),
    Status(sender="robot1", status={"state": "idle", "jitter": float("nan"), "safety": {"clipped": 2}}),
    Command(sender="console", name="estop", args={"detail": "operator"}, ref=5),
    Command(sender="learner", name="set_phase", args={"phase": "warmup"}),
    Reply(sender="robot1", ok=False, error="no previous policy", ref=5),
    Reply(sender="robot1", ok=True),
]


def _same(a: Message, b: Message) -> bool:
    """Equality that also holds for NaN in a status dict (compare the encoded frames)."""
    return encode(a) == encode(b)


@pytest.mark.parametrize("msg", SIMPLE, ids=lambda m: type(m).__name__)
def test_simple_messages_round_trip(msg: Message) -> None:
    back = decode(encode(msg))
    assert type(back) is type(msg)
    assert _same(back, msg)


def test_transitions_round_trip_zero_copy_arrays() -> None:
    msg = batch()
    frames = encode(msg)
    assert len(frames) == 1 + len(Transitions.ARRAYS)
    back = decode(frames)
    assert isinstance(back, Transitions)
    assert (back.runner_id, back.first_seq, back.last_seq, back.count) == ("robot1", 10, 13, 4)
    assert back.episode_ids == [7, 8]
    for name, _, _ in Transitions.ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(msg, name))
    assert back.obs.dtype == np.float32 and back.terminated.dtype == np.bool_


def test_transitions_from_runner_steps() -> None:
    steps = [
        Transition(
            np.zeros(3, np.float32),
            np.ones(2, np.float32),
            1.0,
            np.ones(3, np.float32),
            i == 2,
            False,
            4,
            i,
            9,
        )
        for i in range(3)
    ]
    msg = Transitions.from_steps("robot1", 0, steps)
    assert msg.count == 3 and msg.episode_ids == [4] and msg.terminated.tolist() == [False, False, True]
    assert msg.policy_version.tolist() == [9, 9, 9]


def test_policy_round_trip_and_frames_accepted_as_memoryviews() -> None:
    frames = [memoryview(f) for f in encode(policy())]
    back = decode(frames)
    assert isinstance(back, PolicyMessage)
    assert back.onnx == ONNX and back.sidecar_dict()["version"] == 3 and back.signature == b"s" * 64


def test_policy_limit_is_larger_than_the_general_limit() -> None:
    big = PolicyMessage(**{**policy().__dict__, "onnx": b"x" * 6000})
    assert isinstance(decode(encode(big), SMALL), PolicyMessage)
    status = Status(sender="robot1", status={"blob": b"x" * 6000})
    with pytest.raises(ProtocolError) as err:
        decode(encode(status), SMALL)
    assert err.value.reason == "size"


def test_invalid_messages_cannot_be_built() -> None:
    with pytest.raises(ProtocolError, match="NaN"):
        Transitions.make(
            "r",
            0,
            obs=[[np.nan]],
            action=[[0.0]],
            reward=[0.0],
            next_obs=[[0.0]],
            terminated=[False],
            truncated=[False],
            episode_id=[0],
            policy_version=[0],
        )
    with pytest.raises(ProtocolError, match="name"):
        Command(sender="console", name="format_disk")
    with pytest.raises(ProtocolError, match="sender"):
        Ack(sender="bad sender!", runner_id="r", acked_seq=0)


# ----- bad input: each case raises ProtocolError with the expected reason -----


def _tamper(msg: Message, change: Callable[[dict[str, Any]], None], frames: slice = slice(1, None)) -> list:
    encoded = encode(msg)
    header = msgpack.unpackb(encoded[0])
    change(header)
    return [msgpack.packb(header, use_bin_type=True), *encoded[frames]]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(header: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = header
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(header: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = header
        for key in parents:
            node = node[key]
        del node[last]

    return change


def _cases() -> list[tuple[str, Any, str]]:
    good_b = encode(batch())
    good_p = encode(policy())
    ack = Ack(sender="learner", runner_id="robot1", acked_seq=3)
    status_header = msgpack.unpackb(encode(Status(sender="r", status={}))[0])
    ext_status = {**status_header, "body": {"status": {"x": msgpack.ExtType(5, b"boom")}}}
    time_status = {**status_header, "body": {"status": {"t": msgpack.Timestamp(1, 0)}}}
    deep: Any = 0
    for _ in range(40):
        deep = {"d": deep}
    bool_frames = list(good_b)
    bool_frames[5] = b"\x00\x02\x00\x01"
    return [
        ("empty list", [], "frames"),
        ("not a list", b"hello", "frames"),
        ("frame not bytes", [12345], "frames"),
        ("malformed msgpack", [b"\xc1"], "header"),
        ("truncated header", [encode(ack)[0][:-3]], "header"),
        ("trailing bytes after header", [encode(ack)[0] + b"\x00"], "header"),
        ("pickle instead of msgpack", [pickle.dumps({"v": 1, "type": "ack"})], "header"),
        ("header is a list", [msgpack.packb([1, "ack"])], "header"),
        ("header is an int", [msgpack.packb(7)], "header"),
        ("header map with int keys", [b"\x81\x01\x02"], "header"),
        ("missing header key", _tamper(ack, _delete("sender")), "header"),
        ("extra header key", _tamper(ack, _set("pickle", b"x")), "header"),
        ("ext type in status", [msgpack.packb(ext_status, use_bin_type=True)], "header"),
        ("timestamp in status", [msgpack.packb(time_status, use_bin_type=True)], "field"),
        ("deeply nested status", [msgpack.packb({**status_header, "body": {"status": deep}})], "field"),
        ("wrong version", _tamper(ack, _set("v", PROTOCOL_VERSION + 1)), "version"),
        ("version as string", _tamper(ack, _set("v", "1")), "version"),
        ("unknown type", _tamper(ack, _set("type", "pickle")), "type"),
        ("type not a string", _tamper(ack, _set("type", ["ack"])), "type"),
        ("bad sender", _tamper(ack, _set("sender", "../../etc")), "field"),
        ("body not a map", _tamper(ack, _set("body", [1, 2])), "field"),
        ("missing field", _tamper(ack, _delete("body.acked_seq")), "field"),
        ("extra field", _tamper(ack, _set("body.extra", 1)), "field"),
        ("field wrong type", _tamper(ack, _set("body.acked_seq", "5")), "field"),
        ("bool for int", _tamper(ack, _set("body.acked_seq", True)), "field"),
        ("negative seq", _tamper(ack, _set("body.acked_seq", -5)), "field"),
        ("unknown command", _tamper(SIMPLE[8], _set("body.name", "shutdown_all")), "field"),
        ("unknown role", _tamper(SIMPLE[4], _set("body.role", "admin")), "field"),
        ("inf time", _tamper(SIMPLE[4], _set("body.time", float("inf"))), "field"),
        ("sidecar not json", _tamper(policy(), _set("body.sidecar", "{nope")), "field"),
        ("sidecar json array", _tamper(policy(), _set("body.sidecar", "[1]")), "field"),
        ("sha256 not hex", _tamper(policy(), _set("body.sha256", "Z" * 64)), "field"),
        ("signature too long", _tamper(policy(), _set("body.signature", b"s" * 300)), "field"),
        ("missing array frame", good_p[:1], "frames"),
        ("extra frame", [*good_p, b"more"], "frames"),
        ("extra frame on ack", [*encode(ack), b"x"], "frames"),
        ("descriptor count", _tamper(policy(), _set("arrays", [])), "array"),
        ("descriptor not a map", _tamper(policy(), _set("arrays.0", [1])), "array"),
        ("dtype not whitelisted", _tamper(batch(), _set("arrays.0.dtype", "object")), "array"),
        ("dtype float16", _tamper(batch(), _set("arrays.0.dtype", "float16")), "array"),
        ("dtype numpy string", _tamper(batch(), _set("arrays.0.dtype", "<f4")), "array"),
        ("dtype allowed but wrong", _tamper(batch(), _set("arrays.0.dtype", "float64")), "array"),
        ("shape wrong ndim", _tamper(batch(), _set("arrays.0.shape", [12])), "array"),
        ("shape negative", _tamper(batch(), _set("arrays.0.shape", [-4, -3])), "array"),
        ("shape not ints", _tamper(batch(), _set("arrays.0.shape", [4.0, 3.0])), "array"),
        ("shape too large", _tamper(batch(), _set("arrays.0.shape", [2**40, 3])), "array"),
        ("byte length short", [*good_b[:1], good_b[1][:-1], *good_b[2:]], "array"),
        ("byte length long", [*good_b[:1], good_b[1] + b"\x00" * 4, *good_b[2:]], "array"),
        ("shape consistent but lies", _tamper(batch(), _set("arrays.0.shape", [3, 4])), "value"),
        ("bool byte 2", bool_frames, "array"),
        ("header count lies", _tamper(batch(), _set("body.count", 5)), "value"),
        ("header first_seq lies", _tamper(batch(), _set("body.first_seq", 11)), "value"),
        ("header episode ids lie", _tamper(batch(), _set("body.episode_ids", [7])), "value"),
        ("non-contiguous seq", _replace_array(batch(), "seq", np.array([10, 11, 13, 14])), "value"),
        ("nan reward", _replace_array(batch(), "reward", np.array([0, np.nan, 0, 0], np.float32)), "value"),
        ("empty batch", _empty_batch(), "value"),
        ("oversized message", encode(Status(sender="r", status={"x": b"y" * 5000})), "size"),
        ("oversized header", [msgpack.packb({"v": 1, "pad": "x" * 2000})], "size"),
        ("oversized policy", encode(PolicyMessage(**{**policy().__dict__, "onnx": b"x" * 9000})), "size"),
    ]


def _replace_array(msg: Transitions, name: str, value: np.ndarray) -> list[bytes]:
    """Frames of `msg` with one array frame swapped, bypassing the sender-side checks."""
    index = 1 + [n for n, _, _ in Transitions.ARRAYS].index(name)
    frames = encode(msg)
    frames[index] = np.ascontiguousarray(value, dtype=getattr(msg, name).dtype).tobytes()
    return frames


def _empty_batch() -> list[bytes]:
    def change(header: dict[str, Any]) -> None:
        header["body"].update(count=0, episode_ids=[])
        for descriptor in header["arrays"]:
            descriptor["shape"][0] = 0

    return _tamper(batch(), change, slice(1, 1)) + [b""] * len(Transitions.ARRAYS)


CASES = _cases()


@pytest.mark.parametrize(("frames", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_its_reason(frames: Any, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(frames, SMALL)
    assert err.value.reason == reason, str(err.value)
    assert str(err.value).startswith(reason + ": ")


def test_rejections_are_counted_by_reason() -> None:
    counter = RejectCounter()
    for _, frames, _ in CASES:
        assert try_decode(frames, counter, SMALL) is None
    expected: dict[str, int] = {}
    for _, _, reason in CASES:
        expected[reason] = expected.get(reason, 0) + 1
    assert counter.as_dict() == expected
    assert counter.total == len(CASES)
    assert isinstance(try_decode(encode(SIMPLE[0]), counter), Ack) and counter.total == len(CASES)


# ----- fuzz: nothing but ProtocolError ever escapes decode -----

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = [encode(m) for m in [*SIMPLE, batch(), policy()]]


def _decode_or_reject(frames: Any) -> None:
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode(frames, SMALL), Message)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    _decode_or_reject(frames)


@FUZZ
@given(
    st.sampled_from(range(len(GOOD))),
    st.data(),
)
def test_fuzz_mutated_valid_messages(which: int, data: st.DataObject) -> None:
    frames = list(GOOD[which])
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    action = data.draw(st.sampled_from(["flip", "truncate", "extend", "drop", "duplicate"]))
    if action == "flip" and frame:
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] ^= data.draw(st.integers(1, 255))
        frames[i] = bytes(frame)
    elif action == "truncate":
        frames[i] = bytes(frame[: data.draw(st.integers(0, max(0, len(frame) - 1)))])
    elif action == "extend":
        frames[i] = bytes(frame) + data.draw(st.binary(min_size=1, max_size=16))
    elif action == "drop":
        del frames[i]
    else:
        frames.insert(i, frames[i])
    _decode_or_reject(frames)


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["v", "type", "sender", "body", "arrays", "x"]), _plain, max_size=6),
    st.lists(st.binary(max_size=40), max_size=3),
)
def test_fuzz_structured_headers(header: dict[str, Any], arrays: list[bytes]) -> None:
    _decode_or_reject([msgpack.packb(header, use_bin_type=True), *arrays])


@FUZZ
@given(st.sampled_from(range(len(GOOD))), st.data())
def test_fuzz_header_values_replaced(which: int, data: st.DataObject) -> None:
    """Reach the field and array checks: the sender, one body field or one array descriptor of a valid
    message gets random plain data."""
    frames = list(GOOD[which])
    header = msgpack.unpackb(frames[0])
    slots = [("body", key) for key in header["body"]] + [("arrays", i) for i in range(len(header["arrays"]))]
    slots += [("arrays", i, key) for i in range(len(header["arrays"])) for key in ("dtype", "shape")]
    slots += [("sender",)]
    slot = data.draw(st.sampled_from(slots))
    node = header
    for key in slot[:-1]:
        node = node[key]
    node[slot[-1]] = data.draw(_plain)
    _decode_or_reject([msgpack.packb(header, use_bin_type=True), *frames[1:]])
