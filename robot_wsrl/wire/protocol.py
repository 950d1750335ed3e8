"""The wire format (numpy + msgpack only): a versioned msgpack header frame plus raw array frames.

A message is the frame list `[header, *arrays]`. The header is a msgpack map with exactly the keys
`v` (PROTOCOL_VERSION), `type`, `sender`, `body` (the type's fields) and `arrays` (one `{dtype, shape}`
descriptor per array frame, in the type's fixed order). Array frames are the arrays' raw little-endian
bytes, so a batch of transitions crosses the network without a copy into a serialiser, and nothing
received is ever unpickled.

A batch may also say whether each episode that ends in it succeeded (`success`, for a task whose driver
reports `info["success"]`): an optional header field, one entry per terminated or truncated row, absent for
a task without a success signal, so such a batch is encoded exactly as before the field existed.

A camera task's batch adds, per camera, its uint8 frames as raw array frames, or as one blob per frame
under the camera's codec (`codecs`), each frame once: a row's next frame is sent only when it is not the
next row's obs frame ("chained" rows). A state-only batch is encoded exactly as before cameras existed.

`decode` trusts nothing that arrives from a socket: sizes are checked before parsing, then the header's
shape, version, type, every field's type and range, each array's dtype, shape and byte length, and the
cross-field facts (sequence numbers contiguous, episode ids matching, finite floats). Any failure is a
single `ProtocolError` whose `reason` is a short code a `RejectCounter` counts; no other exception
escapes `decode`, and decoding has no side effects, so a bad message changes nothing.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, get_args

import msgpack
import numpy as np

from robot_wsrl.core.spec import STATE, CameraSpec
from robot_wsrl.wire.codecs import CODECS, Codec, FrameError

PROTOCOL_VERSION = 1
MiB = 1 << 20
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
HEADER_KEYS = frozenset({"v", "type", "sender", "body", "arrays"})
ROLES = ("runner", "learner", "console")
RunnerTag = Literal["sim", "hardware"]  # a runner drives a simulator or hardware
RUNNER_TAGS: tuple[RunnerTag, ...] = get_args(RunnerTag)
COMMANDS = ("estop", "release", "pause", "resume", "rollback", "set_phase")
MAX_TEXT = 4096  # characters in a free-text field (state, error, command name, signer)
MAX_SIGNATURE = 256  # bytes; an Ed25519 signature is 64
MAX_DEPTH = 8  # nesting of a status dict or command args
MAX_DIM = 1 << 31
MAX_LIST = 4096  # items in a list field (a batch's distinct episode ids)
MAX_CAMERAS = 8  # cameras in one batch
_IDENT = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class ProtocolError(ValueError):
    """A frame set is not a valid message; `reason` is a short code for counting, the text says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """Size limits: total and header size are checked before parsing, the per-type limit as soon as the
    type is known. Policies may be large; nothing else needs to be."""

    max_bytes: int = 16 * MiB
    max_policy_bytes: int = 64 * MiB
    max_header_bytes: int = 1 * MiB

    def for_type(self, type_name: str) -> int:
        return self.max_policy_bytes if type_name == PolicyMessage.TYPE else self.max_bytes


DEFAULT_LIMITS = Limits()


class RejectCounter:
    """Counts rejected messages by reason (thread-safe), so a status report shows what was refused."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


# ----- field checks: each returns nothing and raises ProtocolError("field", ...) -----

Check = Callable[[Any, str], None]


def _fail(name: str, why: str) -> ProtocolError:
    return ProtocolError("field", f"{name!r} {why}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ident(value: Any, name: str) -> None:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise _fail(name, "must be 1-64 characters of [A-Za-z0-9_.:-]")


def _text(value: Any, name: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _fail(name, f"must be a string of at most {MAX_TEXT} characters")


def _opt_text(value: Any, name: str) -> None:
    if value is not None:
        _text(value, name)


def _nonneg(value: Any, name: str) -> None:
    if not _is_int(value) or not 0 <= value < 2**63:
        raise _fail(name, "must be an integer in [0, 2**63)")


def _opt_one_of(options: tuple[str, ...]) -> Check:
    check = _one_of(options)

    def opt(value: Any, name: str) -> None:
        if value is not None:
            check(value, name)

    return opt


def _opt_nonneg(value: Any, name: str) -> None:
    if value is not None:
        _nonneg(value, name)


def _watermark(value: Any, name: str) -> None:
    """A cumulative sequence number: -1 means nothing yet."""
    if not _is_int(value) or not -1 <= value < 2**63:
        raise _fail(name, "must be an integer in [-1, 2**63)")


def _seconds(value: Any, name: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _fail(name, "must be a finite number")


def _bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise _fail(name, "must be a bool")


def _signature(value: Any, name: str) -> None:
    if not isinstance(value, bytes) or len(value) > MAX_SIGNATURE:
        raise _fail(name, f"must be bytes of at most {MAX_SIGNATURE}")


def _sha256(value: Any, name: str) -> None:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise _fail(name, "must be 64 lowercase hex digits")


def _int_list(value: Any, name: str) -> None:
    """At most MAX_LIST int64s; checked with C-speed builtins (a long list must not cost milliseconds)."""
    if not isinstance(value, list) or len(value) > MAX_LIST or not set(map(type, value)) <= {int}:
        raise _fail(name, f"must be a list of at most {MAX_LIST} int64 integers")
    if value and not (min(value) >= -(2**63) and max(value) < 2**63):
        raise _fail(name, "must be a list of int64 integers")


def _success_list(value: Any, name: str) -> None:
    """A batch's episode outcomes: one true, false or nil per ending row, at least one of them known."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST:
        raise _fail(name, f"must be a list of at most {MAX_LIST} entries")
    if not set(map(type, value)) <= {bool, type(None)} or not any(v is not None for v in value):
        raise _fail(name, "must hold only true, false or nil, and at least one true or false")


