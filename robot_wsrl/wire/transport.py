"""ZeroMQ sockets for the wire (pyzmq only): CURVE by default, plain only on loopback, no blocking waits.

Topology: a server (the learner; a runner for its console port) binds one ROUTER; peers connect DEALERs.
A client never sets its routing id: the ROUTER gives every connection its own, so two tools that use the
same key name (a console and a `status` poller) are two peers, and no peer can take over another's
connection by naming itself after it. Who a peer is comes from its CURVE key (the User-Id of every
message), never from a routing id. One connection carries everything both ways, so a peer's transitions,
acks, policies, heartbeats and commands share its authentication and its liveness.

Security: `secure_server` makes a CURVE server whose ZAP handler (one `ThreadAuthenticator` per context,
one ZAP domain per server socket) admits only the listed client keys and reports the key's *name* as
the ZMQ `User-Id` of every message, so a server can check that a runner sends under its own name. A
client with an unknown key never completes the handshake: it gets nothing and nothing it sends arrives.
`plain_server`/`plain_client` skip all of this for local simulation and refuse any endpoint that is not
loopback, ipc or inproc.

Policy broadcast: push + announce + pull over ROUTER/DEALER, not PUB/SUB. PUB drops silently at its
high-water mark and for subscribers not yet connected; CONFLATE cannot carry multipart messages. Here the
learner sends each new policy to every connected runner on its ROUTER with ROUTER_MANDATORY set, so an
unroutable peer or a full queue is an error the sender sees (send_frames returns False), never a silent
drop; and every learner heartbeat announces the current policy version, so a runner that missed a push
(full queue, reconnect, fresh start) sends a policy_request and gets the current policy back. The newest
version therefore reaches a runner at most one heartbeat period late; older versions may be skipped,
which is intended (only the newest matters).

Liveness without ZMTP heartbeats: libzmq 4.3.5 (pyzmq's bundled build) aborts the whole process with
`Assertion failed: !_io_error (src/stream_engine_base.cpp:310)` when a connection's heartbeat timer fires
after its input was stopped (the peer's pipe was full, or its pipe was handed over to a newer connection)
and the peer then hung up with a reset (epoll reports it even with input polling off): the engine is
marked `_io_error` but kept until its pipe drains, and the heartbeat timer calls `out_event`, which
asserts. Any client could do that to a server (fill its queue while the server is busy, close with
unread replies), and a server to a client. So no socket here enables ZMTP
heartbeats; the application's own heartbeats (`Heartbeat`) judge liveness, the kernel (TCP_USER_TIMEOUT
and keepalive) drops a dead TCP link so a DEALER reconnects, and HANDSHAKE_IVL drops a connection that
does not authenticate within `handshake_ivl_ms` (raw TCP, half-open, a stalled CURVE handshake).

Every wait goes through poll with a timeout (`recv_frames`, `send_frames`); LINGER is 0 because nothing
in flight needs to outlive its socket (the runner's spool resends what the learner never acknowledged).
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from robot_wsrl.wire.keys import CurveKeys
from robot_wsrl.wire.protocol import DEFAULT_LIMITS, Message, RejectCounter, try_decode


class TransportError(ValueError):
    """A socket cannot be set up as asked (e.g. plain mode on a non-loopback endpoint)."""


@dataclass(frozen=True)
class SocketOptions:
    """Socket settings; the high-water marks bound memory, and no socket here drops at them silently
    (DEALER sends fail with EAGAIN, ROUTER with ROUTER_MANDATORY raises)."""

    linger_ms: int = 0
    send_hwm: int = 1000
    recv_hwm: int = 1000
    max_frame_bytes: int = DEFAULT_LIMITS.max_policy_bytes  # larger inbound frames drop the connection
    handshake_ivl_ms: int = 2000  # a connection not authenticated by then is dropped (half-open, silent)
    tcp_user_timeout_ms: int = 5000  # sent data unacknowledged this long: the kernel drops the link
    tcp_keepalive_idle_s: int = 2  # an idle link is probed after this (3 probes, 1 s apart)
    reconnect_ivl_ms: int = 100  # a DEALER whose link was dropped reconnects after this
    reconnect_ivl_max_ms: int = 2000


DEFAULT_OPTIONS = SocketOptions()


class _KeyRegistry:
    """The allowed client keys of each ZAP domain (one domain per server socket), and refusals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._allowed: dict[str, dict[bytes, str]] = {}  # domain -> {z85 key: name}
        self.rejected = 0

    def add_domain(self, domain: str, allowed: Mapping[str, bytes]) -> None:
        with self._lock:
            self._allowed[domain] = {key: name for name, key in allowed.items()}

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            known = key in self._allowed.get(domain, {})
            self.rejected += not known
        return known

    def name_of(self, key: bytes) -> str:
        with self._lock:
            for names in self._allowed.values():
                if key in names:
                    return names[key]
        return key.decode("ascii")


