"""The console against a real learner and real runner processes on loopback (CURVE, free ports).

The learner is `robot-wsrl learner` on the shipped Hopper checkpoint; each runner is `robot-wsrl runner
--control` on the null driver. The Textual app is driven headless by its pilot: space stops every
runner, release needs the typed runner id, a killed runner turns STALE. A console started as its own
process with --deadman and then killed -9 leaves its runners e-stopped within their deadline.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import PERIOD_S, end_process, free_port, make_keys, spawn_cli, wait_for
from textual.pilot import Pilot
from textual.widgets import Button, Input

from robot_wsrl.bench.estop import write_policy
from robot_wsrl.console.app import ConsoleApp
from robot_wsrl.console.client import BackgroundClient, ClientOptions, ControlClient, armed_deadman
from robot_wsrl.console.widgets import ReleaseScreen, RunnerTable
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.wire import keys
from robot_wsrl.wire.endpoints import Endpoints

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "policies" / "hopper" / "checkpoint.pt"
START_S = 120.0  # the learner imports torch and exports its first policy on a shared 2-core machine
DEADMAN_S = 1.0
SIZE = (150, 44)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_keys(tmp_path_factory.mktemp("keys"))
    keys.new_identity(path, "learner", "learner")
    keys.new_identity(path, "observer", "console")
    return path


@pytest.fixture(scope="module")
def learner(keydir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    out = tmp_path_factory.mktemp("learner")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ["learner", f"service.bind={endpoint}", f"service.keys={keydir}", "service.max_seconds=600"]
    args += [
        "env=hopper",
        f"run.checkpoint={CHECKPOINT}",
        f"out_dir={out / 'run'}",
        "device=cpu",
        "threads=1",
    ]
    proc = spawn_cli(args, out / "learner.log")
    yield endpoint
    end_process(proc)


@pytest.fixture
def runners(keydir: Path, tmp_path: Path) -> Iterator[dict[str, tuple[str, subprocess.Popen[bytes]]]]:
    policy = write_policy(tmp_path / "policy", NullDriver(3, 1, control_period_s=PERIOD_S).spec)
    made = {}
    for name in ("robot1", "robot2"):
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        args = ["runner", "--policy", str(policy), "--driver", "null", "--steps", "1000000000"]
        args += ["--allow-unsigned"]  # a test policy, unsigned: --keys here is for the control channel
        args += ["--control", endpoint, "--keys", str(keydir), "--name", name, "--deadman-s", str(DEADMAN_S)]
        args += ["--state", str(tmp_path / name)]  # the latch's record: never one shared with other tests
        made[name] = (endpoint, spawn_cli(args, tmp_path / f"{name}.log"))
    yield made
    for _, proc in made.values():
        end_process(proc)


async def _until(pilot: Pilot[None], condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


def test_console_stops_all_releases_one_and_marks_a_killed_runner_stale(
    keydir: Path, learner: str, runners: dict[str, tuple[str, subprocess.Popen[bytes]]]
) -> None:
    endpoints = Endpoints({n: e for n, (e, _) in runners.items()}, ("learner", learner), keys=keydir)
    client = BackgroundClient(ControlClient(endpoints, "console", ClientOptions(stale_s=1.0)))
    client.start()
    app = ConsoleApp(client)

    def states() -> dict[str, str | None]:
        return {v.name: None if v.stale else (v.status or {}).get("state") for v in client.snapshot.runners}

    def cell(runner: str, column: str) -> str:
        return str(app.query_one(RunnerTable).get_cell(runner, column))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            learner_up = lambda: client.snapshot.learner is not None and not client.snapshot.learner.stale  # noqa: E731
            await _until(pilot, lambda: learner_up() and set(states().values()) == {"running"}, START_S)
            await _until(pilot, lambda: "phase warmup" in str(app.query_one("#learner").render()))

            await pilot.press("space")
            await _until(pilot, lambda: set(states().values()) == {"estopped"})
            for view in client.snapshot.runners:  # the key, then the tool and the key pressed
                assert view.status is not None and view.status["last_stop_cause"] == "command"
                detail = view.status["last_stop_detail"]
                assert detail.startswith("e-stop from console: console@") and detail.endswith("[all]")
            await _until(pilot, lambda: cell("robot2", "state") == "estopped")
            assert cell("robot1", "cause").startswith("command: e-stop from console: console@")

            await pilot.press("r")  # robot1 is the selected row
            assert isinstance(app.screen, ReleaseScreen) and app.screen.runner == "robot1"
            await pilot.press(*"robot2", "enter")  # the wrong id releases nothing
            assert isinstance(app.screen, ReleaseScreen)
            assert app.screen.query_one("#release-confirm", Button).disabled
            app.screen.query_one(Input).value = ""
            await pilot.press(*"robot1")
            assert not app.screen.query_one("#release-confirm", Button).disabled
            await pilot.click("#release-confirm")
            await _until(pilot, lambda: states() == {"robot1": "running", "robot2": "estopped"})

            runners["robot2"][1].kill()
            await _until(pilot, lambda: cell("robot2", "state").startswith("STALE"))
            assert cell("robot1", "state") == "running"
            kinds = {(e.peer, e.kind) for e in client.snapshot.events}
            assert {
                ("robot1", "stop"),
                ("robot2", "stop"),
                ("robot1", "release"),
                ("robot2", "stale"),
            } <= kinds

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def test_killing_a_deadman_console_process_estops_its_runners_within_the_deadline(
    keydir: Path, runners: dict[str, tuple[str, subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    args = ["console", "--keys", str(keydir), "--deadman"]
    for name, (endpoint, _) in runners.items():
        args += ["--runner", f"{name}={endpoint}"]
    console = spawn_cli(
        [*args, "--snapshot", str(tmp_path / "never.svg"), "--snapshot-after", "600"], tmp_path / "c"
    )
    endpoints = Endpoints({n: e for n, (e, _) in runners.items()}, keys=keydir)
    observer = ControlClient(endpoints, "observer")
    try:

        def supervised() -> bool:
            observer.pump(0.05)
            views = [observer.view(name) for name in runners]
            return all(armed_deadman(v.status, "console") == DEADMAN_S for v in views)

        assert wait_for(supervised, START_S)
        assert all(observer.view(name).status["state"] == "running" for name in runners)  # type: ignore[index]
        killed_at = time.time()
        console.kill()

        def stopped() -> bool:
            observer.pump(0.05)
            return all((observer.view(name).status or {}).get("state") == "estopped" for name in runners)

        assert wait_for(stopped, 5 * DEADMAN_S)
        for name in runners:
            status = observer.view(name).status
            assert status is not None and status["last_stop_cause"] == "watchdog"
            assert status["last_stop_detail"].startswith("console deadman: console silent for ")
            tripped_after = status["control"]["stops"][-1]["time"] - killed_at
            # its last heartbeat went out up to one heartbeat period (0.2 s) before the kill
            assert DEADMAN_S - 0.25 <= tripped_after <= DEADMAN_S + 0.3, tripped_after
    finally:
        observer.close()
        end_process(console)


def test_sparkline_bins_returns_by_step_and_leaves_gaps() -> None:
    from robot_wsrl.console.widgets import sparkline

    bars, low, high = sparkline([(0, 0.0), (50, 100.0), (100, 200.0)], 5)
    assert (low, high) == (0.0, 200.0)
    assert bars == "▁ ▅ █"  # steps 0, 50, 100 land in bins 0, 2, 4; the empty bins stay blank


def test_console_cli_refuses_to_start_without_peers(capsys: pytest.CaptureFixture[str]) -> None:
    from robot_wsrl.apps.console import cli

    assert cli(["--keys", "nowhere"]) == 2
    assert "robot-wsrl console: no runner to talk to" in capsys.readouterr().err


def test_the_learner_panel_and_event_log_say_why_a_version_was_held_back() -> None:
    """The gate's verdicts, as the learner reports them, reach the operator: what hardware runs, and each
    version held back with its reason (once), or promoted."""
    from robot_wsrl.console.client import ControlClient, PeerView
    from robot_wsrl.console.widgets import learner_text
    from robot_wsrl.wire.endpoints import Endpoints

    failed = {"version": 3, "status": "failed", "reasons": ["paired[real]: mean difference -40.00"]}
    gate = {
        "enabled": True,
        "deployed_version": 2,
        "verdicts": [{"version": 2, "status": "passed", "reasons": []}],
    }
    before = {"phase": "fine_tuning", "policy_version": 3, "gate": gate}
    after = {**before, "gate": {**gate, "verdicts": [*gate["verdicts"], failed]}}
    view = PeerView("learner", "learner", "tcp://127.0.0.1:1", after, 0.1, False, True, None)
    shown = learner_text(view).plain
    assert "hardware runs v2" in shown and "held back v3: paired[real]: mean difference -40.00" in shown

    client = ControlClient(Endpoints(learner=("learner", "tcp://127.0.0.1:1"), plain=True))
    try:
        peer = client.peers["learner"]
        client._learner_events(peer, before, after)
        client._learner_events(peer, after, after)  # nothing new: nothing logged twice
        holds = [e for e in client.events if e.kind == "hold"]
        assert len(holds) == 1 and "v3 held back from hardware: paired[real]" in holds[0].text
    finally:
        client.close()
