"""`robot-wsrl learner`: the off-board WSRL learner that runners feed over ZeroMQ (torch lives here).

One ROUTER socket, one thread, no blocking waits: it receives transition batches, de-duplicates them by
(runner, seq), appends the new ones to a durable log and acknowledges them only after fsyncing it (one
fsync per receive round), so an ack never covers data a crash could lose; it inserts them into an online-only
replay buffer. Phases are WSRL's: warmup until `run.warmup_steps` transitions (from all runners
together) with no update, then one UTD round per transition, exactly as the in-process loop
(`finetune.py`) does. Pacing is lockstep: a runner may produce only up to the `Credit` it was granted, and
the learner extends credit only once it has done every update its data is owed, so the UTD ratio is exact
and a runner is never more than `credit` transitions ahead of the policy being trained. Every
`publish_every` updates it exports, signs and pushes a new ONNX policy, and saves its state; on restart it
replays the log (buffer and dedup state) and continues from that state, so nothing acknowledged is lost
and nothing is counted twice.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from robot_wsrl import keys, transport
from robot_wsrl.agent import Agent
from robot_wsrl.checkpoint import CheckpointError, load_checkpoint
from robot_wsrl.config import Config, compose_config, config_hash, prepare_out_dir
from robot_wsrl.export import ONNX_NAME, SIDECAR_NAME, export_policy
from robot_wsrl.ingest_log import IngestLog
from robot_wsrl.protocol import (
    Ack,
    Credit,
    HeartbeatMessage,
    Message,
    PolicyMessage,
    PolicyRequest,
    RejectCounter,
    Status,
    StatusRequest,
    Transitions,
    encode,
    try_decode,
)
from robot_wsrl.replay import MixedSampler, ReplayBuffer
from robot_wsrl.safety import RunnerState
from robot_wsrl.signing import signed_policy_message
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


@dataclass(frozen=True)
class LearnerOptions:
    name: str = "learner"
    publish_every: int = 1000  # updates between two published policies
    credit: int = 1000  # transitions a runner may produce ahead of the updates its data is owed
    heartbeat_s: float = 0.5
    deadline_s: float = 3.0


@dataclass
class Peer:
    """A connected runner (or console) as the learner sees it."""

    name: str
    heartbeat: transport.Heartbeat
    role: str = "runner"
    granted: int = -1


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
    ) -> None:
        if not cfg.run.checkpoint:
            raise ValueError("the learner starts from a pre-trained checkpoint: run.checkpoint=PATH")
        if cfg.run.offline_ratio > 0:
            raise ValueError("the learner fine-tunes on online data only (run.offline_ratio must be 0)")
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
        for identity, peer in self.peers.items():
            if peer.role == "runner":
                self._send(identity, self.policy)
        extra = {"policy_version": self.version, "online_updates": self.online_updates}
        save_training_checkpoint(
            self.out / STATE_FILE, self.agent, self.spec, self.cfg, self.transitions, extra
        )
        log.info("published policy version %d after %d updates", self.version, self.online_updates)

    def _make_policy(self) -> PolicyMessage:
        """The signed message of the current version (exported once; a restart reuses the files)."""
        directory = self.out / POLICY_DIR / f"v{self.version:06d}"
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
        onnx = (directory / ONNX_NAME).read_bytes()
        sidecar = (directory / SIDECAR_NAME).read_text()
        return signed_policy_message(self.options.name, self._signing_key, onnx, sidecar)

    # ----- ingest -----

    def _accepted(self, batch: Transitions) -> np.ndarray:
        return self.dedup.accept(batch.runner_id, batch.first_seq, batch.count)

    def _insert(self, batch: Transitions, mask: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        if not len(idx):
            return
        self.buffer.add_batch(
            obs=batch.obs[idx],
            action=batch.action[idx],
            reward=batch.reward[idx],
            next_obs=batch.next_obs[idx],
            terminated=batch.terminated[idx],
            truncated=batch.truncated[idx],
        )
        returns = self.returns.setdefault(batch.runner_id, Returns())
        for i in idx:
            episode = int(batch.episode_id[i])
            returns.running[episode] = returns.running.get(episode, 0.0) + float(batch.reward[i])
            if batch.terminated[i] or batch.truncated[i]:
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
            operator = isinstance(msg, StatusRequest) or (
                isinstance(msg, HeartbeatMessage) and msg.role != "runner"
            )
            heartbeat = transport.Heartbeat(self.options.heartbeat_s, self.options.deadline_s)
            peer = Peer(msg.sender, heartbeat, role="console" if operator else "runner")
            self.peers[identity] = peer
            log.info("%s %s joined", peer.role, peer.name)
            if peer.role == "runner":
                self._send(identity, self.policy)
                self._acks[identity] = peer.name  # what it has durably, so its spool can forget it
        return peer

    def handle(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            self.rejects.add("frames")
            return
        identity, body = frames[0].bytes, frames[1:]
        msg = try_decode(body, self.rejects)
        if msg is None:
            return
        if self.secure and body[-1].get("User-Id") != msg.sender:
            self.rejects.add("identity")  # a peer may speak only under the name its key was issued to
            return
        if isinstance(msg, Transitions) and msg.runner_id != msg.sender:
            self.rejects.add("identity")
            return
        peer = self._peer(identity, msg)
        peer.heartbeat.beat()
        if isinstance(msg, Transitions):
            self._ingest(identity, msg)
        elif isinstance(msg, HeartbeatMessage):
            peer.role = msg.role  # a runner that misses a push asks for it after our next heartbeat
        elif isinstance(msg, PolicyRequest):
            self._send(identity, self.policy)
        elif isinstance(msg, StatusRequest):
            self._send(identity, Status(self.options.name, self.status()))

    def _grant_credit(self) -> None:
        """Extend each runner's credit once every update its data is owed is done (lockstep)."""
        if self.owed_updates():
            return
        for identity, peer in self.peers.items():
            if peer.role != "runner":
                continue
            grant = self.dedup.watermark(peer.name) + self.options.credit
            if grant > peer.granted and self._send(identity, Credit(self.options.name, peer.name, grant)):
                peer.granted = grant

    def _heartbeats(self, beat: transport.Heartbeat) -> None:
        if not beat.due():
            return
        beat.sent()
        msg = HeartbeatMessage(
            self.options.name, "learner", time.time(), self.phase.value, policy_version=self.version
        )
        for identity, peer in list(self.peers.items()):
            if peer.heartbeat.alive():
                self._send(identity, msg)
            elif (peer.heartbeat.silence_s() or 0.0) > 10 * self.options.deadline_s:
                del self.peers[identity]  # long gone; a reconnect registers it again
            if peer.role == "runner" and peer.granted >= 0 and peer.heartbeat.alive():
                self._send(identity, Credit(self.options.name, peer.name, peer.granted))

    def serve(self, stop: threading.Event) -> None:
        beat = transport.Heartbeat(self.options.heartbeat_s, self.options.deadline_s)
        while not stop.is_set():
            started = time.monotonic()
            while self.owed_updates() and time.monotonic() - started < UPDATE_SLICE_S:
                self.update_once()
            self._grant_credit()
            self._heartbeats(beat)
            frames = transport.recv_frames(self.sock, 0.0 if self.owed_updates() else UPDATE_SLICE_S)
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
        return {
            "phase": self.phase.value,
            "step": self.transitions,
            "updates": self.online_updates,
            "owed_updates": self.owed_updates(),
            "effective_utd": self.online_updates * self.cfg.agent.utd / online_steps if online_steps else 0.0,
            "buffer": len(self.buffer),
            "policy_version": self.version,
            "mean_q": mean_q,
            "losses": {k: float(v) for k, v in self.last_info.items()},
            "log_records": self.log.records,
            "rejected": self.rejects.as_dict(),
            "runners": {
                name: {
                    "acked_seq": self.dedup.watermark(name),
                    "recent_returns": list(r.recent),
                    "connected": any(q.name == name and q.heartbeat.alive() for q in self.peers.values()),
                }
                for name, r in self.returns.items()
            },
        }

    def close(self) -> None:
        self.log.close()


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robot-wsrl learner",
        description="Serve the WSRL learner to runners over ZeroMQ. Hydra overrides, e.g.: "
        "run.checkpoint=CKPT out_dir=runs/session1 run.warmup_steps=5000 agent.utd=4",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    parser.add_argument("--bind", default="tcp://0.0.0.0:5555", help="endpoint the ROUTER binds")
    parser.add_argument("--keys", type=Path, required=True, help="key dir: NAME.key_secret, NAME.sign, peers")
    parser.add_argument("--name", default="learner", help="this learner's key name")
    parser.add_argument("--plain", action="store_true", help="no CURVE (loopback endpoints only)")
    parser.add_argument("--publish-every", type=int, default=LearnerOptions.publish_every, help="updates")
    parser.add_argument(
        "--credit", type=int, default=LearnerOptions.credit, help="lockstep window, transitions"
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
            LearnerOptions(args.name, args.publish_every, args.credit),
            secure=not args.plain,
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
    print(f"learner {args.name} on {args.bind}, outputs in {learner.out}", flush=True)
    try:
        learner.serve(stop)
    finally:
        learner.close()
        transport.shutdown(ctx)
    print(learner.status())
    return 0
