"""The operator's control client (pyzmq only, no UI, no torch): one connection to each runner's control
channel and one to the learner, shared by the console UI and `robot-wsrl stop/status/release`.

It sends console heartbeats (state "supervising" when it holds the runners' deadman) and status requests
on a schedule, keeps the last Status of every peer and when it came, and turns what changes between two
of them into an event log (stops and releases from the runner's latch history, policy swaps and
rollbacks, faults, state changes, a peer going stale). A peer whose last Status is older than `stale_s`
is stale: the UI marks it STALE and never shows its last state as current.

Commands go out only on a completed connection (ZMQ_IMMEDIATE), so a command to an unreachable runner,
or one whose CURVE handshake refused this console's key, is never queued to arrive later: it fails at
its deadline and says why (the socket monitor reports a refused key).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from robot_wsrl import keys, transport
from robot_wsrl.control import SUPERVISING, WATCHING
from robot_wsrl.endpoints import Endpoints
from robot_wsrl.protocol import (
    Command,
    HeartbeatMessage,
    Message,
    RejectCounter,
    Reply,
    Status,
    StatusRequest,
    encode,
    try_decode,
)

EVENT_LOG = 500
RETURN_HISTORY = 2000
MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)
STOPPED_STATES = ("estopped", "faulted")


class ClientError(ValueError):
    """The client cannot be set up as asked (no keys, no peers, a key file missing)."""


@dataclass(frozen=True)
class ClientOptions:
    heartbeat_s: float = 0.2  # console heartbeats; a runner's deadman deadline must be well above it
    status_s: float = 0.25  # status requests to every peer
    stale_s: float = 2.0  # no Status this long: the peer is STALE
    reply_timeout_s: float = 1.0  # a command not confirmed within this fails
    supervise: bool = False  # hold the deadman of every runner (heartbeat state "supervising")


@dataclass(frozen=True)
class Event:
    """One line of the event log: wall-clock time, the peer it is about, a kind and the text."""

    time: float
    peer: str
    kind: str  # stop, release, swap, rollback, fault, state, stale, reachable, auth, command, publish
    text: str


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one command to one peer; `ok` only when the peer confirmed it."""

    peer: str
    command: str
    ok: bool
    error: str | None
    latency_s: float | None  # send -> reply


@dataclass(frozen=True)
class PeerView:
    """What the UI shows of one peer: its last Status, how old it is, and whether that is stale."""

    name: str
    role: str
    endpoint: str
    status: dict[str, Any] | None
    age_s: float | None
    stale: bool
    connected: bool
    auth_error: str | None


@dataclass(frozen=True)
class Snapshot:
    """An immutable copy of the client's state, safe to hand to another thread."""

    console: str
    supervising: bool
    runners: list[PeerView]
    learner: PeerView | None
    events: list[Event]  # the most recent EVENT_LOG events
    events_total: int  # events ever logged, so a reader can tell which of `events` are new
    returns: dict[str, list[tuple[int, float]]]


@dataclass
class _Peer:
    name: str
    role: str
    endpoint: str
    sock: zmq.Socket
    monitor: zmq.Socket
    status: dict[str, Any] | None = None
    status_at: float | None = None
    connected: bool = False
    auth_error: str | None = None
    was_stale: bool = True  # never heard from
    last_stop_time: float | None = None


@dataclass
class _Pending:
    peer: str
    command: Command
    created: float
    sent: float | None = None


@dataclass
class _Schedule:
    heartbeat: float = 0.0
    status: float = 0.0