class _NamingAuthenticator(ThreadAuthenticator):
    """Reports an admitted client's key name (not its z85 key) as the messages' User-Id."""

    def __init__(self, context: zmq.Context, registry: _KeyRegistry) -> None:
        super().__init__(context)
        self.registry = registry

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.registry.name_of(z85.encode(client_public_key))


_authenticators: dict[int, _NamingAuthenticator] = {}
_auth_lock = threading.Lock()
_domains = itertools.count()


def _authenticator(ctx: zmq.Context) -> _NamingAuthenticator:
    """The context's ZAP handler, started on first use (ZAP is per context: one handler each)."""
    with _auth_lock:
        auth = _authenticators.get(id(ctx))
        if auth is None or auth.context is not ctx:
            auth = _NamingAuthenticator(ctx, _KeyRegistry())
            auth.start()
            _authenticators[id(ctx)] = auth
        return auth


def rejected_keys(ctx: zmq.Context) -> int:
    """How many CURVE handshakes this context's servers refused for an unknown client key."""
    auth = _authenticators.get(id(ctx))
    return 0 if auth is None or auth.context is not ctx else auth.registry.rejected


def shutdown(ctx: zmq.Context) -> None:
    """Stop the context's authenticator and destroy it with its sockets (linger 0): call this, not term."""
    with _auth_lock:
        auth = _authenticators.pop(id(ctx), None)
    if auth is not None and auth.context is ctx:
        auth.stop()
    ctx.destroy(linger=0)


def check_loopback(endpoint: str) -> None:
    """Raise TransportError unless `endpoint` cannot leave this machine (tcp loopback, ipc, inproc)."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc") and address:
        return
    if transport == "tcp" and ";" not in address:
        host = address.rpartition(":")[0].strip("[]")
        if host == "localhost":
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
    raise TransportError(
        f"plain (unauthenticated, unencrypted) sockets are only allowed on loopback, ipc or inproc "
        f"endpoints, not {endpoint!r}: use CURVE keys (`robot-wsrl keys`) for anything that crosses machines"
    )


def _socket(ctx: zmq.Context, kind: int, options: SocketOptions) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = options.linger_ms
    sock.sndhwm = options.send_hwm
    sock.rcvhwm = options.recv_hwm
    sock.maxmsgsize = options.max_frame_bytes
    sock.heartbeat_ivl = 0  # never ZMTP heartbeats: see the module docstring (libzmq 4.3.5 aborts)
    sock.handshake_ivl = options.handshake_ivl_ms
    sock.tcp_maxrt = options.tcp_user_timeout_ms  # TCP_USER_TIMEOUT on Linux
    sock.tcp_keepalive = 1
    sock.tcp_keepalive_idle = options.tcp_keepalive_idle_s
    sock.tcp_keepalive_intvl = 1
    sock.tcp_keepalive_cnt = 3
    sock.reconnect_ivl = options.reconnect_ivl_ms
    sock.reconnect_ivl_max = options.reconnect_ivl_max_ms
    if kind == zmq.ROUTER:
        sock.router_mandatory = 1  # unroutable or full: raise, never drop silently
    return sock


def secure_server(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    server_keys: CurveKeys,
    allowed_client_public_keys: Mapping[str, bytes],
    options: SocketOptions = DEFAULT_OPTIONS,
) -> zmq.Socket:
    """Bind a CURVE server socket that admits only `allowed_client_public_keys` ({name: z85 key})."""
    auth = _authenticator(ctx)
    domain = f"robot-wsrl-{next(_domains)}"
    auth.registry.add_domain(domain, allowed_client_public_keys)
    auth.configure_curve_callback(domain, auth.registry)
    sock = _socket(ctx, kind, options)
    sock.curve_server = True
    sock.curve_publickey = server_keys.public
    sock.curve_secretkey = server_keys.secret
    sock.zap_domain = domain.encode()
    bind(sock, endpoint)
    return sock


def secure_client(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    client_keys: CurveKeys,
    server_public_key: bytes,
    options: SocketOptions = DEFAULT_OPTIONS,
) -> zmq.Socket:
    """Connect a CURVE client socket that talks only to the server holding `server_public_key`."""
    sock = _socket(ctx, kind, options)
    sock.curve_serverkey = server_public_key
    sock.curve_publickey = client_keys.public
    sock.curve_secretkey = client_keys.secret
    sock.connect(endpoint)
    return sock


def plain_server(
    ctx: zmq.Context, kind: int, endpoint: str, options: SocketOptions = DEFAULT_OPTIONS
) -> zmq.Socket:
    """Bind an unauthenticated socket; only for local simulation, and only on a loopback endpoint."""
    check_loopback(endpoint)
    sock = _socket(ctx, kind, options)
    bind(sock, endpoint)
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind `endpoint`; a tcp port 0 takes a free port at bind time (no pick-then-bind race). Returns the
    endpoint actually bound, for the peers to be told."""
    sock.bind(endpoint[:-2] + ":*" if endpoint.startswith("tcp://") and endpoint.endswith(":0") else endpoint)
    return bound_endpoint(sock)


