"""The emulated robot: a stand-in for real hardware, reached over ZeroMQ like a real robot would be.

A server process owns a gymnasium MuJoCo env (through GymMujocoDriver) with a dynamics shift, and adds
what separates a robot from a simulator: it keeps its own clock (one step per control period, in real
time), its sensors are noisy, its actuation lags by k control steps, its timing jitters and its link drops
packets. The client, `EmulatedRobotDriver`, implements the Driver protocol with a deadline on every
request, so the runner sees the same failure modes (late replies, lost link) it will see on hardware.

Wire (loopback only; multipart frames, never pickle):
  frame 0: msgpack header {"v": 1, "type": str, "client": str, "seq": int, "attempt": int, ...,
           "arrays": [{"dtype": "float32", "shape": [...]}, ...]}
  frames 1..n: raw little-endian float32 buffers described by header["arrays"].
Requests (client DEALER -> server ROUTER) and their replies (same "type" and "seq", "ok": bool):
  spec                 -> {"spec": EnvSpec.to_dict(), "params": {...preset...}, "realtime": bool}
  reset {"seed"}       -> {"info": {...}} + [obs]
  step + [action]      -> {"reward", "terminated", "truncated", "info": {"applied_ctrl", "commanded_action",
                            "tick", "late", ...}} + [obs, executed_action]
  safe_stop            -> {"safe_stop_count": int}
  ping                 -> {"stats": {...}}
  close                -> {} and the server exits
  errors               -> {"ok": false, "kind": "value"|"state"|"protocol"|"internal", "error": str}
A request the emulated link drops gets no reply. The client retries with the same seq on a fresh socket;
the server answers a repeated seq from its reply cache without executing it again, so a retry never
steps the robot twice.

Run a server: `python -m robot_wsrl.robot.drivers.emulated_robot --env Hopper-v5 --preset real --endpoint tcp://127.0.0.1:5555`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from robot_wsrl.core.driver import DriverFault, StepResult
from robot_wsrl.core.paths import REPO_ROOT
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.sim.gym_mujoco import GymMujocoDriver
from robot_wsrl.sim.shift import DynamicsShift, load_shift_preset, normalise_preset
from robot_wsrl.wire import transport
from robot_wsrl.wire.transport import TransportError, check_loopback

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("spec", "reset", "step", "safe_stop", "ping", "close")
READY_PREFIX = "EMULATED_ROBOT_READY"

_MAX_HEADER_BYTES = 64 * 1024
_MAX_ARRAY_ELEMS = 1 << 16
_REPLY_CACHE_CLIENTS = 64


class ProtocolError(ValueError):
    """A message that does not follow the wire format; it is refused, never half-parsed."""


# -------------------------------------------------------------------------------------------------- wire


def encode(header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> list[bytes]:
    """Header + raw float32 buffers; the header describes each buffer's shape."""
    bufs = [np.ascontiguousarray(a, dtype="<f4") for a in arrays]
    h = dict(header)
    h["v"] = PROTOCOL_VERSION
    h["arrays"] = [{"dtype": "float32", "shape": list(b.shape)} for b in bufs]
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
        if not isinstance(desc, dict) or desc.get("dtype") != "float32":
            raise ProtocolError(f"array {i}: only float32 is accepted, got {desc!r}")
        shape = desc.get("shape")
        if not (
            isinstance(shape, list) and len(shape) <= 4 and all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise ProtocolError(f"array {i}: bad shape {shape!r}")
        n = math.prod(shape)  # Python ints: a huge shape cannot wrap around to a small size
        if n > _MAX_ARRAY_ELEMS or len(buf) != 4 * n:
            raise ProtocolError(f"array {i}: {len(buf)} bytes for shape {shape}")
        arrays.append(np.frombuffer(buf, dtype="<f4").astype(np.float32).reshape(shape))
    return header, arrays


def _plain(value: Any) -> Any:
    """A msgpack-safe copy of an info value (numbers, strings, small numeric arrays); None if not."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size <= 256:
        return value.astype(np.float64).tolist()
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if all(v is not None for v in items) else None
    return None


def _plain_info(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        pv = _plain(v)
        if pv is not None:
            out[str(k)] = pv
    return out


def _check_loopback(endpoint: str) -> None:
    """The emulated robot has no CURVE keys, so it never listens beyond this machine."""
    try:
        check_loopback(endpoint)
    except TransportError as exc:
        raise ValueError(f"emulated robot binds loopback only (no CURVE), got {endpoint!r}") from exc


# ------------------------------------------------------------------------------------------------ server


class EmulatedRobotServer:
    """The robot end: a shifted MuJoCo env served over a ROUTER socket, one request at a time.

    `preset` is a name in configs/shift, a preset dict, or None (nominal); the keyword overrides win over
    the preset. With `realtime=True` a step is applied at the robot's next tick (one control period after
    the previous one; a late command is applied at once and counted) plus a random jitter up to
    `jitter_ms`; `realtime=False` steps as fast as asked and skips the jitter (for tests). Drops are
    deterministic given `seed` (a hash of seed, message type, seq and attempt), so tests are repeatable.
    """

    def __init__(
        self,
        env_id: str = "Hopper-v5",
        *,
        preset: str | dict[str, Any] | None = None,
        endpoint: str = "tcp://127.0.0.1:0",
        seed: int | None = None,
        realtime: bool = True,
        max_episode_steps: int | None = None,
        shift: DynamicsShift | None = None,
        sensor_noise_std: float | None = None,
        action_latency_steps: int | None = None,
        jitter_ms: float | None = None,
        drop_prob: float | None = None,
        exit_with_parent: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        _check_loopback(endpoint)
        raw = load_shift_preset(preset) if isinstance(preset, str) else dict(preset or {})
        for key, val in (
            ("dynamics", shift),
            ("sensor_noise_std", sensor_noise_std),
            ("action_latency_steps", action_latency_steps),
            ("jitter_ms", jitter_ms),
            ("drop_prob", drop_prob),
        ):
            if val is not None:
                raw[key] = val
        self.params = normalise_preset(raw, source=f"preset {preset!r}")
        self.realtime = bool(realtime)
        self.driver = GymMujocoDriver(
            env_id,
            max_episode_steps=max_episode_steps,
            seed=seed,
            shift=self.params["dynamics"],
            obs_noise_std=self.params["sensor_noise_std"],
        )
        self.spec = self.driver.spec
        self._latency = int(self.params["action_latency_steps"])
        self._pending: deque[np.ndarray] = deque()
        self._reset_pending()
        self._jitter_rng = np.random.default_rng(seed)
        self._drop_salt = str(seed) if seed is not None else uuid.uuid4().hex
        self._next_tick = 0.0
        self._episode_started = False
        self._replies: OrderedDict[str, tuple[int, list[bytes]]] = OrderedDict()
        self._stop = threading.Event()
        self._parent_pid = os.getppid() if exit_with_parent else None
        self.stats = {
            "requests": 0,
            "steps": 0,
            "resets": 0,
            "dropped": 0,
            "duplicates": 0,
            "late_ticks": 0,
            "errors": 0,
            "safe_stop_count": 0,
        }
        ctx = context or zmq.Context.instance()
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self.endpoint: str = transport.bind(self._sock, endpoint)
        except zmq.ZMQError:
            self._sock.close()
            self.driver.close()
            raise

    # -- lifecycle

    def run(self) -> None:
        """Serve until a `close` request, `stop()`, or (with exit_with_parent) the parent process dies."""
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if self._parent_pid is not None and os.getppid() != self._parent_pid:
                    break
                if not poller.poll(50):
                    continue
                frames = self._sock.recv_multipart()
                if self._handle(frames) == "close":
                    break
        finally:
            self._sock.close(linger=200)  # let a last reply (to `close`) leave
            self.driver.close()

    def stop(self) -> None:
        """Ask `run()` to return (thread-safe); it does within one poll interval."""
        self._stop.set()

    # -- request handling

    def _handle(self, frames: list[bytes]) -> str | None:
        if len(frames) < 2:
            return None
        identity, payload = frames[0], frames[1:]
        self.stats["requests"] += 1
        try:
            header, arrays = decode(payload)
            typ, client, seq = header.get("type"), header.get("client"), header.get("seq")
            attempt = header.get("attempt", 0)
            if typ not in MESSAGE_TYPES or not isinstance(client, str) or not isinstance(seq, int):
                raise ProtocolError(f"bad request type/client/seq: {typ!r}, {client!r}, {seq!r}")
            if not isinstance(attempt, int):
                raise ProtocolError(f"bad attempt {attempt!r}")
        except ProtocolError as e:
            self.stats["errors"] += 1
            self._sock.send_multipart([identity, *encode({"ok": False, "kind": "protocol", "error": str(e)})])
            return None
        if self._dropped(typ, seq, attempt):
            self.stats["dropped"] += 1
            return None
        cached = self._replies.get(client)
        if cached is not None and seq <= cached[0]:
            if seq == cached[0]:  # a retry of what we already executed: same answer, no second execution
                self.stats["duplicates"] += 1
                self._sock.send_multipart([identity, *cached[1]])
            return None  # older than the last one: stale, the client has moved on
        reply = self._dispatch(typ, seq, header, arrays)
        self._replies[client] = (seq, reply)
        self._replies.move_to_end(client)
        while len(self._replies) > _REPLY_CACHE_CLIENTS:
            self._replies.popitem(last=False)
        self._sock.send_multipart([identity, *reply])
        if typ == "close":
            self._stop.set()
            return "close"
        return None

    def _dispatch(self, typ: str, seq: int, header: dict[str, Any], arrays: list[np.ndarray]) -> list[bytes]:
        try:
            handler = getattr(self, f"_on_{typ}")
            fields, out_arrays = handler(header, arrays)
            return encode({**fields, "ok": True, "type": typ, "seq": seq}, out_arrays)
        except (ValueError, TypeError) as e:
            kind, err = "value", str(e)
        except RuntimeError as e:
            kind, err = "state", str(e)
        except Exception as e:  # the robot must survive a bad request; the client decides what it means
            traceback.print_exc(file=sys.stderr)
            kind, err = "internal", f"{type(e).__name__}: {e}"
        self.stats["errors"] += 1
        return encode({"ok": False, "type": typ, "seq": seq, "kind": kind, "error": err})

    def _on_spec(self, header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list]:
        params = {**self.params, "dynamics": self.params["dynamics"].to_dict()}
        return {"spec": self.spec.to_dict(), "params": params, "realtime": self.realtime}, []

    def _on_ping(self, header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list]:
        return {"stats": dict(self.stats)}, []

    def _on_close(self, header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list]:
        return {}, []

    def _on_reset(self, header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list]:
        seed = header.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"reset seed must be an int or None, got {seed!r}")
        obs, info = self.driver.reset(seed=seed)
        self._reset_pending()
        self._episode_started = True
        self._next_tick = time.perf_counter() + self.spec.control_period_s
        self.stats["resets"] += 1
        return {"info": _plain_info(info)}, [obs]

    def _on_step(self, header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list]:
        if len(arrays) != 1:
            raise ValueError(f"step carries one action array, got {len(arrays)}")
        if not self._episode_started:
            raise RuntimeError("step without an episode: reset first (not started, or it ended)")
        commanded = self.driver.clip(arrays[0])  # the robot clips, whatever the client did
        late = self._wait_for_tick()
        self._pending.append(commanded)
        applied = self._pending.popleft()  # with latency k: the command from k ticks ago
        result = self.driver.step(applied)
        if result.terminated or result.truncated:
            self._episode_started = False
        self.stats["steps"] += 1
        info = _plain_info(result.info)
        info.update(
            commanded_action=commanded.astype(np.float64).tolist(), tick=self.stats["steps"], late=late
        )
        fields = {
            "reward": result.reward,
            "terminated": result.terminated,
            "truncated": result.truncated,
            "info": info,
        }
        return fields, [result.obs, result.executed_action]

    def _on_safe_stop(self, header: dict[str, Any], arrays: list[np.ndarray]) -> tuple[dict[str, Any], list]:
        """Hold: zero actuation and forget the commands still in the latency pipeline."""
        self.driver.safe_stop()
        self._reset_pending()
        self.stats["safe_stop_count"] += 1
        return {"safe_stop_count": self.stats["safe_stop_count"]}, []

    # -- emulation

    def _reset_pending(self) -> None:
        self._pending.clear()
        self._pending.extend(np.zeros(self.spec.act_dim, dtype=np.float32) for _ in range(self._latency))

    def _wait_for_tick(self) -> bool:
        """Real-time pacing: sleep to the next tick (+ jitter); True if the command missed its tick."""
        if not self.realtime:
            return False
        now = time.perf_counter()
        late = now > self._next_tick
        if late:
            self.stats["late_ticks"] += 1
            tick = now
        else:
            time.sleep(self._next_tick - now)
            tick = self._next_tick
        jitter_s = self.params["jitter_ms"] * 1e-3
        if jitter_s > 0:
            time.sleep(self._jitter_rng.uniform(0.0, jitter_s))
        self._next_tick = tick + self.spec.control_period_s
        return late

    def _dropped(self, typ: str, seq: int, attempt: int) -> bool:
        p = self.params["drop_prob"]
        if p <= 0:
            return False
        digest = hashlib.blake2b(f"{self._drop_salt}:{typ}:{seq}:{attempt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2.0**64 < p


# ------------------------------------------------------------------------------------------------ client


class _Link:
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


class EmulatedRobotDriver:
    """Driver-protocol client of an EmulatedRobotServer.

    Every request waits at most `timeout_s` per attempt and is retried `retries` times on a fresh socket
    (the server de-duplicates, so a retried step is never executed twice); after that it raises
    DriverFault, so one call blocks at most `worst_case_s`. `safe_stop` uses its own channel so it is not
    queued behind a step that is waiting out its deadline. `close()` releases the sockets only;
    `shutdown_server()` ends the server. `keeps_time` is true when the server runs on its own real-time
    clock: `step()` then returns at the robot's next tick (the runner follows that clock rather than
    its own) and `info["late"]` says whether the command missed its tick.
    """

    def __init__(
        self, endpoint: str, *, timeout_s: float = 0.1, retries: int = 1, context: zmq.Context | None = None
    ) -> None:
        if timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s must be > 0 and retries >= 0")
        self.endpoint = endpoint
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        ctx = context or zmq.Context.instance()
        client = uuid.uuid4().hex
        self._link = _Link(ctx, endpoint, f"{client}/control", self.timeout_s, self.retries)
        self._stop_link = _Link(ctx, endpoint, f"{client}/stop", self.timeout_s, self.retries)
        self._closed = False
        header, _ = self._request(self._link, "spec")
        self.spec = EnvSpec.from_dict(header["spec"])
        self.server_params: dict[str, Any] = dict(header.get("params") or {})
        self.server_realtime = bool(header.get("realtime", False))
        self.keeps_time = self.server_realtime
        self.safe_stop_count = 0
        self.last_safe_stop_time: float | None = None

    @property
    def worst_case_s(self) -> float:
        """The longest any call blocks before it returns or raises DriverFault (plus socket set-up)."""
        return self.timeout_s * (self.retries + 1)

    @property
    def retries_used(self) -> int:
        return self._link.retries_used + self._stop_link.retries_used

    def _request(
        self, link: _Link, typ: str, fields: dict[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        if self._closed:
            raise RuntimeError("emulated robot driver is closed")
        header, out = link.request(typ, fields, arrays)
        if header.get("ok") is True:
            return header, out
        kind, err = header.get("kind"), f"emulated robot: {typ}: {header.get('error')}"
        if kind == "value":
            raise ValueError(err)
        if kind == "state":
            raise RuntimeError(err)
        raise DriverFault(err)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        header, arrays = self._request(self._link, "reset", {"seed": None if seed is None else int(seed)})
        if len(arrays) != 1 or arrays[0].shape != (self.spec.obs_dim,):
            raise DriverFault(f"emulated robot: malformed reset reply {[a.shape for a in arrays]}")
        return arrays[0], dict(header.get("info") or {})

    def step(self, action: np.ndarray) -> StepResult:
        """Send one command; the reply carries the action the robot applied this tick (after its latency)."""
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self.spec.act_dim,):
            raise ValueError(f"action shape {a.shape}, expected ({self.spec.act_dim},)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"non-finite action {a}")
        header, arrays = self._request(self._link, "step", None, [a])
        if (
            len(arrays) != 2
            or arrays[0].shape != (self.spec.obs_dim,)
            or arrays[1].shape != (self.spec.act_dim,)
        ):
            raise DriverFault(f"emulated robot: malformed step reply {[x.shape for x in arrays]}")
        info = dict(header.get("info") or {})
        for key in ("applied_ctrl", "commanded_action"):
            if key in info:
                info[key] = np.asarray(info[key], dtype=np.float64)
        return StepResult(
            obs=arrays[0],
            reward=float(header["reward"]),
            terminated=bool(header["terminated"]),
            truncated=bool(header["truncated"]),
            executed_action=arrays[1],
            info=info,
        )

    def safe_stop(self) -> None:
        """Tell the robot to hold (zero command, pending commands discarded); DriverFault if unreachable."""
        self.last_safe_stop_time = time.perf_counter()
        self.safe_stop_count += 1
        self._request(self._stop_link, "safe_stop")

    def ping(self) -> dict[str, Any]:
        """The server's counters (steps, drops, duplicates, late ticks, safe stops)."""
        header, _ = self._request(self._stop_link, "ping")
        return dict(header.get("stats") or {})

    def shutdown_server(self) -> None:
        """Ask the server process to exit (it replies first)."""
        self._request(self._stop_link, "close")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._link.close()
            self._stop_link.close()


