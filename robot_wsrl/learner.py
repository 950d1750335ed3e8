"""`robot-wsrl learner`: the off-board WSRL learner that runners feed over ZeroMQ (torch lives here).

One ROUTER socket, one thread, no blocking waits: it receives transition batches, de-duplicates them by
(runner, seq), appends the new ones to a durable log and acknowledges them only after fsyncing it (one
fsync per receive round), so an ack never covers data a crash could lose; it inserts them into an online-only
replay buffer. Phases are WSRL's: warmup until `run.warmup_steps` transitions (from all runners
together) with no update, then one UTD round per transition, exactly as the in-process loop
(`finetune.py`) does. Two pacings: lockstep (sim) — a runner may produce only up to the `Credit` it was
granted, and the learner extends credit only once it has done every update its data is owed, so the UTD
ratio is exact, runs are reproducible and a runner is never more than `credit` transitions ahead of the
policy being trained; real time (hardware) — credit is unbounded, the robot never waits, and the learner
does as many of the owed updates as it can (status reports the effective UTD ratio). Every
`publish_every` updates it exports, signs and pushes a new ONNX policy, and saves its state; on restart it
replays the log (buffer and dedup state) and continues from that state, so nothing acknowledged is lost
and nothing is counted twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from robot_wsrl import keys, transport
from robot_wsrl.agent import Agent
from robot_wsrl.checkpoint import CheckpointError, load_checkpoint
from robot_wsrl.config import Config, compose_config, config_hash, prepare_out_dir
from robot_wsrl.export import ONNX_NAME, SIDECAR_NAME, export_policy
from robot_wsrl.files import write_atomic
from robot_wsrl.gate import ValidationWorker, Verdict
from robot_wsrl.ingest_log import IngestLog
from robot_wsrl.protocol import (
    Ack,
    Command,
    Credit,
    HeartbeatMessage,
    Message,
    PolicyMessage,
    PolicyRequest,
    RejectCounter,
    Reply,
    Status,
    StatusRequest,
    Transitions,
    encode,
)
from robot_wsrl.registry import validation_state
from robot_wsrl.replay import MixedSampler, ReplayBuffer
from robot_wsrl.safety import RunnerState
from robot_wsrl.signing import signed_policy_message, write_signature
from robot_wsrl.spec import EnvSpec
from robot_wsrl.spool import DedupLog
from robot_wsrl.training import load_agent_checkpoint, save_training_checkpoint, seed_everything

log = logging.getLogger(__name__)

STATE_FILE = "learner.pt"
LOG_FILE = "transitions.log"
POLICY_DIR = "policies"
UPDATE_SLICE_S = 0.05  # longest run of updates between two looks at the socket
SEND_TIMEOUT_S = 0.1
RECEIVE_ROUND = 256  # messages handled between two group commits of the log
RECENT_RETURNS = 10
RECENT_VERDICTS = 20
ACCEPTED = (
    Transitions,
    HeartbeatMessage,
    PolicyRequest,
    StatusRequest,
    Command,
)  # what runners and consoles send
REALTIME_CREDIT = 2**40  # real-time pacing: a window no runner reaches
Pacing = Literal["lockstep", "realtime"]


@dataclass(frozen=True)
class LearnerOptions:
    name: str = "learner"
    publish_every: int = 1000  # updates between two published policies
    credit: int = 1000  # lockstep: transitions a runner may produce ahead of the updates its data is owed
    pacing: Pacing = "lockstep"
    gate: bool = True  # hardware runners get only versions that passed `robot-wsrl validate`
    validate_args: tuple[str, ...] = ()  # passed to every validation (overrides, --config)
    heartbeat_s: float = 0.5
    deadline_s: float = 3.0


@dataclass
class Peer:
    """A connected runner (or console) as the learner sees it."""

    name: str
    heartbeat: transport.Heartbeat
    role: str = "runner"
    granted: int = -1
    tag: str = "hardware"  # until its heartbeat says "sim": an unknown runner gets only validated versions
    sent_version: int | None = None


@dataclass
class Returns:
    """A runner's episode returns, summed from the transitions it sent (survives reconnects)."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_RETURNS))
    running: dict[int, float] = field(default_factory=dict)


