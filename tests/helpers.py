"""Helpers shared by test modules (imported as `helpers`; tests/ is on the path): plain functions, classes
and constants. Pytest fixtures live in conftest.py; no test module imports another test module (a test in
test_layout.py checks it). Nothing here imports torch at import time."""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import zmq
from onnx import TensorProto, helper

from robot_wsrl.apps.options import bind_control
from robot_wsrl.apps.overrides import hydra_list
from robot_wsrl.bench.estop import write_policy
from robot_wsrl.console.client import ControlClient
from robot_wsrl.core.artifacts import (
    CHECKPOINT,
    POLICY_DIR,
    POLICY_ONNX,
    POLICY_SIDECAR,
    SPOOL_DIR,
    sidecar_path,
)
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.robot.control import ControlServer
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.link import LearnerLink, LinkOptions
from robot_wsrl.robot.policy import OnnxPolicy, PolicyMetadata, sha256_bytes
from robot_wsrl.robot.runner import Runner
from robot_wsrl.wire import keys, signing, transport
from robot_wsrl.wire.protocol import (
    Ack,
    Command,
    Credit,
    HeartbeatMessage,
    PolicyMessage,
    Reply,
    Status,
    StatusRequest,
    Transition,
    Transitions,
    decode,
    encode,
)
from robot_wsrl.wire.spool import TransitionSpool

WAIT_S = 60.0  # default deadline of a liveness wait: generous on a loaded 2-core machine
PERIOD_S = 0.01  # control period of the null-driver runners under test (100 Hz)
NULL_SPEC = NullDriver(3, 1, control_period_s=PERIOD_S).spec

# A WSRL-shaped agent small enough for unit tests: every mechanism, tiny sizes.
SMALL_AGENT = [
    "agent.num_critics=4",
    "agent.critic_hidden=[32,32]",
    "agent.actor_hidden=[32,32]",
    "agent.batch_size=16",
    "agent.utd=2",
    "progress=false",
    "tensorboard=false",
]
TINY_WARMUP = 60  # warm-up steps of a tiny learner (a session's or a test's own)
# Sessions on the tiny agent: short validations, a version every 40 updates.
TINY_SESSION = ["--warmup", str(TINY_WARMUP), "--publish-every", "40"]
TINY_SESSION += [
    f"--validate-arg={arg}" for arg in ("episodes=3", "variants=[nominal]", "max_episode_steps=50")
]
TINY_LEARNER = [*SMALL_AGENT, "device=cpu", "threads=1"]
# A learner process with two runner threads (test_learner_link and the tests beside it).
LEARNER_WAIT_S = 120.0  # generous: a shared 2-core machine, torch import and ONNX exports in the learner
RUNNERS = ("robot1", "robot2")
CREDIT = 40
EPISODE_STEPS = 50


# ----- waiting, ports, processes -----


def free_port() -> int:
    """A loopback TCP port free at the moment (for a child that must be told its port in advance)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "condition", poll_s: float = 0.02
) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `timeout_s` ends (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def pump_until(client: ControlClient, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    """Pump `client` until `condition` holds (True) or `timeout_s` ends (False: a test may expect that)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        client.pump(0.05)
    return True


