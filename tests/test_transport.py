"""Sockets: CURVE admits only known keys, plain mode stays on loopback, waits time out, heartbeats expire."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.protocol import (
    Ack,
    Message,
    RejectCounter,
    Status,
    StatusRequest,
    decode,
    encode,
    try_decode,
)

WAIT_S = 5.0  # for what must arrive
SILENCE_S = 0.5  # for what must not


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys")
    for name, role in (("learner", "learner"), ("robot1", "runner"), ("intruder", "runner")):
        keys.new_identity(path, name, role)
    return path


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    transport.shutdown(context)


class Server:
    """A minimal learner-like ROUTER loop body: decode, count rejects, record who said what, answer."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.rejects = RejectCounter()
        self.received: list[tuple[bytes, str | None, Message]] = []

    def serve_one(self, timeout_s: float) -> bool:
        frames = transport.recv_frames(self.sock, timeout_s)
        if frames is None:
            return False
        identity, body = frames[0].bytes, frames[1:]
        msg = try_decode(body, self.rejects)
        if msg is not None:
            self.received.append((identity, body[0].get("User-Id"), msg))
            reply = Status(sender="learner", status={"seen": len(self.received)})
            assert transport.send_frames(self.sock, [identity, *encode(reply)], WAIT_S)
        return True


def _server(ctx: zmq.Context, keydir: Path) -> tuple[Server, str]:
    sock = transport.secure_server(
        ctx,
        zmq.ROUTER,
        "tcp://127.0.0.1:*",
        keys.load_curve_keys(keydir, "learner"),
        {"robot1": keys.load_public_key(keydir, "robot1")},
    )
    return Server(sock), sock.last_endpoint.decode()


def _client(ctx: zmq.Context, keydir: Path, endpoint: str, name: str) -> zmq.Socket:
    return transport.secure_client(
        ctx,
        zmq.DEALER,
        endpoint,
        keys.load_curve_keys(keydir, name),
        keys.load_public_key(keydir, "learner"),
    )


def test_known_client_talks_to_server_and_is_named(ctx: zmq.Context, keydir: Path) -> None:
    server, endpoint = _server(ctx, keydir)
    client = _client(ctx, keydir, endpoint, "robot1")
    assert transport.send_frames(client, encode(StatusRequest(sender="robot1")), WAIT_S)
    assert server.serve_one(WAIT_S)
    identity, user_id, msg = server.received[0]
    assert identity != b"robot1" and user_id == "robot1" and isinstance(msg, StatusRequest)  # id: ROUTER's
    reply = transport.recv_frames(client, WAIT_S)
    assert reply is not None
    answer = decode(reply)
    assert isinstance(answer, Status) and answer.status == {"seen": 1}


def test_unknown_client_key_gets_nothing_and_changes_nothing(ctx: zmq.Context, keydir: Path) -> None:
    server, endpoint = _server(ctx, keydir)
    intruder = _client(ctx, keydir, endpoint, "intruder")
    transport.send_frames(intruder, encode(Ack(sender="intruder", runner_id="robot1", acked_seq=10**6)), 0.1)
    deadline = time.monotonic() + WAIT_S
    while transport.rejected_keys(ctx) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert transport.rejected_keys(ctx) >= 1
    assert not server.serve_one(SILENCE_S)  # nothing it sent arrived
    assert transport.recv_frames(intruder, SILENCE_S) is None  # and its request times out
    assert server.received == [] and server.rejects.total == 0
    # the server still serves its known client
    client = _client(ctx, keydir, endpoint, "robot1")
    transport.send_frames(client, encode(StatusRequest(sender="robot1")), WAIT_S)
    assert server.serve_one(WAIT_S) and len(server.received) == 1


