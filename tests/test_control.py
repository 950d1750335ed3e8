"""The runner's control channel: commands, who sent them, the deadman, and refusals (CURVE on loopback).

Runners here are real Runners on the null driver at 100 Hz in threads of this process, each with its
ControlServer on a free port; consoles are ControlClients. Every wait has a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from helpers import WAIT_S, RunnerRig, free_port, make_keys, pump_until, stranger_keys, wait_for

from robot_wsrl.apps.options import bind_control
from robot_wsrl.console.client import ClientOptions, ControlClient
from robot_wsrl.robot.control import MIN_DEADMAN_S, ControlServer
from robot_wsrl.robot.safety import EStopCause
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.endpoints import Endpoints
from robot_wsrl.wire.protocol import Command, Reply, decode, encode


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def rigs(keydir: Path, null_policy: Path) -> Iterator[list[RunnerRig]]:
    made = [RunnerRig(name, keydir, null_policy, deadman_s=MIN_DEADMAN_S) for name in ("robot1", "robot2")]
    yield made
    for rig in made:
        rig.close()


def client_for(rigs: list[RunnerRig], keydir: Path, **options: object) -> ControlClient:
    endpoints = Endpoints({r.name: r.endpoint for r in rigs}, keys=keydir)
    return ControlClient(endpoints, "console", ClientOptions(**options))  # type: ignore[arg-type]


def test_estop_stops_the_driver_on_the_control_thread_and_names_the_console(
    rigs: list[RunnerRig], keydir: Path
) -> None:
    """The runners are not running their loops: only the command thread can have called safe_stop."""
    client = client_for(rigs, keydir)
    try:
        results = client.command("estop", ["robot1", "robot2"], {"reason": "test"})
        assert [r.ok for r in results] == [True, True]
        for rig in rigs:
            assert rig.driver.safe_stop_count == 1
            assert rig.runner.latch.cause is EStopCause.COMMAND
            assert rig.runner.status()["last_stop_detail"] == "e-stop from console: test"
        assert client.wait_for_status(WAIT_S)
        view = client.view("robot1")
        assert view.status is not None and view.status["state"] == "estopped"
        assert view.status["control"]["last_command"] == {
            "name": "estop",
            "by": "console",
            "ok": True,
            "error": None,
        }
        assert pump_until(client, lambda: any(e.kind == "stop" and e.peer == "robot1" for e in client.events))
    finally:
        client.close()


def test_release_is_per_runner_and_says_when_there_is_nothing_to_release(
    rigs: list[RunnerRig], keydir: Path
) -> None:
    for rig in rigs:
        rig.start()
    client = client_for(rigs, keydir)
    try:
        assert all(r.ok for r in client.command("estop", ["robot1", "robot2"]))
        assert client.command("release", ["robot1"])[0].ok
        assert wait_for(lambda: rigs[0].runner.state.value == "fine_tuning")
        assert rigs[1].runner.state.value == "estopped"
        again = client.command("release", ["robot1"])[0]
        assert not again.ok and again.error == "not e-stopped: nothing to release"
        rollback = client.command("rollback", ["robot1"])[0]
        assert not rollback.ok and "no previous policy" in (rollback.error or "")
        assert client.command("pause", ["robot1"])[0].ok and rigs[0].runner.state.value == "paused"
        assert client.command("resume", ["robot1"])[0].ok
        assert wait_for(lambda: rigs[0].runner.state.value == "fine_tuning")
    finally:
        client.close()


def test_deadman_trips_once_a_supervising_console_goes_silent(rigs: list[RunnerRig], keydir: Path) -> None:
    rig = rigs[0].start()
    watcher = client_for(rigs[1:], keydir)  # a watching console on robot2 never trips its deadman
    supervisor = client_for(rigs[:1], keydir, supervise=True)
    try:
        until = time.monotonic() + 2 * MIN_DEADMAN_S
        while time.monotonic() < until:
            supervisor.pump(0.05)
            watcher.pump(0.05)
        assert rig.runner.state.value == "fine_tuning"
        assert [s["name"] for s in rig.server.status()["supervisors"]] == ["console"]
        silent_from = time.monotonic()  # its last heartbeat went out at most one period before this
        assert wait_for(lambda: rig.runner.latch.latched, 5.0)
        tripped_after = time.monotonic() - silent_from
        assert rig.runner.latch.cause is EStopCause.WATCHDOG
        assert rig.runner.latch.detail.startswith("console deadman: console silent for ")
        assert MIN_DEADMAN_S - supervisor.options.heartbeat_s <= tripped_after < MIN_DEADMAN_S + 1.0
        assert rig.server.deadman_trips == 1
        assert rigs[1].runner.latch.cause is None and rigs[1].server.deadman_trips == 0
    finally:
        supervisor.close()
        watcher.close()


def test_a_message_under_another_name_is_refused(rigs: list[RunnerRig], keydir: Path) -> None:
    """CURVE says who is speaking: a console key cannot send a command signed with another name."""
    ctx = zmq.Context()
    try:
        sock = transport.secure_client(
            ctx,
            zmq.DEALER,
            rigs[0].endpoint,
            keys.load_curve_keys(keydir, "console"),
            keys.load_public_key(keydir, "robot1"),
        )
        assert transport.send_frames(sock, encode(Command("learner", "estop", {}, 7)), WAIT_S)
        assert wait_for(lambda: rigs[0].server.rejects.as_dict().get("identity") == 1)
        assert transport.send_frames(sock, encode(Command("console", "estop", {}, 8)), WAIT_S)
        frames = transport.recv_frames(sock, WAIT_S)
        assert frames is not None
        reply = decode(frames)
        assert isinstance(reply, Reply) and reply.ok and reply.ref == 8
        assert rigs[0].driver.safe_stop_count == 1
    finally:
        transport.shutdown(ctx)


def test_an_unknown_console_key_gets_nothing_and_changes_nothing(
    rigs: list[RunnerRig], keydir: Path, tmp_path: Path
) -> None:
    stranger = stranger_keys(tmp_path / "stranger", keydir)
    client = ControlClient(
        Endpoints({rigs[0].name: rigs[0].endpoint}, keys=stranger),
        "console",
        ClientOptions(reply_timeout_s=1.0),
    )
    try:
        for command in ("estop", "release"):
            (result,) = client.command(command, ["robot1"])
            assert not result.ok
            assert (
                result.error
                == "not sent: robot1 refused this console's key 'console' (CURVE authentication failed)"
            )
        assert rigs[0].driver.safe_stop_count == 0 and not rigs[0].runner.latch.latched
        assert rigs[0].server.status()["rejected_keys"] >= 1
        assert not client.wait_for_status(0.5) and client.view("robot1").stale
    finally:
        client.close()


def test_control_server_refuses_a_deadman_shorter_than_the_minimum(keydir: Path) -> None:
    ctx = zmq.Context()
    try:
        sock = bind_control(ctx, f"tcp://127.0.0.1:{free_port()}", "robot1", keydir, plain=False)
        with pytest.raises(ValueError, match="below the minimum"):
            ControlServer(sock, "robot1", secure=True, deadman_s=0.1)
    finally:
        transport.shutdown(ctx)


def test_binding_needs_console_keys(tmp_path: Path) -> None:
    keys.new_identity(tmp_path, "robot1", "runner")
    ctx = zmq.Context()
    try:
        with pytest.raises(keys.KeyFileError, match="no console keys"):
            bind_control(ctx, f"tcp://127.0.0.1:{free_port()}", "robot1", tmp_path, plain=False)
        with pytest.raises(transport.TransportError, match="loopback"):
            bind_control(ctx, "tcp://10.1.2.3:5999", "robot1", None, plain=True)
    finally:
        transport.shutdown(ctx)


def test_runner_cli_checks_its_control_options(null_policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robot_wsrl.apps.runner import cli

    base = ["--policy", str(null_policy), "--driver", "null", "--steps", "5"]
    for extra, message in (
        (["--deadman-s", "1"], "--deadman-s needs --control"),
        (["--control", "tcp://127.0.0.1:1"], "--control needs --keys"),
        (["--control", "tcp://127.0.0.1:1", "--plain", "--deadman-s", "0.1"], "at least 0.5"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli(base + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err
