"""`robot-wsrl bench estop`: e-stop command -> every runner's driver in safe stop, and the deadman's trip
time against its deadline (DESIGN §6: p99 <= 5 ms on loopback; trip <= deadline + one control period).

Each runner is its own process, as on a robot computer: the real Runner on a null driver at `hz`, with
its real ControlServer (CURVE over tcp loopback). The driver stamps `time.perf_counter()` the moment its
`safe_stop` is called and writes the stamp to stdout; on Linux perf_counter is CLOCK_MONOTONIC, one
clock for every process, so the parent compares it with the time it sent the command. One trial e-stops
all runners in the set with one `ControlClient.send` and measures until the last driver stopped, then
releases them. The deadman trial sends "supervising" heartbeats from a plain CURVE socket, stops, and
measures from the last heartbeat sent to the driver's stop.

The loaded case (DESIGN §6: p99 <= 20 ms, 0 lost of >= 1,000) repeats the one-runner trials while a real
`robot-wsrl session` runs beside them on the same cores, as `make demo` runs it: a learner doing updates at
nice +10, its validation workers, a linked runner and the emulated robot. The session publishes a version
every 100 updates, so a validation is running for most of the trials (reported, with the CPU time the
cores were busy). The runner under test runs at the priority the session gives its runner. A stop whose
safe stop or confirmation does not come within STOP_TIMEOUT_S is lost (counted, not timed).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import zmq
from onnx import TensorProto, helper

from robot_wsrl.apps import session
from robot_wsrl.bench.machine import cpu_description
from robot_wsrl.console.client import ClientOptions, ControlClient
from robot_wsrl.core.artifacts import POLICY_ONNX, POLICY_SIDECAR
from robot_wsrl.core.lifetime import die_with_parent
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.robot.policy import PolicyMetadata, sha256_bytes
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.endpoints import FILE_NAME, Endpoints, load_endpoints
from robot_wsrl.wire.protocol import HeartbeatMessage, encode

OBS_DIM, ACT_DIM = 11, 3
TARGET_P99_MS = 5.0
TARGET_P99_MS_LOADED = 20.0
# The session that loads the host: `make demo`'s, with a version (so a validation) every 100 updates.
LOAD_SESSION = ("--publish-every", "100")
LOAD_START_TIMEOUT_S = 2 * session.START_TIMEOUT_S  # torch imports, version 0, warmup, a first validation
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 2.0
HEARTBEAT_S = 0.1
SUPERVISE_S = 1.0  # heartbeats before the console "dies" in a deadman trial


def write_policy(directory: Path, spec: EnvSpec, version: int = 0) -> Path:
    """A valid policy that needs no torch (mean = 0.1 * obs[:, :act_dim], log_std = the same): what is
    measured here is the stop path, not the policy."""
    if spec.obs_dim < spec.act_dim:
        raise ValueError("this policy reads its action from the first act_dim observations")
    nodes = [
        helper.make_node("Slice", ["obs", "starts", "ends", "axes"], ["head"]),
        helper.make_node("Mul", ["head", "scale"], ["mean"]),
        helper.make_node("Mul", ["head", "scale"], ["log_std"]),
    ]
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [spec.act_dim]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]),
    ]
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", spec.obs_dim])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", spec.act_dim])
            for n in ("mean", "log_std")
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = PolicyMetadata(spec, version, None, 0, "bench").to_dict()
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    data = model.SerializeToString()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / POLICY_ONNX).write_bytes(data)
    (directory / POLICY_SIDECAR).write_text(json.dumps({**meta, "sha256": sha256_bytes(data)}))
    return directory / POLICY_ONNX


# ----- one runner process -----


class _StampingDriver:
    """A null driver that writes `stop <perf_counter>` to stdout the moment safe_stop is called."""

    def __init__(self, period_s: float) -> None:
        from robot_wsrl.robot.drivers.null import NullDriver

        self._driver = NullDriver(OBS_DIM, ACT_DIM, control_period_s=period_s)
        self.spec = self._driver.spec

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return self._driver.reset(seed)

    def step(self, action: np.ndarray) -> Any:
        return self._driver.step(action)

    def safe_stop(self) -> None:
        stamp = time.perf_counter()
        sys.stdout.write(f"stop {stamp!r}\n")
        sys.stdout.flush()

    def close(self) -> None:
        self._driver.close()


def worker(argv: Sequence[str]) -> None:
    """NAME ENDPOINT KEYDIR POLICY HZ DEADMAN_S: serve one runner until stdin closes."""
    from robot_wsrl.apps.options import bind_control
    from robot_wsrl.robot.control import ControlServer
    from robot_wsrl.robot.policy import OnnxPolicy
    from robot_wsrl.robot.runner import Runner

    name, endpoint, keydir, policy_path, hz, deadman = argv
    driver = _StampingDriver(1.0 / float(hz))
    runner = Runner(driver, OnnxPolicy.load(policy_path), seed=0)
    ctx = zmq.Context()
    server = ControlServer(
        bind_control(ctx, endpoint, name, Path(keydir), plain=False),
        name,
        secure=True,
        deadman_s=float(deadman),
        ctx=ctx,
        boost=True,  # as a runner's command line serves it: the control thread at a raised priority
    )
    server.attach(runner)
    server.start()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        runner.run(stop_event=stop)
    finally:
        server.close()
        transport.shutdown(ctx)


# ----- the parent -----


class _Worker:
    """A runner process and a thread turning its stop stamps into a queue."""

    def __init__(
        self, name: str, endpoint: str, keydir: Path, policy: Path, hz: int, deadman_s: float
    ) -> None:
        self.name, self.endpoint = name, endpoint
        command = [sys.executable, "-m", "robot_wsrl.bench.estop", name, endpoint, str(keydir), str(policy)]
        # Its log (the latch logs every stop, as a real runner does) goes to a file, not to our output.
        with open(keydir.parent / f"{name}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*command, str(hz), str(deadman_s)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                preexec_fn=die_with_parent(session.RUNNER_NICE),  # as a session starts its runner
            )
        self.stops: queue.Queue[float] = queue.Queue()
        self.ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("stop "):
                self.stops.put(float(line.split()[1]))
            elif line.strip() == "ready":
                self.ready.set()

    def stop_after(self, t0: float) -> float:
        """The first safe-stop stamp at or after `t0` (raises queue.Empty after STOP_TIMEOUT_S)."""
        while True:
            stamp = self.stops.get(timeout=STOP_TIMEOUT_S)
            if stamp >= t0:
                return stamp

    def drain(self) -> None:
        while not self.stops.empty():
            self.stops.get_nowait()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def _estop_trials(
    client: ControlClient, workers: list[_Worker], trials: int, rng: random.Random
) -> dict[str, Any]:
    """Per trial: send -> last driver's safe stop, and send -> last runner's confirmation, in seconds; a
    trial whose stop or confirmation did not come within STOP_TIMEOUT_S is lost."""
    names = [w.name for w in workers]
    stop_s, confirm_s, lost = [], [], 0
    for _ in range(trials):
        time.sleep(rng.uniform(0.002, 0.012))  # not phase-locked to the runners' control period
        for w in workers:
            w.drain()
        t0 = time.perf_counter()
        results = client.collect(client.send("estop", names))
        try:
            stopped = max(w.stop_after(t0) for w in workers) - t0
        except queue.Empty:
            stopped = None
        if stopped is None or not all(r.ok and r.latency_s is not None for r in results):
            lost += 1
        else:
            stop_s.append(stopped)
            confirm_s.append(max(r.latency_s or 0.0 for r in results))
        released = client.command("release", names)
        if stopped is not None and not all(r.ok for r in released):
            raise RuntimeError(f"a release failed: {released}")
    return {"stop": stop_s, "confirm": confirm_s, "lost": lost}


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class _LoadSession:
    """`robot-wsrl session` in the background, as `make demo` runs it, and a thread sampling whether its
    learner is validating a version."""

    def __init__(self, directory: Path, args: Sequence[str]) -> None:
        self.dir = directory
        command = [sys.executable, "-m", "robot_wsrl.apps.cli", "session", "--out", str(directory)]
        command += ["--steps", str(10**12), *args]
        directory.mkdir(parents=True)
        with open(directory.parent / "load-session.log", "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=session.REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        self.client: session.StatusClient | None = None
        self.samples: list[bool] = []
        self.sampling = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)

    def wait_busy(self) -> None:
        """Until the learner updates and its gate has validated (or is validating) a new version."""
        deadline = time.monotonic() + LOAD_START_TIMEOUT_S
        while not self._validating(self._learner()):
            self.check(time.monotonic() > deadline)
            time.sleep(0.5)
        self.sampling.set()
        self.sampler.start()

    def _learner(self) -> dict[str, Any] | None:
        if self.client is None:
            if not (self.dir / FILE_NAME).exists():
                return None
            endpoints = load_endpoints(self.dir)
            assert endpoints.learner is not None
            self.client = session.StatusClient(
                {"learner": endpoints.learner[1]},
                self.dir / "keys",
                endpoints.plain,
                own=session.OPERATOR_KEY,
            )
        return self.client.status("learner")

    @staticmethod
    def _validating(status: dict[str, Any] | None) -> bool:
        if status is None or not status["updates"]:
            return False
        gate = status["gate"]
        return bool(gate["validating"]) or any(v["version"] > 0 for v in gate["verdicts"])

    def check(self, late: bool = False) -> None:
        """Raise, with the end of its log, if the session exited (or is `late` to get busy)."""
        if self.proc.poll() is None and not late:
            return
        what = "was not validating in time" if late else f"exited with code {self.proc.returncode}"
        tail = (self.dir.parent / "load-session.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the load session {what}:\n{tail}")

    def _sample(self) -> None:
        while self.sampling.is_set():
            status = self._learner()
            if status is not None:
                self.samples.append(bool(status["gate"]["validating"]))
            time.sleep(0.5)

    def close(self) -> None:
        self.sampling.clear()
        if self.sampler.is_alive():
            self.sampler.join(5.0)  # it uses the client closed below
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the session stops runner, learner and robot in order
            try:
                self.proc.wait(session.STOP_TIMEOUT_S * 3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.client is not None:
            self.client.close()


def _loaded_trials(
    client: ControlClient, worker: _Worker, trials: int, rng: random.Random, tmp: Path, args: Sequence[str]
) -> dict[str, Any]:
    """The one-runner trials with a session busy beside them; the load it made."""
    load = _LoadSession(tmp / "load-session", args)
    try:
        load.wait_busy()
        busy0, total0 = _cpu_times()
        times = _estop_trials(client, [worker], trials, rng)
        busy1, total1 = _cpu_times()
        validating = sum(load.samples) / max(len(load.samples), 1)
        load.check()  # busy throughout
    finally:
        load.close()
    if not times["stop"]:
        raise RuntimeError(f"all {trials} e-stops under load were lost")
    return {
        "estops_loaded": trials,
        "estop_lost_loaded": times["lost"],
        "estop_p50_ms_loaded": _ms(times["stop"], 50),
        "estop_p99_ms_loaded": _ms(times["stop"], 99),
        "estop_max_ms_loaded": max(times["stop"]) * 1e3,
        "estop_confirm_p99_ms_loaded": _ms(times["confirm"], 99),
        "loaded_cpu_busy": (busy1 - busy0) / max(total1 - total0, 1),
        "loaded_validating_fraction": validating,
    }


def _deadman_trial(client: ControlClient, worker: _Worker, keydir: Path) -> float:
    """A console holds `worker`'s deadman, then goes silent: seconds from its last heartbeat to the stop."""
    ctx = zmq.Context()
    try:
        sock = transport.secure_client(
            ctx,
            zmq.DEALER,
            worker.endpoint,
            keys.load_curve_keys(keydir, "deadman"),
            keys.load_public_key(keydir, worker.name),
        )
        worker.drain()
        last = time.perf_counter()
        until = last + SUPERVISE_S
        while time.perf_counter() < until:
            beat = HeartbeatMessage("deadman", "console", time.time(), "supervising")
            # Stamped before the send: the runner cannot receive a heartbeat before it is sent, while a
            # stamp taken after the send can land later than the receipt on a busy machine (the sender
            # descheduled in between), which made a trip look shorter than the deadline.
            last = time.perf_counter()
            if not transport.send_frames(sock, encode(beat), 1.0):
                raise RuntimeError(f"{worker.name}: cannot send heartbeats")
            time.sleep(HEARTBEAT_S)
        trip = worker.stop_after(last) - last
    finally:
        transport.shutdown(ctx)
    released = client.command("release", [worker.name])
    if not released[0].ok:
        raise RuntimeError(f"a release failed: {released}")
    return trip