class Learner:
    """The learner's state and its message loop; `serve` runs until `stop` is set."""

    def __init__(
        self,
        cfg: Config,
        sock: zmq.Socket,
        out_dir: Path,
        signing_key: Ed25519PrivateKey,
        options: LearnerOptions = LearnerOptions(),
        secure: bool = True,
        keydir: Path | None = None,
        commanders: set[str] | None = None,
    ) -> None:
        """`keydir` holds the public signing keys the validations verify policies with."""
        if not cfg.run.checkpoint:
            raise ValueError("the learner starts from a pre-trained checkpoint: run.checkpoint=PATH")
        if cfg.run.offline_ratio > 0:
            raise ValueError("the learner fine-tunes on online data only (run.offline_ratio must be 0)")
        if options.pacing not in ("lockstep", "realtime"):
            raise ValueError(f"pacing must be 'lockstep' or 'realtime', got {options.pacing!r}")
        self.cfg, self.sock, self.out, self.options, self.secure = cfg, sock, out_dir, options, secure
        self._signing_key = signing_key
        self.rng = seed_everything(cfg.seed, cfg.threads)
        self.spec = EnvSpec.from_dict(load_checkpoint(cfg.run.checkpoint)["spec"])
        self.agent = Agent(self.spec.obs_dim, self.spec.act_dim, cfg.agent, cfg.device)
        self.buffer = ReplayBuffer(
            cfg.run.buffer_capacity, self.spec.obs_dim, self.spec.act_dim, cfg.agent.discount
        )
        self.sampler = MixedSampler(self.buffer, None, 0.0)
        self.rejects = RejectCounter()
        self.learning_paused = False
        self.commanders = commanders  # key names that may pause learning (None: any, on plain loopback)
        self.peers: dict[bytes, Peer] = {}
        self._acks: dict[bytes, str] = {}  # acks owed once the log is synced: identity -> runner id
        self.online_updates = 0
        self.version = 0
        self.published_at = 0  # online_updates when the current version was made
        self.last_info: dict[str, torch.Tensor] = {}
        self.returns: dict[str, Returns] = {}
        self._hash = config_hash(cfg)
        state = out_dir / STATE_FILE
        if state.exists():  # a restart: the state saved at the last publish
            payload = load_agent_checkpoint(str(state), self.agent, self.spec, with_optimizers=True)
            self.version = int(payload["extra"]["policy_version"])
            self.online_updates = self.published_at = int(payload["extra"]["online_updates"])
        else:
            load_agent_checkpoint(cfg.run.checkpoint, self.agent, self.spec, with_optimizers=True)
        self.agent.updates = self.online_updates
        self.dedup = DedupLog()
        self.log = IngestLog(out_dir / LOG_FILE)
        for batch in self.log.replay():
            self._insert(batch, self._accepted(batch))
        self.policy = self._make_policy()
        self.gate: ValidationWorker | None = None
        self.deployed = self._deployed_on_start()
        self.verdicts: deque[Verdict] = deque(maxlen=RECENT_VERDICTS)
        if options.gate:
            self.gate = ValidationWorker(
                self._version_dir(self.deployed.version),
                initial_version=self.deployed.version,
                overrides=list(options.validate_args),
                keydir=keydir,
            )
            if self.version > self.deployed.version:
                self.gate.submit(self.version, self._version_dir(self.version))
        log.info(
            "learner ready: %d transitions replayed from %s, policy version %d, %d updates",
            self.buffer.total_added,
            self.log.path,
            self.version,
            self.online_updates,
        )

    # ----- phases and updates -----

    @property
    def transitions(self) -> int:
        return self.buffer.total_added

    @property
    def phase(self) -> RunnerState:
        return RunnerState.WARMUP if self.transitions < self.cfg.run.warmup_steps else RunnerState.FINE_TUNING

    def owed_updates(self) -> int:
        """UTD rounds the data so far is owed: one per transition once the buffer holds K (and a batch),
        as in the in-process loop."""
        start = max(self.cfg.run.warmup_steps, self.cfg.agent.batch_size, 1)
        target = self.transitions - start + 1 if self.transitions >= start else 0
        return max(0, target - self.online_updates)

    def _may_update(self) -> bool:
        """Updates are owed and no operator paused learning (lockstep runners then wait for credit)."""
        return not self.learning_paused and self.owed_updates() > 0

    def update_once(self) -> None:
        batch = self.agent.to_batch(
            self.sampler.sample(self.cfg.agent.utd, self.cfg.agent.batch_size, self.rng)
        )
        self.last_info = self.agent.update(batch)  # tensors: read (and synced) only for a status report
        self.online_updates += 1
        if self.online_updates - self.published_at >= self.options.publish_every:
            self.publish()

    def publish(self) -> None:
        """Export, sign and push a new version to every runner, then save the learner's state."""
        self.version += 1
        self.published_at = self.online_updates
        self.policy = self._make_policy()
        if self.gate is not None:
            self.gate.submit(self.version, self._version_dir(self.version))
        self._push_policies()
        extra = {"policy_version": self.version, "online_updates": self.online_updates}
        save_training_checkpoint(
            self.out / STATE_FILE, self.agent, self.spec, self.cfg, self.transitions, extra
        )
        log.info("published policy version %d after %d updates", self.version, self.online_updates)

    def _version_dir(self, version: int) -> Path:
        return self.out / POLICY_DIR / f"v{version:06d}"

    def _make_policy(self) -> PolicyMessage:
        """Export and sign the current version (once; a restart reuses the files), and its message."""
        directory = self._version_dir(self.version)
        if not (directory / SIDECAR_NAME).exists():
            export_policy(
                self.agent.actor,
                directory,
                version=self.version,
                parent_version=self.version - 1 if self.version else None,
                spec=self.spec,
                step=self.online_updates,
                config_hash=self._hash,
            )
            write_signature(directory / ONNX_NAME, self._signing_key)  # stays verifiable on disk
        return self._policy_message(self.version)

    def _policy_message(self, version: int) -> PolicyMessage:
        directory = self._version_dir(version)
        onnx = (directory / ONNX_NAME).read_bytes()
        sidecar = (directory / SIDECAR_NAME).read_text()
        return signed_policy_message(self.options.name, self._signing_key, onnx, sidecar)

    # ----- the sim-first gate -----

    def _deployed_on_start(self) -> PolicyMessage:
        """The newest version that passed validation (a restart keeps what hardware may run); else 0."""
        for version in range(self.version, 0, -1):
            directory = self._version_dir(version)
            sha256 = json.loads((directory / SIDECAR_NAME).read_text())["sha256"]
            if validation_state(directory, sha256) == "passed":  # a verdict on these very bytes
                return self._policy_message(version)
        return self._policy_message(0)

    def _policy_for(self, peer: Peer) -> PolicyMessage:
        """Sim runners get every version; hardware runners the last validated one (all, with no gate)."""
        return self.policy if self.gate is None or peer.tag == "sim" else self.deployed

    def _push_policies(self) -> None:
        """Send each runner its policy when it changed (a publish, a verdict, a runner's tag)."""
        for identity, peer in self.peers.items():
            if peer.role != "runner" or not peer.heartbeat.alive():
                continue
            policy = self._policy_for(peer)
            if peer.sent_version != policy.version and self._send(identity, policy):
                peer.sent_version = policy.version

    def _check_gate(self) -> None:
        if self.gate is None:
            return
        for verdict in self.gate.poll():
            self.verdicts.append(verdict)
            if verdict.passed and verdict.version > self.deployed.version:
                self.deployed = self._policy_message(verdict.version)
                log.info("version %d passed validation: promoted to hardware runners", verdict.version)
            elif verdict.status == "superseded":
                log.debug("version %d superseded before its validation started", verdict.version)
            elif not verdict.passed:
                log.warning(
                    "version %d held back from hardware runners (%s): %s",
                    verdict.version,
                    verdict.status,
                    "; ".join(verdict.reasons) or "-",
                )

    # ----- ingest -----

    def _accepted(self, batch: Transitions) -> np.ndarray:
        return self.dedup.accept(batch.runner_id, batch.first_seq, batch.count)

    def _insert(self, batch: Transitions, mask: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        if not len(idx):
            return
        episodes, rewards = batch.episode_id[idx], batch.reward[idx]
        ends = (batch.terminated[idx] != 0) | (batch.truncated[idx] != 0)
        self.buffer.add_batch(
            np.char.add(f"{batch.runner_id}/", episodes.astype(str)),  # runners' episodes interleave
            obs=batch.obs[idx],
            action=batch.action[idx],
            reward=rewards,
            next_obs=batch.next_obs[idx],
            terminated=batch.terminated[idx],
            truncated=batch.truncated[idx],
        )
        returns = self.returns.setdefault(batch.runner_id, Returns())
        for episode in dict.fromkeys(episodes.tolist()):  # a runner numbers each episode anew
            rows = episodes == episode
            returns.running[episode] = returns.running.get(episode, 0.0) + float(rewards[rows].sum())
            if ends[rows].any():
                returns.recent.append(returns.running.pop(episode))

    def _ingest(self, identity: bytes, batch: Transitions) -> None:
        """Dedup, log durably, then ack (the order is what makes the ack a promise), then insert."""
        mask = self._accepted(batch)
        idx = np.flatnonzero(mask)
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []:
            part = batch
            if len(run) != batch.count:
                part = Transitions.make(
                    batch.runner_id,
                    batch.first_seq + int(run[0]),
                    obs=batch.obs[run],
                    action=batch.action[run],
                    reward=batch.reward[run],
                    next_obs=batch.next_obs[run],
                    terminated=batch.terminated[run],
                    truncated=batch.truncated[run],
                    episode_id=batch.episode_id[run],
                    policy_version=batch.policy_version[run],
                )
            self.log.append(part)
        self._acks[identity] = batch.runner_id
        self._insert(batch, mask)

    def _commit(self) -> None:
        """Group commit: one fsync of the log, then the acks it now covers."""
        if not self._acks:
            return
        self.log.sync()
        for identity, runner_id in self._acks.items():
            self._send(identity, Ack(self.options.name, runner_id, self.dedup.watermark(runner_id)))
        self._acks.clear()

    # ----- messages -----

    def _send(self, identity: bytes, msg: Message) -> bool:
        return transport.send_frames(self.sock, [identity, *encode(msg)], SEND_TIMEOUT_S)

    def _peer(self, identity: bytes, msg: Message) -> Peer:
        """The sender's record; a runner that joins gets the current policy and its durable watermark."""
        peer = self.peers.get(identity)
        if peer is None or peer.name != msg.sender:
            operator = isinstance(msg, (StatusRequest, Command)) or (
                isinstance(msg, HeartbeatMessage) and msg.role != "runner"
            )
            heartbeat = transport.Heartbeat(self.options.heartbeat_s, self.options.deadline_s)
            peer = Peer(msg.sender, heartbeat, role="console" if operator else "runner")
            self.peers[identity] = peer
            if isinstance(msg, HeartbeatMessage) and msg.tag is not None:
                peer.tag = msg.tag
            log.info("%s %s joined", peer.role, peer.name)
            if peer.role == "runner":
                self._acks[identity] = peer.name  # what it has durably, so its spool can forget it
        return peer

    def handle(self, frames: list[Any]) -> None:
        routed = transport.routed_message(frames, self.rejects, self.secure)
        if routed is None:
            return
        identity, msg = routed
        if isinstance(msg, Transitions) and msg.runner_id != msg.sender:
            self.rejects.add("identity")
            return
        if not isinstance(msg, ACCEPTED):
            self.rejects.add("unexpected")  # valid, but not for a learner: counted, changes nothing
            return
        peer = self._peer(identity, msg)
        peer.heartbeat.beat()
        if isinstance(msg, Transitions):
            self._ingest(identity, msg)
        elif isinstance(msg, HeartbeatMessage):
            peer.role = msg.role  # a runner that misses a push asks for it after our next heartbeat
            if msg.tag is not None and msg.tag != peer.tag:
                peer.tag = msg.tag
                log.info("runner %s is tagged %s", peer.name, peer.tag)
        elif isinstance(msg, PolicyRequest):
            policy = self._policy_for(peer)
            if self._send(identity, policy):
                peer.sent_version = policy.version
        elif isinstance(msg, StatusRequest):
            self._send(identity, Status(self.options.name, self.status()))
        elif isinstance(msg, Command):
            self._send(identity, self._command(msg))

    def _command(self, cmd: Command) -> Reply:
        """An operator's pause or resume of learning (e-stops go to the runners, not through here)."""
        if self.commanders is not None and cmd.sender not in self.commanders:
            self.rejects.add("command")
            return Reply(self.options.name, False, f"{cmd.sender} is not a console key", cmd.ref)
        if cmd.name not in ("pause", "resume"):
            self.rejects.add("command")
            return Reply(
                self.options.name, False, f"the learner takes pause and resume, not {cmd.name}", cmd.ref
            )
        self.learning_paused = cmd.name == "pause"
        log.warning("learning %s by %s", "paused" if self.learning_paused else "resumed", cmd.sender)
        return Reply(self.options.name, True, None, cmd.ref)

    def _grant_credit(self) -> None:
        """Lockstep: extend each runner's credit once every update its data is owed is done. Real time:
        a window no runner reaches, whatever the updates owed."""
        lockstep = self.options.pacing == "lockstep"
        if lockstep and self.owed_updates():
            return
        for identity, peer in self.peers.items():
            if peer.role != "runner":
                continue
            grant = self.dedup.watermark(peer.name) + (self.options.credit if lockstep else REALTIME_CREDIT)
            if grant > peer.granted and self._send(identity, Credit(self.options.name, peer.name, grant)):
                peer.granted = grant

    def _heartbeats(self, beat: transport.Heartbeat) -> None:
        if not beat.due():
            return
        beat.sent()
        for identity, peer in list(self.peers.items()):
            if peer.heartbeat.alive():
                version = self._policy_for(peer).version  # what this runner should be running
                msg = HeartbeatMessage(
                    self.options.name, "learner", time.time(), self.phase.value, policy_version=version
                )
                self._send(identity, msg)
            elif (peer.heartbeat.silence_s() or 0.0) > 10 * self.options.deadline_s:
                del self.peers[identity]  # long gone; a reconnect registers it again
            if peer.role == "runner" and peer.granted >= 0 and peer.heartbeat.alive():
                self._send(identity, Credit(self.options.name, peer.name, peer.granted))

    def serve(self, stop: threading.Event) -> None:
        beat = transport.Heartbeat(self.options.heartbeat_s, self.options.deadline_s)
        while not stop.is_set():
            started = time.monotonic()
            while self._may_update() and time.monotonic() - started < UPDATE_SLICE_S:
                self.update_once()
            self._grant_credit()
            self._check_gate()
            self._push_policies()
            self._heartbeats(beat)
            frames = transport.recv_frames(self.sock, 0.0 if self._may_update() else UPDATE_SLICE_S)
            handled = 0
            while frames is not None:
                self.handle(frames)
                handled += 1
                frames = transport.recv_frames(self.sock, 0.0) if handled < RECEIVE_ROUND else None
            self._commit()

    # ----- reporting -----

    def status(self) -> dict[str, Any]:
        start = max(self.cfg.run.warmup_steps, self.cfg.agent.batch_size, 1)
        online_steps = max(0, self.transitions - start + 1)
        mean_q = float("nan")
        if len(self.buffer):
            probe = np.random.default_rng()  # not self.rng: a status request must not change training
            sample = self.buffer.gather(self.buffer.sample_indices(min(256, len(self.buffer)), probe))
            batch = self.agent.to_batch(sample)
            mean_q = self.agent.mean_q(batch["obs"], batch["action"])
        peers_of: dict[str, list[Peer]] = {}
        for peer in self.peers.values():
            peers_of.setdefault(peer.name, []).append(peer)
        return {
            "phase": RunnerState.PAUSED.value if self.learning_paused else self.phase.value,
            "pacing": self.options.pacing,
            "step": self.transitions,
            "updates": self.online_updates,
            "owed_updates": self.owed_updates(),
            "effective_utd": self.online_updates * self.cfg.agent.utd / online_steps if online_steps else 0.0,
            "buffer": len(self.buffer),
            "policy_version": self.version,
            "gate": self._gate_status(),
            "mean_q": mean_q,
            "losses": {k: float(v) for k, v in self.last_info.items()},
            "log_records": self.log.records,
            "rejected": self.rejects.as_dict(),
            "runners": {
                name: {
                    "acked_seq": self.dedup.watermark(name),
                    "recent_returns": list(r.recent),
                    "connected": any(q.heartbeat.alive() for q in peers_of.get(name, [])),
                    "tag": peers_of[name][0].tag if name in peers_of else None,
                    "sent_policy_version": peers_of[name][0].sent_version if name in peers_of else None,
                }
                for name, r in self.returns.items()
            },
        }

    def _gate_status(self) -> dict[str, Any]:
        """What hardware runners may run and why recent versions were held back (console, logs)."""
        return {
            "enabled": self.gate is not None,
            "deployed_version": self.deployed.version,
            "validating": self.gate is not None and self.gate.busy,
            "verdicts": [
                {"version": v.version, "status": v.status, "reasons": v.reasons[:5]} for v in self.verdicts
            ],
        }

    def close(self) -> None:
        if self.gate is not None:
            self.gate.close()
        self.log.close()


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robot-wsrl learner",
        description="Serve the WSRL learner to runners over ZeroMQ. Hydra overrides, e.g.: "
        "run.checkpoint=CKPT out_dir=runs/session1 run.warmup_steps=5000 agent.utd=4",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    parser.add_argument(
        "--bind", default="tcp://0.0.0.0:5555", help="endpoint the ROUTER binds (tcp port 0: a free one)"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="once serving, write {endpoint, pid} here as JSON (for a supervisor that bound port 0)",
    )
    parser.add_argument("--keys", type=Path, required=True, help="key dir: NAME.key_secret, NAME.sign, peers")
    parser.add_argument("--name", default="learner", help="this learner's key name")
    parser.add_argument("--plain", action="store_true", help="no CURVE (loopback endpoints only)")
    parser.add_argument("--publish-every", type=int, default=LearnerOptions.publish_every, help="updates")
    parser.add_argument(
        "--credit", type=int, default=LearnerOptions.credit, help="lockstep window, transitions"
    )
    parser.add_argument(
        "--pacing",
        choices=("lockstep", "realtime"),
        default=LearnerOptions.pacing,
        help="lockstep (sim: exact UTD, reproducible) or realtime (hardware: the robot never waits)",
    )
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="send every version to hardware runners too, unvalidated (sim-only setups)",
    )
    parser.add_argument(
        "--validate-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to every `robot-wsrl validate` of a new version (repeat; e.g. episodes=5)",
    )
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = compose_config("finetune", args.overrides)
    ctx = zmq.Context()
    try:
        signing_key = keys.load_signing_key(args.keys, args.name)
        if args.plain:
            sock = transport.plain_server(ctx, zmq.ROUTER, args.bind)
        else:
            sock = transport.secure_server(
                ctx,
                zmq.ROUTER,
                args.bind,
                keys.load_curve_keys(args.keys, args.name),
                keys.load_public_keys(args.keys, roles=("runner", "console")),
            )
        learner = Learner(
            cfg,
            sock,
            prepare_out_dir(cfg),
            signing_key,
            LearnerOptions(
                args.name,
                args.publish_every,
                args.credit,
                pacing=args.pacing,
                gate=not args.no_gate,
                validate_args=tuple(args.validate_arg),
            ),
            secure=not args.plain,
            keydir=args.keys,
            commanders=None if args.plain else set(keys.load_public_keys(args.keys, roles=("console",))),
        )
    except (keys.KeyFileError, transport.TransportError, CheckpointError, ValueError, zmq.ZMQError) as exc:
        transport.shutdown(ctx)
        print(f"robot-wsrl learner: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.max_seconds is not None:
        timer = threading.Timer(args.max_seconds, stop.set)
        timer.daemon = True
        timer.start()
    endpoint = transport.bound_endpoint(sock)
    if args.ready_file is not None:
        write_atomic(args.ready_file, json.dumps({"endpoint": endpoint, "pid": os.getpid()}).encode())
    print(f"learner {args.name} on {endpoint}, outputs in {learner.out}", flush=True)
    try:
        learner.serve(stop)
    finally:
        learner.close()
        transport.shutdown(ctx)
    print(learner.status())
    return 0
