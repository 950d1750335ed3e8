"""`robot-wsrl session`: the emulated robot, a learner and a runner linked to it, on this machine, in one
command, with one live progress line. Before it starts any of them it checks that the policy fits the robot
(and renders, for a camera policy) and the warmup the learner will really use (session_preflight); its
exit codes are EXIT_CODES (--help).

Each part runs as it would across machines (its own process, the ZeroMQ link, signed policies), so the
session exercises the real stack. The learner and the runner run in their own process groups so that a
Ctrl-C reaches only this process, which then stops them in order: the runner first (it drains its spool
to the learner), then the learner, then the robot. At the end it copies the best promoted version (the
last one the validation gate promoted; the pre-trained version 0 if none was) to SESSION/policy/, never an
unvalidated one: the learner's latest version, if different, goes to SESSION/policy-latest-unvalidated/.
It writes the episode returns (CSV + PNG with the promotions and the baseline marked, read from the
learner's durable transition log, so they are exact) and summary.json: what the robot ran and returned on
each policy version, against a baseline (its own episodes on the frozen pre-trained version 0, on the same
preset) and over the session's last third; for a task with a success signal (cam:reacher), the robot's
success rate likewise (each episode's outcome at its last step, carried with its transitions).

Safe on a shared machine: every socket is CURVE by default, with throwaway keys the session makes in
SESSION/keys (mode 0700, every file 0600): the learner's, the runner's, `console` for the operator's tools
(`robot-wsrl console/status/stop --session SESSION`) and `session` for the session's own status client.
No other local user can read them, so none can steer, stop or feed the robot; `--plain` (loopback only)
is for when that does not matter. The robot comes first on the CPU too: the learner (and through it each
validation worker) runs at nice +10, the runner at a higher priority where the system allows it.

The progress line and summary.json show the robot's own state (e-stopped, faulted, paused, holding and
why) from the runner's control channel, beside the learner's phase. summary.json also has what the gate
measured of each version it judged (return and, for a task with a success signal, success rate per
preset), the learner's replay (bytes per transition) and each process's peak resident memory.

A camera policy (made on `cam:TASK[@CAM:HxW]`) runs the same way: the emulated robot renders the cameras
the policy sees (a headless machine needs MUJOCO_GL=egl), the runner streams the frames, and the learner
caches the frozen encoder's features in a replay capped at --steps transitions.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import zmq

from robot_wsrl.apps.errors import reports_errors, user_error
from robot_wsrl.apps.options import CommandParser, non_negative_int, positive_int
from robot_wsrl.apps.overrides import hydra_list
from robot_wsrl.apps.session_summary import (
    episode_returns,
    gate_summary,
    promoted_versions,
    promotion_steps,
    robot_returns,
    validated_versions,
    validation_results,
)
from robot_wsrl.apps.streams import ReaderMayLeave
from robot_wsrl.core.artifacts import (
    CHECKPOINT,
    INGEST_LOG,
    MANIFEST,
    POLICY_DIR,
    POLICY_ONNX,
    POLICY_SIDECAR,
    POLICY_SIGNATURE,
    VALIDATION_DIR,
)
from robot_wsrl.core.lifetime import die_with_parent, stop_on_signals
from robot_wsrl.core.paths import REPO_ROOT, repo_path
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.robot.link import WAIT_HOLDS
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.endpoints import Endpoints, save_endpoints
from robot_wsrl.wire.protocol import Status, StatusRequest, decode, encode

POLL_S = 0.5
STOP_TIMEOUT_S = 30.0  # a child asked to stop that is still up after this is killed
START_TIMEOUT_S = 180.0  # the learner imports torch and exports version 0 before the runner can start
FINISH_TIMEOUT_S = 120.0  # after the runner's last transition: the owed updates, then the end
STALL_S = 60.0  # no new step and no update this long: something is stuck (an e-stopped robot, say)
VERDICT_WAIT_S = 60.0  # at the budget's end: a validation under way gets this long to reach its verdict
# Off real time nothing waits for the robot's clock, but a loaded 2-core host can hold a reply back longer
# than the driver's default deadline; and with one resend, the `real` preset's 1% packet loss drops a
# request twice (an e-stop: link lost) about once in 10,000 steps. Off real time both are relaxed.
FAST_DRIVER_LINK = ["--driver-timeout", "1.0", "--driver-retries", "4"]
RUNNER = "robot1"
OPERATOR_KEY = "console"  # the operator tools' default key name: `robot-wsrl console --session DIR` needs it
SESSION_KEY = "session"  # the session's own status client, a console key of its own
# On a shared host the robot and its e-stop path come first: a busy learner or validation must not delay
# them. A raise of the runner's priority needs CAP_SYS_NICE; without it the runner keeps nice 0.
LEARNER_NICE, RUNNER_NICE = 10, -5
STOPPED_STATES = ("estopped", "faulted", "paused")  # the robot waits for an operator: not a stall
# The emulated robot stands for hardware: each version is validated before it may run there, with the
# gate's defaults (configs/validate.yaml), told the robot's preset: judged as the robot runs it on that
# preset (it must improve, or tie within the margin), with nominal as a safety net, by a sequential test
# that stops as soon as it is sure (at most 128 episode pairs per preset, in one worker process per core).


LOG_TAIL_LINES = 2  # of a failed child's log, shown with the session's error
TRACEBACK_HEADER = "Traceback (most recent call last):"
ROBOT = "emulated robot"  # its log: logs/robot.log


class ChildFailed(RuntimeError):
    """A child process exited (or never got ready): which one, its exit code and its log."""

    def __init__(self, name: str, code: int | None, log: Path, why: str) -> None:
        super().__init__(f"{name} {why}; its log: {log}")
        self.name, self.code, self.log = name, code, log

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "exit_code": self.code, "log": str(self.log), "log_tail": self.tail()}

    def tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines of its log (where a child's one-line error is), a traceback's frames left out:
        of a traceback, the error line."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        said = [line for line in text.splitlines() if line.strip() and not line[0].isspace()]
        return [line for line in said if line != TRACEBACK_HEADER][-lines:]


def _wait_ready(name: str, path: Path, proc: subprocess.Popen, log: Path, timeout_s: float) -> dict[str, Any]:
    """The JSON a child writes once it serves (its bound endpoint); an error if it exits or is late."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if (code := proc.poll()) is not None:
            raise ChildFailed(name, code, log, f"exited with code {code} before it was ready")
        if time.monotonic() > deadline:
            raise ChildFailed(name, None, log, f"not ready within {timeout_s:.0f} s")
        time.sleep(0.1)
    return dict(json.loads(path.read_text()))