def run_estop_benchmark(
    trials: int = 300,
    runner_counts: Sequence[int] = (1, 8),
    hz: int = 100,
    deadman_s: float = 0.5,
    deadman_trials: int = 5,
    seed: int = 0,
    loaded_trials: int = 1000,
    load_args: Sequence[str] = LOAD_SESSION,
) -> dict[str, Any]:
    """E-stop latency for each number of runners, the deadman trip, and (`loaded_trials` > 0) one-runner
    latency with a session busy beside it (`load_args`: its `robot-wsrl session` arguments); one dict of
    measurements."""
    rng = random.Random(seed)
    spec = EnvSpec("bench-null", OBS_DIM, ACT_DIM, (-1.0,) * ACT_DIM, (1.0,) * ACT_DIM, 1.0 / hz)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        keydir = Path(tmp) / "keys"
        names = [f"robot{i + 1}" for i in range(max(runner_counts))]
        for name in names:
            keys.new_identity(keydir, name, "runner")
        keys.new_identity(keydir, "console", "console")
        keys.new_identity(keydir, "deadman", "console")
        policy = write_policy(Path(tmp) / "policy", spec)
        workers = [
            _Worker(name, f"tcp://127.0.0.1:{_free_port()}", keydir, policy, hz, deadman_s) for name in names
        ]
        client = None
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            for w in workers:
                if not w.ready.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"{w.name} did not start within {START_TIMEOUT_S} s")
            endpoints = Endpoints({w.name: w.endpoint for w in workers}, keys=keydir)
            client = ControlClient(endpoints, "console", ClientOptions(reply_timeout_s=STOP_TIMEOUT_S))
            if not client.wait_for_status(START_TIMEOUT_S):
                raise RuntimeError("not every runner answered a status request")
            # What the runners' control threads got (fifo, nice or normal: the host's permissions decide).
            control = (client.snapshot().runners[0].status or {}).get("control", {})
            result["control_thread_priority"] = control.get("priority")
            for count in runner_counts:
                times = _estop_trials(client, workers[:count], trials, rng)
                for q, label in ((50, "p50"), (99, "p99")):
                    result[f"estop_{label}_ms_{count}"] = _ms(times["stop"], q)
                    result[f"estop_confirm_{label}_ms_{count}"] = _ms(times["confirm"], q)
                result[f"estop_max_ms_{count}"] = max(times["stop"]) * 1e3
                result[f"estop_lost_{count}"] = times["lost"]
            trips = [_deadman_trial(client, workers[0], keydir) for _ in range(deadman_trials)]
            if loaded_trials:
                result |= _loaded_trials(client, workers[0], loaded_trials, rng, Path(tmp), load_args)
        finally:
            if client is not None:
                client.close()
            for w in workers:
                w.close()
    period_ms = 1e3 / hz
    result.update(
        watchdog_trip_ms=max(trips) * 1e3,
        watchdog_trip_p50_ms=_ms(trips, 50),
        watchdog_deadline_ms=deadman_s * 1e3,
        control_period_ms=period_ms,
        targets_met={
            **{f"estop_p99_ms_{n}": result[f"estop_p99_ms_{n}"] <= TARGET_P99_MS for n in runner_counts},
            **{f"estop_lost_{n}": result[f"estop_lost_{n}"] == 0 for n in runner_counts},
            "watchdog_trip_ms": max(trips) * 1e3 <= deadman_s * 1e3 + period_ms,
            **(
                {
                    "estop_p99_ms_loaded": result["estop_p99_ms_loaded"] <= TARGET_P99_MS_LOADED,
                    "estop_lost_loaded": result["estop_lost_loaded"] == 0 and loaded_trials >= 1000,
                }
                if loaded_trials
                else {}
            ),
        },
        trials=trials,
        deadman_trials=deadman_trials,
        control_hz=hz,
        transport="CURVE, tcp loopback, one process per runner",
        cpu=cpu_description(),
        load_average_1min=os.getloadavg()[0],
    )
    return result


if __name__ == "__main__":
    worker(sys.argv[1:])
