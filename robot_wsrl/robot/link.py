"""The runner's link to the learner (numpy, pyzmq, onnxruntime only: never torch).

The control loop only hands each transition to `on_transition`, which puts it on a bounded queue. One
link thread owns the socket and does everything else: it spools batches durably and sends them, forgets
them when the learner acknowledges, resends whatever is unacknowledged after a reconnect or a stall,
verifies every policy against the learner's signing key before writing it and offering it to the runner,
exchanges heartbeats and answers status requests. The learner's channel carries nothing else: an operator
command arriving on it (e-stop, release, rollback, pause ...) is refused and counted; operators use the
runner's control channel, which admits console keys only.

Policies only move forward: a policy is taken only from the run (the signed sidecar's `run_id`) this
runner already runs and only with a newer version; one from another run is refused unless the runner
has had no policy yet. The (run_id, version) taken last is kept durably in the state folder, so a
restarted runner holds to it too. Going back is the operator's explicit rollback.

The runner is held (paused: the robot brought to its safe state, a new episode on resume) while any
reason to hold it stands: the spool full, the learner silent past its deadline (with
`on_learner_lost="hold"`; "keep" runs on with the last policy and spools), or an operator pause. Waiting
for lockstep credit alone only stops stepping: a simulator's episode goes on when the credit comes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from robot_wsrl.core.artifacts import POLICY_ONNX, POLICY_SIDECAR, version_dir
from robot_wsrl.core.durable import DurableRecord
from robot_wsrl.core.files import write_atomic
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError
from robot_wsrl.robot.runner import Runner
from robot_wsrl.robot.safety import RunnerState
from robot_wsrl.wire import transport
from robot_wsrl.wire.codecs import Codec, FrameError
from robot_wsrl.wire.protocol import (
    Ack,
    Command,
    Credit,
    HeartbeatMessage,
    Message,
    MiB,
    PolicyMessage,
    PolicyRequest,
    RejectCounter,
    Reply,
    RunnerTag,
    Status,
    StatusRequest,
    Transition,
    Transitions,
    encode,
    row_bytes,
    try_decode,
)
from robot_wsrl.wire.signing import SignatureError, verify_policy_message
from robot_wsrl.wire.spool import SpoolFull, TransitionSpool

log = logging.getLogger(__name__)

LearnerLost = Literal["keep", "hold"]
POLL_S = 0.01
COMMAND_REFUSED = "the learner's channel takes no commands: operators use the runner's control channel"
WAIT_HOLDS = frozenset({"credit"})  # holds a simulator waits out mid-episode (no safe stop)


@dataclass(frozen=True)
class LinkOptions:
    batch_size: int = 256  # most transitions per message (fewer when the runner produces slowly)
    queue_size: int = 100_000  # transitions between the control loop and the link thread
    heartbeat_s: float = 0.5
    deadline_s: float = 3.0  # learner silent this long: lost
    on_learner_lost: LearnerLost = "hold"
    lockstep: bool = True  # produce only up to the learner's credit
    resend_after_s: float = 2.0  # unacknowledged data with no ack progress this long is sent again
    tag: RunnerTag = "sim"  # "hardware": the learner sends only policy versions that passed validation
    # Per camera: "raw" (the default), "zlib", "png" (lossless), "jpeg" or "jpeg:QUALITY" (lossy).
    codecs: Mapping[str, str] = field(default_factory=dict)
    max_batch_bytes: int = 15 * MiB  # fewer transitions per message when their frames would take more


def batch_rows(options: LinkOptions, step: Transition) -> int:
    """Transitions per message for steps shaped like `step`: the batch size, or fewer where their camera
    frames, all sent raw, would pass `max_batch_bytes` (a codec never sends more bytes than raw)."""
    return max(1, min(options.batch_size, options.max_batch_bytes // row_bytes(step)))


class LearnerLink:
    """Connects one Runner to the learner over `sock` (a DEALER whose routing id is `spool.runner_id`).

    Order of use: `start()`, `wait_for_policy()` (the learner's current policy, verified, on disk), build
    the Runner with `on_transition=link.on_transition`, `attach(runner)`, run it, then `drain()` and
    `close()`. Holds and counters are in `status()`.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        spool: TransitionSpool,
        trusted: dict[str, Ed25519PublicKey],
        policy_dir: str | Path,
        options: LinkOptions = LinkOptions(),
        record: DurableRecord | None = None,
    ) -> None:
        if options.on_learner_lost not in ("keep", "hold"):
            raise ValueError(f"on_learner_lost must be 'keep' or 'hold', got {options.on_learner_lost!r}")
        if not trusted:
            raise ValueError("no trusted policy-signing key: the runner could never load a policy")
        try:  # a codec that cannot work (a typo, no Pillow) fails here, before the robot moves
            self.codecs = {camera: Codec.parse(text) for camera, text in options.codecs.items()}
            for codec in self.codecs.values():
                codec.check_available()
        except FrameError as exc:
            raise ValueError(f"link codecs {dict(options.codecs)}: {exc.detail}") from None
        self.sock, self.spool, self.trusted, self.options = sock, spool, trusted, options
        self.name = spool.runner_id
        self.policy_dir = Path(policy_dir)
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self.learner = transport.Heartbeat(options.heartbeat_s, options.deadline_s)
        self.rejects = RejectCounter()
        self._queue: queue.Queue[Transition] = queue.Queue(options.queue_size)
        self._pending: list[Transition] = []  # taken off the queue, not yet in the spool (spool full)
        self._runner: Runner | None = None
        self._first_policy = threading.Event()
        self.policy_path: Path | None = None
        self._offered_version: int | None = None
        self._refused_versions: set[int] = set()
        self._record = record  # (run_id, version) taken last, across restarts
        taken = None if record is None else record.value
        self._taken: tuple[str | None, int] | None = (
            None if taken is None else (taken["run_id"], taken["version"])
        )
        self._holds: set[str] = set()
        self._holds_lock = threading.Lock()
        self._granted = -1
        self._acked = spool.acked_seq  # the newest ack received, applied to the spool once per drain
        self._produced_next = spool.next_seq  # the seq the next handed-over transition will get
        self._was_alive = False
        self._resend = True  # a fresh connection: whatever the spool holds goes out again
        self._last_progress = time.monotonic()
        self._last_request = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"link-{self.name}", daemon=True)
        self.sent_batches = 0
        self.resent_batches = 0
        self.dropped = 0
        self.rejected_policies = 0
        self.rejected_commands = 0
        self.last_error = ""

    # ----- the runner's side -----

    def on_transition(self, transition: Transition) -> None:
        """The runner's callback (control loop thread): hand over, never wait."""
        try:
            self._queue.put_nowait(transition)
        except queue.Full:
            self.dropped += 1  # the link thread is wedged; the credit/spool holds stop the robot first
            return
        self._produced_next += 1
        if self.options.lockstep and self._produced_next > self._granted:
            # Credit spent: hold here, in the loop's own thread, so the next tick already waits (the link
            # thread, which lifts the hold when credit comes, may be scheduled much later on a busy host).
            self._hold("credit", True)

    def start(self) -> None:
        self._thread.start()

    def wait_for_policy(self, timeout_s: float) -> Path | None:
        """The learner's current policy (verified and written), or None within `timeout_s`."""
        return self.policy_path if self._first_policy.wait(timeout_s) else None

    def attach(self, runner: Runner) -> None:
        """Feed on `runner`; a codec for a camera its driver lacks is refused here, before anything moves."""
        cameras = runner.spec.camera_names
        unknown = [camera for camera in self.codecs if camera not in cameras]
        if unknown:
            raise ValueError(
                f"link codecs {dict(self.options.codecs)}: {runner.spec.name} has no camera "
                f"{', '.join(map(repr, unknown))}; its cameras: {', '.join(cameras) or 'none'}"
            )
        self._runner = runner
        self._offered_version = runner.policy.version
        with self._holds_lock:
            mode = self._hold_mode()
        if mode != "run":
            self._apply_hold(runner, mode)

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything handed over is spooled and acknowledged; True if it was in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.empty() and not self._pending and self.spool.pending() == 0:
                return True
            time.sleep(POLL_S)
        return False

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._record is not None and not self._thread.is_alive():
            self._record.close()

    @property
    def holds(self) -> set[str]:
        with self._holds_lock:
            return set(self._holds)

    def status(self) -> dict[str, Any]:
        return {
            "learner_alive": self.learner.alive(),
            "holds": sorted(self.holds),
            "granted_seq": self._granted,
            "next_seq": self._produced_next,
            "acked_seq": self.spool.acked_seq,
            "spool_pending": self.spool.pending(),
            "queued": self._queue.qsize() + len(self._pending),
            "sent_batches": self.sent_batches,
            "resent_batches": self.resent_batches,
            "dropped": self.dropped,
            "rejected_policies": self.rejected_policies,
            "rejected_commands": self.rejected_commands,
            "offered_policy_version": self._offered_version,
            "policy_run_id": None if self._taken is None else self._taken[0],
            "last_error": self.last_error,
            "rejected_messages": self.rejects.as_dict(),
        }

    # ----- holds -----

    def _hold(self, reason: str, on: bool) -> None:
        with self._holds_lock:
            before = self._hold_mode()
            if on:
                self._holds.add(reason)
            else:
                self._holds.discard(reason)
            after = self._hold_mode()
        if self._runner is not None and before != after:
            self._apply_hold(self._runner, after)

    def _hold_mode(self) -> str:
        """ "run", "wait" (only waiting for credit: the episode goes on after) or "pause" (safe stop)."""
        if not self._holds:
            return "run"
        return "wait" if self._holds <= WAIT_HOLDS else "pause"

    def _apply_hold(self, runner: Runner, mode: str) -> None:
        if mode == "run":
            runner.resume()
            return
        log.info("%s: holding the runner (%s)", self.name, sorted(self.holds))
        runner.pause(keep_episode=mode == "wait")

    # ----- the link thread -----

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # never die silently: hold the robot and keep trying
                error = f"{type(exc).__name__}: {exc}"
                if error == self.last_error:  # the same failure again: one line, not another traceback
                    log.error("%s: link step failed again: %s", self.name, error)
                else:
                    log.exception("%s: link step failed", self.name)
                self.last_error = error
                self._hold("link_error", True)
                time.sleep(self.options.heartbeat_s)

    def _step(self) -> None:
        self._spool_and_send()
        frames = transport.recv_frames(self.sock, POLL_S)
        while frames is not None:
            self._handle(frames)
            frames = transport.recv_frames(self.sock, 0.0)
        if self._acked > self.spool.acked_seq:  # the newest ack of the drain: one spool update, not one each
            self.spool.ack(self._acked)
            self._last_progress = time.monotonic()
        alive = self.learner.alive()
        if alive and not self._was_alive:
            self._resend = True
        self._was_alive = alive
        self._hold("learner_lost", self.options.on_learner_lost == "hold" and not alive)
        self._hold("credit", self.options.lockstep and self._produced_next > self._granted)
        if self.learner.due():
            self.learner.sent()
            self._send(self._heartbeat())
        stalled = time.monotonic() - self._last_progress > self.options.resend_after_s
        if alive and self.spool.pending() and (self._resend or stalled):
            self._resend_unacked()
        self._hold("link_error", False)

    def _heartbeat(self) -> HeartbeatMessage:
        state = "idle" if self._runner is None else self._runner.state.value
        return HeartbeatMessage(
            self.name, "runner", time.time(), state, self._offered_version, tag=self.options.tag
        )

    def _send(self, msg: Message) -> bool:
        return transport.send_frames(self.sock, encode(msg), 0.0)

    def _spool_and_send(self) -> None:
        while len(self._pending) < self.options.batch_size:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        while self._pending:
            rows = batch_rows(self.options, self._pending[0])
            steps = self._pending[:rows]
            if not self.spool.pending():
                self._last_progress = time.monotonic()  # a stall counts from the oldest unacked batch
            try:
                batch = self.spool.append_arrays(**Transitions.step_arrays(steps), codecs=self.codecs)
            except SpoolFull as exc:
                self.last_error = str(exc)
                self._hold("spool_full", True)
                return
            self._hold("spool_full", False)
            del self._pending[: len(steps)]
            if self._send(batch):
                self.sent_batches += 1
            else:
                self._resend = True  # it is in the spool; it goes out again once the learner is there
            if len(self._pending) < rows:
                return

    def _resend_unacked(self) -> None:
        self._resend = False
        self._last_progress = time.monotonic()
        for batch in self.spool.unacked():
            if not self._send(batch):
                self._resend = True
                return
            self.resent_batches += 1

    def _handle(self, frames: list[Any]) -> None:
        msg = try_decode(frames, self.rejects)
        if msg is None:
            return
        self.learner.beat()
        if self._runner is not None:
            self._runner.heartbeat()
        if isinstance(msg, Ack) and msg.runner_id == self.name:
            self._acked = max(self._acked, msg.acked_seq)
        elif isinstance(msg, Credit) and msg.runner_id == self.name:
            self._granted = msg.granted_seq
        elif isinstance(msg, PolicyMessage):
            self._on_policy(msg)
        elif isinstance(msg, HeartbeatMessage):
            self._on_learner_heartbeat(msg)
        elif isinstance(msg, Command):  # never from the learner: operators have the control channel
            self.rejects.add("command")
            self.rejected_commands += 1
            log.warning("%s: %r from the learner's channel refused", self.name, msg.name)
            self._send(Reply(self.name, False, COMMAND_REFUSED, msg.ref))
        elif isinstance(msg, StatusRequest):
            status = {"link": self.status()} | ({} if self._runner is None else self._runner.status())
            self._send(Status(self.name, status))

    def _on_learner_heartbeat(self, msg: HeartbeatMessage) -> None:
        if self._runner is not None and msg.state in (
            RunnerState.WARMUP.value,
            RunnerState.FINE_TUNING.value,
        ):
            self._runner.set_phase(RunnerState(msg.state))
        version = msg.policy_version
        wanted = (
            version is not None and version != self._offered_version and version not in self._refused_versions
        )
        if wanted and time.monotonic() - self._last_request >= self.options.heartbeat_s:
            self._last_request = time.monotonic()
            self._send(PolicyRequest(self.name, self._offered_version))

    def _on_policy(self, msg: PolicyMessage) -> None:
        """Verify, check it moves forward, write both files, offer to the runner; anything unsigned,
        altered, older or from another run is refused."""
        if msg.version == self._offered_version:
            return
        try:
            run_id = verify_policy_message(msg, self.trusted).get("run_id")
        except SignatureError as exc:
            self._refuse(msg.version, str(exc))
            return
        backwards = self._backwards(run_id, msg.version)
        if backwards is not None:
            self._refuse(msg.version, backwards)
            return
        directory = version_dir(self.policy_dir, msg.version)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / POLICY_SIDECAR, msg.sidecar.encode())
        write_atomic(directory / POLICY_ONNX, msg.onnx)
        path = directory / POLICY_ONNX
        if self._runner is None:
            try:
                OnnxPolicy.load(path)
            except PolicyError as exc:
                self._refuse(msg.version, str(exc))
                return
            self._take(run_id, msg.version)
            self.policy_path, self._offered_version = path, msg.version
            self._first_policy.set()
            return
        result = self._runner.offer_policy(path)
        if result.accepted:
            self._take(run_id, msg.version)
            self._offered_version = msg.version
        else:
            self._refuse(msg.version, result.reason)

    def _backwards(self, run_id: str | None, version: int) -> str | None:
        """Why a policy would not move this runner forward, None when it would. The first policy after a
        restart may be the very version taken before it (the runner has it on disk, not loaded)."""
        if self._taken is None:
            return None
        run, taken = self._taken
        if run_id != run:
            return (
                f"policy of run {run_id!r}, but this runner runs run {run!r} (its state: {self._record_path})"
            )
        newest = taken - 1 if self._runner is None and self._offered_version is None else taken
        if version <= newest:
            return (
                f"version {version} is not newer than version {taken} of this run (rollback is an operator's)"
            )
        return None

    def _take(self, run_id: str | None, version: int) -> None:
        """Record the policy taken, durably, before the runner can run it."""
        self._taken = (run_id, version)
        if self._record is not None:
            self._record.write({"run_id": run_id, "version": version})

    @property
    def _record_path(self) -> str:
        return "none" if self._record is None else str(self._record.path)

    def _refuse(self, version: int, reason: str) -> None:
        self.rejected_policies += 1
        self._refused_versions.add(version)
        self.last_error = reason
        log.warning("%s: policy version %d refused: %s", self.name, version, reason)

    def operator_hold(self, on: bool) -> None:
        """An operator's pause/resume (from the learner or a console) is one of the link's holds."""
        self._hold("operator", on)