class ControlClient:
    """Sockets and state of one console (use from one thread; `BackgroundClient` runs it in its own).

    `pump(timeout_s)` does the periodic sends and handles whatever arrives; `send` queues a command (sent
    as soon as its peer is connected, failed at its deadline), `command` sends and waits for the replies.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        name: str = "console",
        options: ClientOptions = ClientOptions(),
        keydir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints.runners and endpoints.learner is None:
            raise ClientError("no runner and no learner to connect to")
        keydir = keydir or endpoints.keys
        if not endpoints.plain and keydir is None:
            raise ClientError("CURVE needs a key directory (--keys DIR, or 'keys' in endpoints.json)")
        self.name, self.options, self.plain, self._clock = name, options, endpoints.plain, clock
        self.ctx = zmq.Context()
        self.rejects = RejectCounter()
        self.peers: dict[str, _Peer] = {}
        self.events: deque[Event] = deque(maxlen=EVENT_LOG)
        self.events_total = 0
        self.returns: dict[str, deque[tuple[int, float]]] = {}
        self._pending: dict[int, _Pending] = {}
        self.results: dict[int, CommandResult] = {}
        self._refs = itertools.count(1)
        self._due = _Schedule()
        try:
            own = None if endpoints.plain else keys.load_curve_keys(keydir, name)  # type: ignore[arg-type]
            targets = [(n, "runner", e) for n, e in endpoints.runners.items()]
            if endpoints.learner is not None:
                targets.append((endpoints.learner[0], "learner", endpoints.learner[1]))
            for peer_name, role, endpoint in targets:
                self.peers[peer_name] = self._connect(peer_name, role, endpoint, keydir, own)
        except (keys.KeyFileError, transport.TransportError, zmq.ZMQError) as exc:
            self.close()
            raise ClientError(str(exc)) from None
        self.runner_names = [n for n, p in self.peers.items() if p.role == "runner"]
        self.learner_name = endpoints.learner[0] if endpoints.learner is not None else None

    def _connect(
        self, name: str, role: str, endpoint: str, keydir: Path | None, own: keys.CurveKeys | None
    ) -> _Peer:
        if own is None:
            sock = transport.plain_client(self.ctx, zmq.DEALER, endpoint, identity=self.name)
        else:
            server_key = keys.load_public_key(keydir, name)  # type: ignore[arg-type]
            sock = transport.secure_client(
                self.ctx, zmq.DEALER, endpoint, own, server_key, identity=self.name
            )
        # Queue only to a completed connection: a stop or release must never wait in a queue for a
        # runner that comes back later. The option applies to connections made after it is set.
        sock.disconnect(endpoint)
        sock.immediate = True
        monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        sock.connect(endpoint)
        return _Peer(name, role, endpoint, sock, monitor)

    def close(self) -> None:
        for peer in self.peers.values():
            peer.sock.disable_monitor()
        transport.shutdown(self.ctx)

    # ----- commands -----

    def send(self, name: str, peers: Iterable[str], args: dict[str, Any] | None = None) -> list[int]:
        """Queue `name` to each peer (sent now if connected); returns the refs whose results `pump` files
        under `results`."""
        refs = []
        for peer in peers:
            if peer not in self.peers:
                raise ClientError(f"unknown peer {peer!r} (known: {', '.join(self.peers)})")
            ref = next(self._refs)
            pending = _Pending(peer, Command(self.name, name, dict(args or {}), ref), self._clock())
            self._pending[ref] = pending
            self._try_send(pending)
            refs.append(ref)
        return refs

    def command(
        self, name: str, peers: Iterable[str], args: dict[str, Any] | None = None
    ) -> list[CommandResult]:
        """Send and wait for every reply (or its deadline); results in the order of `peers`."""
        return self.collect(self.send(name, peers, args))

    def collect(self, refs: list[int]) -> list[CommandResult]:
        """Pump until the commands `refs` are confirmed or failed; their results, in order."""
        while any(ref in self._pending for ref in refs):
            self.pump(self.options.reply_timeout_s / 20)
        return [self.results.pop(ref) for ref in refs]

    def _try_send(self, pending: _Pending) -> None:
        peer = self.peers[pending.peer]
        if transport.send_frames(peer.sock, encode(pending.command), 0.0):
            pending.sent = self._clock()

    def _finish(self, ref: int, ok: bool, error: str | None) -> None:
        pending = self._pending.pop(ref)
        latency = None if pending.sent is None or not ok else self._clock() - pending.sent
        result = CommandResult(pending.peer, pending.command.name, ok, error, latency)
        self.results[ref] = result
        shown = f"confirmed in {latency * 1e3:.1f} ms" if latency is not None else f"FAILED: {error}"
        self.log_event(pending.peer, "command", f"{pending.command.name}: {shown}")

    def _expire(self) -> None:
        now = self._clock()
        for ref, pending in list(self._pending.items()):
            if pending.sent is None:
                self._try_send(pending)
            if now - pending.created < self.options.reply_timeout_s:
                continue
            peer = self.peers[pending.peer]
            if pending.sent is not None:
                why = f"no reply within {self.options.reply_timeout_s} s"
            elif peer.auth_error:
                why = f"not sent: {peer.auth_error}"
            else:
                why = f"not sent: not connected to {peer.endpoint} within {self.options.reply_timeout_s} s"
            self._finish(ref, False, why)

    # ----- the periodic part -----

    def pump(self, timeout_s: float, wake_fd: int | None = None) -> bool:
        """Send what is due, wait up to `timeout_s` for input, handle it; True if `wake_fd` woke it."""
        now = self._clock()
        if now >= self._due.heartbeat:
            self._due.heartbeat = now + self.options.heartbeat_s
            state = SUPERVISING if self.options.supervise else WATCHING
            beat = encode(HeartbeatMessage(self.name, "console", time.time(), state))
            for peer in self.peers.values():
                transport.send_frames(peer.sock, beat, 0.0)
        if now >= self._due.status:
            self._due.status = now + self.options.status_s
            request = encode(StatusRequest(self.name))
            for peer in self.peers.values():
                transport.send_frames(peer.sock, request, 0.0)
        poller = zmq.Poller()
        for peer in self.peers.values():
            poller.register(peer.sock, zmq.POLLIN)
            poller.register(peer.monitor, zmq.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, zmq.POLLIN)
        wait = min(timeout_s, max(0.0, min(self._due.heartbeat, self._due.status) - now))
        ready = dict(poller.poll(math.ceil(wait * 1000)))
        for peer in self.peers.values():
            if peer.monitor in ready:
                self._monitor(peer)
            if peer.sock in ready:
                frames = transport.recv_frames(peer.sock, 0.0)
                while frames is not None:
                    self._handle(peer, frames)
                    frames = transport.recv_frames(peer.sock, 0.0)
        self._expire()
        self._check_stale()
        return wake_fd is not None and wake_fd in ready

    def _monitor(self, peer: _Peer) -> None:
        while peer.monitor.poll(0):
            event = recv_monitor_message(peer.monitor, zmq.NOBLOCK)
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                peer.connected, peer.auth_error = True, None
            elif kind == zmq.EVENT_DISCONNECTED:
                peer.connected = False
            else:
                peer.connected = False
                why = (
                    f"{peer.name} refused this console's key {self.name!r} (CURVE authentication failed)"
                    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    else f"handshake with {peer.name} failed (wrong server key for {peer.name}?)"
                )
                if peer.auth_error != why:
                    peer.auth_error = why
                    self.log_event(peer.name, "auth", why)

    def _handle(self, peer: _Peer, frames: list[Any]) -> None:
        msg: Message | None = try_decode(frames, self.rejects)
        if msg is None:
            return
        if msg.sender != peer.name:
            self.rejects.add("identity")
            return
        if isinstance(msg, Reply):
            pending = self._pending.get(msg.ref)
            if pending is not None and pending.peer == peer.name:
                self._finish(msg.ref, msg.ok, msg.error)
        elif isinstance(msg, Status):
            previous = peer.status
            peer.status, peer.status_at = msg.status, self._clock()
            if peer.role == "runner":
                self._runner_events(peer, previous, msg.status)
            else:
                self._learner_events(peer, previous, msg.status)

    def _check_stale(self) -> None:
        now = self._clock()
        for peer in self.peers.values():
            stale = self._stale(peer, now)
            if stale != peer.was_stale:
                peer.was_stale = stale
                if stale:
                    self.log_event(peer.name, "stale", f"no status for {self.options.stale_s} s: STALE")
                else:
                    self.log_event(peer.name, "reachable", "reporting")

    def _stale(self, peer: _Peer, now: float) -> bool:
        return peer.status_at is None or now - peer.status_at > self.options.stale_s

    # ----- events from successive statuses -----

    def log_event(self, peer: str, kind: str, text: str, at: float | None = None) -> None:
        self.events.append(Event(time.time() if at is None else at, peer, kind, text))
        self.events_total += 1

    def _runner_events(self, peer: _Peer, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        stops = new.get("control", {}).get("stops", [])
        for stop in stops:
            if peer.last_stop_time is not None and stop["time"] <= peer.last_stop_time:
                continue
            if old is None and stop["kind"] != "enter":
                continue  # history from before this console started: only a standing stop matters
            if stop["kind"] == "release":
                self.log_event(peer.name, "release", f"released by {stop['operator']}", stop["time"])
            else:
                self.log_event(peer.name, "stop", f"{stop['cause']}: {stop['detail']}", stop["time"])
        if stops:
            peer.last_stop_time = max(stop["time"] for stop in stops)
        finished = new.get("episodes_done", 0) > (old or {}).get("episodes_done", 0)
        if finished and new.get("last_episode_return") is not None:
            history = self.returns.setdefault(peer.name, deque(maxlen=RETURN_HISTORY))
            history.append((int(new["steps"]), float(new["last_episode_return"])))
        if old is None or "policy_version" not in old or "policy_version" not in new:
            return
        if new["policy_version"] != old["policy_version"]:
            kind = "rollback" if new["policy_version"] < old["policy_version"] else "swap"
            self.log_event(peer.name, kind, f"policy v{old['policy_version']} -> v{new['policy_version']}")
        if new.get("last_fault") and new.get("last_fault") != old.get("last_fault"):
            self.log_event(peer.name, "fault", str(new["last_fault"]))
        if new["state"] != old["state"] and new["state"] not in STOPPED_STATES:
            self.log_event(peer.name, "state", f"{old['state']} -> {new['state']}")

    def _learner_events(self, peer: _Peer, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        if old is None:
            return
        if new.get("phase") != old.get("phase"):
            self.log_event(peer.name, "state", f"phase {old.get('phase')} -> {new.get('phase')}")
        if new.get("policy_version") != old.get("policy_version"):
            self.log_event(peer.name, "publish", f"published policy v{new.get('policy_version')}")
        seen = {(v["version"], v["status"]) for v in (old.get("gate") or {}).get("verdicts", [])}
        for verdict in (new.get("gate") or {}).get("verdicts", []):
            if (verdict["version"], verdict["status"]) in seen or verdict["status"] == "superseded":
                continue
            if verdict["status"] == "passed":
                self.log_event(
                    peer.name, "promote", f"v{verdict['version']} passed validation: hardware may run it"
                )
            else:
                why = "; ".join(verdict["reasons"]) or verdict["status"]
                self.log_event(peer.name, "hold", f"v{verdict['version']} held back from hardware: {why}")

    # ----- reading -----

    def view(self, name: str) -> PeerView:
        peer, now = self.peers[name], self._clock()
        return PeerView(
            name=peer.name,
            role=peer.role,
            endpoint=peer.endpoint,
            status=peer.status,
            age_s=None if peer.status_at is None else now - peer.status_at,
            stale=self._stale(peer, now),
            connected=peer.connected,
            auth_error=peer.auth_error,
        )

    def snapshot(self) -> Snapshot:
        return Snapshot(
            console=self.name,
            supervising=self.options.supervise,
            runners=[self.view(name) for name in self.runner_names],
            learner=None if self.learner_name is None else self.view(self.learner_name),
            events=list(self.events),
            events_total=self.events_total,
            returns={name: list(history) for name, history in self.returns.items()},
        )

    def wait_for_status(self, timeout_s: float) -> bool:
        """Pump until every peer has reported once (or `timeout_s`); True if all did."""
        deadline = self._clock() + timeout_s
        while any(p.status_at is None for p in self.peers.values()) and self._clock() < deadline:
            self.pump(min(0.05, max(0.0, deadline - self._clock())))
        return all(p.status_at is not None for p in self.peers.values())


class BackgroundClient:
    """Runs a ControlClient on its own thread for a UI. `request` queues a command and wakes the thread
    through a pipe, so a key press reaches the runners at once rather than at the next poll; `snapshot`
    is the state as of the thread's last round (an immutable object, swapped whole)."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client
        self._requests: queue.SimpleQueue[tuple[str, list[str], dict[str, Any]]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._stop = threading.Event()
        self.snapshot: Snapshot = client.snapshot()
        self._thread = threading.Thread(target=self._loop, name="console-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self, name: str, peers: list[str], args: dict[str, Any] | None = None) -> None:
        self._requests.put((name, list(peers), dict(args or {})))
        os.write(self._wake_write, b"!")

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        os.write(self._wake_write, b"!")
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.client.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.client.pump(self.client.options.heartbeat_s, self._wake_read):
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
            while not self._requests.empty():
                name, peers, args = self._requests.get()
                try:
                    self.client.send(name, peers, args)
                except (ClientError, ValueError) as exc:  # a bad request from the UI: say so, go on
                    self.client.log_event(",".join(peers), "command", str(exc))
            self.snapshot = self.client.snapshot()
