"""Camera frames on the wire (issue 16): codecs, de-duplicated next frames, adversarial decoding, batch
rules, the link's size cap, and state-only batches byte-for-byte as before cameras."""

from __future__ import annotations

import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_wsrl.core.spec import STATE, CameraSpec
from robot_wsrl.robot.link import LearnerLink, LinkOptions, batch_rows
from robot_wsrl.wire import transport
from robot_wsrl.wire.codecs import Codec, FrameError
from robot_wsrl.wire.protocol import (
    DEFAULT_LIMITS,
    BatchRules,
    Limits,
    ProtocolError,
    Transition,
    Transitions,
    decode,
    encode,
    row_bytes,
)
from robot_wsrl.wire.spool import TransitionSpool

H, W = 48, 40
CAM = CameraSpec("top", H, W)
CHAINED_FRAME = 1 + len(Transitions.ARRAYS)  # frame index of `chained`; the camera's arrays follow
# (frame k is described by header["arrays"][k - 1]: the header is frame 0)
CODECS = ["raw", "zlib", "png", "jpeg"]

# A state-only batch as encoded before cameras existed (Transitions.make of GOLDEN_ARGS, frame by frame).
GOLDEN = (
    (
        "85a17601a474797065ab7472616e736974696f6e73a673656e646572a6726f626f7431a4626f647984a972756e6e6572"
        "5f6964a6726f626f7431ab657069736f64655f696473920304a966697273745f7365710aa5636f756e7406a661727261"
        "79739982a56474797065a7666c6f61743332a5736861706592060382a56474797065a7666c6f61743332a57368617065"
        "92060282a56474797065a7666c6f61743332a57368617065910682a56474797065a7666c6f61743332a5736861706592"
        "060382a56474797065a4626f6f6ca57368617065910682a56474797065a4626f6f6ca57368617065910682a564747970"
        "65a5696e743634a57368617065910682a56474797065a5696e743634a57368617065910682a56474797065a5696e7436"
        "34a573686170659106"
    ),
    (
        "000000002549123e2549923eb76ddb3e2549123f6edb363fb76d5b3f0000803f2549923f4992a43f6edbb63f9224c93f"
        "b76ddb3fdbb6ed3f000000409224094025491240b76d1b40"
    ),
    ("000080bf5d7451bfbae822bf2fbae8bee9a28bbe8c2ebabd8c2eba3de9a28b3e2fbae83ebae8223f5d74513f0000803f"),
    "000000000000003f0000803f0000c03f0000004000002040",
    (
        "00000000cdcc4c3ecdcccc3e9a99193fcdcc4c3f0000803f9a99993f3333b33fcdcccc3f6666e63f00000040cdcc0c40"
        "9a991940666626403333334000004040cdcc4c409a995940"
    ),
    "000001000000",
    "000000000001",
    ("030000000000000003000000000000000300000000000000040000000000000004000000000000000400000000000000"),
    ("0a000000000000000b000000000000000c000000000000000d000000000000000e000000000000000f00000000000000"),
    ("020000000000000002000000000000000200000000000000020000000000000002000000000000000200000000000000"),
)
GOLDEN_ARGS: dict[str, Any] = {
    "obs": np.arange(18).reshape(6, 3) / 7,
    "action": np.linspace(-1, 1, 12).reshape(6, 2),
    "reward": np.arange(6) * 0.5,
    "next_obs": np.arange(18).reshape(6, 3) / 5,
    "terminated": [0, 0, 1, 0, 0, 0],
    "truncated": [0, 0, 0, 0, 0, 1],
    "episode_id": [3, 3, 3, 4, 4, 4],
    "policy_version": [2] * 6,
}


def frame(episode: int, step: int, shape: tuple[int, int, int] = CAM.shape) -> np.ndarray:
    """A smooth frame (a gradient and a moving square), so lossless codecs compress it."""
    h, w, c = shape
    y, x = np.mgrid[0:h, 0:w]
    out = np.stack([x * 3 + episode * 20, y * 4, (x + y) * 2], axis=-1)[:, :, :c] % 256
    top, left = (2 * step) % (h - 8), (3 * step + episode) % (w - 8)
    out[top : top + 8, left : left + 8] = 250
    return out.astype(np.uint8)