def test_client_with_the_wrong_server_key_gets_nothing(ctx: zmq.Context, keydir: Path) -> None:
    server, endpoint = _server(ctx, keydir)
    client = transport.secure_client(
        ctx,
        zmq.DEALER,
        endpoint,
        keys.load_curve_keys(keydir, "robot1"),
        keys.load_public_key(keydir, "intruder"),
    )
    transport.send_frames(client, encode(StatusRequest(sender="robot1")), 0.1)
    assert not server.serve_one(SILENCE_S)
    assert transport.recv_frames(client, SILENCE_S) is None


def test_malformed_messages_from_a_known_client_are_counted_not_fatal(ctx: zmq.Context, keydir: Path) -> None:
    server, endpoint = _server(ctx, keydir)
    client = _client(ctx, keydir, endpoint, "robot1")
    bad = [[b"\xc1"], [b"garbage", b"more"], [encode(StatusRequest(sender="robot1"))[0][:-2]]]
    for frames in bad:
        assert transport.send_frames(client, frames, WAIT_S)
        assert server.serve_one(WAIT_S)
    assert server.rejects.total == 3 and server.received == []
    assert transport.recv_frames(client, SILENCE_S) is None  # rejected messages get no answer
    transport.send_frames(client, encode(StatusRequest(sender="robot1")), WAIT_S)
    assert server.serve_one(WAIT_S) and len(server.received) == 1


def test_oversized_frame_is_dropped_by_the_socket(ctx: zmq.Context, keydir: Path) -> None:
    """libzmq itself refuses frames over max_frame_bytes (the connection is dropped before decode)."""
    small = transport.SocketOptions(max_frame_bytes=1000)
    sock = transport.secure_server(
        ctx,
        zmq.ROUTER,
        "tcp://127.0.0.1:*",
        keys.load_curve_keys(keydir, "learner"),
        {"robot1": keys.load_public_key(keydir, "robot1")},
        small,
    )
    server = Server(sock)
    client = _client(ctx, keydir, sock.last_endpoint.decode(), "robot1")
    transport.send_frames(client, [b"x" * 5000], WAIT_S)
    assert not server.serve_one(SILENCE_S)


def test_router_send_to_unknown_peer_fails_loudly(ctx: zmq.Context, keydir: Path) -> None:
    server, _ = _server(ctx, keydir)
    assert not transport.send_frames(server.sock, [b"nobody", *encode(StatusRequest(sender="learner"))], 0.1)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://0.0.0.0:5555",
        "tcp://*:5555",
        "tcp://10.1.2.3:5555",
        "tcp://robot.local:5555",
        "tcp://127.0.0.1:1;10.0.0.1:5555",
        "pgm://eth0;239.192.1.1:5555",
        "ws://127.0.0.1:5555",
        "tcp://",
    ],
)
def test_plain_mode_refused_off_loopback(ctx: zmq.Context, endpoint: str) -> None:
    with pytest.raises(transport.TransportError, match="only allowed on loopback"):
        transport.plain_server(ctx, zmq.ROUTER, endpoint)
    with pytest.raises(transport.TransportError, match="only allowed on loopback"):
        transport.plain_client(ctx, zmq.DEALER, endpoint)


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/x", "inproc://x"],
)
def test_loopback_endpoints_are_allowed(endpoint: str) -> None:
    transport.check_loopback(endpoint)


def test_plain_loopback_round_trip(ctx: zmq.Context) -> None:
    server = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:*")
    client = transport.plain_client(ctx, zmq.DEALER, server.last_endpoint.decode())
    assert transport.send_frames(client, encode(StatusRequest(sender="sim0")), WAIT_S)
    frames = transport.recv_frames(server, WAIT_S)
    assert frames is not None and frames[0].bytes != b"sim0"  # the ROUTER names connections itself
    assert isinstance(decode(frames[1:]), StatusRequest)