def spawn_cli(
    args: list[str], log: Path, preexec: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    """`robot-wsrl ARGS` in a child process, its output (both streams) into `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "robot_wsrl.apps.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"MUJOCO_GL": "disable"},
            preexec_fn=preexec,
        )


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the operator's Ctrl-C), then a kill if it has not ended within 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


class Proc:
    """A robot-wsrl subprocess whose output goes to a file (read on failure)."""

    def __init__(self, args: list[str], log: Path, preexec: Callable[[], None] | None = None) -> None:
        self.log = log
        self.popen = spawn_cli(args, log, preexec)

    def signal(self, sig: int) -> int:
        self.popen.send_signal(sig)
        return self.popen.wait(WAIT_S)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT_S)


# ----- keys and policies -----


def make_keys(path: Path, runners: tuple[str, ...] = ("robot1", "robot2")) -> Path:
    """Key pairs for `runners` and a console named "console"."""
    for name in runners:
        keys.new_identity(path, name, "runner")
    keys.new_identity(path, "console", "console")
    return path


def stranger_keys(path: Path, known: Path, runners: tuple[str, ...] = ("robot1", "robot2")) -> Path:
    """A console key pair the runners never saw, under the same name, with the runners' public keys."""
    keys.new_identity(path, "console", "console")
    for name in runners:
        (path / f"{name}.key").write_bytes((known / f"{name}.key").read_bytes())
    return path


def signed_policy(keydir: Path, out: Path, version: int, run_id: str | None) -> PolicyMessage:
    """A valid policy of `version`, its sidecar carrying `run_id`, signed by the learner's key."""
    onnx_path = write_policy(out / f"{run_id}-v{version}", NULL_SPEC, version)
    sidecar = json.loads(sidecar_path(onnx_path).read_text())
    if run_id is not None:
        sidecar["run_id"] = run_id
    text = json.dumps(sidecar)
    sidecar_path(onnx_path).write_text(text)
    return signing.signed_policy_message(
        "learner", keys.load_signing_key(keydir, "learner"), onnx_path.read_bytes(), text
    )


PENDULUM = EnvSpec("InvertedPendulum-v5", 4, 1, (-3.0,), (3.0,), 0.04)
BALANCES = [0.3, 3.0, 0.3, 0.5]  # action = 3 tanh(obs . w): a PD controller that holds the pole up
FALLS = [0.0, 0.0, 0.0, 0.0]  # no action: the pole falls in about 20 steps
# Short episodes, two variants, three paired seeds: each validation runs in well under a second.
FAST = ["env=inverted_pendulum", "episodes=3", "max_episode_steps=50", "variants=[nominal,real]"]
FAST += ["success_return.inverted_pendulum=50"]


def write_linear_policy(
    directory: Path, weights: list[float], version: int = 0, parent: int | None = None, step: int = 0
) -> Path:
    """A policy file pair for InvertedPendulum as `robot-wsrl export` writes it (no torch): mean =
    obs @ weights, log_std = -1."""
    w = np.asarray(weights, dtype=np.float32).reshape(PENDULUM.obs_dim, 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "w"], ["mean"]),
            helper.make_node("MatMul", ["obs", "zero"], ["flat"]),
            helper.make_node("Add", ["flat", "minus_one"], ["log_std"]),
        ],
        "linear",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", PENDULUM.obs_dim])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1]) for n in ("mean", "log_std")],
        [
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
            helper.make_tensor("zero", TensorProto.FLOAT, w.shape, [0.0] * w.size),
            helper.make_tensor("minus_one", TensorProto.FLOAT, [], [-1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = PolicyMetadata(PENDULUM, version, parent, step, "test").to_dict()
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / POLICY_ONNX).write_bytes(data)
    side = {**meta, "file": POLICY_ONNX, "size_bytes": len(data), "sha256": sha256_bytes(data)}
    (directory / POLICY_SIDECAR).write_text(json.dumps(side, indent=2))
    return directory / POLICY_ONNX


def tiny_checkpoint(path: Path) -> Path:
    """A tiny untrained 'pre-trained' InvertedPendulum agent saved at `path`: for tests of the wire and the
    processes, not of the learning."""
    from robot_wsrl.learn.agent import Agent
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.envs import make_env
    from robot_wsrl.learn.networks import build_networks
    from robot_wsrl.learn.training import save_training_checkpoint

    cfg = compose_config("finetune", ["env=inverted_pendulum", *SMALL_AGENT])
    env = make_env(cfg.env)
    agent = Agent(build_networks(env.spec.obs_dim, env.spec.act_dim, cfg.agent), cfg.agent)
    saved = save_training_checkpoint(path, agent, env.spec, cfg, 0, {})
    env.close()
    return Path(saved)


def tiny_policy_dir(directory: Path) -> Path:
    """A policy folder holding only a tiny agent's checkpoint (no manifest: the env comes from it)."""
    tiny_checkpoint(directory / CHECKPOINT)
    return directory


# ----- wire records -----


def random_batch(
    runner: str, first_seq: int, n: int, obs_dim: int, act_dim: int, **fields: Any
) -> Transitions:
    """A Transitions batch of `n` rows of random content seeded by `first_seq` (so a resent batch is the
    same batch), one episode (0) that does not end and version 0, unless `fields` say otherwise
    (terminated, truncated, episode_id, success, sender, ...)."""
    rng = np.random.default_rng(first_seq)
    columns: dict[str, Any] = {
        "obs": rng.standard_normal((n, obs_dim)),
        "action": rng.uniform(-1, 1, (n, act_dim)),
        "reward": rng.standard_normal(n),
        "next_obs": rng.standard_normal((n, obs_dim)),
        "terminated": np.zeros(n, bool),
        "truncated": np.zeros(n, bool),
        "episode_id": np.zeros(n, np.int64),
        "policy_version": np.zeros(n, np.int64),
    }
    return Transitions.make(runner, first_seq, **(columns | fields))


def transition_steps(n: int, start: int = 0, episode: int = 0) -> list[Transition]:
    """n steps of one episode (the last one truncated) whose reward is their running index, so a batch's
    content identifies it."""
    return [
        Transition(
            np.full(3, i, np.float32),
            np.zeros(2, np.float32),
            float(i),
            np.full(3, i + 1, np.float32),
            False,
            i == start + n - 1,
            episode,
            i - start,
            1,
        )
        for i in range(start, start + n)
    ]


# ----- runners, learners and consoles under test -----


class RunnerRig:
    """A Runner on the null driver in a thread of this process, with its ControlServer (CURVE) on a free
    loopback port."""

    def __init__(self, name: str, keydir: Path, policy: Path, deadman_s: float | None = None) -> None:
        self.name, self.endpoint = name, f"tcp://127.0.0.1:{free_port()}"
        self.driver = NullDriver(3, 1, control_period_s=PERIOD_S)
        self.runner = Runner(self.driver, OnnxPolicy.load(policy))
        self.ctx = zmq.Context()
        sock = bind_control(self.ctx, self.endpoint, name, keydir, plain=False)
        self.server = ControlServer(sock, name, secure=True, deadman_s=deadman_s, ctx=self.ctx)
        self.server.attach(self.runner)
        self.server.start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.runner.run, kwargs={"stop_event": self.stop}, daemon=True)

    def start(self) -> RunnerRig:
        self.thread.start()
        wait_for(lambda: self.runner.state.value == "fine_tuning", what=f"{self.name} running")
        return self

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(WAIT_S)
        self.server.close()
        transport.shutdown(self.ctx)


class Console:
    """A raw plain DEALER to a runner's control port: commands, status and console heartbeats."""

    _refs = itertools.count(1)  # command refs, unique across consoles

    def __init__(self, endpoint: str, name: str = "console") -> None:
        self.ctx = zmq.Context()
        self.name = name
        self.sock = transport.plain_client(self.ctx, zmq.DEALER, endpoint)

    def _ask(self, msg: Any, match: Callable[[Any], bool], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        assert transport.send_frames(self.sock, encode(msg), timeout_s)
        while time.monotonic() < deadline:
            frames = transport.recv_frames(self.sock, max(0.0, deadline - time.monotonic()))
            if frames is None:
                break
            reply = decode(frames)
            if match(reply):
                return reply
        return None

    def command(self, name: str, timeout_s: float = WAIT_S, **args: Any) -> Reply:
        ref = next(self._refs)
        reply = self._ask(
            Command(self.name, name, args, ref), lambda m: isinstance(m, Reply) and m.ref == ref, timeout_s
        )
        assert reply is not None, f"no reply to {name}"
        return reply

    def status(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        reply = self._ask(StatusRequest(self.name), lambda m: isinstance(m, Status), timeout_s)
        return None if reply is None else reply.status

    def close(self) -> None:
        transport.shutdown(self.ctx)


class FakeLearner:
    """A plain ROUTER that keeps runner "robot1" alive (heartbeats, unlimited credit), acks what it receives
    while `acking` is set, answers replies into `replies`, and sends whatever the test asks it to."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = transport.plain_server(self.ctx, zmq.ROUTER, endpoint)
        self.acking = threading.Event()
        self.acking.set()
        self.received_seq = -1
        self.replies: list[Reply] = []
        self.peer: bytes | None = None
        self.version: int | None = None  # announced in heartbeats
        self._outbox: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, msg: Any) -> None:
        with self._lock:
            self._outbox.append(msg)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        transport.shutdown(self.ctx)

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            frames = transport.recv_frames(self.sock, 0.02)
            if frames is not None:
                self.peer = frames[0].bytes
                msg = decode(frames[1:])
                if isinstance(msg, Transitions):
                    self.received_seq = max(self.received_seq, msg.first_seq + msg.count - 1)
                elif isinstance(msg, Reply):
                    self.replies.append(msg)
            if self.peer is None:
                continue
            with self._lock:
                out, self._outbox = self._outbox, []
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + 0.2
                out += [
                    HeartbeatMessage("learner", "learner", time.time(), "fine_tuning", self.version),
                    Credit("learner", "robot1", 1 << 40),
                ]
                if self.acking.is_set() and self.received_seq >= 0:
                    out.append(Ack("learner", "robot1", self.received_seq))
            for msg in out:
                transport.send_frames(self.sock, [self.peer, *encode(msg)], 1.0)


class LearnerProcess:
    """`robot-wsrl learner` on InvertedPendulum in a subprocess, with a console client for its status."""

    def __init__(
        self,
        endpoint: str,
        keydir: Path,
        checkpoint: Path,
        out: Path,
        pacing: str = "lockstep",
        gate: tuple[str, ...] = (),
    ) -> None:
        """`gate`: validation args for a learner that gates hardware runners (empty: no gate)."""
        self.endpoint, self.out = endpoint, out
        self.command = [
            sys.executable,
            "-m",
            "robot_wsrl.apps.cli",
            "learner",
            f"service.bind={endpoint}",
            f"service.keys={keydir}",
            "service.publish_every=15",
            f"service.credit={CREDIT}",
            f"service.pacing={pacing}",
            *([f"service.validate_args={hydra_list(list(gate))}"] if gate else ["service.gate=false"]),
            "env=inverted_pendulum",
            *SMALL_AGENT,
            f"run.checkpoint={checkpoint}",
            f"run.warmup_steps={TINY_WARMUP}",
            f"out_dir={out}",
            "device=cpu",
            "threads=1",
        ]
        self.keydir = keydir
        self.ctx = zmq.Context()
        self.console: zmq.Socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start the learner, with a new status socket: a reply the previous process sent late (a loaded
        machine) must never be read as this one's status."""
        if self.console is not None:
            self.console.close(linger=0)
        self.console = transport.secure_client(
            self.ctx,
            zmq.DEALER,
            self.endpoint,
            keys.load_curve_keys(self.keydir, "console"),
            keys.load_public_key(self.keydir, "learner"),
        )
        self.log = open(self.out.parent / f"learner-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)

    def status(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        assert self.console is not None
        while self.console.poll(0):  # replies to earlier requests that came after their wait: stale
            self.console.recv_multipart()
        if not transport.send_frames(self.console, encode(StatusRequest("console")), timeout_s):
            return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            frames = transport.recv_frames(self.console, deadline - time.monotonic())
            if frames is not None:
                msg = decode(frames)
                if isinstance(msg, Status):
                    return msg.status
        return None

    def wait_status(self, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + LEARNER_WAIT_S
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            status = self.status()
            if status is not None and ok(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"learner never reached: {what}; last status {self.status()}\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text()[-4000:]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(60) == 0, self.output()
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(30)

    def close(self) -> None:
        self.stop()
        self.log.close()
        transport.shutdown(self.ctx)


@dataclass
class RunnerThread:
    """A Runner on InvertedPendulum with its LearnerLink, in a thread of this process."""

    link: LearnerLink
    runner: Runner
    spool: TransitionSpool
    ctx: zmq.Context
    thread: threading.Thread
    stop: threading.Event

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.link.close()
        self.runner.driver.close()
        self.spool.close()
        transport.shutdown(self.ctx)


def start_runner_thread(
    name: str, seed: int, endpoint: str, keydir: Path, state: Path, on_learner_lost: str, tag: str = "sim"
) -> RunnerThread:
    """A runner linked to the learner at `endpoint` (CURVE), running once the learner's policy arrived."""
    ctx = zmq.Context()
    sock = transport.secure_client(
        ctx,
        zmq.DEALER,
        endpoint,
        keys.load_curve_keys(keydir, name),
        keys.load_public_key(keydir, "learner"),
    )
    spool = TransitionSpool(state / SPOOL_DIR, name, fsync="never")
    options = LinkOptions(
        batch_size=8,
        heartbeat_s=0.2,
        deadline_s=1.5,
        resend_after_s=1.0,
        on_learner_lost=on_learner_lost,
        tag=tag,
    )
    link = LearnerLink(sock, spool, keys.load_verify_keys(keydir), state / POLICY_DIR, options)
    link.start()
    path = link.wait_for_policy(LEARNER_WAIT_S)
    if path is None:  # leave nothing behind: a context left to the garbage collector can hang it in term()
        link.close()
        spool.close()
        transport.shutdown(ctx)
        raise AssertionError(f"{name}: no policy from the learner in {LEARNER_WAIT_S:.0f} s")
    driver = make_driver("gym:InvertedPendulum-v5", seed=seed, max_episode_steps=EPISODE_STEPS)
    policy = OnnxPolicy.load(path, expected_spec=driver.spec)
    runner = Runner(driver, policy, seed=seed, realtime=False, on_transition=link.on_transition)
    link.attach(runner)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    return RunnerThread(link, runner, spool, ctx, thread, stop)


# Gate settings under which every version with positive returns passes: the candidate need only be shown
# above 1% of the reference's return, at 51% confidence (a larger margin alone is no pass: the paired test
# of c - (1 - margin) r grows noisier with the margin, and 3 pairs leave it undecided).
PASS_EVERY_VERSION = ("reference.margin=0.99", "reference.confidence=0.51")


# ----- headless rendering: camera tasks render with MUJOCO_GL=egl in a subprocess -----

RENDER_TIMEOUT_S = 300.0  # generous: a loaded 2-core CI box renders in software


@functools.cache
def egl_problem() -> str | None:
    """None when a subprocess can render with MUJOCO_GL=egl here, else why not (the suite itself runs with
    MUJOCO_GL=disable, and mujoco picks its GL backend when first imported)."""
    probe = "import mujoco; r = mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8); r.close()"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "MUJOCO_GL": "egl"},
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
    return lines[-1]


def egl_env() -> dict[str, str]:
    """The environment of a subprocess that renders; skips the calling test where nothing can."""
    import pytest

    problem = egl_problem()
    if problem is not None:
        pytest.skip(f"no headless OpenGL (MUJOCO_GL=egl) on this machine: {problem}")
    return {**os.environ, "MUJOCO_GL": "egl"}
