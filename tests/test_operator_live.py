"""Operator tools side by side against a live `robot-wsrl runner --control` process (CURVE, loopback).

Every tool here uses the same key name, "console": a Textual console process, a second console's
client in its own process, a `status` poller process that opens a new connection for every call, and
this test as a script that e-stops and releases the runner again and again. None may take over another's
connection, and every stop from any of them must reach the runner. Then the deadman: a runner started
without --deadman-s arms its default deadline for a console that supervises it, and killing that
console's process e-stops the runner within the deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PERIOD_S, end_process, free_port, make_keys, pump_until, spawn_cli, wait_for

from robot_wsrl.bench.estop import write_policy
from robot_wsrl.console.client import ClientOptions, ControlClient, armed_deadman
from robot_wsrl.robot.control import DEFAULT_DEADMAN_S
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.wire import keys
from robot_wsrl.wire.endpoints import Endpoints

START_S = 120.0  # process start-up (imports, CURVE handshakes) on a loaded 2-core machine
COMMAND_S = 10.0  # a command's deadline: liveness, not speed
CYCLES = 20  # at least; they go on until the poller has made POLLS calls beside them
POLLS = 10  # status calls the poller must have made while the cycles ran

# A `robot-wsrl status` loop in one process: a fresh client (connection) per call, as a script's would be.
POLLER = """
import contextlib, io, json, pathlib, sys
from robot_wsrl.apps.operator import status_cli
argv, stop, out = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
codes = []
while not stop.exists():
    with contextlib.redirect_stdout(io.StringIO()):
        codes.append(status_cli(argv))
    out.write_text(json.dumps(codes))
"""

# A second console's client: connected and heartbeating throughout, then it e-stops the runner itself.
CONSOLE = """
import json, pathlib, sys
from robot_wsrl.console.client import ClientOptions, ControlClient
from robot_wsrl.wire.endpoints import Endpoints
endpoint, keydir, stop, out = sys.argv[1:5]
endpoints = Endpoints({"robot1": endpoint}, keys=pathlib.Path(keydir))
client = ControlClient(endpoints, "console", ClientOptions(stale_s=5.0))  # slack for a loaded machine
client.wait_for_status(120)
while not pathlib.Path(stop).exists():
    client.pump(0.05)