def steps(n: int = 12, episode_len: int = 5, shape: tuple[int, int, int] = CAM.shape) -> list[Transition]:
    """n steps of episodes of `episode_len` (each truncated at its end); each next frame is the next obs's."""
    out = []
    for i in range(n):
        episode, step = divmod(i, episode_len)
        obs = {STATE: np.full(5, i, np.float32), "top": frame(episode, step, shape)}
        nxt = {STATE: np.full(5, i + 1, np.float32), "top": frame(episode, step + 1, shape)}
        end = step == episode_len - 1
        out.append(Transition(obs, np.zeros(2, np.float32), float(i), nxt, False, end, episode, step, 1))
    return out


def camera_batch(codec: str = "raw", n: int = 12, episode_len: int = 5) -> Transitions:
    return Transitions.from_steps("robot1", 100, steps(n, episode_len), {"top": codec})


def tamper(
    frames: list[bytes], change: Callable[[dict[str, Any]], None] | None = None, **replace: bytes
) -> list[bytes]:
    """`frames` with the header changed by `change` and frames replaced (`f11=...`: frame 11)."""
    header = msgpack.unpackb(frames[0], raw=False)
    if change is not None:
        change(header)
    out = [msgpack.packb(header, use_bin_type=True), *frames[1:]]
    for key, value in replace.items():
        out[int(key[1:])] = value
    return out


def rejected(frames: list[Any], limits: Limits = DEFAULT_LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        decode(frames, limits)
    return err.value


# ----- round trips and de-duplication -----


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_per_codec(codec: str) -> None:
    sent = camera_batch(codec)
    assert sent.frames[0].codec.name == codec  # smooth frames: every codec is worth it here
    back = decode(encode(sent))
    assert isinstance(back, Transitions) and back.cameras == ("top",)
    want_obs = np.stack([s.obs["top"] for s in steps()])
    want_next = np.stack([s.next_obs["top"] for s in steps()])
    for name, _, _ in Transitions.ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(sent, name))
    np.testing.assert_array_equal(back.chained, sent.chained)
    got_obs, got_next = back.camera_obs("top"), back.camera_next("top")
    assert got_obs.dtype == np.uint8 and got_obs.shape == got_next.shape == (12, H, W, 3)
    if Codec.parse(codec).lossless:
        np.testing.assert_array_equal(got_obs, want_obs)
        np.testing.assert_array_equal(got_next, want_next)
    else:
        assert np.abs(got_obs.astype(int) - want_obs).mean() < 4
        assert np.abs(got_next.astype(int) - want_next).mean() < 4
    # a decoded batch (the spool's resend path, the learner's log) is sent again with the same bytes
    assert [bytes(f) for f in encode(back)] == [bytes(f) for f in encode(sent)]


@pytest.mark.parametrize("codec", CODECS)
def test_each_frame_crosses_once(codec: str) -> None:
    """Episodes of 5 in 12 rows: rows 4 and 9 end an episode and row 11 ends the batch, so 12 obs frames
    and 3 next frames travel; a chained row's next frame is the next row's obs frame."""
    batch = camera_batch(codec)
    assert np.flatnonzero(~batch.chained).tolist() == [4, 9, 11]
    assert batch.camera_next_unchained("top").shape == (3, H, W, 3)
    frames = encode(batch)
    if codec == "raw":
        obs, nxt = (np.frombuffer(frames[CHAINED_FRAME + i], np.uint8) for i in (1, 2))
        assert obs.size + nxt.size == (12 + 3) * CAM.frame_bytes
    else:
        obs_sizes, next_sizes = (np.frombuffer(frames[CHAINED_FRAME + i], "<i8") for i in (1, 2))
        assert len(obs_sizes) + len(next_sizes) == 12 + 3
        assert len(frames[CHAINED_FRAME + 3]) == obs_sizes.sum() + next_sizes.sum()


