"""Operator tools when the e-stop path fails: a stop is never silently lost, and what they show is true.

The runner here is a FakeRunner: a plain control ROUTER on loopback (a thread of this process) that
answers like a runner's ControlServer, except as a test tells it: it can ignore every command (a stop
lost on the way) or apply e-stops without replying (a reply lost on the way back), and it reports the
status the test sets, NaN included. Consoles are ControlClients, `robot-wsrl stop/status` run through
their cli functions, and the Textual console is driven headless by its pilot. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from helpers import WAIT_S, pump_until

from robot_wsrl.apps.operator import finite, status_cli, stop_cli
from robot_wsrl.console.app import ConsoleApp
from robot_wsrl.console.client import (
    HARDWARE_ESTOP,
    BackgroundClient,
    ClientOptions,
    ControlClient,
    PeerView,
    Snapshot,
    armed_deadman,
)
from robot_wsrl.console.widgets import UNCONFIRMED, RunnerTable, alarm_text, deadman_text, runner_cells
from robot_wsrl.wire import transport
from robot_wsrl.wire.endpoints import Endpoints
from robot_wsrl.wire.protocol import Command, RejectCounter, Reply, Status, StatusRequest, encode

REPLY_TIMEOUT_S = 0.5  # the alarm threshold under test; liveness waits use WAIT_S


class FakeRunner:
    """A runner's control channel that loses what a test tells it to (see the module docstring)."""

    def __init__(self, name: str = "robot1") -> None:
        self.name = name
        self.ctx = zmq.Context()
        self.sock = transport.plain_server(self.ctx, zmq.ROUTER, "tcp://127.0.0.1:0")
        self.endpoint = transport.bound_endpoint(self.sock)
        self.deaf = threading.Event()  # set: commands are dropped unread (a lost stop)
        self.replies = threading.Event()  # set: applied commands are answered (else the reply is lost)
        self.replies.set()
        self.heard: list[Command] = []  # every command that arrived, deaf or not
        self.commands: list[Command] = []  # every command applied, in order
        self.stops: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {"state": "fine_tuning"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def names(self) -> list[str]:
        return [c.name for c in self.commands]

    def _loop(self) -> None:
        while not self._stop.is_set():
            frames = transport.recv_frames(self.sock, 0.02)
            routed = None if frames is None else transport.routed_message(frames, RejectCounter(), False)
            if routed is None:
                continue
            identity, msg = routed
            if isinstance(msg, StatusRequest):
                status = {**self.status, "control": {**self.status.get("control", {}), "stops": self.stops}}
                transport.send_frames(self.sock, [identity, *encode(Status(self.name, status))], 1.0)
            elif isinstance(msg, Command):
                self.heard.append(msg)
                if self.deaf.is_set():
                    continue
                self._apply(msg)
                if self.replies.is_set():
                    transport.send_frames(
                        self.sock, [identity, *encode(Reply(self.name, True, None, msg.ref))], 1.0
                    )

    def _apply(self, cmd: Command) -> None:
        self.commands.append(cmd)
        if cmd.name == "estop":
            kind = "repeat" if self.status["state"] == "estopped" else "enter"
            self.stops.append({"kind": kind, "cause": "command", "detail": "e-stop", "time": time.time()})
            self.status = {**self.status, "state": "estopped"}
        elif cmd.name == "release":
            self.stops.append({"kind": "release", "cause": None, "detail": "", "time": time.time()})
            self.status = {**self.status, "state": "fine_tuning"}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        transport.shutdown(self.ctx)


@pytest.fixture
def fake() -> Iterator[FakeRunner]:
    runner = FakeRunner()
    yield runner
    runner.close()


def _client(fake: FakeRunner, **options: Any) -> ControlClient:
    options.setdefault("reply_timeout_s", REPLY_TIMEOUT_S)
    return ControlClient(
        Endpoints({fake.name: fake.endpoint}, plain=True), "console", ClientOptions(**options)
    )


def _kinds(client: ControlClient, kind: str) -> list[str]:
    return [e.text for e in client.events if e.kind == kind]


def test_a_lost_estop_is_resent_alarmed_until_confirmed_and_blocks_a_release(fake: FakeRunner) -> None:
    client = _client(fake)
    try:
        assert client.wait_for_status(WAIT_S)
        fake.deaf.set()
        (result,) = client.command("estop", ["robot1"])
        assert not result.ok and result.error is not None and result.error.startswith("no reply within")
        # not dropped: still pending, resent, and shown as failed wherever the operator looks
        assert pump_until(client, lambda: client.view("robot1").stop_unconfirmed_s is not None)
        (alarm,) = _kinds(client, "alarm")
        assert alarm.startswith("estop NOT CONFIRMED: no reply within") and HARDWARE_ESTOP in alarm
        assert str(runner_cells(client.view("robot1"), "console", False)["state"]) == UNCONFIRMED
        assert "robot1: E-STOP NOT CONFIRMED" in str(alarm_text(client.snapshot()))
        # a release now would be overtaken by the stop still being resent: refused here, never sent
        (release,) = client.command("release", ["robot1"])
        assert not release.ok and (release.error or "").startswith("refused here: the e-stop sent")

        fake.deaf.clear()  # the runner hears again: the next resend gets through and is confirmed
        assert pump_until(client, lambda: client.view("robot1").stop_unconfirmed_s is None)
        assert fake.names()[0] == "estop" and "release" not in fake.names()
        assert len({c.ref for c in fake.commands}) == 1  # every resend is the same command
        (confirmed,) = _kinds(client, "confirmed")
        assert confirmed.startswith("estop confirmed at last")
        assert alarm_text(client.snapshot()) is None
        assert client.command("release", ["robot1"])[0].ok
    finally:
        client.close()


def test_an_estop_keeps_going_out_every_resend_period_while_unanswered(fake: FakeRunner) -> None:
    """The runner applies every copy but each reply is lost: copies keep coming (its latch records
    repeats) until a Status shows a stop at or after the press, which confirms it."""
    fake.status = {"state": "estopped"}
    fake.stops = [{"kind": "enter", "cause": "command", "detail": "old", "time": time.time() - 60}]
    client = _client(fake)
    try:
        assert client.wait_for_status(WAIT_S)
        fake.deaf.set()  # stopped before the press, and the press is lost: that confirms nothing
        refs = client.send("estop", ["robot1"])
        assert not pump_until(client, lambda: refs[0] in client.results, 4 * REPLY_TIMEOUT_S)
        assert client.view("robot1").stop_unconfirmed_s is not None

        fake.replies.clear()
        fake.deaf.clear()
        assert pump_until(client, lambda: refs[0] in client.results)
        result = client.results.pop(refs[0])
        assert result.ok and result.command == "estop"
        assert fake.stops[-1]["kind"] == "repeat" and client.view("robot1").stop_unconfirmed_s is None
    finally:
        client.close()


def test_repeated_presses_share_one_resend_stream_and_one_confirmation(fake: FakeRunner) -> None:
    client = _client(fake)
    try:
        assert client.wait_for_status(WAIT_S)
        fake.deaf.set()
        refs = [ref for _ in range(5) for ref in client.send("estop", ["robot1"])]
        assert pump_until(client, lambda: len(fake.heard) >= 10)
        assert [c.ref for c in fake.heard[:5]] == refs  # each press goes out at once ...
        assert {c.ref for c in fake.heard[5:]} == {refs[-1]}  # ... then only the newest is resent
        fake.deaf.clear()
        results = client.collect(refs, WAIT_S)
        assert all(r.ok for r in results) and client.view("robot1").stop_unconfirmed_s is None
    finally:
        client.close()


def test_other_commands_are_sent_once_and_fail_loudly_at_their_deadline(fake: FakeRunner) -> None:
    client = _client(fake)
    try:
        assert client.wait_for_status(WAIT_S)
        fake.replies.clear()
        (result,) = client.command("pause", ["robot1"])
        assert not result.ok and (result.error or "").startswith("no reply within")
        assert not pump_until(client, lambda: False, 2 * REPLY_TIMEOUT_S)  # time for any resend
        assert fake.names() == ["pause"]  # not resent: only an e-stop is idempotent at the runner
        assert _kinds(client, "failed") == [f"pause: FAILED: {result.error}"]
        assert client.view("robot1").stop_unconfirmed_s is None  # no stop alarm for a pause
    finally:
        client.close()


def test_stop_cli_resends_until_its_timeout_and_names_the_hardware_estop(
    fake: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.deaf.set()
    other = FakeRunner("robot2")
    try:
        argv = ["--runner", f"robot1={fake.endpoint}", "--runner", f"robot2={other.endpoint}", "--plain"]
        assert stop_cli([*argv, "--timeout", "3"]) == 1
        captured = capsys.readouterr()
        assert "robot2: e-stopped (confirmed in" in captured.out
        (line,) = captured.err.splitlines()
        assert line.startswith("robot1: NOT e-stopped: no reply within ")
        assert line.endswith(f"STOP NOT CONFIRMED: {HARDWARE_ESTOP}")
        sends = re.search(r"\((\d+) sends\)", line)
        assert sends is not None and int(sends.group(1)) >= 2  # resent, not sent once and forgotten
        fake.deaf.clear()
        assert stop_cli([*argv, "--timeout", str(WAIT_S)]) == 0
        assert set(other.names()) == set(fake.names()) == {"estop"}
    finally:
        other.close()


def test_status_json_is_strict_json_even_when_a_runner_reports_nan(
    fake: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.status = {
        "state": "fine_tuning",
        "loop_rate_hz": math.nan,
        "jitter": {"p99_us": math.inf, "history": [1.5, -math.inf, {"deep": math.nan}]},
    }
    assert status_cli(["--runner", f"robot1={fake.endpoint}", "--plain", "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    report = json.loads(out, parse_constant=refuse)["robot1"]
    assert report["loop_rate_hz"] is None
    assert report["jitter"] == {"p99_us": None, "history": [1.5, None, {"deep": None}]}
    assert finite((1, "x", [math.nan], {"a": 2.5})) == [1, "x", [None], {"a": 2.5}]


def _view(name: str, status: dict[str, Any] | None, *, stale: bool = False) -> PeerView:
    return PeerView(name, "runner", "tcp://127.0.0.1:1", status, 0.1, stale, True, None)


def test_the_console_claims_the_deadman_only_where_the_runner_lists_it() -> None:
    armed = {"deadman_s": 1.0, "supervisors": [{"name": "console", "silent_s": 0.1}]}
    someone_else = {"deadman_s": 1.0, "supervisors": [{"name": "other", "silent_s": 0.1}]}
    no_deadline = {"deadman_s": None, "supervisors": [{"name": "console", "silent_s": 0.1}]}
    old_format = {"deadman_s": 1.0, "supervisors": {"console": 0.1}}
    cases = {"r1": armed, "r2": someone_else, "r3": no_deadline, "r4": old_format, "r5": {}}
    assert armed_deadman({"control": armed}, "console") == 1.0
    for control in (someone_else, no_deadline, old_format, {}):
        assert armed_deadman({"control": control}, "console") is None
    views = [_view(name, {"state": "fine_tuning", "control": c}) for name, c in cases.items()]
    views.append(_view("r6", {"state": "fine_tuning", "control": armed}, stale=True))  # not current
    snap = Snapshot("console", True, views, None, [], 0, {})
    banner = deadman_text(snap).plain
    assert "r1: deadman ARMED (1.0 s)" in banner
    for name in ("r2", "r3", "r4", "r5", "r6"):
        assert f"deadman NOT armed on {name}" in banner and f"{name}: deadman ARMED" not in banner
    cells = [str(runner_cells(v, "console", True)["deadman"]) for v in views]
    assert cells == ["ARMED (1.0 s)"] + ["NOT armed"] * 5
    refused = PeerView("r7", "runner", "tcp://127.0.0.1:1", None, None, True, False, "r7 refused this key")
    alarm = alarm_text(dataclasses.replace(snap, runners=[*views, refused]))
    assert str(alarm) == "r7: this console cannot stop it: r7 refused this key"  # the key, not the runner
    watching = Snapshot("console", False, views, None, [], 0, {})
    assert "deadman off (watching only)" in deadman_text(watching).plain
    assert str(runner_cells(views[1], "console", False)["deadman"]) == "1 s, 1 console(s)"


async def _until(pilot: Any, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


def test_the_console_turns_a_runner_red_until_its_lost_stop_is_confirmed(fake: FakeRunner) -> None:
    client = BackgroundClient(_client(fake))
    client.start()
    app = ConsoleApp(client)

    def state_cell() -> str:
        return str(app.query_one(RunnerTable).get_cell("robot1", "state"))

    def alarm_shown() -> bool:
        return bool(app.query_one("#alarm").display)

    async def scenario() -> None:
        async with app.run_test(size=(150, 44)) as pilot:
            await _until(pilot, lambda: state_cell() == "fine_tuning")
            assert not alarm_shown()
            fake.deaf.set()
            await pilot.press("space")
            await _until(pilot, lambda: state_cell() == UNCONFIRMED and alarm_shown())
            assert "E-STOP NOT CONFIRMED" in str(app.query_one("#alarm").render())
            await pilot.pause(2 * REPLY_TIMEOUT_S)
            assert state_cell() == UNCONFIRMED and alarm_shown()  # it stays until confirmed
            await pilot.press("q")  # quitting would stop the resending: it needs a second press
            await pilot.pause(0.2)
            assert app.is_running and alarm_shown()
            fake.deaf.clear()
            await _until(pilot, lambda: state_cell() == "estopped" and not alarm_shown())
        (stop,) = fake.commands[:1]
        assert stop.args["reason"].startswith("console@") and stop.args["reason"].endswith("[all]")

    try:
        asyncio.run(scenario())
    finally:
        client.close()