def _json_object(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise _fail(name, "must be a string of JSON")
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise _fail(name, f"is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise _fail(name, "must be a JSON object")


def _one_of(options: Sequence[str]) -> Check:
    def check(value: Any, name: str) -> None:
        if not isinstance(value, str) or value not in options:
            raise _fail(name, f"must be one of {list(options)}")

    return check


def _plain(value: Any, name: str, depth: int = 0) -> None:
    """msgpack-native data only (no ext types, no non-string keys), nested at most MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        raise _fail(name, f"is nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, list):
        for item in value:
            _plain(item, name, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(name, "has a non-string key")
            _plain(item, name, depth + 1)
        return
    raise _fail(name, f"holds a {type(value).__name__}, not plain data")


def _plain_dict(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise _fail(name, "must be a map")
    _plain(value, name)


# ----- messages -----


@dataclass(frozen=True)
class Message:
    """Base of all messages: `sender` is who sent it; each subclass names its type, fields and arrays."""

    sender: str
    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[dict[str, Check]] = {}
    OPTIONAL: ClassVar[dict[str, Check]] = {}  # fields a body may leave out (then encoded as before them)
    ARRAYS: ClassVar[tuple[tuple[str, str, int], ...]] = ()  # (name, dtype, ndim) in frame order

    def __post_init__(self) -> None:
        _ident(self.sender, "sender")
        for name, check in self.FIELDS.items():
            check(getattr(self, name), name)

    def body(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def arrays(self) -> list[np.ndarray]:
        return [getattr(self, name) for name, _, _ in self.ARRAYS]

    @classmethod
    def array_specs(cls, body: dict[str, Any]) -> tuple[tuple[str, str, int], ...]:
        """The array frames a message with this (checked) body carries; fixed unless a type overrides it."""
        return cls.ARRAYS

    @classmethod
    def build(cls, sender: str, body: dict[str, Any], arrays: list[np.ndarray], limits: Limits) -> Message:
        """Construct from a checked header body and arrays (`decode` calls this; the constructor validates
        again). Types that carry arrays override it."""
        return cls(sender=sender, **body)


@dataclass(frozen=True)
class Transition:
    """One step as the replay buffer wants it; `action` is the executed action, normalised to [-1, 1].
    `obs` and `next_obs` are what the driver gave: a state array, or a camera task's dict of parts.

    The runner makes one per tick; `Transitions.from_steps` stacks them into the wire batch, which numbers
    them by `seq` instead of carrying `step` (the step within its episode stays on the robot). `success`
    is set only on an episode's last step (terminated or truncated), and only for a task whose driver
    reports one: did the episode succeed (`info["success"]` at that step)? None: no signal."""

    obs: np.ndarray | dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    next_obs: np.ndarray | dict[str, np.ndarray]
    terminated: bool
    truncated: bool
    episode: int
    step: int
    policy_version: int
    success: bool | None = None


def _camera_entry(entry: Any) -> tuple[CameraSpec, Codec]:
    """One camera of a batch header, `{name, shape: [H, W, C], codec}`, as its spec and codec."""
    if not isinstance(entry, dict) or set(entry) != {"name", "shape", "codec"}:
        raise ProtocolError("camera", "each camera must be a map with keys codec, name, shape")
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(d) for d in shape):
        raise ProtocolError("camera", f"camera shape {shape!r} must be [height, width, channels]")
    try:
        camera = CameraSpec(entry["name"], *shape)
    except ValueError as exc:
        raise ProtocolError("camera", str(exc)) from None
    codec = entry["codec"]
    if not isinstance(codec, str) or codec not in CODECS:
        raise ProtocolError(
            "codec", f"camera {camera.name!r}: unknown codec {codec!r}, not in {list(CODECS)}"
        )
    return camera, Codec(codec)


def _camera_list(value: Any, name: str) -> None:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_CAMERAS:
        raise ProtocolError("camera", f"{name!r} must be a list of 1..{MAX_CAMERAS} cameras")
    names = [_camera_entry(entry)[0].name for entry in value]
    if len(set(names)) != len(names):
        raise ProtocolError("camera", f"camera names {names} are not unique")


def _frame_specs(camera: CameraSpec, codec: str) -> tuple[tuple[str, str, int], ...]:
    """A camera's array frames: raw, its obs and next frames; coded, both streams' blob sizes and blobs."""
    if codec == "raw":
        return ((f"{camera.name}.obs", "uint8", 4), (f"{camera.name}.next", "uint8", 4))
    return (
        (f"{camera.name}.obs_sizes", "int64", 1),
        (f"{camera.name}.next_sizes", "int64", 1),
        (f"{camera.name}.blobs", "uint8", 1),
    )


def _blob_sizes(blobs: Sequence[Any]) -> np.ndarray:
    return np.fromiter(map(len, blobs), dtype=DTYPES["int64"], count=len(blobs))


@dataclass(frozen=True, eq=False)
class CameraFrames:
    """One camera's frames in a batch: `obs` uint8 [n, H, W, C] and `next_unchained` [m, H, W, C] (the next
    frames of the rows that are not chained), with their wire form under `codec`. A frame is coded once:
    a spooled batch is sent, resent and logged with the same bytes (a lossy frame is never re-coded)."""

    camera: CameraSpec
    codec: Codec
    obs: np.ndarray
    next_unchained: np.ndarray
    blobs: tuple[Sequence[Any], Sequence[Any]] | None = None  # coded: one blob per frame (obs, next)

    @classmethod
    def code(
        cls, camera: CameraSpec, codec: Codec, obs: np.ndarray, next_unchained: np.ndarray
    ) -> CameraFrames:
        """Code the frames; a codec that would not make them smaller than raw sends them raw."""
        if codec.name == "raw":
            return cls(camera, codec, obs, next_unchained)
        try:
            blobs = (codec.encode(obs), codec.encode(next_unchained))
        except FrameError as exc:
            raise ProtocolError(exc.reason, f"camera {camera.name!r}: {exc.detail}") from None
        if sum(map(len, blobs[0])) + sum(map(len, blobs[1])) >= obs.nbytes + next_unchained.nbytes:
            return cls(camera, Codec("raw"), obs, next_unchained)
        return cls(camera, codec, obs, next_unchained, blobs)

    @classmethod
    def from_wire(
        cls, camera: CameraSpec, codec: Codec, arrays: list[np.ndarray], n: int, m: int
    ) -> CameraFrames:
        """The frames `arrays` carry for n obs and m next frames, every blob decoded within its frame."""
        if codec.name == "raw":
            return cls(camera, codec, arrays[0], arrays[1])
        obs_sizes, next_sizes, data = arrays
        if len(obs_sizes) != n or len(next_sizes) != m:
            raise ProtocolError(
                "image",
                f"camera {camera.name!r}: {len(obs_sizes)} obs and {len(next_sizes)} next blobs, "
                f"the batch needs {n} and {m}",
            )
        sizes = np.concatenate([obs_sizes, next_sizes])
        if len(sizes) and (sizes.min() <= 0 or sizes.max() > len(data) or int(sizes.sum()) != len(data)):
            raise ProtocolError(
                "image", f"camera {camera.name!r}: blob sizes do not add up to the {len(data)} bytes sent"
            )
        view, ends = memoryview(data), np.cumsum(sizes).tolist()
        blobs = [view[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        frames = np.empty((n + m, *camera.shape), np.uint8)
        for i, blob in enumerate(blobs):
            try:
                frames[i] = codec.decode(blob, camera.shape)
            except FrameError as exc:
                raise ProtocolError(exc.reason, f"camera {camera.name!r} frame {i}: {exc.detail}") from None
        return cls(camera, codec, frames[:n], frames[n:], (blobs[:n], blobs[n:]))

    @cached_property
    def wire(self) -> list[np.ndarray]:
        """The array frames this camera adds to the message (`_frame_specs` order)."""
        if self.blobs is None:
            return [self.obs, self.next_unchained]
        obs_blobs, next_blobs = self.blobs
        data = np.frombuffer(b"".join([*obs_blobs, *next_blobs]), np.uint8)
        return [_blob_sizes(obs_blobs), _blob_sizes(next_blobs), data]

    def header(self) -> dict[str, Any]:
        return {"name": self.camera.name, "shape": list(self.camera.shape), "codec": self.codec.name}

    def take(self, obs_rows: np.ndarray, next_rows: np.ndarray, from_obs: np.ndarray) -> CameraFrames:
        """These frames for a subset of rows: `obs_rows` index obs frames; `next_rows` the next frames, each
        an index into the obs frames where `from_obs` is set and into the unchained next frames otherwise."""
        nxt = np.empty((len(next_rows), *self.camera.shape), np.uint8)
        nxt[from_obs] = self.obs[next_rows[from_obs]]
        nxt[~from_obs] = self.next_unchained[next_rows[~from_obs]]
        if self.blobs is None:
            return CameraFrames(self.camera, self.codec, self.obs[obs_rows], nxt)
        obs_blobs, next_blobs = self.blobs
        picked = [
            obs_blobs[r] if o else next_blobs[r]
            for r, o in zip(next_rows.tolist(), from_obs.tolist(), strict=True)
        ]
        blobs = ([obs_blobs[r] for r in obs_rows.tolist()], picked)
        return CameraFrames(self.camera, self.codec, self.obs[obs_rows], nxt, blobs)


@dataclass(frozen=True, eq=False)
class Transitions(Message):
    """A batch of consecutive transitions of one runner; `seq` is first_seq, first_seq + 1, ...

    The header repeats runner id, episode ids (sorted, unique), first sequence number and count, so a
    learner can de-duplicate and route a batch before touching its arrays.

    A camera task's batch also holds `frames`, one `CameraFrames` per camera, and `chained`: row i is
    chained when row i + 1 goes on with the same episode from row i's next frame (its obs frame has the
    same content), so that next frame is not sent twice. A state-only batch has no frames and no row
    chained; its header and frames are exactly those of a batch from before cameras.

    `success` holds the outcome of each episode that ends in the batch, one entry per terminated or
    truncated row in row order (True, False, or None for an episode without a signal), or is None when
    none of them has one (a task without a success signal; a runner from before the field): then the
    header has no `success` field. `successes()` gives them by row.
    """

    runner_id: str
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode_id: np.ndarray
    seq: np.ndarray
    policy_version: np.ndarray
    chained: np.ndarray | None = None  # bool [n]; None: no row chained (what a state-only batch has)
    frames: tuple[CameraFrames, ...] = ()
    success: tuple[bool | None, ...] | None = None  # per ending row; None: no episode here reports one
    TYPE: ClassVar[str] = "transitions"
    FIELDS: ClassVar[dict[str, Check]] = {
        "runner_id": _ident,
        "episode_ids": _int_list,
        "first_seq": _nonneg,
        "count": _nonneg,
    }
    OPTIONAL: ClassVar[dict[str, Check]] = {"cameras": _camera_list, "success": _success_list}
    ARRAYS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("obs", "float32", 2),
        ("action", "float32", 2),
        ("reward", "float32", 1),
        ("next_obs", "float32", 2),
        ("terminated", "bool", 1),
        ("truncated", "bool", 1),
        ("episode_id", "int64", 1),
        ("seq", "int64", 1),
        ("policy_version", "int64", 1),
    )

    def __post_init__(self) -> None:
        for name, dtype, ndim in self.ARRAYS:
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != DTYPES[dtype] or value.ndim != ndim:
                raise ProtocolError("value", f"{name!r} must be a {ndim}-d {dtype} array")
        n = len(self.seq)
        if n == 0:
            raise ProtocolError("value", "a transitions batch must not be empty")
        if any(len(getattr(self, name)) != n for name, _, _ in self.ARRAYS):
            raise ProtocolError("value", "arrays disagree on the number of transitions")
        if self.obs.shape != self.next_obs.shape or self.obs.shape[1] == 0 or self.action.shape[1] == 0:
            raise ProtocolError(
                "value",
                f"obs {self.obs.shape}, next_obs {self.next_obs.shape} and "
                f"action {self.action.shape} must be [n, dim>0] with obs == next_obs",
            )
        first = int(self.seq[0])
        if first < 0 or first > 2**63 - 1 - n or not np.array_equal(self.seq, first + np.arange(n)):
            raise ProtocolError("value", "seq must be contiguous non-negative sequence numbers")
        for name in ("obs", "action", "reward", "next_obs"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ProtocolError("value", f"{name!r} holds NaN or inf")
        self._check_frames(n)
        self._check_success()
        super().__post_init__()

    def _check_success(self) -> None:
        """One known-or-None outcome per terminated or truncated row, at least one known, or none at all."""
        if self.success is None:
            return
        _success_list(self.success, "success")
        object.__setattr__(self, "success", tuple(self.success))
        ends = int(np.count_nonzero(self.terminated | self.truncated))
        if len(self.success) != ends:
            raise ProtocolError(
                "value", f"{len(self.success)} success entries for the batch's {ends} ending rows"
            )

    def _check_frames(self, n: int) -> None:
        """`chained` consistent with the episodes, and each camera's frames [n] and [n - chained]."""
        chained = self.chained
        if chained is None:
            chained = np.zeros(n, DTYPES["bool"])
            object.__setattr__(self, "chained", chained)  # the accessor is the same for every batch
        if not isinstance(chained, np.ndarray) or chained.dtype != DTYPES["bool"] or chained.shape != (n,):
            raise ProtocolError("value", f"'chained' must be a bool array of the batch's {n} rows")
        if not self.frames:
            if chained.any():
                raise ProtocolError("value", "a batch without camera frames has no chained rows")
            return
        if chained[-1]:
            raise ProtocolError("value", "the last row is chained (its next frame would be nowhere)")
        if (chained & (self.terminated | self.truncated)).any():
            raise ProtocolError("value", "a terminated or truncated row is chained to the next row")
        if (chained[:-1] & (self.episode_id[1:] != self.episode_id[:-1])).any():
            raise ProtocolError("value", "a row is chained to a row of another episode")
        names = self.cameras
        if len(set(names)) != len(names) or len(names) > MAX_CAMERAS:
            raise ProtocolError("camera", f"camera names {list(names)}: at most {MAX_CAMERAS}, unique")
        m = n - int(chained.sum())
        for f in self.frames:
            want_obs, want_next = (n, *f.camera.shape), (m, *f.camera.shape)
            ok = all(
                isinstance(a, np.ndarray) and a.dtype == DTYPES["uint8"] and a.shape == want
                for a, want in ((f.obs, want_obs), (f.next_unchained, want_next))
            )
            if not ok:
                got = [
                    f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                    for a in (f.obs, f.next_unchained)
                ]
                raise ProtocolError(
                    "image",
                    f"camera {f.camera.name!r}: obs and next frames are {got[0]} and {got[1]}; "
                    f"uint8 {want_obs} and {want_next} expected",
                )

    @property
    def first_seq(self) -> int:
        return int(self.seq[0])

    @property
    def last_seq(self) -> int:
        return int(self.seq[-1])

    @property
    def count(self) -> int:
        return len(self.seq)

    @property
    def episode_ids(self) -> list[int]:
        ids = np.sort(self.episode_id)  # np.unique is ten times slower on a long batch
        return ids[np.r_[True, ids[1:] != ids[:-1]]].tolist()

    def successes(self) -> dict[int, bool]:
        """{row: did its episode succeed} for the terminated or truncated rows that report an outcome."""
        if self.success is None:
            return {}
        rows = np.flatnonzero(self.terminated | self.truncated).tolist()
        return {row: ok for row, ok in zip(rows, self.success, strict=True) if ok is not None}

    # ----- camera frames -----

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(f.camera.name for f in self.frames)

    @property
    def camera_specs(self) -> tuple[CameraSpec, ...]:
        return tuple(f.camera for f in self.frames)

    def _camera(self, name: str) -> CameraFrames:
        for f in self.frames:
            if f.camera.name == name:
                return f
        raise KeyError(f"no camera {name!r} in this batch; it has {list(self.cameras)}")

    def camera_obs(self, name: str) -> np.ndarray:
        """uint8 [n, H, W, C]: each row's obs frame."""
        return self._camera(name).obs

    def camera_next_unchained(self, name: str) -> np.ndarray:
        """uint8 [m, H, W, C]: the next frames of the rows that are not chained, in row order."""
        return self._camera(name).next_unchained

    def camera_next(self, name: str) -> np.ndarray:
        """uint8 [n, H, W, C]: each row's next frame (a chained row's is the next row's obs frame)."""
        f = self._camera(name)
        assert self.chained is not None
        out = np.empty_like(f.obs)
        rows = np.flatnonzero(self.chained)
        out[rows] = f.obs[rows + 1]
        out[~self.chained] = f.next_unchained
        return out

    def rows(self, start: int, stop: int) -> Transitions:
        """Rows start..stop-1 as a batch of their own (numbered from their seq), every frame re-used as it
        was coded: the last row's next frame, if it was the next row's obs frame, is sent after all."""
        if not 0 <= start < stop <= self.count:
            raise ValueError(f"rows {start}..{stop} are not within the batch's {self.count}")
        part = slice(start, stop)
        assert self.chained is not None
        chained = self.chained[part].copy()
        cut = bool(chained[-1])
        chained[-1] = False
        unchained_before = np.cumsum(~self.chained) - 1  # index into next_unchained per unchained row
        own = np.flatnonzero(~self.chained[part]) + start
        next_rows = np.r_[unchained_before[own], [stop] if cut else []].astype(np.int64)
        from_obs = np.r_[np.zeros(len(own), bool), [True] if cut else []].astype(bool)
        obs_rows = np.arange(start, stop)
        success = None
        if self.success is not None:  # the entries of the ending rows within start..stop-1
            ends = np.r_[0, np.cumsum(self.terminated | self.truncated)]
            kept = self.success[int(ends[start]) : int(ends[stop])]
            success = kept if any(ok is not None for ok in kept) else None
        return Transitions(
            self.sender,
            self.runner_id,
            *(getattr(self, name)[part] for name, _, _ in self.ARRAYS),
            chained=chained if self.frames else None,
            frames=tuple(f.take(obs_rows, next_rows, from_obs) for f in self.frames),
            success=success,
        )

    # ----- the wire -----

    def body(self) -> dict[str, Any]:
        body = super().body()
        if self.frames:
            body["cameras"] = [f.header() for f in self.frames]
        if self.success is not None:
            body["success"] = list(self.success)
        return body

    def arrays(self) -> list[np.ndarray]:
        arrays = super().arrays()
        if self.frames:
            assert self.chained is not None
            arrays.append(self.chained)
            for f in self.frames:
                arrays.extend(f.wire)
        return arrays

    @classmethod
    def array_specs(cls, body: dict[str, Any]) -> tuple[tuple[str, str, int], ...]:
        if "cameras" not in body:
            return cls.ARRAYS
        cameras = [_camera_entry(entry) for entry in body["cameras"]]
        frames = [spec for camera, codec in cameras for spec in _frame_specs(camera, codec.name)]
        return (*cls.ARRAYS, ("chained", "bool", 1), *frames)

    @classmethod
    def build(cls, sender: str, body: dict[str, Any], arrays: list[np.ndarray], limits: Limits) -> Message:
        base, rest = arrays[: len(cls.ARRAYS)], arrays[len(cls.ARRAYS) :]
        chained, frames = None, []
        if "cameras" in body:
            chained, rest = rest[0], rest[1:]
            n = len(chained)
            m = n - int(chained.sum())
            if n != body["count"]:
                raise ProtocolError("value", f"{n} chained flags for a batch of {body['count']}")
            cameras = [_camera_entry(entry) for entry in body["cameras"]]
            pixels = sum((n + m) * camera.frame_bytes for camera, _ in cameras)
            if pixels > limits.max_bytes:  # what the frames would take raw, never more than a message
                raise ProtocolError("size", f"{n + m} frames per camera decode to {pixels} bytes")
            for camera, codec in cameras:
                k = len(_frame_specs(camera, codec.name))
                frames.append(CameraFrames.from_wire(camera, codec, rest[:k], n, m))
                rest = rest[k:]
        success = body.get("success")
        msg = cls(sender, body["runner_id"], *base, chained=chained, frames=tuple(frames), success=success)
        for name in ("episode_ids", "first_seq", "count"):
            if body[name] != getattr(msg, name):
                raise ProtocolError("value", f"header {name} {body[name]!r} disagrees with the arrays")
        return msg

    # ----- making a batch -----

    @classmethod
    def make(
        cls,
        runner_id: str,
        first_seq: int,
        *,
        obs: Any,
        action: Any,
        reward: Any,
        next_obs: Any,
        terminated: Any,
        truncated: Any,
        episode_id: Any,
        policy_version: Any,
        camera_obs: Mapping[str, Any] | None = None,
        camera_next: Mapping[str, Any] | None = None,
        codecs: Mapping[str, Codec | str] | None = None,
        success: Sequence[Any] | None = None,
        sender: str | None = None,
    ) -> Transitions:
        """Cast array-likes to the wire dtypes and number them from `first_seq`. A camera task's batch
        also takes each camera's obs and next frames, uint8 [n, H, W, C] each: rows are chained where the
        content allows (so each frame is sent once), and coded per camera by `codecs` (default raw).
        `success` is per row: a bool on an ending row whose episode reports an outcome, None elsewhere."""
        n = len(reward)
        as_ = np.ascontiguousarray
        terminated, truncated = as_(terminated, dtype=DTYPES["bool"]), as_(truncated, dtype=DTYPES["bool"])
        episode_id = as_(episode_id, dtype=DTYPES["int64"])
        chained, frames = None, ()
        if camera_obs or camera_next or codecs:
            chained, frames = _code_frames(
                camera_obs or {}, camera_next or {}, codecs or {}, episode_id, terminated | truncated
            )
        return cls(
            sender or runner_id,
            runner_id,
            obs=as_(obs, dtype=DTYPES["float32"]),
            action=as_(action, dtype=DTYPES["float32"]),
            reward=as_(reward, dtype=DTYPES["float32"]),
            next_obs=as_(next_obs, dtype=DTYPES["float32"]),
            terminated=terminated,
            truncated=truncated,
            episode_id=episode_id,
            seq=np.arange(first_seq, first_seq + n, dtype=DTYPES["int64"]),
            policy_version=as_(policy_version, dtype=DTYPES["int64"]),
            chained=chained,
            frames=frames,
            success=None if success is None else _ending_success(success, terminated | truncated),
        )

    @staticmethod
    def step_arrays(steps: Sequence[Transition]) -> dict[str, Any]:
        """`make`'s keyword arguments for the runner's per-step transitions (observations as the driver
        gave them: a state array, or a camera task's parts {"state": ..., camera: frame, ...})."""
        if not steps:
            raise ProtocolError("value", "a transitions batch must not be empty")
        arrays: dict[str, Any] = {
            "action": [s.action for s in steps],
            "reward": [s.reward for s in steps],
            "terminated": [s.terminated for s in steps],
            "truncated": [s.truncated for s in steps],
            "episode_id": [s.episode for s in steps],
            "policy_version": [s.policy_version for s in steps],
            "success": [s.success for s in steps],
        }
        parts = steps[0].obs
        if not isinstance(parts, Mapping):
            return arrays | {"obs": [s.obs for s in steps], "next_obs": [s.next_obs for s in steps]}
        keys = list(parts)
        for s in steps:
            for obs in (s.obs, s.next_obs):
                if not isinstance(obs, Mapping) or list(obs) != keys:
                    got = list(obs) if isinstance(obs, Mapping) else type(obs).__name__
                    raise ProtocolError("camera", f"step {s.step}: observation parts {got}, expected {keys}")
        if STATE not in keys:
            raise ProtocolError("camera", f"observation parts {keys} lack {STATE!r}")
        names = [k for k in keys if k != STATE]
        return arrays | {
            "obs": [s.obs[STATE] for s in steps],
            "next_obs": [s.next_obs[STATE] for s in steps],
            "camera_obs": {name: _stack([s.obs[name] for s in steps], name) for name in names},
            "camera_next": {name: _stack([s.next_obs[name] for s in steps], name) for name in names},
        }

    @classmethod
    def from_steps(
        cls,
        runner_id: str,
        first_seq: int,
        steps: Sequence[Transition],
        codecs: Mapping[str, Codec | str] | None = None,
    ) -> Transitions:
        """Stack the runner's per-step transitions into one batch (camera frames coded by `codecs`)."""
        return cls.make(runner_id, first_seq, **cls.step_arrays(steps), codecs=codecs)


