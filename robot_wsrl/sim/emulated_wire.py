"""The emulated robot's wire, both ends' part of it: the message format and the client's request channel.

No simulator here (numpy, msgpack, pyzmq only): the `emulated:` driver (robot_wsrl.robot.drivers) uses it
on a robot image without the sim extra; the server (robot_wsrl.sim.emulated_robot) uses it too.

Wire (loopback only; multipart frames, never pickle):
  frame 0: msgpack header {"v": 1, "type": str, "client": str, "seq": int, "attempt": int, ...,
           "arrays": [{"dtype": "float32" | "uint8", "shape": [...]}, ...]}
  frames 1..n: raw buffers described by header["arrays"]: little-endian float32 (state, actions) or
           uint8 camera frames (H, W, C), one frame each, never per-pixel msgpack.
An observation travels as its parts in `EnvSpec.obs_parts()` order: the state, then each camera's frame.
Requests carry float32 arrays only.
Requests (client DEALER -> server ROUTER) and their replies (same "type" and "seq", "ok": bool):
  spec                 -> {"spec": EnvSpec.to_dict(), "params": {...preset...}, "realtime": bool}
  reset {"seed"}       -> {"info": {...}} + [*obs parts]
  step + [action]      -> {"reward", "terminated", "truncated", "info": {"applied_ctrl", "commanded_action",
                            "tick", "late", ...}} + [*obs parts, executed_action]
                          info also carries the simulator's own plain values, e.g. a task's "success"
                          (bool; absent for a task without a success signal)
  safe_stop            -> {"safe_stop_count": int}
  ping                 -> {"stats": {...}}
  close                -> {} and the server exits
  errors               -> {"ok": false, "kind": "value"|"state"|"protocol"|"internal", "error": str}
A request the emulated link drops gets no reply. The client retries with the same seq on a fresh socket;
the server answers a repeated seq from its reply cache without executing it again, so a retry never
steps the robot twice.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from robot_wsrl.core.driver import DriverFault
from robot_wsrl.core.spec import MAX_IMAGE_SIDE

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("spec", "reset", "step", "safe_stop", "ping", "close")

_MAX_HEADER_BYTES = 64 * 1024
_WIRE_DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}
_MAX_ARRAY_ELEMS = {"float32": 1 << 16, "uint8": 4 * MAX_IMAGE_SIDE * MAX_IMAGE_SIDE}


class ProtocolError(ValueError):
    """A message that does not follow the wire format; it is refused, never half-parsed."""


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[bytes]:
    """Header + raw buffers: uint8 arrays (camera frames) as they are, anything else as float32; the
    header describes each buffer's dtype and shape."""
    bufs = [np.ascontiguousarray(a, dtype="u1" if np.asarray(a).dtype == np.uint8 else "<f4") for a in arrays]
    h = dict(header)
    h["v"] = PROTOCOL_VERSION
    h["arrays"] = [{"dtype": b.dtype.name, "shape": list(b.shape)} for b in bufs]
    return [msgpack.packb(h, use_bin_type=True), *(b.tobytes() for b in bufs)]


def decode(frames: Sequence[bytes]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Parse and validate a message; raises ProtocolError on anything unexpected."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames[0]) > _MAX_HEADER_BYTES:
        raise ProtocolError("header too large")
    try:
        header = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
    except Exception as e:
        raise ProtocolError(f"bad msgpack header: {e}") from e
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION}")
    descs = header.get("arrays", [])
    if not isinstance(descs, list) or len(descs) != len(frames) - 1:
        raise ProtocolError(f"header announces {descs!r} arrays but {len(frames) - 1} buffers follow")
    arrays = []
    for i, (desc, buf) in enumerate(zip(descs, frames[1:], strict=True)):
        kind = desc.get("dtype") if isinstance(desc, dict) else None
        if not isinstance(kind, str) or kind not in _WIRE_DTYPES:
            raise ProtocolError(f"array {i}: only {sorted(_WIRE_DTYPES)} are accepted, got {desc!r}")
        dtype = _WIRE_DTYPES[kind]
        shape = desc.get("shape")
        if not (
            isinstance(shape, list) and len(shape) <= 4 and all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise ProtocolError(f"array {i}: bad shape {shape!r}")
        n = math.prod(shape)  # Python ints: a huge shape cannot wrap around to a small size
        if n > _MAX_ARRAY_ELEMS[kind] or len(buf) != dtype.itemsize * n:
            raise ProtocolError(f"array {i}: {len(buf)} bytes for {kind} shape {shape}")
        arrays.append(np.frombuffer(buf, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape))
    return header, arrays


class Channel:
    """One request/reply channel: DEALER socket, a deadline per attempt, retries on a fresh socket."""

    def __init__(self, ctx: zmq.Context, endpoint: str, client: str, timeout_s: float, retries: int) -> None:
        self._ctx, self._endpoint, self._client = ctx, endpoint, client
        self.timeout_s, self.retries = timeout_s, retries
        self._sock: zmq.Socket | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self.retries_used = 0

    def _open(self) -> zmq.Socket:
        self._close_socket()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._endpoint)
        self._sock = sock
        return sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(
        self, typ: str, fields: dict[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        with self._lock:
            seq = self._seq
            self._seq += 1
            for attempt in range(self.retries + 1):
                sock = self._open() if (attempt > 0 or self._sock is None) else self._sock
                if attempt > 0:
                    self.retries_used += 1
                msg = encode(
                    {**(fields or {}), "type": typ, "client": self._client, "seq": seq, "attempt": attempt},
                    arrays,
                )
                try:
                    sock.send_multipart(msg, flags=zmq.NOBLOCK)
                except zmq.Again:
                    continue
                deadline = time.perf_counter() + self.timeout_s
                while (remaining := deadline - time.perf_counter()) > 0:
                    if not sock.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                        continue
                    try:
                        header, out = decode(sock.recv_multipart(flags=zmq.NOBLOCK))
                    except zmq.Again:
                        continue
                    except ProtocolError as e:
                        self._close_socket()
                        raise DriverFault(
                            f"emulated robot at {self._endpoint}: bad reply to {typ!r}: {e}"
                        ) from e
                    if header.get("seq") == seq or header.get("kind") == "protocol":
                        return header, out
                    # a late reply to an earlier request on this socket: drop it, keep waiting
            self._close_socket()
            raise DriverFault(
                f"emulated robot at {self._endpoint}: no reply to {typ!r} within {self.timeout_s:.3f} s "
                f"({self.retries + 1} attempts); link lost"
            )

    def close(self) -> None:
        with self._lock:
            self._close_socket()