def test_chaining_is_by_content() -> None:
    """A next frame that differs from the next row's obs frame (a re-render, a reset) is sent."""
    moved = steps()
    other = moved[2].next_obs["top"].copy()
    other[0, 0, 0] ^= 1
    moved[2] = Transition(
        moved[2].obs, moved[2].action, 2.0, {**moved[2].next_obs, "top": other}, False, False, 0, 2, 1
    )
    batch = Transitions.from_steps("robot1", 0, moved)
    assert np.flatnonzero(~batch.chained).tolist() == [2, 4, 9, 11]
    np.testing.assert_array_equal(decode(encode(batch)).camera_next("top")[2], other)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=24))
def test_exactly_the_chained_next_frames_stay_home(rows: list[tuple[bool, bool]]) -> None:
    """Any mix of episode ends and re-rendered next frames: a row is chained exactly when its episode goes
    on and its next frame is the next obs frame; n + unchained frames travel, and every frame comes back.
    An episode's first obs equals the last one's next frame here: the end alone unchains it."""
    shape = (4, 5, 3)

    def pixels(value: int) -> np.ndarray:
        return np.full(shape, value % 256, np.uint8)

    made, episode = [], 0
    for i, (end, rerender) in enumerate(rows):
        nxt = pixels(i + 1).copy()
        if rerender:
            nxt[0, 0, 0] ^= 0xFF
        obs = {STATE: np.zeros(2, np.float32), "top": pixels(i)}
        made.append(
            Transition(
                obs, np.zeros(1, np.float32), 0.0, {STATE: obs[STATE], "top": nxt}, end, False, episode, i, 0
            )
        )
        episode += end
    batch = decode(encode(Transitions.from_steps("robot1", 0, made)))
    unchained = [end or rerender or i == len(rows) - 1 for i, (end, rerender) in enumerate(rows)]
    assert (~batch.chained).tolist() == unchained
    assert len(batch.camera_obs("top")) + len(batch.camera_next_unchained("top")) == len(rows) + sum(
        unchained
    )
    np.testing.assert_array_equal(batch.camera_obs("top"), np.stack([s.obs["top"] for s in made]))
    np.testing.assert_array_equal(batch.camera_next("top"), np.stack([s.next_obs["top"] for s in made]))


def test_noise_that_a_codec_cannot_shrink_is_sent_raw() -> None:
    rng = np.random.default_rng(0)
    noisy = [
        Transition(
            {STATE: np.zeros(5, np.float32), "top": rng.integers(0, 256, CAM.shape, np.uint8)},
            np.zeros(2, np.float32),
            0.0,
            {STATE: np.zeros(5, np.float32), "top": rng.integers(0, 256, CAM.shape, np.uint8)},
            False,
            False,
            0,
            i,
            1,
        )
        for i in range(4)
    ]
    batch = Transitions.from_steps("robot1", 0, noisy, {"top": "zlib"})
    assert batch.frames[0].codec.name == "raw"
    assert msgpack.unpackb(encode(batch)[0])["body"]["cameras"][0]["codec"] == "raw"


@pytest.mark.parametrize("codec", ["raw", "png", "jpeg"])
@pytest.mark.parametrize(("start", "stop"), [(0, 12), (0, 3), (3, 10), (5, 10), (11, 12)])
def test_rows_reuse_the_coded_frames(codec: str, start: int, stop: int) -> None:
    """A slice of a batch (the learner logs the new rows of a partly duplicate batch) keeps every frame,
    the last row's next frame included when it was the next row's obs frame."""
    batch = decode(encode(camera_batch(codec)))
    part = batch.rows(start, stop)
    back = decode(encode(part))
    assert back.first_seq == batch.first_seq + start and back.count == stop - start
    assert not back.chained[-1]
    np.testing.assert_array_equal(back.camera_obs("top"), batch.camera_obs("top")[start:stop])
    np.testing.assert_array_equal(back.camera_next("top"), batch.camera_next("top")[start:stop])


def test_grey_camera_round_trips_through_png() -> None:
    grey = Transitions.from_steps("robot1", 0, steps(6, shape=(H, W, 1)), {"top": "png"})
    back = decode(encode(grey))
    assert back.camera_specs == (CameraSpec("top", H, W, 1),)
    np.testing.assert_array_equal(back.camera_next("top"), grey.camera_next("top"))