def row_bytes(step: Transition) -> int:
    """The most wire bytes one row of `step`'s shape takes raw (its obs and next frames both sent): a link
    caps a batch's rows by it, so a camera batch fits the message limit whatever its frames and codec."""
    parts = [step.obs, step.next_obs]
    frames = sum(
        np.asarray(value).nbytes
        for obs in parts
        for value in (obs.values() if isinstance(obs, Mapping) else [obs])
    )
    # action, reward, flags, episode/seq/version, and a success entry in the header
    return frames + 4 * (np.size(step.action) + 1) + 2 + 3 * 8 + 1


def _ending_success(success: Sequence[Any], ends: np.ndarray) -> tuple[bool | None, ...] | None:
    """Per-row outcomes (None where unknown) as a batch holds them: one per ending row, or None if none
    is known. An outcome on a row that does not end its episode, or one that is not a bool, is refused."""
    if len(success) != len(ends):
        raise ProtocolError("value", f"{len(success)} success entries for a batch of {len(ends)}")
    for row, ok in enumerate(success):
        if ok is not None and not isinstance(ok, (bool, np.bool_)):
            raise ProtocolError("value", f"row {row}: success {ok!r} is not a bool")
        if ok is not None and not ends[row]:
            raise ProtocolError("value", f"row {row}: success on a row that neither terminates nor truncates")
    kept = tuple(None if success[row] is None else bool(success[row]) for row in np.flatnonzero(ends))
    return kept if any(ok is not None for ok in kept) else None


