"""`robot-wsrl stop / status / release`: exit codes a script can trust, against real runners on loopback.

The runners are RunnerRigs (test_control): real Runners with their ControlServers over CURVE. The
commands run in-process through their cli functions; one test starts `robot-wsrl runner --control` as
a process and drives it with the commands as processes, as an operator's script would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import WAIT_S, RunnerRig, free_port, make_keys, stranger_keys, wait_for

from robot_wsrl.apps.operator import release_cli, status_cli, stop_cli
from robot_wsrl.wire.endpoints import Endpoints, EndpointsError, load_endpoints, save_endpoints


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def rigs(keydir: Path, null_policy: Path) -> Iterator[list[RunnerRig]]:
    made = [RunnerRig(name, keydir, null_policy).start() for name in ("robot1", "robot2")]
    yield made
    for rig in made:
        rig.close()


@pytest.fixture
def session(tmp_path: Path, rigs: list[RunnerRig], keydir: Path) -> Path:
    save_endpoints(tmp_path, Endpoints({r.name: r.endpoint for r in rigs}, keys=keydir))
    return tmp_path


def test_stop_all_exits_0_once_every_runner_confirmed(session: Path, rigs: list[RunnerRig], capsys) -> None:
    assert stop_cli(["--session", str(session), "--reason", "drill"]) == 0
    out = capsys.readouterr().out
    assert "robot1: e-stopped (confirmed in" in out and "robot2: e-stopped (confirmed in" in out
    for rig in rigs:
        assert rig.runner.state.value == "estopped" and rig.driver.safe_stop_count == 1
        detail = rig.runner.status()["last_stop_detail"]  # the key, then the tool that sent it
        assert detail.startswith("e-stop from console: stop@") and detail.endswith(": drill")


def test_stop_one_runner_leaves_the_other(session: Path, rigs: list[RunnerRig], capsys) -> None:
    assert stop_cli(["--session", str(session), "--runner", "robot2"]) == 0
    assert rigs[1].runner.state.value == "estopped" and rigs[0].runner.state.value == "fine_tuning"
    assert stop_cli(["--session", str(session), "--runner", "robot9"]) == 2
    assert "robot-wsrl stop: unknown runner 'robot9'" in capsys.readouterr().err


def test_stop_exits_1_when_a_runner_is_unreachable(
    session: Path, rigs: list[RunnerRig], keydir: Path, capsys
) -> None:
    nobody = f"robot3=tcp://127.0.0.1:{free_port()}"
    keys_copy = ["--keys", str(keydir)]
    argv = ["--session", str(session), "--runner", "robot1", "--runner", nobody, "--timeout", "0.5"]
    # robot3 has no key file in keydir: the client cannot even be set up for it
    assert stop_cli([*argv, *keys_copy]) == 2
    assert "robot3.key" in capsys.readouterr().err
    (keydir / "robot3.key").write_bytes((keydir / "robot2.key").read_bytes())
    try:
        assert stop_cli([*argv, *keys_copy]) == 1
    finally:
        (keydir / "robot3.key").unlink()
    captured = capsys.readouterr()
    assert "robot1: e-stopped" in captured.out
    assert "robot3: NOT e-stopped: not sent: not connected to tcp://127.0.0.1:" in captured.err
    assert "STOP NOT CONFIRMED: use the HARDWARE E-STOP" in captured.err
    assert rigs[0].runner.state.value == "estopped"


def test_status_exit_codes_and_release_with_confirmation(
    session: Path, rigs: list[RunnerRig], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert status_cli(["--session", str(session)]) == 0
    assert "robot1       fine_tuning" in capsys.readouterr().out
    assert stop_cli(["--session", str(session), "--runner", "robot1"]) == 0
    assert status_cli(["--session", str(session), "--json"]) == 1
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["robot1"]["state"] == "estopped" and report["robot2"]["state"] == "fine_tuning"
    assert report["robot1"]["last_stop_detail"].startswith("e-stop from console: stop@")

    assert release_cli(["--session", str(session)]) == 2  # two runners: release is per runner
    assert "exactly one --runner" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert release_cli(["--session", str(session), "--runner", "robot1"]) == 2
    assert "confirm with --yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "robot2")
    assert release_cli(["--session", str(session), "--runner", "robot1"]) == 1  # typed the wrong id
    assert rigs[0].runner.state.value == "estopped"
    monkeypatch.setattr("builtins.input", lambda prompt: "robot1")
    assert release_cli(["--session", str(session), "--runner", "robot1"]) == 0
    assert wait_for(lambda: rigs[0].runner.state.value == "fine_tuning")
    assert release_cli(["--session", str(session), "--runner", "robot1", "--yes"]) == 1
    assert "nothing to release" in capsys.readouterr().err

    rigs[1].close()  # a runner that went away: status says so with its own exit code
    assert status_cli(["--session", str(session), "--timeout", "0.5"]) == 3
    assert "robot2       STALE" in capsys.readouterr().out


def test_an_unknown_console_key_can_neither_stop_nor_release_and_says_so(
    session: Path, rigs: list[RunnerRig], keydir: Path, tmp_path: Path, capsys
) -> None:
    stranger = str(stranger_keys(tmp_path / "stranger", keydir))
    common = ["--session", str(session), "--keys", stranger, "--timeout", "1"]
    assert stop_cli(common) == 1
    err = capsys.readouterr().err
    for name in ("robot1", "robot2"):
        assert f"{name}: NOT e-stopped: not sent: {name} refused this console's key 'console'" in err
    assert stop_cli(["--session", str(session), "--runner", "robot1"]) == 0  # the real console can
    assert release_cli([*common, "--runner", "robot1", "--yes"]) == 1
    assert "robot1: NOT released: not sent: robot1 refused this console's key" in capsys.readouterr().err
    assert rigs[0].runner.state.value == "estopped" and rigs[1].runner.state.value == "fine_tuning"
    assert status_cli(common) == 3


def test_endpoints_file_errors_name_the_file(tmp_path: Path, capsys) -> None:
    assert stop_cli(["--session", str(tmp_path)]) == 2
    assert f"robot-wsrl stop: {tmp_path / 'endpoints.json'}" in capsys.readouterr().err
    (tmp_path / "endpoints.json").write_text('{"runners": {"robot1": "localhost:5"}}')
    with pytest.raises(EndpointsError, match=r"runners.robot1: endpoint 'localhost:5'"):
        load_endpoints(tmp_path)
    save_endpoints(
        tmp_path, Endpoints({"r1": "tcp://127.0.0.1:5"}, ("learner", "tcp://127.0.0.1:6"), True, Path("k"))
    )
    loaded = load_endpoints(tmp_path / "endpoints.json")
    assert loaded.runners == {"r1": "tcp://127.0.0.1:5"} and loaded.learner == (
        "learner",
        "tcp://127.0.0.1:6",
    )
    assert loaded.plain and loaded.keys == tmp_path / "k"
    assert stop_cli(["--runner", "robot1"]) == 2
    assert "unknown runner 'robot1'" in capsys.readouterr().err


def test_operator_tools_do_not_import_torch_or_onnxruntime() -> None:
    script = (
        "import sys, robot_wsrl.apps.operator, robot_wsrl.apps.console, robot_wsrl.console.app\n"
        "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _robot_wsrl(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "robot_wsrl.apps.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def test_runner_process_with_control_stop_status_release_by_script(
    keydir: Path, null_policy: Path, tmp_path: Path
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    command = ["runner", "--policy", str(null_policy), "--driver", "null", "--steps", "100000000"]
    command += ["--allow-unsigned"]  # a test policy, unsigned: --keys here is for the control channel
    control = ["--control", endpoint, "--keys", str(keydir), "--name", "robot1", "--state", str(tmp_path)]
    with open(tmp_path / "runner.log", "wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "robot_wsrl.apps.cli", *command, *control],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    target = ["--runner", f"robot1={endpoint}", "--keys", str(keydir), "--timeout", "5"]
    try:
        assert wait_for(lambda: _robot_wsrl("status", *target).returncode == 0, 2 * WAIT_S)
        stopped = _robot_wsrl("stop", *target)
        assert stopped.returncode == 0, stopped.stderr
        status = _robot_wsrl("status", *target, "--json")
        assert status.returncode == 1 and json.loads(status.stdout)["robot1"]["state"] == "estopped"
        assert _robot_wsrl("release", *target, "--yes").returncode == 0
        assert _robot_wsrl("status", *target).returncode == 0
    finally:
        runner.send_signal(signal.SIGINT)
        out, _ = runner.communicate(timeout=WAIT_S)
    assert runner.returncode == 0 and "version 0 on null" in out