def bound_endpoint(sock: zmq.Socket) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def plain_client(
    ctx: zmq.Context,
    kind: int,
    endpoint: str,
    options: SocketOptions = DEFAULT_OPTIONS,
) -> zmq.Socket:
    check_loopback(endpoint)
    sock = _socket(ctx, kind, options)
    sock.connect(endpoint)
    return sock


def recv_frames(sock: zmq.Socket, timeout_s: float) -> list[zmq.Frame] | None:
    """One multipart message within `timeout_s`, or None. Frames are zero-copy; `decode` takes them as
    they are, and `frames[-1].get("User-Id")` is the authenticated sender's key name on a CURVE server."""
    if not sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN):
        return None
    try:
        return sock.recv_multipart(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None


def send_frames(sock: zmq.Socket, frames: Sequence[Any], timeout_s: float) -> bool:
    """Send within `timeout_s`; False if the peer's queue stayed full or (ROUTER) the peer is unknown."""
    if not sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLOUT):
        return False
    try:
        sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise
    return True


def routed_message(frames: list[Any], rejects: RejectCounter, secure: bool) -> tuple[bytes, Message] | None:
    """What a ROUTER received -> (the peer's routing identity, its message); None when rejected, and
    counted: too few frames, a message that does not decode, or (with CURVE) a sender naming itself other
    than the key its connection authenticated with."""
    if len(frames) < 2:
        rejects.add("frames")
        return None
    identity, body = frames[0].bytes, frames[1:]
    msg = try_decode(body, rejects)
    if msg is None:
        return None
    if secure and body[-1].get("User-Id") != msg.sender:
        rejects.add("identity")  # a peer may speak only under the name its key was issued to
        return None
    return identity, msg


class Heartbeat:
    """One peer's liveness and our own beat schedule; checks only, never waits.

    `due()` says it is time to send ours (every `period_s`), `alive()` whether the peer's last beat is
    within `deadline_s`. A peer never heard from is not alive.
    """

    def __init__(
        self, period_s: float, deadline_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 < period_s < deadline_s:
            raise ValueError(f"need 0 < period_s < deadline_s, got {period_s}, {deadline_s}")
        self.period_s = period_s
        self.deadline_s = deadline_s
        self._clock = clock
        self._last_seen: float | None = None
        self._last_sent: float | None = None

    def beat(self) -> None:
        """The peer was heard from (a heartbeat, or any valid message)."""
        self._last_seen = self._clock()

    def silence_s(self) -> float | None:
        """Seconds since the peer was last heard from, None if never."""
        return None if self._last_seen is None else self._clock() - self._last_seen

    def alive(self) -> bool:
        silence = self.silence_s()
        return silence is not None and silence <= self.deadline_s

    def due(self) -> bool:
        return self._last_sent is None or self._clock() - self._last_sent >= self.period_s

    def sent(self) -> None:
        self._last_sent = self._clock()