def _stack(frames: list[Any], name: str) -> np.ndarray:
    try:
        return np.stack(frames)
    except (ValueError, TypeError) as exc:
        raise ProtocolError("image", f"camera {name!r}: frames of different shapes ({exc})") from None


def _code_frames(
    camera_obs: Mapping[str, Any],
    camera_next: Mapping[str, Any],
    codecs: Mapping[str, Codec | str],
    episode_id: np.ndarray,
    ends: np.ndarray,
) -> tuple[np.ndarray, tuple[CameraFrames, ...]]:
    """Chain the rows whose next frames are the next rows' obs frames, then code what is left to send."""
    unknown = sorted(set(codecs) - set(camera_obs))
    if unknown:
        raise ProtocolError("codec", f"codecs for cameras {unknown}, the batch has {list(camera_obs)}")
    if list(camera_obs) != list(camera_next) or not camera_obs:
        raise ProtocolError(
            "camera", f"obs frames of cameras {list(camera_obs)}, next frames of {list(camera_next)}"
        )
    n = len(episode_id)
    cameras: list[tuple[CameraSpec, np.ndarray, np.ndarray]] = []
    for name in camera_obs:
        obs, nxt = np.ascontiguousarray(camera_obs[name]), np.ascontiguousarray(camera_next[name])
        if obs.dtype != np.uint8 or nxt.dtype != np.uint8 or obs.shape != nxt.shape or obs.shape[:1] != (n,):
            raise ProtocolError(
                "image",
                f"camera {name!r}: obs {obs.dtype} {obs.shape} and next {nxt.dtype} {nxt.shape} frames "
                f"must be uint8 [{n}, H, W, C] alike",
            )
        if obs.ndim != 4:
            raise ProtocolError("image", f"camera {name!r}: frames {obs.shape[1:]} are not [H, W, C]")
        try:
            camera = CameraSpec(name, *obs.shape[1:])
        except (ValueError, TypeError) as exc:
            raise ProtocolError("camera", str(exc)) from None
        cameras.append((camera, obs, nxt))
    chained = np.zeros(n, DTYPES["bool"])
    chained[:-1] = (episode_id[1:] == episode_id[:-1]) & ~ends[:-1]
    for _, obs, nxt in cameras:
        rows = np.flatnonzero(chained)
        if len(rows):
            chained[rows] = (nxt[rows] == obs[rows + 1]).reshape(len(rows), -1).all(axis=1)
    unchained = ~chained
    frames = []
    for camera, obs, nxt in cameras:
        try:
            codec = Codec.parse(codecs.get(camera.name, "raw"))
        except FrameError as exc:
            raise ProtocolError(exc.reason, f"camera {camera.name!r}: {exc.detail}") from None
        frames.append(CameraFrames.code(camera, codec, obs, nxt[unchained]))
    return chained, tuple(frames)


