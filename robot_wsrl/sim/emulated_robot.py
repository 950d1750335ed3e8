"""The emulated robot: a stand-in for real hardware, reached over ZeroMQ like a real robot would be.

A server process owns a gymnasium MuJoCo env (through GymMujocoDriver, or a camera task of
robot_wsrl.sim.camera_tasks) with a dynamics shift and, for cameras, a visual shift, and adds what
separates a robot from a simulator: it keeps its own clock (one step per control period, in real
time), its sensors are noisy, its actuation lags by k control steps, its timing jitters and its link drops
packets. Its wire is robot_wsrl.sim.emulated_wire; the runner reaches it through the `emulated:ENDPOINT`
driver (robot_wsrl.robot.drivers.emulated_robot). `spawn_emulated_robot` starts one in a subprocess.

Run a server: `python -m robot_wsrl.sim.emulated_robot --env Hopper-v5 --preset real --endpoint tcp://127.0.0.1:5555`
(a camera robot: `--env cam:reacher --preset reacher_real`, rendering with MUJOCO_GL=egl).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from typing import IO, Any

import numpy as np
import zmq

from robot_wsrl.core.driver import DriverFault
from robot_wsrl.core.paths import REPO_ROOT
from robot_wsrl.core.spec import STATE, EnvSpec, Observation
from robot_wsrl.sim.camera import parse_cameras
from robot_wsrl.sim.camera_tasks import make_camera_task
from robot_wsrl.sim.emulated_wire import MESSAGE_TYPES, Channel, ProtocolError, decode, encode
from robot_wsrl.sim.gym_mujoco import GymMujocoDriver
from robot_wsrl.sim.shift import DynamicsShift, load_shift_preset, normalise_preset
from robot_wsrl.wire import transport
from robot_wsrl.wire.transport import TransportError, check_loopback

READY_PREFIX = "EMULATED_ROBOT_READY"
_REPLY_CACHE_CLIENTS = 64


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


def _simulator(env: str, **kwargs: Any) -> GymMujocoDriver:
    """The robot's simulator: a gymnasium env id (`Hopper-v5`, `gym:Hopper-v5`) or a camera task
    (`cam:reacher`), optionally with camera requests after `@` (robot_wsrl.sim.camera.parse_cameras)."""
    name, at, request = env.partition("@")
    if at:
        kwargs["cameras"] = parse_cameras(request, where=f"emulated robot {env!r}")
    if name.startswith("cam:"):
        return make_camera_task(name.removeprefix("cam:"), **kwargs)
    return GymMujocoDriver(name.removeprefix("gym:"), **kwargs)


def _parts(obs: Observation, spec: EnvSpec) -> list[np.ndarray]:
    """An observation as the wire carries it: the state, then each camera's frame in the spec's order."""
    if not spec.cameras:
        return [obs]
    return [obs[STATE], *(obs[name] for name in spec.camera_names)]


def _check_loopback(endpoint: str) -> None:
    """The emulated robot has no CURVE keys, so it never listens beyond this machine."""
    try:
        check_loopback(endpoint)
    except TransportError as exc:
        raise ValueError(f"emulated robot binds loopback only (no CURVE), got {endpoint!r}") from exc


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
        self.driver = _simulator(
            env_id,
            max_episode_steps=max_episode_steps,
            seed=seed,
            shift=self.params["dynamics"],
            obs_noise_std=self.params["sensor_noise_std"],
            visual=self.params["visual"],
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
            if any(a.dtype != np.float32 for a in arrays):
                raise ProtocolError("requests carry float32 arrays only")
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
        params = {
            **self.params,
            "dynamics": self.params["dynamics"].to_dict(),
            "visual": self.params["visual"].to_dict(),
        }
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
        return {"info": _plain_info(info)}, _parts(obs, self.spec)

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
        return fields, [*_parts(result.obs, self.spec), result.executed_action]

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


# ---------------------------------------------------------------------------------------------- process


class RobotStartFailed(RuntimeError):
    """The emulated robot process ended before it was ready; `exit_code` is its status (2: it refused its
    arguments), so a caller can tell a user's mistake from a crash as it does for its other children."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"emulated robot exited during start-up (code {exit_code})")
        self.exit_code = exit_code


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
                link = Channel(zmq.Context.instance(), self.endpoint, f"{uuid.uuid4().hex}/stop", 0.5, 2)
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
    stderr: IO[bytes] | None = None,
) -> tuple[EmulatedRobotProcess, str]:
    """Start a server in a subprocess on a loopback port (a free one unless `port`), or on `endpoint` (an
    `ipc://` path in a private folder keeps other local users off the robot), and wait for `ping`.

    The server binds the port itself and reports it on stdout, so there is no pick-then-bind race. The
    subprocess exits when its parent dies. Raises RuntimeError (after killing it) if it is not up in time.
    Its errors (and, once ready, all its output) go to `stderr` (default: this process's).
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
    popen = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
    )
    proc = EmulatedRobotProcess(popen, "")
    deadline = time.monotonic() + startup_timeout_s
    try:
        proc.endpoint = _read_ready_line(popen, deadline)
        link = Channel(zmq.Context.instance(), proc.endpoint, f"{uuid.uuid4().hex}/spawn", 0.2, 0)
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
                raise RobotStartFailed(popen.wait(timeout=5.0))
            buf += chunk
    for line in buf.decode(errors="replace").splitlines():
        if line.startswith(READY_PREFIX + " "):
            return line.split(" ", 1)[1].strip()
    raise RuntimeError(f"emulated robot printed {buf!r} instead of its ready line")


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    prog = f"python -m {__spec__.name if __spec__ else __name__}"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument(
        "--env",
        default="Hopper-v5",
        help="gymnasium MuJoCo env id, or a camera task (cam:reacher); cameras after @ (NAME:HxW)",
    )
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
    try:
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
    except (ValueError, FileNotFoundError) as exc:  # a bad env, preset or camera: one line, no traceback
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{READY_PREFIX} {server.endpoint}", flush=True)
    # Nothing else goes to stdout: a parent that stopped reading it must never block us.
    with contextlib.suppress(OSError):
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
