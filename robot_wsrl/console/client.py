"""The operator's control client (pyzmq only, no UI, no torch): one connection to each runner's control
channel and one to the learner, shared by the console UI and `robot-wsrl stop/status/release`.

It sends console heartbeats (state "supervising" when it holds the runners' deadman) and status requests
on a schedule, keeps the last Status of every peer and when it came, and turns what changes between two
of them into an event log (stops and releases from the runner's latch history, policy swaps and
rollbacks, faults, state changes, a peer going stale). A peer whose last Status is older than `stale_s`
is stale: the UI marks it STALE and never shows its last state as current.

Commands go out only on a completed connection (ZMQ_IMMEDIATE), so a command to an unreachable runner,
or one whose CURVE handshake refused this console's key, is never queued to arrive later. An e-stop is
never dropped: it is resent every RESEND_S on the open connection (and at once when a handshake
completes) until the runner confirms it, by a Reply or by a Status that shows it stopped by a latch
event at or after the press; the latch only records a repeat. Repeated presses to one runner share one
resend stream (the newest press's), and its confirmation confirms them all. One not confirmed within
`reply_timeout_s` raises a per-runner alarm that stays until it is confirmed. Every other command fails
at its deadline and says why (the socket monitor reports a refused key). While an e-stop to a runner is
unconfirmed, a release to it is refused here: a resent stop would re-latch the robot after it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from robot_wsrl.robot.control import SUPERVISING, WATCHING
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.endpoints import Endpoints
from robot_wsrl.wire.protocol import (
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
RESULTS_KEPT = 1000  # results nobody collected (a UI's commands): the oldest are dropped
RESEND_S = 0.2  # an unconfirmed e-stop goes out again this often
RETRIED = ("estop",)  # idempotent at the runner (its latch records a repeat): resent until confirmed
STOP_EVENTS = ("enter", "repeat")  # latch events that show a stop reached the runner
HARDWARE_ESTOP = "use the HARDWARE E-STOP"
MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)
STOPPED_STATES = ("estopped", "faulted")


def tool_tag(tool: str) -> str:
    """Which tool sent a command, for the runner's stop log: several tools may share one key name."""
    return f"{tool}@{socket.gethostname()} pid {os.getpid()}"


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
    kind: str  # stop, release, swap, rollback, fault, state, stale, reachable, auth, command, failed,
    # alarm (an e-stop not confirmed), confirmed (one confirmed after its alarm), publish, promote, hold
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
    stop_unconfirmed_s: float | None = None  # an e-stop to it unconfirmed past its deadline, this long


def armed_deadman(status: dict[str, Any] | None, console: str) -> float | None:
    """The deadman deadline `status` (a runner's) says it holds for supervisor `console`, or None: a
    console may claim the deadman only where the runner lists it as a supervisor with a deadline."""
    control = (status or {}).get("control") or {}
    deadline, supervisors = control.get("deadman_s"), control.get("supervisors")
    if not isinstance(deadline, (int, float)) or not isinstance(supervisors, list):
        return None
    listed = any(isinstance(s, dict) and s.get("name") == console for s in supervisors)
    return float(deadline) if listed else None


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
    created: float  # clock
    pressed: float  # wall clock: a runner's latch event at or after it confirms an e-stop
    sent: float | None = None  # first send
    last_sent: float | None = None
    sends: int = 0
    refused: str | None = None  # the runner's last refusal of a retried command
    alarmed: bool = False

    @property
    def retried(self) -> bool:
        return self.command.name in RETRIED


@dataclass
class _Schedule:
    heartbeat: float = 0.0
    status: float = 0.0