@dataclass(frozen=True)
class BatchRules:
    """What a learner takes from a decoded batch, beyond what `decode` checks: the task's widths, and
    bounds that keep one batch's cost (and what it opens) small whatever a peer sends.

    A runner's batch is at most its link's batch size (256 by default), numbers its episodes in order
    and starts a new one after each terminated or truncated step, so these refuse nothing a runner makes;
    in order, each episode is one run of rows, which a learner handles in O(rows + episodes) however many
    there are. `check` raises ProtocolError with reason "width", "camera", "count" or "episodes"; it reads
    shapes, episode ids and end flags (O(n)), so a refusal is cheap.
    """

    obs_dim: int
    act_dim: int
    max_count: int = 512  # transitions per batch (a link sends at most 256)
    cameras: tuple[CameraSpec, ...] = ()  # the task's (spec.cameras); a batch must carry exactly these

    def check(self, batch: Transitions) -> None:
        got = (batch.obs.shape[1], batch.next_obs.shape[1], batch.action.shape[1])
        want = (self.obs_dim, self.obs_dim, self.act_dim)
        if got != want:
            raise ProtocolError("width", f"obs/next_obs/action widths {got}, the task has {want}")
        self._check_cameras(batch)
        if batch.count > self.max_count:
            raise ProtocolError("count", f"{batch.count} transitions in one batch (at most {self.max_count})")
        episodes = batch.episode_id
        steps = np.diff(episodes)
        if episodes[0] < 0 or (steps < 0).any():
            raise ProtocolError("episodes", "episode ids must be non-negative and in order within a batch")
        if ((batch.terminated[:-1] | batch.truncated[:-1]) & (steps == 0)).any():
            raise ProtocolError("episodes", "an episode goes on after its terminated or truncated step")

    def _check_cameras(self, batch: Transitions) -> None:
        want = {c.name: c.shape for c in self.cameras}
        got = {c.name: c.shape for c in batch.camera_specs}
        if got == want:
            return
        for name, shape in want.items():
            if name not in got:
                raise ProtocolError(
                    "camera", f"no frames of camera {name!r}: the task's cameras are {_described(want)}"
                )
            if got[name] != shape:
                raise ProtocolError(
                    "camera",
                    f"camera {name!r} frames are {got[name]}, the task's are uint8 {shape} (H, W, C)",
                )
        extra = sorted(set(got) - set(want))
        raise ProtocolError(
            "camera", f"camera {extra[0]!r} is not the task's: its cameras are {_described(want) or 'none'}"
        )


