"""The off-board WSRL learner service that runners feed over ZeroMQ (torch here; apps/learner.py runs it).

One ROUTER socket, one thread, no blocking waits: it receives transition batches, de-duplicates them by
(runner, seq), appends the new ones to a durable log and acknowledges them only after fsyncing it (one
fsync per receive round), so an ack never covers data a crash could lose; it inserts them into an online-only
replay buffer. When to update is WSRL's schedule, `trainer.Trainer`, the one the in-process loop
(`finetune.py`) runs: warmup until `run.warmup_steps` transitions (from all runners together) with no
update, then one UTD round per transition; this service only paces the rounds owed. Two pacings: lockstep
(sim) — a runner may produce only up to the `Credit` it was granted, and the learner extends credit only
once it has done every update its data is owed, so the UTD ratio is exact, runs are reproducible and a
runner is never more than `credit` transitions ahead of the policy being trained; real time (hardware) —
credit is unbounded, the robot never waits, and the learner does as many of the owed updates as it can
(status reports the effective UTD ratio). Every `publish_every` updates (the trainer's publishing hook) it
exports, signs and pushes a new ONNX policy, and saves its state; on restart it replays the log (buffer
and dedup state) and continues from that state, so nothing acknowledged is lost and nothing is counted
twice.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from robot_wsrl.core.artifacts import (
    INGEST_LOG,
    LEARNER_STATE,
    POLICY_DIR,
    POLICY_ONNX,
    POLICY_SIDECAR,
    RUN_ID,
    version_dir,
)
from robot_wsrl.core.files import write_atomic
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    load_checkpoint,
    with_checkpoint_shapes,
)
from robot_wsrl.learn.config import Config, config_hash
from robot_wsrl.learn.export import export_policy
from robot_wsrl.learn.gating import PolicyGate, Validator, Verdict
from robot_wsrl.learn.ingest_log import IngestLog
from robot_wsrl.learn.networks import build_networks
from robot_wsrl.learn.replay import FrameBatch
from robot_wsrl.learn.trainer import Trainer, online_buffer
from robot_wsrl.learn.training import (
    checkpoint_snapshot,
    config_header,
    load_agent_checkpoint,
    seed_everything,
)
from robot_wsrl.robot.safety import RunnerState
from robot_wsrl.wire import transport
from robot_wsrl.wire.protocol import (
    Ack,
    BatchRules,
    Command,
    Credit,
    HeartbeatMessage,
    Message,
    PolicyMessage,
    PolicyRequest,
    ProtocolError,
    RejectCounter,
    Reply,
    Status,
    StatusRequest,
    Transitions,
    encode,
)
from robot_wsrl.wire.signing import signed_policy_message, write_signature
from robot_wsrl.wire.spool import DedupLog

log = logging.getLogger(__name__)

SEGMENTS_PER_CAPACITY = 4  # log segment = a quarter of the replay capacity: dead data on disk stays below it
_VERSION_DIR = re.compile(r"v\d{6}")
UPDATE_SLICE_S = 0.05  # longest run of updates between two looks at the socket
SEND_TIMEOUT_S = 0.0  # never wait: a ROUTER that cannot send now drops (a full peer queue holds no one)
RECEIVE_ROUND = 256  # messages handled between two group commits of the log
RECENT_RETURNS = 10
RECENT_VERDICTS = 20
RESTARTS_FROM = (LEARNER_STATE, INGEST_LOG)  # in its out_dir: a learner restarted there carries on
ACCEPTED = (
    Transitions,
    HeartbeatMessage,
    PolicyRequest,
    StatusRequest,
    Command,
)  # what runners and consoles send
REALTIME_CREDIT = 2**40  # real-time pacing: a window no runner reaches
_RUN_ID = re.compile(r"[0-9a-f]{32}\Z")
# What each key role may send the learner (a heartbeat only under its own role). The learner itself only
# ever sends policies, credit, acks, heartbeats, status and replies: never a command.
PERMITTED: dict[str, tuple[type[Message], ...]] = {
    "runner": (Transitions, HeartbeatMessage, PolicyRequest, StatusRequest),
    "console": (Command, HeartbeatMessage, StatusRequest),
}
# Per-peer bounds: whatever peers send, the learner's tables and queues stay this small.
MAX_PEERS = 256  # connections tracked at once (silent ones are dropped first when it is full)
MAX_CONNECTIONS = {"runner": 4, "console": 32}  # live connections per key name
MAX_RUNNERS = 256  # distinct runner ids (with CURVE the key directory bounds them already)
MAX_OPEN_EPISODES = 8  # per runner; an older one still open is closed as cut short
MAX_UNCONFIRMED = 4  # sends of one version to a connection whose heartbeats never confirm it
MEAN_Q_EVERY_S = 2.0  # status's mean Q is at most this old
Pacing = Literal["lockstep", "realtime"]


@dataclass(frozen=True)
class LearnerOptions:
    name: str = "learner"
    publish_every: int = 1000  # updates between two published policies
    credit: int = 1000  # lockstep: transitions a runner may produce ahead of the updates its data is owed
    pacing: Pacing = "lockstep"
    heartbeat_s: float = 0.5
    deadline_s: float = 3.0


@dataclass
class Peer:
    """One connection of a runner (or console) as the learner sees it: its name and role are fixed when
    it registers (from its CURVE key; in plain mode from its first message) and never change."""

    name: str
    heartbeat: transport.Heartbeat
    role: str = "runner"
    granted: int = -1
    tag: str = "hardware"  # until its heartbeat says "sim": an unknown runner gets only validated versions
    sent_version: int | None = None  # the last policy sent on this connection ...
    sent_at: float = float("-inf")  # ... when (monotonic) ...
    unconfirmed: int = 0  # ... and how often, without its heartbeats saying it has it
    has_version: int | None = None  # the policy it says it has (heartbeat, policy request)


@dataclass
class Returns:
    """A runner's episode returns, summed from the transitions it sent (survives reconnects), and the
    outcomes its episodes reported (a task with a success signal; the ending row's `success`)."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_RETURNS))
    recent_success: deque[bool] = field(default_factory=lambda: deque(maxlen=RECENT_RETURNS))
    running: dict[int, float] = field(default_factory=dict)


class Learner:
    """The learner's state and its message loop; `serve` runs until `stop` is set."""

    mean_q: float | None = None  # for status, refreshed every MEAN_Q_EVERY_S (`_refresh_mean_q`)
    _mean_q_at = float("-inf")

    def __init__(
        self,
        cfg: Config,
        sock: zmq.Socket,
        out_dir: Path,
        signing_key: Ed25519PrivateKey,
        options: LearnerOptions = LearnerOptions(),
        secure: bool = True,
        roles: Mapping[str, str] | None = None,
        gate: PolicyGate | None = None,
    ) -> None:
        """With a `gate`, hardware runners get only versions that passed it; without, every version."""
        if not cfg.run.checkpoint:
            raise ValueError("the learner starts from a pre-trained checkpoint: run.checkpoint=PATH")
        if cfg.run.offline_ratio > 0:
            raise ValueError("the learner fine-tunes on online data only (run.offline_ratio must be 0)")
        if options.pacing not in ("lockstep", "realtime"):
            raise ValueError(f"pacing must be 'lockstep' or 'realtime', got {options.pacing!r}")
        self.cfg, self.sock, self.out, self.options, self.secure = cfg, sock, out_dir, options, secure
        self._signing_key = signing_key
        rng = seed_everything(cfg.seed, cfg.threads)
        pretrained = load_checkpoint(cfg.run.checkpoint)
        self.spec = EnvSpec.from_dict(pretrained["spec"])
        kind, _, env_id = cfg.env.driver.partition(":")
        made_for_gym = re.fullmatch(r"[\w]+-v\d+", self.spec.name or "") is not None  # e.g. Hopper-v5
        if kind == "gym" and made_for_gym and env_id != self.spec.name:  # the runners drive cfg.env
            raise CheckpointError(
                f"{cfg.run.checkpoint}: made for {self.spec.name} (obs_dim={self.spec.obs_dim}, "
                f"act_dim={self.spec.act_dim}); env={cfg.env.name} drives {env_id}"
            )
        cfg.agent = with_checkpoint_shapes(cfg.agent, pretrained["agent_config"])  # the weights decide them
        networks = build_networks(
            self.spec.obs_dim, self.spec.act_dim, cfg.agent, cfg.device, cameras=self.spec.cameras
        )
        self.agent = Agent(networks, cfg.agent)
        self.buffer = online_buffer(self.agent, cfg.run.buffer_capacity, self.spec.cameras)
        self.rejects = RejectCounter()
        self.learning_paused = False
        self.roles = roles  # CURVE: {key name: runner|console} (keys.load_key_roles); None in plain mode
        self.peers: dict[bytes, Peer] = {}
        self._acks: dict[bytes, str] = {}  # acks owed once the log is synced: identity -> runner id
        self.version = 0
        self.returns: dict[str, Returns] = {}
        self._hash = config_hash(cfg)
        state, updates = out_dir / LEARNER_STATE, 0
        if state.exists():  # a restart: the state saved at the last publish (or at close)
            payload = load_agent_checkpoint(str(state), self.agent, self.spec, with_optimizers=True)
            self.version = int(payload["extra"]["policy_version"])
            updates = int(payload["extra"]["online_updates"])
        else:
            load_agent_checkpoint(cfg.run.checkpoint, self.agent, self.spec, with_optimizers=True)
        self.trainer = Trainer(
            self.agent,
            self.buffer,
            rng,
            cfg.run.warmup_steps,
            updates=updates,
            publish_every=options.publish_every,
            on_publish=self.publish,
        )
        # A version exported (and maybe sent) after the last state save keeps its number: never reused.
        exported = [
            int(d.name[1:]) for d in (out_dir / POLICY_DIR).glob("v*") if _VERSION_DIR.fullmatch(d.name)
        ]
        self.version = max([self.version, *exported])
        header = config_header(self.spec, cfg)  # once: converting the config is slow
        self.checkpoints = CheckpointWriter(
            out_dir / LEARNER_STATE,
            lambda: checkpoint_snapshot(
                self.agent,
                header,
                self.transitions,
                {"policy_version": self.version, "online_updates": self.trainer.updates},
            ),
        )
        self.dedup = DedupLog()
        self.log = IngestLog(out_dir / INGEST_LOG, max(1, cfg.run.buffer_capacity // SEGMENTS_PER_CAPACITY))
        if self.log.base is not None:  # compacted: the state where the oldest segment left begins
            self.dedup = DedupLog.from_state(self.log.base.state["dedup"])
            self.buffer.total_added = self.log.base.transitions  # the ring's slots as they were
            self.buffer.cursor = self.buffer.total_added % self.buffer.capacity
        for batch in self.log.replay():
            self._insert(batch, self._accepted(batch))
        self.policy = self._make_policy()
        self.gate: Validator | None = None
        self.deployed = self._policy_message(0) if gate is None else self._deployed_on_start(gate)
        self.verdicts: deque[Verdict] = deque(maxlen=RECENT_VERDICTS)
        if gate is not None:
            self.gate = gate.start(self.deployed.version, self._version_dir(self.deployed.version))
            if self.version > self.deployed.version:
                self.gate.submit(self.version, self._version_dir(self.version))
        log.info(
            "learner ready: %d transitions replayed from %s, policy version %d, %d updates; replay %.0f "
            "bytes per transition, %.2f GB when full",
            self.buffer.total_added,
            self.log.path,
            self.version,
            self.trainer.updates,
            self.buffer.bytes_per_transition,
            self.buffer.bytes_per_transition * self.buffer.capacity / 1e9,
        )

    # ----- phases and updates -----

    @property
    def transitions(self) -> int:
        return self.buffer.total_added

    @property
    def phase(self) -> RunnerState:
        return RunnerState.WARMUP if self.trainer.warming_up else RunnerState.FINE_TUNING

    def owed_updates(self) -> int:
        """UTD rounds the data so far is owed and not yet done (the trainer's count): what the loop paces
        and lockstep credit waits for."""
        return self.trainer.owed

    def _may_update(self) -> bool:
        """Updates are owed and no operator paused learning (lockstep runners then wait for credit)."""
        return not self.learning_paused and self.owed_updates() > 0

    def update_once(self) -> None:
        """One owed round (and a publish when one is due): the loop's unit of work between two looks at
        the socket."""
        self.trainer.update()

    def publish(self) -> None:
        """The trainer's publishing hook: export, sign and push a new version to every runner, then save
        the learner's state (without waiting for the write)."""
        self.version += 1
        self.policy = self._make_policy()
        if self.gate is not None:
            self.gate.submit(self.version, self._version_dir(self.version))
        self._push_policies()
        self.checkpoints.save()  # a CPU copy now; the file is written in the background
        log.info("published policy version %d after %d updates", self.version, self.trainer.updates)

    def _version_dir(self, version: int) -> Path:
        return version_dir(self.out / POLICY_DIR, version)

    @functools.cached_property
    def run_id(self) -> str:
        """This run's identity: random, made once per out_dir and kept across restarts. Every policy it
        exports carries it inside what is signed, so a runner following this run takes only newer versions
        of this run, never an old or foreign one signed with the same key."""
        path = self.out / RUN_ID
        if not path.exists():
            write_atomic(path, (secrets.token_hex(16) + "\n").encode())
        run_id = path.read_text().strip()
        if not _RUN_ID.match(run_id):
            raise ValueError(f"{path}: not a run id (32 hex digits): {run_id[:40]!r}")
        return run_id

    def _make_policy(self) -> PolicyMessage:
        """Export and sign the current version (once; a restart reuses the files, so a version number
        always names the same bytes and versions only move forward), and its message."""
        directory = self._version_dir(self.version)
        if not (directory / POLICY_SIDECAR).exists():
            export_policy(
                self.agent.policy_module(),  # behind its image encoder on a camera task
                directory,
                version=self.version,
                parent_version=self.version - 1 if self.version else None,
                spec=self.spec,
                step=self.trainer.updates,
                config_hash=self._hash,
                run_id=self.run_id,
            )
            write_signature(directory / POLICY_ONNX, self._signing_key)  # stays verifiable on disk
        return self._policy_message(self.version)

    def _policy_message(self, version: int) -> PolicyMessage:
        directory = self._version_dir(version)
        onnx = (directory / POLICY_ONNX).read_bytes()
        sidecar = (directory / POLICY_SIDECAR).read_text()
        return signed_policy_message(self.options.name, self._signing_key, onnx, sidecar)

    # ----- the sim-first gate -----

    def _deployed_on_start(self, gate: PolicyGate) -> PolicyMessage:
        """The newest version that passed validation (a restart keeps what hardware may run); else 0."""
        for version in range(self.version, 0, -1):
            if gate.passed(self._version_dir(version)):
                return self._policy_message(version)
        return self._policy_message(0)

    def _policy_for(self, peer: Peer) -> PolicyMessage:
        """Sim runners get every version; hardware runners the last validated one (all, with no gate)."""
        return self.policy if self.gate is None or peer.tag == "sim" else self.deployed

    def _push_policies(self) -> None:
        """Send each runner its policy when it changed (a publish, a verdict, a runner's tag)."""
        now = time.monotonic()
        for identity, peer in self.peers.items():
            if peer.role == "runner" and peer.heartbeat.alive():
                self._offer_policy(identity, peer, now)

    def _offer_policy(self, identity: bytes, peer: Peer, now: float) -> None:
        """Send `peer` its policy unless it says it has it or a send is still in flight.

        A policy is large and a peer that never reads would keep every copy queued at the learner, so
        a connection gets the same version again only after a heartbeat period, doubling with each send
        its heartbeats do not confirm, and at most MAX_UNCONFIRMED times; a newer version starts afresh.
        A runner that requests what it was just sent is not answered again.
        """
        policy = self._policy_for(peer)
        if peer.has_version == policy.version:
            return
        if peer.sent_version != policy.version:
            peer.unconfirmed = 0
        elif peer.unconfirmed >= MAX_UNCONFIRMED:
            return
        if peer.unconfirmed and now - peer.sent_at < self.options.heartbeat_s * 2 ** (peer.unconfirmed - 1):
            return
        if self._send(identity, policy):
            peer.sent_version, peer.sent_at, peer.unconfirmed = policy.version, now, peer.unconfirmed + 1

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

    @functools.cached_property
    def rules(self) -> BatchRules:
        """What a batch must be for this task (widths) and within the per-batch bounds."""
        return BatchRules(self.spec.obs_dim, self.spec.act_dim, cameras=self.spec.cameras)

    def _refusal(self, batch: Transitions) -> str | None:
        """Why `batch` may not touch any state (a reason to count), or None: a runner files data only
        under its own name, in the task's shapes, within the bounds on batches and runners."""
        if batch.runner_id != batch.sender:
            return "identity"
        try:
            self.rules.check(batch)
        except ProtocolError as exc:
            return exc.reason
        if batch.runner_id not in self.returns and len(self.returns) >= MAX_RUNNERS:
            return "runners"
        return None

    def _accepted(self, batch: Transitions) -> np.ndarray:
        """Rows of `batch` not taken before (now recorded). A batch the checks refuse takes nothing: live,
        `handle` refused it already; in the ingest log replayed at a restart (a log written before these
        checks, or for another task) it is skipped, counted as log_REASON and reported, never fatal."""
        reason = self._refusal(batch)
        if reason is not None:
            self.rejects.add(f"log_{reason}")
            log.warning(
                "skipped a logged batch of %s (seq %d..%d): %s",
                batch.runner_id,
                batch.first_seq,
                batch.last_seq,
                reason,
            )
            return np.zeros(batch.count, bool)
        return self.dedup.accept(batch.runner_id, batch.first_seq, batch.count)

    def _insert(self, batch: Transitions, mask: np.ndarray) -> None:
        """Into the buffer, and the runner's episode returns. Episode ids are in order within a batch
        (`BatchRules`), so each episode is one run of rows and the cost is O(rows + episodes). An episode
        the runner left for a later one in the same batch without ending it (an e-stop, a pause) is over:
        it is closed as cut short, so a batch leaves at most one episode open; and a runner keeps at most
        MAX_OPEN_EPISODES open (older ones, e.g. cut by a runner restart, are closed as cut short)."""
        idx = np.flatnonzero(mask)
        if not len(idx):
            return
        episodes, rewards = batch.episode_id[idx], batch.reward[idx]
        starts = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])  # one run per episode
        lasts = np.r_[starts[1:], len(idx)] - 1
        ended = (batch.terminated[idx][lasts] != 0) | (batch.truncated[idx][lasts] != 0)
        truncated = batch.truncated[idx].copy()
        truncated[lasts[:-1]] |= ~ended[:-1]  # left for the next episode: cut short
        ids = episodes[starts].tolist()
        keys = [f"{batch.runner_id}/{episode}" for episode in ids]  # runners' episodes interleave
        frames = None
        if batch.cameras:  # the accepted rows' frames, each stored once (chained rows share theirs)
            obs = {c: batch.camera_obs(c) for c in batch.cameras}
            unchained = {c: batch.camera_next_unchained(c) for c in batch.cameras}
            frames = FrameBatch(batch.chained, obs, unchained).rows(idx)
        self.buffer.add_batch(
            np.repeat(np.array(keys), lasts - starts + 1),
            frames,
            obs=batch.obs[idx],
            action=batch.action[idx],
            reward=rewards,
            next_obs=batch.next_obs[idx],
            terminated=batch.terminated[idx],
            truncated=truncated,
        )
        returns = self.returns.setdefault(batch.runner_id, Returns())
        sums = np.add.reduceat(rewards.astype(np.float64), starts)
        for episode in [e for e in returns.running if ids[0] <= e <= ids[-1]]:  # those it goes on with
            i = int(np.searchsorted(episodes[starts], episode))
            if ids[i] == episode:
                sums[i] += returns.running.pop(episode)
        returns.recent.extend(sums[ended][-RECENT_RETURNS:].tolist())
        outcomes = batch.successes()
        if outcomes:
            rows = idx[lasts[ended]].tolist()
            returns.recent_success.extend(outcomes[row] for row in rows if row in outcomes)
        if not ended[-1]:  # the others ended or were cut short (no return to report for those)
            returns.running[ids[-1]] = float(sums[-1])
        while len(returns.running) > MAX_OPEN_EPISODES:
            oldest = next(iter(returns.running))
            del returns.running[oldest]
            self.buffer.cut_episode(f"{batch.runner_id}/{oldest}")

    def _ingest(self, identity: bytes, batch: Transitions) -> None:
        """Dedup, log durably, then ack (the order is what makes the ack a promise), then insert."""
        mask = self._accepted(batch)
        idx = np.flatnonzero(mask)
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []:
            # a run of new rows as a batch of its own: its frames logged as they arrived (never re-coded)
            self.log.append(batch if len(run) == batch.count else batch.rows(int(run[0]), int(run[-1]) + 1))
        self._acks[identity] = batch.runner_id
        self._insert(batch, mask)

    def _commit(self) -> None:
        """Group commit: one fsync of the log (and a rotation and compaction when due), then the acks it
        now covers."""
        if not self._acks:
            return
        self.log.sync()
        if self.log.rotation_due():  # here the state describes exactly the records logged so far
            self.log.rotate(self.transitions, {"dedup": self.dedup.state()})
            self.log.compact(self.transitions - self.buffer.capacity)  # the ring overwrote all before
        for identity, runner_id in self._acks.items():
            self._send(identity, Ack(self.options.name, runner_id, self.dedup.watermark(runner_id)))
        self._acks.clear()

    # ----- messages -----

    def _send(self, identity: bytes, msg: Message) -> bool:
        return transport.send_frames(self.sock, [identity, *encode(msg)], SEND_TIMEOUT_S)

    def _role(self, identity: bytes, msg: Message) -> str | None:
        """The role the sender acts in. With CURVE it is its key's (the sender is its key's name, checked
        against the connection's User-Id by `routed_message`), whatever the message claims.

        Plain mode (loopback only) cannot bind anything to a key: any local process may speak under any
        name and role, so another runner's acks and credit, or a console's pause, are one message away.
        There a connection's name and role are those of its first message, fixed for its lifetime."""
        if self.secure:
            return None if self.roles is None else self.roles.get(msg.sender)
        peer = self.peers.get(identity)
        if peer is not None:
            return peer.role
        if isinstance(msg, HeartbeatMessage):
            return msg.role
        return "runner" if isinstance(msg, (Transitions, PolicyRequest)) else "console"

    def _room_for(self, name: str, role: str) -> bool:
        """Whether a new connection of `name` may register: at most MAX_CONNECTIONS[role] live ones per
        name and MAX_PEERS in all (silent ones are dropped when the table is full)."""
        if len(self.peers) >= MAX_PEERS:
            for identity in [i for i, p in self.peers.items() if not p.heartbeat.alive()]:
                del self.peers[identity]
        live = sum(1 for p in self.peers.values() if p.name == name and p.heartbeat.alive())
        return len(self.peers) < MAX_PEERS and live < MAX_CONNECTIONS[role]

    def _peer(self, identity: bytes, msg: Message, role: str) -> Peer | None:
        """The sender's record, made at its first heartbeat, batch or policy request if there is room
        (None: refused and counted); a runner that joins gets its durable watermark."""
        peer = self.peers.get(identity)
        if peer is not None:
            return peer
        if not self._room_for(msg.sender, role):
            self.rejects.add("connections")
            return None
        peer = Peer(msg.sender, transport.Heartbeat(self.options.heartbeat_s, self.options.deadline_s), role)
        self.peers[identity] = peer
        log.info("%s %s joined", peer.role, peer.name)
        if peer.role == "runner":
            self._acks[identity] = peer.name  # what it has durably, so its spool can forget it
        return peer

    def handle(self, frames: list[Any]) -> None:
        """One message: authenticated, decoded, checked against the sender's key role and the task before
        it touches any state. Whatever is refused is counted by reason and changes nothing."""
        routed = transport.routed_message(frames, self.rejects, self.secure)
        if routed is None:
            return
        identity, msg = routed
        if not isinstance(msg, ACCEPTED):
            self.rejects.add("unexpected")  # valid, but not for a learner: counted, changes nothing
            return
        known = self.peers.get(identity)
        if known is not None and known.name != msg.sender:
            self.rejects.add("identity")  # plain mode: a connection keeps the name it registered with
            return
        role = self._role(identity, msg)
        if (
            role not in PERMITTED
            or not isinstance(msg, PERMITTED[role])
            or (isinstance(msg, HeartbeatMessage) and msg.role != role)
        ):
            self.rejects.add("role")
            if isinstance(msg, Command):
                error = f"{msg.sender} acts as {role or 'no known role'}: only a console commands the learner"
                self._send(identity, Reply(self.options.name, False, error, msg.ref))
            return
        reason = self._refusal(msg) if isinstance(msg, Transitions) else None
        if reason is not None:
            self.rejects.add(reason)
            return
        if isinstance(msg, (StatusRequest, Command)):  # answered; registers nothing (short-lived tools)
            if known is not None:
                known.heartbeat.beat()
            if isinstance(msg, Command):
                self._send(identity, self._command(msg))
            else:
                self._send(identity, Status(self.options.name, self.status()))
        elif (peer := self._peer(identity, msg, role)) is not None:
            peer.heartbeat.beat()
            self._stateful(identity, peer, msg)

    def _stateful(self, identity: bytes, peer: Peer, msg: Message) -> None:
        """A registered peer's batch, heartbeat or policy request."""
        if isinstance(msg, Transitions):
            self._ingest(identity, msg)
        elif isinstance(msg, HeartbeatMessage):
            if msg.role == "runner":
                self._confirm(peer, msg.policy_version)
            if msg.tag is not None and msg.tag != peer.tag:
                peer.tag = msg.tag
                log.info("runner %s is tagged %s", peer.name, peer.tag)
        elif isinstance(msg, PolicyRequest):
            self._confirm(peer, msg.have_version)
            self._offer_policy(identity, peer, time.monotonic())

    @staticmethod
    def _confirm(peer: Peer, version: int | None) -> None:
        """The runner says it has `version`: a send of it is no longer in flight."""
        peer.has_version = version
        if version is not None and version == peer.sent_version:
            peer.unconfirmed = 0

    def _command(self, cmd: Command) -> Reply:
        """A console's pause or resume of learning (e-stops go to the runners, not through here). Only a
        console key gets here (`handle`); the audit line names the key (CURVE: the sender is its name)."""
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

    def _refresh_mean_q(self) -> None:
        """Q on a probe of the buffer, for status: a critic pass of tens of milliseconds, so the loop does
        it every MEAN_Q_EVERY_S rather than each status request (no message may hold the loop)."""
        if not len(self.buffer) or time.monotonic() - self._mean_q_at < MEAN_Q_EVERY_S:
            return
        probe = np.random.default_rng()  # not the trainer's: a status report must not change training
        sample = self.buffer.gather(self.buffer.sample_indices(min(256, len(self.buffer)), probe))
        batch = self.agent.to_batch(sample)
        self.mean_q = float(self.agent.mean_q(batch["obs"], batch["action"]))
        self._mean_q_at = time.monotonic()

    def _heartbeats(self, beat: transport.Heartbeat) -> None:
        if not beat.due():
            return
        beat.sent()
        self._refresh_mean_q()
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
        mean_q = self.mean_q  # strict JSON: None before there is data; refreshed by the loop (_heartbeats)
        losses = {k: float(v) for k, v in self.trainer.last_info.items()}  # synced only for a report
        peers_of: dict[str, list[Peer]] = {}
        for peer in self.peers.values():
            peers_of.setdefault(peer.name, []).append(peer)
        return {
            "phase": RunnerState.PAUSED.value if self.learning_paused else self.phase.value,
            "pacing": self.options.pacing,
            "step": self.transitions,
            "updates": self.trainer.updates,
            "owed_updates": self.owed_updates(),
            "effective_utd": self.trainer.effective_utd,
            "buffer": len(self.buffer),
            "replay": self.buffer.stats(),
            "policy_version": self.version,
            "gate": self._gate_status(),
            "mean_q": mean_q if mean_q is not None and math.isfinite(mean_q) else None,
            "losses": {k: x if math.isfinite(x) else None for k, x in losses.items()},
            "log_records": self.log.records,
            "log_segments": self.log.segments(),
            "log_bytes": self.log.disk_bytes(),
            "log_skipped": self.log.skipped,
            "checkpoints": {"written": self.checkpoints.written, "failed": self.checkpoints.failed},
            "rejected": self.rejects.as_dict(),
            "runners": {
                name: {
                    "acked_seq": self.dedup.watermark(name),
                    "recent_returns": list(r.recent),
                    "recent_success": list(r.recent_success),
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
        """Stop the gate, close the log, and write the final state (waits for the write)."""
        if self.gate is not None:
            self.gate.close()
        self.log.close()
        self.checkpoints.close()