class ControlClient:
    """Sockets and state of one console (use from one thread; `BackgroundClient` runs it in its own).

    `pump(timeout_s)` does the periodic sends and handles whatever arrives; `send` queues a command (sent
    as soon as its peer is connected; an e-stop resent until confirmed, any other failed at its deadline),
    `command` sends and waits for the replies.
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
            sock = transport.plain_client(self.ctx, zmq.DEALER, endpoint)
        else:
            server_key = keys.load_public_key(keydir, name)  # type: ignore[arg-type]
            sock = transport.secure_client(self.ctx, zmq.DEALER, endpoint, own, server_key)
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
            command = Command(self.name, name, dict(args or {}), ref)
            pending = _Pending(peer, command, self._clock(), time.time())
            self._pending[ref] = pending
            refs.append(ref)
            stop_age = self._stop_pending_s(peer)
            if name == "release" and stop_age is not None:
                why = f"refused here: the e-stop sent {stop_age:.1f} s ago is not confirmed yet"
                self._finish(ref, False, why)
            else:
                self._try_send(pending)
        return refs

    def command(
        self,
        name: str,
        peers: Iterable[str],
        args: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> list[CommandResult]:
        """Send and wait for every reply (or the deadline); results in the order of `peers`."""
        return self.collect(self.send(name, peers, args), timeout_s)

    def collect(self, refs: list[int], timeout_s: float | None = None) -> list[CommandResult]:
        """Pump until the commands `refs` are confirmed or failed; their results, in order. An e-stop not
        confirmed within `timeout_s` (default: the reply timeout) is reported as failed here and stays
        pending: it is resent for as long as this client is pumped."""
        deadline = self._clock() + (self.options.reply_timeout_s if timeout_s is None else timeout_s)
        while self._waiting(refs, deadline):
            self.pump(min(RESEND_S / 4, max(0.0, deadline - self._clock())))
        return [
            self.results.pop(ref) if ref in self.results else self._unconfirmed(self._pending[ref])
            for ref in refs
        ]

    def _waiting(self, refs: list[int], deadline: float) -> bool:
        """Some of `refs` are pending, and the deadline has not passed or one of them will still fail at
        its own deadline (only an e-stop is left pending)."""
        pending = [self._pending[ref] for ref in refs if ref in self._pending]
        return bool(pending) and (self._clock() < deadline or not all(p.retried for p in pending))

    def _unconfirmed(self, pending: _Pending) -> CommandResult:
        return CommandResult(pending.peer, pending.command.name, False, self._why(pending), None)

    def _try_send(self, pending: _Pending) -> None:
        peer = self.peers[pending.peer]
        if transport.send_frames(peer.sock, encode(pending.command), 0.0):
            pending.last_sent = self._clock()
            pending.sent = pending.last_sent if pending.sent is None else pending.sent
            pending.sends += 1

    def _stop_pending_s(self, peer: str) -> float | None:
        """How long the oldest e-stop sent to `peer` and not confirmed has waited (None: none). One never
        sent cannot arrive after a release: on a new connection it goes out first, in order."""
        created = [
            p.created for p in self._pending.values() if p.peer == peer and p.retried and p.sent is not None
        ]
        return None if not created else self._clock() - min(created)

    def _unconfirmed_stop_s(self, peer: str) -> float | None:
        """Like `_stop_pending_s`, for the e-stops already past their deadline (the alarm)."""
        created = [p.created for p in self._pending.values() if p.peer == peer and p.alarmed]
        return None if not created else self._clock() - min(created)

    def _finish(self, ref: int, ok: bool, error: str | None) -> None:
        pending = self._pending.pop(ref)
        now, name = self._clock(), pending.command.name
        latency = None if pending.sent is None or not ok else now - pending.sent
        self.results[ref] = CommandResult(pending.peer, name, ok, error, latency)
        while len(self.results) > RESULTS_KEPT:
            del self.results[next(iter(self.results))]
        if not ok:
            self.log_event(pending.peer, "failed", f"{name}: FAILED: {error}")
        elif pending.alarmed:
            waited = f"{now - pending.created:.1f} s after it was sent ({pending.sends} sends)"
            self.log_event(pending.peer, "confirmed", f"{name} confirmed at last, {waited}")
        else:
            shown = "" if latency is None else f" in {latency * 1e3:.1f} ms"
            self.log_event(pending.peer, "command", f"{name}: confirmed{shown}")

    def _why(self, pending: _Pending) -> str:
        """Why `pending` is not confirmed (yet)."""
        peer, waited = self.peers[pending.peer], self._clock() - pending.created
        if pending.refused is not None:
            return f"refused by {peer.name}: {pending.refused}"
        if pending.sent is not None:
            sends = f" ({pending.sends} sends)" if pending.retried else ""
            return f"no reply within {waited:.1f} s{sends}"
        if peer.auth_error:
            return f"not sent: {peer.auth_error}"
        return f"not sent: not connected to {peer.endpoint} within {waited:.1f} s"

    def _service_pending(self) -> None:
        """Send what is unsent, resend e-stops, raise the alarm for an e-stop past its deadline and fail
        any other command at its deadline."""
        now, carriers = self._clock(), self._carriers()
        for ref, pending in list(self._pending.items()):
            late = now - pending.created >= self.options.reply_timeout_s
            if pending.retried:
                due = pending.last_sent is None or now - pending.last_sent >= RESEND_S
                if due and carriers[pending.peer] == ref:
                    self._try_send(pending)
                if late and not pending.alarmed:
                    pending.alarmed = True
                    why = f"{self._why(pending)}; still resending: {HARDWARE_ESTOP}"
                    self.log_event(pending.peer, "alarm", f"{pending.command.name} NOT CONFIRMED: {why}")
                continue
            if pending.sent is None:
                self._try_send(pending)
            if late:
                self._finish(ref, False, self._why(pending))

    def _carriers(self) -> dict[str, int]:
        """Per peer, the newest pending e-stop: the one (re)sent. Its confirmation (a stop at or after the
        latest press) confirms the older ones too, so repeated presses make one stream, not many."""
        return {p.peer: ref for ref, p in self._pending.items() if p.retried}  # refs only grow

    def _reply(self, peer: _Peer, reply: Reply) -> None:
        pending = self._pending.get(reply.ref)
        if pending is None or pending.peer != peer.name:
            return
        if reply.ok and pending.retried:
            for ref, older in list(self._pending.items()):
                if older.peer == peer.name and older.retried and ref <= reply.ref:
                    self._finish(ref, True, None)
        elif reply.ok or not pending.retried:
            self._finish(reply.ref, reply.ok, reply.error)
        elif pending.refused != reply.error:  # an e-stop refused (no runner attached yet): resend it
            pending.refused = reply.error
            self.log_event(peer.name, "failed", f"{pending.command.name} refused: {reply.error}; resending")

    def _confirm_by_status(self, peer: _Peer, status: dict[str, Any]) -> None:
        """A runner that reports itself stopped by a latch event at or after an e-stop was pressed has
        stopped after the press, whichever message did it: that confirms the e-stop."""
        if status.get("state") not in STOPPED_STATES:
            return
        stops = (status.get("control") or {}).get("stops") or []
        times = [
            e["time"]
            for e in stops
            if isinstance(e, dict) and e.get("kind") in STOP_EVENTS and isinstance(e.get("time"), float)
        ]
        if not times:
            return
        for ref, pending in list(self._pending.items()):
            if pending.peer == peer.name and pending.retried and max(times) >= pending.pressed:
                self._finish(ref, True, None)

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
        if any(p.retried for p in self._pending.values()):
            wait = min(wait, RESEND_S)
        ready = dict(poller.poll(math.ceil(wait * 1000)))
        for peer in self.peers.values():
            if peer.monitor in ready:
                self._monitor(peer)
            if peer.sock in ready:
                frames = transport.recv_frames(peer.sock, 0.0)
                while frames is not None:
                    self._handle(peer, frames)
                    frames = transport.recv_frames(peer.sock, 0.0)
        self._service_pending()
        self._check_stale()
        return wake_fd is not None and wake_fd in ready

    def _monitor(self, peer: _Peer) -> None:
        while peer.monitor.poll(0):
            event = recv_monitor_message(peer.monitor, zmq.NOBLOCK)
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                peer.connected, peer.auth_error = True, None
                carrier = self._carriers().get(peer.name)
                for ref, pending in list(self._pending.items()):  # a stop goes out the moment it can
                    unsent = not pending.retried and pending.sent is None
                    if pending.peer == peer.name and (ref == carrier or unsent):
                        self._try_send(pending)
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
            self._reply(peer, msg)
        elif isinstance(msg, Status):
            previous = peer.status
            peer.status, peer.status_at = msg.status, self._clock()
            if peer.role == "runner":
                self._confirm_by_status(peer, msg.status)
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
            else:  # the detail names the key (and the tool) that sent an operator's stop
                again = "again (already stopped): " if stop["kind"] == "repeat" else ""
                self.log_event(peer.name, "stop", f"{again}{stop['cause']}: {stop['detail']}", stop["time"])
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
            stop_unconfirmed_s=self._unconfirmed_stop_s(name),
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