def _described(cameras: dict[str, tuple[int, int, int]]) -> str:
    return ", ".join(f"{name!r} uint8 {shape}" for name, shape in cameras.items())


@dataclass(frozen=True)
class Ack(Message):
    """The learner holds every transition of `runner_id` up to `acked_seq` durably (-1: none yet)."""

    runner_id: str
    acked_seq: int
    TYPE: ClassVar[str] = "ack"
    FIELDS: ClassVar[dict[str, Check]] = {"runner_id": _ident, "acked_seq": _watermark}


@dataclass(frozen=True)
class Credit(Message):
    """Lockstep pacing: `runner_id` may produce transitions up to `granted_seq` (-1: none yet); the learner
    extends it only after doing the updates its data is owed, so a runner never runs far ahead of them."""

    runner_id: str
    granted_seq: int
    TYPE: ClassVar[str] = "credit"
    FIELDS: ClassVar[dict[str, Check]] = {"runner_id": _ident, "granted_seq": _watermark}


@dataclass(frozen=True)
class PolicyMessage(Message):
    """A signed policy: the ONNX file's bytes (one uint8 frame) and its JSON sidecar text, as signed."""

    version: int
    parent: int | None
    sha256: str
    signer: str
    signature: bytes
    sidecar: str
    onnx: bytes
    TYPE: ClassVar[str] = "policy"
    FIELDS: ClassVar[dict[str, Check]] = {
        "version": _nonneg,
        "parent": _opt_nonneg,
        "sha256": _sha256,
        "signer": _text,
        "signature": _signature,
        "sidecar": _json_object,
    }
    ARRAYS: ClassVar[tuple[tuple[str, str, int], ...]] = (("onnx", "uint8", 1),)

    def __post_init__(self) -> None:
        if not isinstance(self.onnx, bytes) or not self.onnx:
            raise ProtocolError("value", "'onnx' must be non-empty bytes")
        super().__post_init__()

    def arrays(self) -> list[np.ndarray]:
        return [np.frombuffer(self.onnx, dtype=np.uint8)]

    @classmethod
    def build(cls, sender: str, body: dict[str, Any], arrays: list[np.ndarray], limits: Limits) -> Message:
        return cls(sender=sender, **body, onnx=arrays[0].tobytes())

    def sidecar_dict(self) -> dict[str, Any]:
        return json.loads(self.sidecar)