# ----- state-only batches: exactly as before -----


def test_state_only_batch_encodes_byte_for_byte_as_before() -> None:
    golden = [bytes.fromhex(part) for part in GOLDEN]
    made = Transitions.make("robot1", 10, **GOLDEN_ARGS)
    assert encode(made) == golden
    back = decode(golden)
    assert isinstance(back, Transitions) and back.cameras == () and not back.chained.any()
    for name, _, _ in Transitions.ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(made, name))
    assert "cameras" not in msgpack.unpackb(golden[0])["body"]


# ----- adversarial decoding: one ProtocolError with a reason, nothing else -----


def _set_camera(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(header: dict[str, Any]) -> None:
        header["body"]["cameras"][0][key] = value

    return change


def _chained(batch: Transitions, rows: list[int]) -> bytes:
    flags = batch.chained.copy()
    flags[rows] = ~flags[rows]
    return flags.tobytes()


def _png(width: int, height: int, payload: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(payload))
        + chunk(b"IEND", b"")
    )


def _with_blob(codec: str, blob: bytes, index: int = 0) -> list[bytes]:
    """A coded batch whose frame `index` (of obs then next) is `blob`, sizes adjusted to match."""
    frames = encode(camera_batch(codec))
    sizes = np.concatenate([np.frombuffer(frames[CHAINED_FRAME + i], "<i8") for i in (1, 2)])
    data = frames[CHAINED_FRAME + 3]
    ends = np.cumsum(sizes)
    blobs = [data[e - s : e] for s, e in zip(sizes, ends, strict=True)]
    blobs[index] = blob
    sizes[index] = len(blob)
    n = len(np.frombuffer(frames[CHAINED_FRAME + 1], "<i8"))
    out = list(frames)
    out[CHAINED_FRAME + 1], out[CHAINED_FRAME + 2] = sizes[:n].tobytes(), sizes[n:].tobytes()
    out[CHAINED_FRAME + 3] = b"".join(blobs)

    def resize(header: dict[str, Any]) -> None:
        header["arrays"][CHAINED_FRAME + 2]["shape"] = [len(out[CHAINED_FRAME + 3])]

    return tamper(out, resize)