(result,) = client.command("estop", ["robot1"], {"reason": "second console"}, 30)
events = [[e.kind, e.text] for e in client.events]
tmp = pathlib.Path(out + ".tmp")  # written whole, then renamed: the test never reads half a report
tmp.write_text(json.dumps({"ok": result.ok, "error": result.error, "events": events}))
tmp.replace(out)
client.close()
"""


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_keys(tmp_path_factory.mktemp("keys"), ("robot1",))
    keys.new_identity(path, "observer", "console")
    return path


@pytest.fixture
def runner(keydir: Path, tmp_path: Path) -> Iterator[str]:
    """A runner process on the null driver, no --deadman-s; yields its control endpoint."""
    policy = write_policy(tmp_path / "policy", NullDriver(3, 1, control_period_s=PERIOD_S).spec)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ["runner", "--policy", str(policy), "--driver", "null", "--steps", "1000000000"]
    args += ["--allow-unsigned"]  # a test policy, unsigned: --keys here is for the control channel
    proc = spawn_cli(
        [*args, "--control", endpoint, "--keys", str(keydir), "--name", "robot1", "--state", str(tmp_path)],
        tmp_path / "runner.log",
    )
    yield endpoint
    end_process(proc)


def _python(script: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", script, *args], stdout=out, stderr=out)


def _client(endpoint: str, keydir: Path, name: str) -> ControlClient:
    options = ClientOptions(reply_timeout_s=COMMAND_S)
    return ControlClient(Endpoints({"robot1": endpoint}, keys=keydir), name, options)


def _polls(path: Path) -> list[int]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return []


def test_tools_under_one_key_name_never_steal_a_connection_and_every_stop_arrives(
    runner: str, keydir: Path, tmp_path: Path
) -> None:
    stop_file, polls, second = tmp_path / "stop", tmp_path / "polls.json", tmp_path / "second.json"
    target = ["--runner", f"robot1={runner}", "--keys", str(keydir)]
    console_args = ["console", *target, "--snapshot", str(tmp_path / "never.svg"), "--snapshot-after", "600"]
    tools = [
        spawn_cli(console_args, tmp_path / "console.log"),
        _python(CONSOLE, [runner, str(keydir), str(stop_file), str(second)], tmp_path / "second.log"),
        _python(POLLER, [json.dumps(target), str(stop_file), str(polls)], tmp_path / "poller.log"),
    ]
    script = _client(runner, keydir, "console")
    try:
        assert script.wait_for_status(START_S)
        assert wait_for(lambda: len(_polls(polls)) >= 1, START_S)
        deadline, polled_before, cycles = time.monotonic() + START_S, len(_polls(polls)), 0
        while cycles < CYCLES or len(_polls(polls)) < polled_before + POLLS:
            assert time.monotonic() < deadline, f"{cycles} cycles, {len(_polls(polls))} polls"
            (stop,) = script.command("estop", ["robot1"], {"reason": f"cycle {cycles}"})
            assert stop.ok, (cycles, stop.error)
            (release,) = script.command("release", ["robot1"])
            assert release.ok, (cycles, release.error)
            cycles += 1
        assert all(p.poll() is None for p in tools), "an operator tool died"
        stop_file.touch()
        assert wait_for(lambda: second.exists(), START_S)
        report = json.loads(second.read_text())
        assert report["ok"], report["error"]  # the second console's own stop, after all that
        assert not [e for e in report["events"] if e[0] in ("stale", "failed", "alarm")], report["events"]
        assert any(e[0] == "stop" and "cycle" in e[1] for e in report["events"])  # it saw the cycles
        codes = _polls(polls)
        assert len(codes) >= POLLS and set(codes) <= {0, 1}, codes  # 3: a peer did not report

        def stopped_by_second() -> bool:  # the runner's own record: latched, last by the second console
            status = script.view("robot1").status or {}
            last = status.get("control", {}).get("stops", [{}])[-1]
            return status.get("state") == "estopped" and last.get("detail", "").endswith("second console")

        assert pump_until(script, stopped_by_second)
    finally:
        stop_file.touch()
        script.close()
        for tool in tools:
            end_process(tool)


def test_killing_a_deadman_console_stops_a_runner_started_without_a_deadline(
    runner: str, keydir: Path, tmp_path: Path
) -> None:
    headless = ["--snapshot", str(tmp_path / "never.svg"), "--snapshot-after", "600"]
    args = ["console", "--runner", f"robot1={runner}", "--keys", str(keydir), "--deadman", *headless]
    console = spawn_cli(args, tmp_path / "console.log")
    observer = _client(runner, keydir, "observer")
    try:
        # what the console shows as ARMED is exactly this: the runner lists it with a deadline
        armed = lambda: armed_deadman(observer.view("robot1").status, "console")  # noqa: E731
        assert pump_until(observer, lambda: armed() == DEFAULT_DEADMAN_S, START_S)
        assert armed_deadman(observer.view("robot1").status, "observer") is None  # it only watches
        assert observer.view("robot1").status["state"] == "running"  # type: ignore[index]
        killed_at = time.time()
        console.kill()
        stopped = lambda: (observer.view("robot1").status or {}).get("state") == "estopped"  # noqa: E731
        assert pump_until(observer, stopped, DEFAULT_DEADMAN_S + COMMAND_S)
        status = observer.view("robot1").status
        assert status is not None and status["last_stop_cause"] == "watchdog"
        assert status["last_stop_detail"].startswith("console deadman: console silent for ")
        tripped_after = status["control"]["stops"][-1]["time"] - killed_at  # the runner's own clock
        # its last heartbeat went out up to one period (0.2 s) before the kill; the margin is for load
        assert DEFAULT_DEADMAN_S - 0.25 <= tripped_after <= DEFAULT_DEADMAN_S + 1.0, tripped_after
    finally:
        observer.close()
        end_process(console)