@dataclass(frozen=True)
class PolicyRequest(Message):
    """A (re)joining or lagging runner asks for the current policy; it has `have_version` (None: none)."""

    have_version: int | None
    TYPE: ClassVar[str] = "policy_request"
    FIELDS: ClassVar[dict[str, Check]] = {"have_version": _opt_nonneg}


@dataclass(frozen=True)
class HeartbeatMessage(Message):
    """Liveness both ways; a learner's also announces the policy version meant for the receiver, so a runner
    that missed a broadcast notices and asks for it. A runner's says whether it drives a simulator or
    hardware (`tag`): hardware receives only versions that passed validation."""

    role: str
    time: float
    state: str
    policy_version: int | None = None
    tag: str | None = None
    TYPE: ClassVar[str] = "heartbeat"
    FIELDS: ClassVar[dict[str, Check]] = {
        "role": _one_of(ROLES),
        "time": _seconds,
        "state": _text,
        "policy_version": _opt_nonneg,
        "tag": _opt_one_of(RUNNER_TAGS),
    }


@dataclass(frozen=True)
class StatusRequest(Message):
    TYPE: ClassVar[str] = "status_request"


@dataclass(frozen=True)
class Status(Message):
    status: dict[str, Any]
    TYPE: ClassVar[str] = "status"
    FIELDS: ClassVar[dict[str, Check]] = {"status": _plain_dict}