# ---------------------------------------------------------------------------------------------- process


class EmulatedRobotProcess:
    """Handle on a server subprocess: `stop()` asks it to exit, then terminates, then kills."""

    def __init__(self, popen: subprocess.Popen, endpoint: str) -> None:
        self.popen, self.endpoint = popen, endpoint

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """Hard kill (emulates the robot losing power or its link)."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=5.0)
        self._close_pipes()

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Clean shutdown: `close` request, then SIGTERM, then SIGKILL; returns the exit code."""
        if self.alive():
            with contextlib.suppress(DriverFault, RuntimeError, ValueError, KeyError, zmq.ZMQError):
                link = _Link(zmq.Context.instance(), self.endpoint, f"{uuid.uuid4().hex}/stop", 0.5, 2)
                try:
                    link.request("close")
                finally:
                    link.close()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.terminate()
                try:
                    self.popen.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout=5.0)
        self._close_pipes()
        return self.popen.returncode

    def _close_pipes(self) -> None:
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __enter__(self) -> EmulatedRobotProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_emulated_robot(
    env_id: str = "Hopper-v5",
    preset: str = "nominal",
    port: int | None = None,
    *,
    endpoint: str | None = None,
    seed: int | None = None,
    realtime: bool = True,
    max_episode_steps: int | None = None,
    drop_prob: float | None = None,
    action_latency_steps: int | None = None,
    startup_timeout_s: float = 30.0,
) -> tuple[EmulatedRobotProcess, str]:
    """Start a server in a subprocess on a loopback port (a free one unless `port`), or on `endpoint` (an
    `ipc://` path in a private folder keeps other local users off the robot), and wait for `ping`.

    The server binds the port itself and reports it on stdout, so there is no pick-then-bind race. The
    subprocess exits when its parent dies. Raises RuntimeError (after killing it) if it is not up in time.
    """
    cmd = [sys.executable, "-m", __name__, "--env", env_id, "--preset", preset]
    cmd += ["--endpoint", endpoint or f"tcp://127.0.0.1:{port or 0}", "--exit-with-parent"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if not realtime:
        cmd += ["--no-realtime"]
    if max_episode_steps is not None:
        cmd += ["--max-episode-steps", str(max_episode_steps)]
    if drop_prob is not None:
        cmd += ["--drop-prob", str(drop_prob)]
    if action_latency_steps is not None:
        cmd += ["--action-latency-steps", str(action_latency_steps)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    popen = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    proc = EmulatedRobotProcess(popen, "")
    deadline = time.monotonic() + startup_timeout_s
    try:
        proc.endpoint = _read_ready_line(popen, deadline)
        link = _Link(zmq.Context.instance(), proc.endpoint, f"{uuid.uuid4().hex}/spawn", 0.2, 0)
        try:
            while True:
                try:
                    header, _ = link.request("ping")
                    if header.get("ok"):
                        break
                except DriverFault:
                    pass
                if time.monotonic() > deadline or popen.poll() is not None:
                    raise RuntimeError(f"emulated robot at {proc.endpoint} did not answer ping in time")
        finally:
            link.close()
    except BaseException:
        proc.kill()
        raise
    return proc, proc.endpoint


def _read_ready_line(popen: subprocess.Popen, deadline: float) -> str:
    assert popen.stdout is not None
    fd = popen.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"emulated robot did not start within its startup timeout (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"emulated robot exited during start-up (code {popen.wait(timeout=5.0)})")
            buf += chunk
    for line in buf.decode(errors="replace").splitlines():
        if line.startswith(READY_PREFIX + " "):
            return line.split(" ", 1)[1].strip()
    raise RuntimeError(f"emulated robot printed {buf!r} instead of its ready line")


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    prog = f"python -m {__spec__.name if __spec__ else __name__}"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Hopper-v5", help="gymnasium MuJoCo env id")
    p.add_argument("--preset", default="nominal", help="configs/shift/NAME.yaml")
    p.add_argument(
        "--endpoint", default="tcp://127.0.0.1:0", help="loopback endpoint; port 0 picks a free one"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-realtime", action="store_true", help="step as fast as asked (tests)")
    p.add_argument("--max-episode-steps", type=int, default=None)
    p.add_argument("--drop-prob", type=float, default=None, help="override the preset")
    p.add_argument("--action-latency-steps", type=int, default=None, help="override the preset")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process dies")
    args = p.parse_args(argv)
    server = EmulatedRobotServer(
        args.env,
        preset=args.preset,
        endpoint=args.endpoint,
        seed=args.seed,
        realtime=not args.no_realtime,
        max_episode_steps=args.max_episode_steps,
        drop_prob=args.drop_prob,
        action_latency_steps=args.action_latency_steps,
        exit_with_parent=args.exit_with_parent,
    )
    print(f"{READY_PREFIX} {server.endpoint}", flush=True)
    # Nothing else goes to stdout: a parent that stopped reading it must never block us.
    with contextlib.suppress(OSError):
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