def test_recv_times_out_without_blocking(ctx: zmq.Context) -> None:
    sock = transport.plain_server(ctx, zmq.ROUTER, "inproc://quiet")
    start = time.monotonic()
    assert transport.recv_frames(sock, 0.05) is None
    assert time.monotonic() - start < 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_deadline() -> None:
    clock = FakeClock()
    hb = transport.Heartbeat(period_s=0.25, deadline_s=1.0, clock=clock)
    assert not hb.alive() and hb.silence_s() is None and hb.due()
    hb.sent()
    assert not hb.due()
    clock.now += 0.25
    assert hb.due()
    hb.beat()
    clock.now += 1.0
    assert hb.alive() and hb.silence_s() == 1.0
    clock.now += 0.125
    assert not hb.alive()
    hb.beat()
    assert hb.alive()
    with pytest.raises(ValueError):
        transport.Heartbeat(period_s=1.0, deadline_s=0.5)


# A ROUTER that is busy (reads nothing) until told on stdin, then reads what is queued and reports it.
# `mode` is plain or curve; with curve the client key robot1 is admitted.
_BUSY_SERVER = r"""
import sys, zmq
from pathlib import Path
from robot_wsrl.wire import keys, transport
mode, keydir = sys.argv[1], Path(sys.argv[2])
ctx = zmq.Context()
options = transport.SocketOptions(recv_hwm=10)
if mode == "plain":
    sock = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:0", options)
else:
    allowed = {"robot1": keys.load_public_key(keydir, "robot1")}
    server_keys = keys.load_curve_keys(keydir, "learner")
    sock = transport.secure_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:0", server_keys, allowed, options)
print(transport.bound_endpoint(sock), flush=True)
sys.stdin.readline()
read = 0
while transport.recv_frames(sock, 1.0) is not None:
    read += 1
print("read", read, flush=True)
transport.shutdown(ctx)
"""


@pytest.mark.parametrize("mode", ["plain", "curve"])
def test_a_client_that_fills_its_queue_and_hangs_up_does_not_abort_the_server(
    ctx: zmq.Context, keydir: Path, mode: str
) -> None:
    """The libzmq 4.3.5 abort (`!_io_error`, stream_engine_base.cpp:310): a peer fills its pipe on a busy
    server (input stopped), hangs up (the engine is marked _io_error but kept), and a ZMTP heartbeat
    timer then writes to it. With ZMTP heartbeats off the server lives and still reads what was queued."""
    server = subprocess.Popen(
        [sys.executable, "-c", _BUSY_SERVER, mode, str(keydir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        endpoint = server.stdout.readline().strip()
        if mode == "plain":
            client = transport.plain_client(ctx, zmq.DEALER, endpoint, transport.SocketOptions(send_hwm=0))
        else:
            client = _client(ctx, keydir, endpoint, "robot1")
            client.sndhwm = 0
        for _ in range(200):
            client.send_multipart(encode(StatusRequest(sender="robot1")))
        time.sleep(1.0)  # the server's queue is full and its input stopped
        client.close()  # the hang-up
        time.sleep(2.5)  # ZMTP heartbeats (1 s) would have fired on the stopped engine by now
        assert server.poll() is None, "the server aborted"
        server.stdin.write("read\n")
        server.stdin.flush()
        out, _ = server.communicate(timeout=60)
        assert server.returncode == 0, out
        assert int(out.split()[-1]) > 0  # what was queued before the hang-up is still delivered
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)


def test_a_connection_that_never_handshakes_is_dropped(ctx: zmq.Context) -> None:
    """HANDSHAKE_IVL: a raw TCP connection that sends nothing (half-open, or not ZMTP) is closed by the
    server after `handshake_ivl_ms`, not held for libzmq's default 30 s."""
    options = transport.SocketOptions(handshake_ivl_ms=300)
    sock = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:0", options)
    host, port = transport.bound_endpoint(sock).removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=WAIT_S) as raw:
        raw.settimeout(WAIT_S)
        start = time.monotonic()
        while raw.recv(64):  # the server's greeting, then end of file
            pass
    assert time.monotonic() - start < WAIT_S