def _cases() -> list[tuple[str, list[Any], str]]:
    raw, zipped = encode(camera_batch("raw")), encode(camera_batch("zlib"))
    batch = camera_batch("raw")
    size = CAM.frame_bytes
    small = bytes(np.frombuffer(raw[CHAINED_FRAME + 1], np.uint8)[: 12 * 47 * W * 3])
    return [
        ("camera name", tamper(raw, _set_camera("name", "state")), "camera"),
        ("camera name not a string", tamper(raw, _set_camera("name", 7)), "camera"),
        ("camera shape", tamper(raw, _set_camera("shape", [H, W])), "camera"),
        ("camera channels", tamper(raw, _set_camera("shape", [H, W, 4])), "camera"),
        ("camera too large", tamper(raw, _set_camera("shape", [100_000, W, 3])), "camera"),
        ("camera keys", tamper(raw, _set_camera("quality", 90)), "camera"),
        ("no cameras", tamper(raw, lambda h: h["body"].update(cameras=[])), "camera"),
        (
            "duplicate cameras",
            tamper(raw, lambda h: h["body"]["cameras"].append(h["body"]["cameras"][0])),
            "camera",
        ),
        ("unknown codec", tamper(raw, _set_camera("codec", "webp")), "codec"),
        ("frame dtype", tamper(raw, lambda h: h["arrays"][CHAINED_FRAME].update(dtype="float32")), "array"),
        (
            "frames of another shape",
            tamper(raw, lambda h: h["arrays"][CHAINED_FRAME].update(shape=[12, 47, W, 3]), f11=small),
            "image",
        ),
        (
            "a next frame missing",
            tamper(
                raw,
                lambda h: h["arrays"][CHAINED_FRAME + 1].update(shape=[2, H, W, 3]),
                f12=raw[CHAINED_FRAME + 2][: 2 * size],
            ),
            "image",
        ),
        ("camera frames missing", raw[: CHAINED_FRAME + 2], "frames"),
        ("last row chained", tamper(raw, f10=_chained(batch, [11])), "value"),
        ("truncated row chained", tamper(raw, f10=_chained(batch, [4])), "value"),
        (
            "chained flags short",
            tamper(
                raw,
                lambda h: h["arrays"][CHAINED_FRAME - 1].update(shape=[11]),
                f10=batch.chained[:11].tobytes(),
            ),
            "value",
        ),
        ("chained across episodes", _across_episodes(), "value"),
        ("blob sizes lie", tamper(zipped, f11=np.full(12, 5, "<i8").tobytes()), "image"),
        (
            "blob count",
            tamper(
                zipped,
                lambda h: h["arrays"][CHAINED_FRAME + 1].update(shape=[2]),
                f12=np.frombuffer(zipped[12], "<i8")[:2].tobytes(),
            ),
            "image",
        ),
        ("negative blob size", _negative_size(zipped), "image"),
        ("corrupt zlib", _with_blob("zlib", b"\x78\x9c" + b"\xff" * 40), "image"),
        ("truncated zlib", _with_blob("zlib", zlib.compress(bytes(size))[:-6]), "image"),
        ("zlib bomb", _with_blob("zlib", zlib.compress(bytes(64 * size), 9)), "image"),
        ("zlib frame short", _with_blob("zlib", zlib.compress(bytes(size - 1))), "image"),
        ("zlib trailing bytes", _with_blob("zlib", zlib.compress(bytes(size)) + b"junk"), "image"),
        ("png of huge dimensions", _with_blob("png", _png(100_000, 100_000)), "image"),
        ("png of other dimensions", _with_blob("png", _png(1000, 1000, bytes(3001 * 1000))), "image"),
        ("png truncated", _with_blob("png", _png(W, H, bytes((3 * W + 1) * H))[:-30]), "image"),
        ("png garbage", _with_blob("png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50), "image"),
        (
            "jpeg where png is declared",
            _with_blob("png", Codec("jpeg").encode(frame(0, 0)[None])[0]),
            "image",
        ),
        ("jpeg garbage", _with_blob("jpeg", b"\xff\xd8\xff" + b"\x13" * 200), "image"),
        ("frames beyond the message limit", raw, "size"),
    ]


def _across_episodes() -> list[bytes]:
    """Row 4 ends episode 0 and is unchained; drop its end flag and chain it to episode 1's first row."""
    batch = camera_batch("raw")
    truncated = batch.truncated.copy()
    truncated[4] = False
    frames = encode(batch)
    keep = np.frombuffer(frames[CHAINED_FRAME + 2], np.uint8).reshape(3, H, W, 3)[1:]

    def change(header: dict[str, Any]) -> None:
        header["arrays"][CHAINED_FRAME + 1]["shape"] = [2, H, W, 3]  # frame k's descriptor is k - 1

    return tamper(frames, change, f6=truncated.tobytes(), f10=_chained(batch, [4]), f12=keep.tobytes())


def _negative_size(frames: list[bytes]) -> list[bytes]:
    sizes = np.frombuffer(frames[CHAINED_FRAME + 1], "<i8").copy()
    sizes[0], sizes[1] = -sizes[1], sizes[0] + 2 * sizes[1]
    return tamper(frames, f11=sizes.tobytes())


CASES = _cases()


@pytest.mark.parametrize(("frames", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_camera_batches_are_one_protocol_error(frames: list[Any], reason: str) -> None:
    limits = Limits(max_bytes=14 * CAM.frame_bytes) if reason == "size" else DEFAULT_LIMITS
    if reason == "size":  # the raw frames fit a message of 16 MiB, not one of 14 frames: refused unread
        assert sum(map(len, frames)) > limits.max_bytes
    err = rejected(frames, limits)
    assert err.reason == reason, str(err)


def test_coded_frames_decoding_beyond_the_limit_are_refused_before_decoding() -> None:
    """15 zlib frames of a few hundred bytes each would decode to 15 frames: more than the limit allows."""
    frames = encode(camera_batch("zlib"))
    assert sum(map(len, frames)) < 14 * CAM.frame_bytes
    assert rejected(frames, Limits(max_bytes=14 * CAM.frame_bytes)).reason == "size"


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODED = {codec: encode(camera_batch(codec)) for codec in CODECS}


@FUZZ
@given(
    codec=st.sampled_from(CODECS),
    frame_index=st.integers(CHAINED_FRAME, CHAINED_FRAME + 3),
    edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_fuzzed_camera_frames_give_only_protocol_errors(codec: str, frame_index: int, edits: list) -> None:
    frames = list(CODED[codec])
    frame_index = min(frame_index, len(frames) - 1)
    data = bytearray(frames[frame_index])
    for offset, value in edits:
        if data:
            data[offset % len(data)] = value
    frames[frame_index] = bytes(data)
    try:
        back = decode(frames)
    except ProtocolError as exc:
        assert exc.reason in {"array", "image", "value", "size"}
    else:
        assert isinstance(back, Transitions) and back.camera_next("top").shape == (12, H, W, 3)


def test_png_and_jpeg_without_pillow_name_the_camera_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    png = encode(camera_batch("png"))
    monkeypatch.setitem(sys.modules, "PIL", None)
    err = rejected(png)
    assert err.reason == "codec" and "robot-wsrl[camera]" in str(err)
    with pytest.raises(FrameError, match=r"robot-wsrl\[camera\]"):
        Codec.parse("jpeg:80").check_available()
    with pytest.raises(ProtocolError, match=r"robot-wsrl\[camera\]"):
        camera_batch("jpeg")
    Codec.parse("zlib").check_available()  # stdlib codecs need nothing
    assert decode(encode(camera_batch("zlib"))).cameras == ("top",)


@pytest.mark.parametrize(
    ("text", "match"),
    [("jpg", "did you mean 'jpeg'"), ("jpeg:0", r"1\.\.100"), ("zlib:x", "integer"), ("png:10", r"0\.\.9")],
)
def test_bad_codec_configuration(text: str, match: str) -> None:
    with pytest.raises(FrameError, match=match) as err:
        Codec.parse(text)
    assert err.value.reason == "codec"


def test_a_codec_for_a_camera_the_batch_lacks_is_refused() -> None:
    with pytest.raises(ProtocolError, match="'wrist'") as err:
        Transitions.from_steps("robot1", 0, steps(), {"wrist": "png"})
    assert err.value.reason == "codec"


def test_observations_with_other_parts_are_refused_when_stacked() -> None:
    bad = steps(4)
    bad[2] = Transition(
        bad[2].obs, bad[2].action, 0.0, {STATE: bad[2].next_obs[STATE]}, False, False, 0, 2, 1
    )
    with pytest.raises(ProtocolError) as err:
        Transitions.from_steps("robot1", 0, bad)
    assert err.value.reason == "camera"
    floats = steps(4)
    floats[0] = Transition(
        {**floats[0].obs, "top": floats[0].obs["top"].astype(np.float32)},
        floats[0].action,
        0.0,
        floats[0].next_obs,
        False,
        False,
        0,
        0,
        1,
    )
    with pytest.raises(ProtocolError, match="uint8"):
        Transitions.from_steps("robot1", 0, floats)


# ----- the task's cameras -----


@pytest.mark.parametrize(
    ("cameras", "match"),
    [
        (
            (CameraSpec("top", 84, 84),),
            r"camera 'top' frames are \(48, 40, 3\), the task's are uint8 \(84, 84, 3\)",
        ),
        ((CameraSpec("wrist", H, W),), r"no frames of camera 'wrist'.*'wrist' uint8 \(48, 40, 3\)"),
        ((CAM, CameraSpec("wrist", 64, 64)), r"no frames of camera 'wrist'"),
        ((), r"camera 'top' is not the task's: its cameras are none"),
    ],
)
def test_batch_rules_refuse_other_cameras(cameras: tuple[CameraSpec, ...], match: str) -> None:
    batch = decode(encode(camera_batch()))
    with pytest.raises(ProtocolError, match=match) as err:
        BatchRules(5, 2, cameras=cameras).check(batch)
    assert err.value.reason == "camera"
    BatchRules(5, 2, cameras=(CAM,)).check(batch)


def test_batch_rules_refuse_a_state_only_batch_for_a_camera_task() -> None:
    state_only = decode([bytes.fromhex(part) for part in GOLDEN])
    with pytest.raises(ProtocolError, match="no frames of camera 'top'") as err:
        BatchRules(3, 2, cameras=(CAM,)).check(state_only)
    assert err.value.reason == "camera"
    BatchRules(3, 2).check(state_only)


# ----- the link's batches fit a message -----


@pytest.mark.parametrize("side", [84, 128])
def test_the_link_caps_a_batch_of_unchained_frames_to_fit_a_message(side: int) -> None:
    """Worst case: no row chained (every next frame sent). At 128x128 the link's 256 rows would not fit
    16 MiB, so it sends fewer; the batch it makes decodes under the default limits."""
    rng = np.random.default_rng(side)
    shape = (side, side, 3)

    def step(i: int) -> Transition:
        obs = {STATE: np.zeros(11, np.float32), "top": rng.integers(0, 256, shape, np.uint8)}
        nxt = {STATE: np.zeros(11, np.float32), "top": rng.integers(0, 256, shape, np.uint8)}
        return Transition(obs, np.zeros(3, np.float32), 0.0, nxt, False, False, 0, i, 1)

    rows = batch_rows(LinkOptions(), step(0))
    assert rows == (
        256 if side == 84 else LinkOptions().max_batch_bytes // (2 * (side * side * 3 + 44) + 24 + 18)
    )
    batch = Transitions.from_steps("robot1", 0, [step(i) for i in range(rows)])
    frames = encode(batch)
    assert sum(map(len, frames)) <= DEFAULT_LIMITS.max_bytes
    assert decode(frames).count == rows
    if side == 128:  # what the cap prevents
        assert 2 * 256 * side * side * 3 > DEFAULT_LIMITS.max_bytes


def test_the_link_codes_frames_as_configured_in_batches_within_its_byte_cap(tmp_path: Path) -> None:
    """A runner's link: each camera coded by its configured codec, at most max_batch_bytes of raw frames
    per message (here 5 rows' worth), and every frame arrives."""
    made = steps(12)
    ctx = zmq.Context()
    learner = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:0")
    sock = transport.plain_client(ctx, zmq.DEALER, transport.bound_endpoint(learner))
    options = LinkOptions(
        lockstep=False, on_learner_lost="keep", codecs={"top": "png"}, max_batch_bytes=5 * row_bytes(made[0])
    )
    trusted = {"learner": Ed25519PrivateKey.generate().public_key()}
    link = LearnerLink(
        sock, TransitionSpool(tmp_path / "spool", "robot1"), trusted, tmp_path / "policy", options
    )
    batches: list[Transitions] = []
    try:
        for step in made:
            link.on_transition(step)
        link.start()
        deadline = time.monotonic() + 60
        while sum(b.count for b in batches) < len(made):
            assert time.monotonic() < deadline, link.status()
            frames = transport.recv_frames(learner, 0.1)
            msg = None if frames is None else decode(frames[1:])
            if isinstance(msg, Transitions):
                batches.append(msg)
    finally:
        link.close()
        link.spool.close()
        transport.shutdown(ctx)
    assert [b.count for b in batches] == [5, 5, 2]
    assert all(b.frames[0].codec.name == "png" for b in batches)
    got_next = np.concatenate([b.camera_next("top") for b in batches])
    np.testing.assert_array_equal(got_next, np.stack([s.next_obs["top"] for s in made]))


@pytest.mark.parametrize(
    ("codecs", "match"), [({"top": "jpg"}, "did you mean 'jpeg'"), ({"top": "png:12"}, "0..9")]
)
def test_the_link_refuses_a_codec_it_cannot_use(tmp_path: Path, codecs: dict[str, str], match: str) -> None:
    trusted = {"learner": Ed25519PrivateKey.generate().public_key()}
    with pytest.raises(ValueError, match=match):
        LearnerLink(None, None, trusted, tmp_path, LinkOptions(codecs=codecs))  # type: ignore[arg-type]