@dataclass(frozen=True)
class Command(Message):
    """An operator or learner command; `ref` is echoed in the Reply to pair them up."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    ref: int = 0
    TYPE: ClassVar[str] = "command"
    FIELDS: ClassVar[dict[str, Check]] = {"name": _one_of(COMMANDS), "args": _plain_dict, "ref": _nonneg}


@dataclass(frozen=True)
class Reply(Message):
    ok: bool
    error: str | None = None
    ref: int = 0
    TYPE: ClassVar[str] = "reply"
    FIELDS: ClassVar[dict[str, Check]] = {"ok": _bool, "error": _opt_text, "ref": _nonneg}


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Transitions,
        Ack,
        Credit,
        PolicyMessage,
        PolicyRequest,
        HeartbeatMessage,
        StatusRequest,
        Status,
        Command,
        Reply,
    )
}


# ----- encode / decode -----


def encode(msg: Message) -> list[bytes]:
    """Frames for `msg`: the msgpack header, then each array's raw bytes (the message validated itself)."""
    arrays = [np.ascontiguousarray(a) for a in msg.arrays()]
    body = msg.body()
    header = {
        "v": PROTOCOL_VERSION,
        "type": msg.TYPE,
        "sender": msg.sender,
        "body": body,
        "arrays": [
            {"dtype": dtype, "shape": list(a.shape)}
            for (_, dtype, _), a in zip(msg.array_specs(body), arrays, strict=True)
        ],
    }
    return [msgpack.packb(header, use_bin_type=True), *(a.tobytes() for a in arrays)]


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _views(frames: Any) -> list[memoryview]:
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError("frames", "expected a non-empty list of frames")
    views = []
    for i, frame in enumerate(frames):
        try:
            view = memoryview(frame)
        except TypeError:
            raise ProtocolError("frames", f"frame {i} is a {type(frame).__name__}, not bytes") from None
        if not view.c_contiguous:
            raise ProtocolError("frames", f"frame {i} is not contiguous")
        views.append(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
    return views


def _parse_header(view: memoryview) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(view, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, StackError, ...)
        raise ProtocolError("header", f"not a msgpack header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        keys = sorted(map(str, header)) if isinstance(header, dict) else type(header).__name__
        raise ProtocolError("header", f"header must be a map with keys {sorted(HEADER_KEYS)}, got {keys}")
    version = header["v"]
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {version!r}, this end speaks {PROTOCOL_VERSION}")
    if not isinstance(header["type"], str) or header["type"] not in MESSAGE_TYPES:
        raise ProtocolError("type", f"unknown message type {header['type']!r}")
    return header


def _array(view: memoryview, descriptor: Any, spec: tuple[str, str, int], index: int) -> np.ndarray:
    name, dtype, ndim = spec
    if not isinstance(descriptor, dict) or set(descriptor) != {"dtype", "shape"}:
        raise ProtocolError("array", f"descriptor {index} must be a map with keys dtype, shape")
    if not isinstance(descriptor["dtype"], str) or descriptor["dtype"] not in DTYPES:
        raise ProtocolError("array", f"{name!r}: dtype {descriptor['dtype']!r} is not in {sorted(DTYPES)}")
    if descriptor["dtype"] != dtype:
        raise ProtocolError("array", f"{name!r}: dtype {descriptor['dtype']} where {dtype} is required")
    shape = descriptor["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != ndim
        or not all(_is_int(d) and 0 <= d < MAX_DIM for d in shape)
    ):
        raise ProtocolError("array", f"{name!r}: shape {shape!r} is not {ndim} non-negative sizes")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if view.nbytes != expected:
        raise ProtocolError(
            "array", f"{name!r}: frame has {view.nbytes} bytes, shape {shape} needs {expected}"
        )
    array = np.frombuffer(view, dtype=DTYPES[dtype]).reshape(shape)
    if dtype == "bool" and array.size and array.view(np.uint8).max() > 1:
        raise ProtocolError("array", f"{name!r}: bool bytes other than 0 and 1")
    return array


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate `frames` completely and return the message; anything wrong raises ProtocolError."""
    views = _views(frames)
    total = sum(v.nbytes for v in views)
    if total > max(limits.max_bytes, limits.max_policy_bytes):
        raise ProtocolError("size", f"{total} bytes exceeds every message size limit")
    if views[0].nbytes > limits.max_header_bytes:
        raise ProtocolError("size", f"header of {views[0].nbytes} bytes exceeds {limits.max_header_bytes}")
    header = _parse_header(views[0])
    cls = MESSAGE_TYPES[header["type"]]
    if total > limits.for_type(cls.TYPE):
        raise ProtocolError(
            "size", f"{cls.TYPE} message of {total} bytes exceeds {limits.for_type(cls.TYPE)}"
        )
    _ident(header["sender"], "sender")
    body = header["body"]
    if not isinstance(body, dict) or not set(cls.FIELDS) <= set(body) <= set(cls.FIELDS) | set(cls.OPTIONAL):
        keys = sorted(map(str, body)) if isinstance(body, dict) else type(body).__name__
        optional = f" (and optionally {sorted(cls.OPTIONAL)})" if cls.OPTIONAL else ""
        raise ProtocolError(
            "field", f"{cls.TYPE} body must have fields {sorted(cls.FIELDS)}{optional}, got {keys}"
        )
    for name, check in cls.FIELDS.items():
        check(body[name], name)
    for name, check in cls.OPTIONAL.items():
        if name in body:
            check(body[name], name)
    specs = cls.array_specs(body)
    descriptors = header["arrays"]
    if not isinstance(descriptors, list) or len(descriptors) != len(specs):
        raise ProtocolError("array", f"this {cls.TYPE} message carries {len(specs)} array descriptors")
    if len(views) != 1 + len(specs):
        raise ProtocolError(
            "frames", f"this {cls.TYPE} message has {1 + len(specs)} frames, got {len(views)}"
        )
    arrays = [
        _array(view, descriptor, spec, i)
        for i, (view, descriptor, spec) in enumerate(zip(views[1:], descriptors, specs, strict=True))
    ]
    try:
        return cls.build(header["sender"], body, arrays, limits)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # a constructor's own check on a value the schema let through
        raise ProtocolError("value", f"{type(exc).__name__}: {exc}") from None


def try_decode(
    frames: Sequence[Any], counter: RejectCounter, limits: Limits = DEFAULT_LIMITS
) -> Message | None:
    """`decode`, but a rejected message is counted in `counter` and returns None (for receive loops)."""
    try:
        return decode(frames, limits)
    except ProtocolError as exc:
        counter.add(exc.reason)
        return None