def robot_env(driver: str) -> str:
    """What the emulated robot simulates for a policy made on `driver`: a gymnasium id (`gym:Hopper-v5` ->
    `Hopper-v5`) or a camera task as named there (`cam:reacher@top:84x84`: the cameras the policy sees)."""
    return driver.removeprefix("gym:")


def policy_driver(env_id: str) -> str:
    """The driver name of the robot `robot_env` gives an emulated robot: `Hopper-v5` -> `gym:Hopper-v5`."""
    return env_id if env_id.startswith("cam:") else f"gym:{env_id}"


def replay_capacity(driver: str, steps: int) -> list[str]:
    """The learner's replay capacity for a camera policy: the session's `steps` (it never gets more), not
    the default million transitions, whose frames alone would reserve 23 GB at 84x84 (a learner on a
    machine with less memory would not start). A state task keeps the default (0.1 GB for Hopper)."""
    return [f"run.buffer_capacity={steps}"] if driver.startswith("cam:") or "@" in driver else []


def _env_of(policy_dir: Path) -> dict[str, Any]:
    """The env config the policy was made for: from its manifest if shipped, else from its checkpoint."""
    manifest = policy_dir / MANIFEST
    if manifest.exists():
        return dict(json.loads(manifest.read_text())["env"])
    from robot_wsrl.learn.checkpoint import load_checkpoint  # torch: only for a folder with no manifest

    return dict(load_checkpoint(policy_dir / CHECKPOINT)["config"]["env"])


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A Python child started meanwhile inherits SIGINT ignored (no KeyboardInterrupt): a terminal's
    Ctrl-C then reaches the robot only through this process, which stops it after the runner."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def peak_rss_mb(pid: int) -> float | None:
    """A live process's peak resident memory so far (Linux's VmHWM), in MiB; None where unreadable (gone,
    a zombie, not Linux)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _stop_child(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, then SIGKILL: a child never outlives the session."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10.0)
    return proc.returncode


def make_session_keys(keydir: Path) -> None:
    """Fresh keys for the learner, the runner and two consoles; only this user can read any of them."""
    for name, role in (("learner", "learner"), (RUNNER, "runner"), (OPERATOR_KEY, "console")):
        keys.new_identity(keydir, name, role, force=True)
    keys.new_identity(keydir, SESSION_KEY, "console", force=True)
    keydir.chmod(0o700)
    for path in keydir.iterdir():
        path.chmod(0o600)


class StatusClient:
    """The session's own operator connections, kept open: one DEALER to each peer (the learner, the
    runner's control channel), CURVE with console key `own` unless plain; `status(name)` is None while
    that peer does not answer."""

    def __init__(self, peers: dict[str, str], keydir: Path, plain: bool, own: str = SESSION_KEY) -> None:
        self.ctx, self.own = zmq.Context(), own
        self.socks = {name: self._connect(name, endpoint, keydir, plain) for name, endpoint in peers.items()}

    def _connect(self, name: str, endpoint: str, keydir: Path, plain: bool) -> zmq.Socket:
        if plain:
            return transport.plain_client(self.ctx, zmq.DEALER, endpoint)
        own = keys.load_curve_keys(keydir, self.own)
        return transport.secure_client(
            self.ctx, zmq.DEALER, endpoint, own, keys.load_public_key(keydir, name)
        )

    def status(self, name: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
        sock = self.socks[name]
        if not transport.send_frames(sock, encode(StatusRequest(self.own)), timeout_s):
            return None
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            frames = transport.recv_frames(sock, left)
            if frames is not None and isinstance(msg := decode(frames), Status):
                return msg.status
        return None

    def close(self) -> None:
        transport.shutdown(self.ctx)


def robot_state(status: dict[str, Any] | None) -> str:
    """What the robot is doing, from its runner's control-channel status: `estopped`/`faulted`,
    `holding (why)` (the link holds it: learner lost, spool full ...), `paused`, `running` (its policy
    moves it, whatever the learner's phase), `unknown` while the runner does not answer."""
    if status is None:
        return "unknown"
    if not status.get("attached", True) or "state" not in status:
        return "starting"
    state = str(status["state"])
    holds = set(status.get("link", {}).get("holds", ())) - WAIT_HOLDS
    if state in ("estopped", "faulted"):
        return state
    if held := sorted(holds - {"operator"}):
        return f"holding ({', '.join(held)})"
    if "operator" in holds:
        return "paused"
    return "running" if state in ("warmup", "fine_tuning") else state


def robot_summary(status: dict[str, Any] | None) -> dict[str, Any]:
    """The robot's last state for summary.json, with the cause of its last stop."""
    state = robot_state(status)
    if status is None or "state" not in status:
        return {"state": state}
    return {
        "state": state,
        "runner_state": status["state"],
        "holds": status.get("link", {}).get("holds", []),
        "last_stop_cause": status.get("last_stop_cause"),
        "last_stop_detail": status.get("last_stop_detail"),
        "policy_version": status.get("policy_version"),
    }


@dataclass
class Progress:
    """One line, redrawn in place on a terminal (a line every few seconds in a log)."""

    stream: TextIO = sys.stdout
    every_s: float = 5.0
    _last: float = 0.0
    _shown: bool = False

    def show(
        self, elapsed_s: float, budget: int, status: dict[str, Any], robot: dict[str, Any] | None
    ) -> None:
        returns = [r for runner in status["runners"].values() for r in runner["recent_returns"]]
        recent = f"{sum(returns) / len(returns):8.1f}" if returns else "       -"
        outcomes = [ok for runner in status["runners"].values() for ok in runner.get("recent_success", [])]
        if outcomes:
            recent += f" success {sum(outcomes) / len(outcomes):4.0%}"
        state = robot_state(robot)
        if state in ("estopped", "faulted") and robot is not None:
            state = f"{state.upper()} ({robot.get('last_stop_detail') or robot.get('last_stop_cause')})"
        line = (
            f"[{elapsed_s:6.0f} s] robot {state:<11} learner {status['phase']:<11} "
            f"steps {status['step']:>7}/{budget} updates {status['updates']:>7}  recent return {recent}  "
            f"policy v{status['policy_version']} (robot runs v{status['gate']['deployed_version']})"
        )
        if self.stream.isatty():
            print(f"\r{line}\033[K", end="", flush=True, file=self.stream)
            self._shown = True
        elif time.monotonic() - self._last >= self.every_s:
            print(line, flush=True, file=self.stream)
            self._last = time.monotonic()

    def end(self) -> None:
        if self._shown:
            print(flush=True, file=self.stream)


class Session:
    """The three processes and what the session makes of them; `run` returns the summary."""

    def __init__(self, args: argparse.Namespace, stream: TextIO = sys.stdout) -> None:
        self.args = args
        self.out: Path = args.out or Path("runs/session") / time.strftime("%Y%m%d-%H%M%S")
        self.stream = stream  # progress and where-to-find lines
        self.stop = threading.Event()
        self.children: dict[str, subprocess.Popen] = {}
        self.children_lock = threading.Lock()  # a runner restart is not a runner crash
        self.robot: Any = None
        self._robot_dir: Path | None = None  # the private folder of the emulated robot's socket
        self.logs: list[Any] = []
        self.last_status: dict[str, Any] | None = None  # the learner's, kept when the session fails
        self.robot_status: dict[str, Any] | None = None  # the runner's last answer on its control channel
        self._runner_argv: list[str] = []
        self._control = "tcp://127.0.0.1:0"  # the runner's control endpoint, once it has bound one
        self.rows: list[dict[str, Any]] = []  # the robot's finished episodes, read from the learner's log
        self.peak_rss_mb: dict[str, float] = {}  # each child's own (not its validation workers'), while up

    def _log(self, name: str) -> Path:
        """Where child `name` writes its output."""
        return self.out / "logs" / f"{name}.log"

    def _open_log(self, name: str) -> BinaryIO:
        log = open(self._log(name), "ab")  # noqa: SIM115 - closed in _shutdown
        self.logs.append(log)
        return log

    def _spawn(self, name: str, argv: list[str], nice: int = 0) -> subprocess.Popen:
        log = self._open_log(name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "robot_wsrl.apps.cli", *argv],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the session, which stops children in order
            preexec_fn=die_with_parent(nice),  # even a kill -9 of the session takes its children with it
        )
        self.children[name] = proc
        return proc

    def _start_runner(self) -> None:
        """Start the runner and wait until its control channel serves. The first start binds a free port;
        a restart binds the same one, where the consoles look for it."""
        ready = self.out / "logs" / "runner.ready.json"
        ready.unlink(missing_ok=True)
        proc = self._spawn("runner", [*self._runner_argv, "--control", self._control], RUNNER_NICE)
        log = self._log("runner")
        self._control = str(_wait_ready("runner", ready, proc, log, START_TIMEOUT_S)["control"])

    def restart_runner(self, sig: int = signal.SIGKILL) -> int:
        """Stop the runner with `sig` (SIGKILL: a crash) and start it again on the same state folder and
        control endpoint, as a robot computer's service manager would; the new runner's pid. A runner
        e-stopped before comes back e-stopped (its latch is durable)."""
        with self.children_lock:
            proc = self.children["runner"]
            proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10.0)
            self._start_runner()
            return self.children["runner"].pid

    def _start(self, env: dict[str, Any]) -> Endpoints:
        """Robot, learner (on a port it picks when it binds), then the runner; where they serve."""
        from robot_wsrl.sim.emulated_robot import RobotStartFailed, spawn_emulated_robot

        a = self.args
        keydir = self.out / "keys"
        make_session_keys(keydir)
        with _sigint_ignored():
            # The robot has no CURVE: an ipc socket in the session's private folder keeps other local
            # users from stepping or stopping it behind the runner's back (plain mode keeps tcp loopback).
            # (in a short temporary folder: a socket path may not exceed 107 bytes).
            self._robot_dir = None if a.plain else Path(tempfile.mkdtemp(prefix="robot-wsrl-"))  # mode 0700
            robot_at = None if self._robot_dir is None else f"ipc://{self._robot_dir}/robot.sock"
            try:
                self.robot, robot_endpoint = spawn_emulated_robot(
                    a.env_id,
                    preset=a.preset,
                    seed=a.seed,
                    realtime=a.realtime,
                    endpoint=robot_at,
                    stderr=self._open_log("robot"),
                )
            except RuntimeError as exc:  # its reason is in its log, as a learner's or a runner's is
                why = str(exc).removeprefix(f"{ROBOT} ")
                code = exc.exit_code if isinstance(exc, RobotStartFailed) else None
                raise ChildFailed(ROBOT, code, self._log("robot"), why) from exc
        overrides = [
            f"env={env['name']}",
            f"run.checkpoint={(a.policy_dir / 'checkpoint.pt').resolve()}",
            f"run.warmup_steps={a.warmup}",
            f"agent.utd={a.utd}",
            f"seed={a.seed}",
            f"out_dir={(self.out / 'learner').resolve()}",
            "threads=1",  # the robot and the runner share this machine: two torch threads would thrash
            *replay_capacity(env["driver"], a.steps),
            *a.overrides,
        ]
        ready = self.out / "logs" / "learner.ready.json"
        service = [
            f"service.keys={keydir.resolve()}",
            f"service.plain={str(a.plain).lower()}",
            "service.bind=tcp://127.0.0.1:0",
            f"service.ready_file={ready.resolve()}",
            f"service.publish_every={a.publish_every}",
            f"service.credit={a.credit}",
            f"service.pacing={'realtime' if a.realtime else 'lockstep'}",
            f"service.validate_args={hydra_list(a.validate_arg)}",
        ]
        proc = self._spawn("learner", ["learner", *service, *overrides], LEARNER_NICE)
        endpoint = str(_wait_ready("learner", ready, proc, self._log("learner"), START_TIMEOUT_S)["endpoint"])
        key_args = ["--keys", str(keydir.resolve()), *(["--plain"] if a.plain else [])]
        runner = ["link-runner", *key_args, "--learner", endpoint, "--name", RUNNER]
        runner += ["--driver", f"emulated:{robot_endpoint}", "--transitions", str(a.steps)]
        runner += ["--state", str((self.out / "runner").resolve()), "--seed", str(a.seed)]
        runner += ["--wait-policy", str(START_TIMEOUT_S)]
        runner += ["--realtime"] if a.realtime else ["--no-realtime", *FAST_DRIVER_LINK]
        runner += ["--ready-file", str((self.out / "logs" / "runner.ready.json").resolve())]
        self._runner_argv = runner
        self._start_runner()
        # Where a console finds this session: `robot-wsrl console --session SESSION`.
        endpoints = Endpoints(
            {RUNNER: self._control}, ("learner", endpoint), plain=a.plain, keys=Path("keys")
        )
        save_endpoints(self.out, endpoints)
        return endpoints

    def _sample_memory(self) -> None:
        """Each running child's peak memory so far (a peak only grows: the last sample before it stops is
        its peak, up to one poll's growth for a runner that ends on its own)."""
        procs = {**self.children, **({"robot": self.robot.popen} if self.robot is not None else {})}
        for name, proc in procs.items():
            if proc.poll() is None and (mb := peak_rss_mb(proc.pid)) is not None:
                self.peak_rss_mb[name] = max(mb, self.peak_rss_mb.get(name, 0.0))

    def _check_children(self) -> bool:
        """Any child gone is an error, except a runner that spent its budget (exit 0): whether it did."""
        with self.children_lock:
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None and not (name == "runner" and code == 0):
                    raise ChildFailed(name, code, self._log(name), f"exited with code {code}")
            if self.robot is not None and (code := self.robot.popen.poll()) is not None:
                raise ChildFailed(ROBOT, code, self._log("robot"), f"exited with code {code}")
            return self.children["runner"].poll() == 0

    def _loop(self, client: StatusClient, started: float) -> None:
        """Poll and show progress until the budget is in and trained on, or a stop. A robot that waits for
        an operator (e-stopped, faulted, paused) is shown as such and is not a stall."""
        progress = Progress(self.stream)
        finish_by: float | None = None
        moved_at, position = time.monotonic(), (0, 0)
        try:
            while not self.stop.wait(POLL_S):
                self._sample_memory()
                runner_done = self._check_children()
                status = client.status("learner")
                robot = self.robot_status if runner_done else client.status(RUNNER)  # None: no answer
                self.robot_status = robot or self.robot_status  # summary.json: how the robot was left
                if status is None:
                    if time.monotonic() - started > START_TIMEOUT_S and self.last_status is None:
                        raise RuntimeError("the learner does not answer status requests")
                    continue
                self.last_status = status
                progress.show(time.monotonic() - started, self.args.steps, status, robot)
                waiting = robot_state(robot) in STOPPED_STATES
                if (status["step"], status["updates"]) != position or waiting:
                    moved_at, position = time.monotonic(), (status["step"], status["updates"])
                elif position[0] and time.monotonic() - moved_at > STALL_S:
                    raise RuntimeError(f"no progress for {STALL_S:.0f} s (see the runner's log)")
                if runner_done:
                    finish_by = finish_by or time.monotonic() + FINISH_TIMEOUT_S
                    if status["step"] >= self.args.steps and status["owed_updates"] == 0:
                        break
                    if time.monotonic() > finish_by:
                        raise RuntimeError(f"the learner did not finish the owed updates: {status}")
        finally:
            progress.end()

    def _await_verdict(self, client: StatusClient) -> None:
        """At the budget's end (not on a stop): give a validation under way up to VERDICT_WAIT_S to reach
        and record its verdict, so that a version judged as the session ends is promoted or held back, not
        lost; one still running then stops with the learner (summary.json's gate.unfinished)."""
        deadline = time.monotonic() + VERDICT_WAIT_S
        waiting = False
        while not self.stop.is_set() and time.monotonic() < deadline:
            self._check_children()  # a learner gone meanwhile is its failure, not a wait to the bound
            status = client.status("learner")
            if status is not None:
                self.last_status = status
                if not status["gate"].get("validating"):
                    return
            if not waiting:
                print(f"waiting up to {VERDICT_WAIT_S:.0f} s for the validation under way", file=self.stream)
                waiting = True
            self.stop.wait(POLL_S)

    def _shutdown(self) -> dict[str, int | None]:
        """Runner, learner, robot, in this order; every one is waited for (killed if it must be)."""
        codes: dict[str, int | None] = {}
        self._sample_memory()
        for name in ("runner", "learner"):
            if name in self.children:
                codes[name] = _stop_child(self.children[name])
        if self.robot is not None:
            codes["robot"] = self.robot.stop()
        if self._robot_dir is not None:
            shutil.rmtree(self._robot_dir, ignore_errors=True)
        for log in self.logs:
            log.close()
        return codes

    def _export(self, promoted: list[int]) -> dict[str, Any]:
        """Read once the learner has stopped: the best promoted version (the last the gate promoted, else
        the pre-trained version 0) -> SESSION/policy/, with its verdict; the learner's latest, if another,
        -> SESSION/policy-latest-unvalidated/. Their versions and folders for summary.json."""
        published = {
            int(path.parent.name[1:]): path.parent
            for path in (self.out / "learner" / POLICY_DIR).glob(f"v*/{POLICY_SIDECAR}")
        }
        if not published:
            return {}
        latest = max(published)
        best = max((v for v in promoted if v in published), default=0)
        found: dict[str, Any] = {"versions": latest, "policy_version": None, "policy": None}
        if best in published:
            found |= {"policy_version": best, "policy": str(self._copy(published[best], self.out / "policy"))}
        unvalidated = latest if latest != best else None
        found["latest_unvalidated_version"] = unvalidated
        found["latest_unvalidated_policy"] = None
        if unvalidated is not None:
            target = self.out / "policy-latest-unvalidated"
            found["latest_unvalidated_policy"] = str(self._copy(published[unvalidated], target))
        return found

    @staticmethod
    def _copy(source: Path, target: Path) -> Path:
        """A policy version's files (ONNX, sidecar, signature) and its validation folder (the verdict)."""
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in (POLICY_ONNX, POLICY_SIDECAR, POLICY_SIGNATURE):
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        if (source / VALIDATION_DIR).is_dir():
            shutil.copytree(source / VALIDATION_DIR, target / VALIDATION_DIR)
        return target

    def _returns(
        self, promoted: list[int], baseline: float | None, validated: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        from robot_wsrl.learn.plots import plot_episode_returns

        rows = self.rows
        csv_path = self.out / "returns.csv"
        with csv_path.open("w", newline="") as f:
            fields = ["step", "runner", "return", "length", "policy_version", "success"]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()  # success: 1 or 0, empty for a task without a success signal
            writer.writerows(
                {**r, "success": "" if r["success"] is None else int(r["success"])} for r in rows
            )
        title = f"robot-wsrl session: {self.args.env_id} ({self.args.preset}), {self.args.policy_dir}"
        policies = self.out / "learner" / POLICY_DIR
        versions = validated_versions(validated, self.args.preset)
        warmup = self.args.effective_warmup
        promotions = promotion_steps(rows, promoted, policies, warmup, self.args.utd)
        plot_episode_returns(
            csv_path, self.out / "returns.png", warmup, title, versions, promotions, baseline
        )
        return rows

    def run(self) -> dict[str, Any]:
        a = self.args
        env = _env_of(a.policy_dir)
        a.env_id = a.env_id or robot_env(env["driver"])
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        client: StatusClient | None = None
        error, failed = None, None
        try:
            endpoints = self._start(env)
            assert endpoints.learner is not None
            client = StatusClient(
                {"learner": endpoints.learner[1], **endpoints.runners}, self.out / "keys", a.plain
            )
            security = "plain (loopback, unauthenticated)" if a.plain else "CURVE (keys in SESSION/keys)"
            print(f"session in {self.out}: {a.env_id} ({a.preset}), {security}", file=self.stream)
            print(f"operator console: robot-wsrl console --session {self.out}", file=self.stream, flush=True)
            if a.effective_warmup != a.warmup:
                print(
                    f"warmup {a.effective_warmup} steps, not {a.warmup}: the learner's first update needs "
                    f"one batch (agent.batch_size={a.batch_size})",
                    file=self.stream,
                    flush=True,
                )
            self._loop(client, started)
            self._await_verdict(client)
        except (RuntimeError, OSError, ValueError) as exc:  # ValueError: bad keys, a robot refusing a preset
            error = str(exc)
            if isinstance(exc, ChildFailed):
                failed = exc.as_dict()
        finally:
            if client is not None:
                client.close()
            codes = self._shutdown()
        summary: dict[str, Any] = {
            "out": str(self.out),
            "env_id": a.env_id,
            "preset": a.preset,
            "policy_dir": str(a.policy_dir),
            "budget_steps": a.steps,
            "warmup_steps": a.effective_warmup,  # before the first update: never under one batch
            "warmup_steps_given": a.warmup,
            "utd": a.utd,
            "interrupted": self.stop.is_set(),
            "error": error,
            "failed_child": failed,
            "wall_s": round(time.monotonic() - started, 1),
            "pids": {name: p.pid for name, p in self.children.items()}
            | ({"robot": self.robot.pid} if self.robot is not None else {}),
            "exit_codes": codes,
            "peak_rss_mb": {name: round(mb, 1) for name, mb in self.peak_rss_mb.items()},
        }
        status = self.last_status
        if status is not None:
            summary |= {
                "steps": status["step"],
                "updates": status["updates"],
                "effective_utd": status["effective_utd"],
                "replay": status.get("replay"),  # its bytes per transition; cameras and cached features
            }
        summary["robot"] = robot_summary(self.robot_status)
        summary["gate"] = gate_summary(self.out / "learner" / POLICY_DIR)
        summary["gate"]["validated"] = validation_results(
            self.out / "learner" / POLICY_DIR, a.effective_warmup, a.utd
        )
        promoted = promoted_versions(summary["gate"], status)
        summary["promoted_versions"] = promoted
        summary |= self._export(promoted)
        log = self.out / "learner" / INGEST_LOG
        self.rows = episode_returns(log) if log.exists() else []
        total_steps = summary.get("steps") or (self.rows[-1]["step"] if self.rows else 0)
        summary["episodes"] = len(self.rows)
        summary |= robot_returns(self.rows, total_steps)
        if log.exists():
            self._returns(promoted, summary["baseline_return"], summary["gate"]["validated"])
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


EXIT_CODES = (
    "exit status: 0 done; 2 bad input, one line (refused before any child starts: options, the policy "
    "against the robot, rendering; or by a child, which exits 2 too); 1 any other failure "
    "of a child (the emulated robot, the learner, the runner) or of the session, with that child's log; "
    "130 stopped (Ctrl-C, SIGTERM)"
)


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="robot-wsrl session",
        description="Emulated robot + learner + linked runner on this machine: warmup, fine-tuning, then "
        "the best promoted policy, a return plot and summary.json. Extra key=value args go to the learner "
        "(Hydra overrides, e.g. agent.batch_size=128 threads=1).",
        epilog=EXIT_CODES,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the learner")
    parser.add_argument(
        "--policy-dir",
        type=repo_path,
        default="policies/hopper",
        help="has checkpoint.pt (found from the working directory, then from the repository)",
    )
    parser.add_argument(
        "--env-id",
        default=None,
        help="gymnasium id, or camera task cam:NAME[@CAM:HxW] (rendering needs MUJOCO_GL=egl headless); "
        "default: the policy's env",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="robot shift preset, configs/shift/NAME.yaml (default: the gate's robot preset for the policy's "
        "robot, configs/validate.yaml robot_presets: real for a Hopper, reacher_real for the camera arm)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=6000, help="environment steps in all, warmup included"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=1000,
        help="steps before the first update, never fewer than the learner's batch size (0: no warmup, the "
        "first update as soon as one batch is in)",
    )
    parser.add_argument("--utd", type=positive_int, default=1, help="critic updates per environment step")
    parser.add_argument(
        "--publish-every", type=positive_int, default=500, help="updates between policy versions"
    )
    parser.add_argument(
        "--credit",
        type=positive_int,
        default=100,
        help="steps the robot may run ahead of the updates it is owed",
    )
    parser.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="as on hardware: the robot keeps its own clock and the learner paces in real time (the robot "
        "never waits; status reports the effective UTD). Default: lockstep sim, exact UTD, reproducible",
    )
    parser.add_argument(
        "--validate-arg",
        action="append",
        default=None,
        metavar="ARG",
        help="override for the sim-first validation of each new version before the robot may run it "
        "(repeat; default: configs/validate.yaml's settings with preset= the robot's --preset)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no CURVE: any local user could then stop, release or feed the robot (default: CURVE with keys "
        "made in SESSION/keys, readable only by you)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="session folder (default runs/session/TIME)")
    return parser


def env_id_problem(env_id: str) -> str | None:
    """Why the emulated robot could not drive `env_id` (the gym driver's own words: gymnasium's "did you
    mean"; for a camera task `cam:NAME[@CAMERAS]`, its name and camera request, checked without rendering),
    or None: checked before any child starts, not in a traceback from the robot's start-up."""
    from robot_wsrl.sim.gym_mujoco import GymMujocoDriver  # the sim extra, as the robot needs it

    if ":" in env_id.partition("@")[0] and not env_id.startswith("cam:"):  # dmc:, emulated:, a URL
        return (
            f"{env_id}: the session's robot simulates a gymnasium id (e.g. Hopper-v5 or gym:Hopper-v5) or a "
            "camera task (cam:TASK[@CAM:HxW])"
        )
    if env_id.startswith("cam:"):
        from robot_wsrl.sim.camera import parse_cameras
        from robot_wsrl.sim.camera_tasks import CAMERA_TASKS

        task, at, request = env_id.removeprefix("cam:").partition("@")
        if task not in CAMERA_TASKS:
            close = difflib.get_close_matches(task, list(CAMERA_TASKS), n=1)
            hint = f" (did you mean cam:{close[0]}?)" if close else ""
            return f"{env_id}: no such camera task; the camera tasks: {sorted(CAMERA_TASKS)}{hint}"
        try:
            if at:
                parse_cameras(request, where=env_id)
        except ValueError as exc:
            return str(exc)
        return None
    try:
        GymMujocoDriver(env_id).close()
    except ValueError as exc:
        return str(exc).removeprefix("gym:")
    return None


def check_validate_args(overrides: list[str], policy: EnvSpec | None = None) -> None:
    """Compose the gate's config as each validation will (gate.validate.load_config) and, given the `policy`
    it will judge, resolve it on that policy's robot as validate does (its env, driver, preset and variants):
    a bad --validate-arg would otherwise hold back every version, v0 included, while the session runs on."""
    from robot_wsrl.apps.session_preflight import driver_mismatches
    from robot_wsrl.gate.validate import MIN_PAIRED_EPISODES, Setup, load_config, resolve_env

    try:
        cfg = load_config(None, overrides)
        if cfg.episodes < MIN_PAIRED_EPISODES:  # every version after v0 is compared with the robot's version
            raise ValueError(
                f"episodes: the session's gate compares each version with the one the robot runs, which "
                f"needs episodes >= {MIN_PAIRED_EPISODES}, got {cfg.episodes}"
            )
        if policy is not None:
            env = resolve_env(cfg, policy)
            Setup.of(cfg.for_robot(env.driver), env)  # its presets and variants describe that robot
            if cfg.driver is not None and (problems := driver_mismatches(policy, cfg.driver)):
                raise ValueError(f"driver: the policy does not fit {cfg.driver}: {'; '.join(problems)}")
    except Exception as exc:
        line = user_error(exc)
        if line is None:
            raise
        keys = {o.partition("=")[0]: o for o in overrides}  # the last of a key wins, as in the gate
        key, _, why = line.partition(": ")
        if " " in key:  # a sentence that names its key (`preset=NAME is not a shift preset of ...`)
            key, why = key.partition("=")[0], line
        if key in keys:
            raise ValueError(f"--validate-arg {keys[key]}: {why}") from None  # this line, not the cause's
        raise ValueError(f"--validate-arg: {line}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`robot-wsrl session`'s arguments, checked (the soak benchmark runs a session from them too)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.policy_dir / CHECKPOINT).is_file():
        parser.error(
            f"--policy-dir {args.policy_dir}: no {CHECKPOINT} there: give a shipped policy's folder "
            f"(`robot-wsrl policies` lists them, e.g. policies/hopper)"
        )
    from robot_wsrl.apps.session_preflight import (
        effective_warmup,
        learner_batch_size,
        policy_spec,
        robot_problem,
    )
    from robot_wsrl.gate.validate import load_config  # the learner extra: not needed for --help
    from robot_wsrl.sim.shift import load_shift_preset, preset_hint, preset_names

    if args.env_id is not None:
        args.env_id = args.env_id.removeprefix("gym:")  # the runner's driver name: the same robot
    policy_env = _env_of(args.policy_dir)
    driver = policy_env["driver"] if args.env_id is None else policy_driver(args.env_id)
    if args.preset is None:
        args.preset = load_config(None, []).for_robot(driver).preset
    if args.preset not in (presets := preset_names(driver)):
        what = (
            f"it describes another robot ({load_shift_preset(args.preset)['for_driver']}), not {driver}"
            if args.preset in preset_names()
            else f"no preset of that name describes {driver}"
        )
        parser.error(f"--preset {args.preset}: {what}; its presets: {preset_hint(args.preset, presets)}")
    args.validate_arg = [f"preset={args.preset}", *(args.validate_arg or [])]  # the user's may override it
    if args.env_id is not None:
        problem = env_id_problem(args.env_id)
        if problem is not None:
            parser.error(f"--env-id {problem}")
    policy = policy_spec(args.policy_dir)
    check_validate_args(args.validate_arg, policy)
    if args.out is not None and args.out.is_dir() and any(args.out.iterdir()):
        # Its keys, ready files and learner state belong to another session: mixing them in would point
        # the runner at a dead learner and fail its policies' signatures.
        parser.error(f"--out {args.out} is not empty (another session's folder?): give a new folder")
    if (problem := robot_problem(policy, args.policy_dir, driver, args.preset, args.seed)) is not None:
        parser.error(problem)
    args.batch_size = learner_batch_size(policy_env["name"], args.overrides)
    args.effective_warmup = effective_warmup(args.warmup, args.batch_size)
    if args.steps <= args.effective_warmup:
        batch = "" if args.batch_size is None else f", batch size {args.batch_size}"
        parser.error(
            f"--steps {args.steps} counts the warmup too: no update before step {args.effective_warmup} "
            f"(--warmup {args.warmup}{batch}): give --steps above {args.effective_warmup}"
        )
    return args


@reports_errors("session")
def cli(argv: list[str]) -> int:
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)  # `session | head`
    args = parse_args(argv)
    session = Session(args, sys.stdout)
    stop_on_signals([session.stop], (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    summary = session.run()
    print(json.dumps({k: summary.get(k) for k in ("steps", "updates", "versions", "wall_s", "error")}))
    if summary["error"]:
        failed = summary["failed_child"] or {}
        tail = "".join(f"\n  {line}" for line in failed.get("log_tail", []))
        print(f"robot-wsrl session: {summary['error']}{tail}", file=sys.stderr)
        return exit_status(summary)
    print(f"promoted policy (v{summary.get('policy_version')}): {summary.get('policy')}")
    if summary.get("latest_unvalidated_version") is not None:
        print(
            f"learner's latest, not promoted (v{summary['latest_unvalidated_version']}): "
            f"{summary['latest_unvalidated_policy']}"
        )
    baseline, last = summary.get("baseline_return"), summary.get("robot_return_last_third")
    if baseline is not None and last is not None:
        ratio = summary.get("last_third_over_baseline")
        shown = "no ratio: a non-positive baseline" if ratio is None else f"{ratio:.2f}x"
        note = summary["last_third_over_baseline_note"]  # with a ratio: why it may mislead (robot_returns)
        print(
            f"robot return: last third {last:.1f} ({summary['robot_episodes_last_third']} episodes) vs "
            f"pre-trained v0 {baseline:.1f} ({summary['baseline_episodes']} episodes): "
            f"{summary['last_third_minus_baseline']:+.1f}, {shown}"
            + (f"; {note}" if ratio is not None and note else "")
        )
    rates = [
        f"v{r['version']} {v['success_rate']:.0%}"
        for r in summary["gate"]["validated"]
        if (v := r["variants"].get(args.preset)) is not None and v["success_rate"] is not None
    ]
    if rates:
        print(f"validation success rate on {args.preset}: {', '.join(rates)}")
    robot_rates = [
        f"v{r['version']} {r['success_rate']:.0%}"
        for r in summary["versions_ran"]
        if r.get("success_rate") is not None
    ]
    if robot_rates:
        base, last_rate = summary["baseline_success_rate"], summary["robot_success_rate_last_third"]
        shown = [f"last third {'-' if last_rate is None else f'{last_rate:.0%}'}"]
        shown.append(f"pre-trained v0 {'-' if base is None else f'{base:.0%}'}")
        print(f"robot success rate: {' vs '.join(shown)} (by version: {', '.join(robot_rates)})")
    print(f"plot: {session.out / 'returns.png'}")
    return exit_status(summary)


def exit_status(summary: dict[str, Any]) -> int:
    """The session's exit code (EXIT_CODES): bad input is 2 whoever refused it (this process before any
    child starts, or a child: its own 2), any other failure of any child or of the session is 1, a stop
    (Ctrl-C, SIGTERM) 130."""
    if summary["error"]:
        return 2 if (summary["failed_child"] or {}).get("exit_code") == 2 else 1
    return 130 if summary["interrupted"] else 0
