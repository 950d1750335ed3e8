"""Bad input to the robot-side and operator commands, as a new user types it: exit 2 with one line that
names the problem and the fix; `--debug` (an option of every argparse command) shows the traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from robot_wsrl.apps import console, keys, link_runner, rollback, runner
from robot_wsrl.apps.errors import DEBUG_ENV
from robot_wsrl.apps.operator import status_cli, stop_cli
from robot_wsrl.core.artifacts import POLICY_ONNX, POLICY_SIDECAR
from robot_wsrl.core.paths import REPO_ROOT
from robot_wsrl.robot.control import close_latch, open_latch
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError
from robot_wsrl.robot.safety import EStopCause
from robot_wsrl.wire.endpoints import EndpointsError, endpoint_problem, load_endpoints
from robot_wsrl.wire.keys import KeyFileError

Command = Callable[[list[str]], int]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without ROBOT_WSRL_DEBUG, and a --debug it parses is undone after it."""
    monkeypatch.setenv(DEBUG_ENV, "")


def _robot_wsrl(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUJOCO_GL": "disable"}
    env.pop(DEBUG_ENV, None)
    command = [sys.executable, "-m", "robot_wsrl.apps.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env)


def _one_line(stderr: str, *words: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _usage_error(command: Command, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line an argparse usage error prints (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        command(argv)
    assert exited.value.code == 2
    return _one_line(capsys.readouterr().err)


def _runner_argv(policy: Path, *extra: str) -> list[str]:
    return ["--policy", str(policy), "--driver", "null", "--steps", "3", *extra]


# ----- --debug, one mechanism for every command -----


@pytest.mark.parametrize(
    ("command", "argv", "error"),
    [
        (keys.cli, ["list", "--dir", "/nonexistent/keys"], KeyFileError),
        (status_cli, ["--session", "/nonexistent/session"], EndpointsError),
        (console.cli, ["--session", "/nonexistent/session"], EndpointsError),
        (rollback.cli, ["--session", "/nonexistent/session"], EndpointsError),
    ],
)
def test_debug_is_an_option_and_shows_the_traceback(
    command: Command, argv: list[str], error: type[Exception], capsys: pytest.CaptureFixture[str]
) -> None:
    assert command(argv) == 2
    _one_line(capsys.readouterr().err, "/nonexistent/")
    assert command([*argv, "--debug"]) == 2  # the same exit code: a user's mistake, with its traceback
    assert os.environ[DEBUG_ENV] == "1"  # what ROBOT_WSRL_DEBUG=1 does, children included
    err = capsys.readouterr().err
    assert "Traceback" in err and error.__name__ in err and "/nonexistent/" in err.rstrip().splitlines()[-1]


def test_keys_takes_debug_before_or_after_its_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert keys.cli(["--debug", "list", "--dir", "/nonexistent/keys"]) == 2
    assert "KeyFileError" in capsys.readouterr().err


def test_stop_under_debug_still_says_nothing_was_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    assert stop_cli(["--session", "/nonexistent/session", "--debug"]) != 0
    err = capsys.readouterr().err
    assert "NOTHING STOPPED" in err and "EndpointsError" in err


@pytest.mark.parametrize("prog", ["runner", "link-runner", "rollback", "keys", "status", "collect", "export"])
def test_every_argparse_command_lists_debug(prog: str) -> None:
    result = _robot_wsrl(prog, "--help")
    assert result.returncode == 0 and "--debug" in result.stdout, result.stderr


def test_runner_debug_works_like_the_environment_variable(tmp_path: Path) -> None:
    argv = _runner_argv(tmp_path / "nope", "--state", str(tmp_path / "state"))
    _one_line(_robot_wsrl("runner", *argv).stderr, "robot-wsrl runner: ", "nope")
    debug = _robot_wsrl("runner", *argv, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "PolicyError" in debug.stderr


# ----- endpoints: checked where they are parsed -----


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://*:0", "tcp://*:*", "tcp://[::1]:5", "ipc:///tmp/x"],
)
def test_well_formed_endpoints_pass(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("tcp://localhost", "has no port"),
        ("tcp://[::1]", "has no port"),
        ("foo", "has no transport"),
        ("tcp://*:99999", "port '99999' is not 0-65535"),
        ("tcp://:5", "has no host"),
        ("udp://h:5", "unsupported transport 'udp'"),
        ("ipc://", "has no path"),
    ],
)
def test_malformed_endpoints_say_what_is_expected(endpoint: str, problem: str) -> None:
    line = endpoint_problem(endpoint)
    assert line is not None and problem in line and "tcp://HOST:PORT" in line


def test_zeromq_alone_says_only_invalid_argument() -> None:
    """Why the check is ours: ZeroMQ refuses these with "Invalid argument" and no word of what it wants."""
    ctx = zmq.Context()
    try:
        for endpoint in ("tcp://localhost", "foo"):
            assert endpoint_problem(endpoint) is not None
            with pytest.raises(zmq.ZMQError, match="Invalid argument"):
                ctx.socket(zmq.DEALER).connect(endpoint)
    finally:
        ctx.destroy(linger=0)


def test_runner_and_link_runner_refuse_malformed_endpoints(
    null_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    control = _usage_error(runner.cli, _runner_argv(null_policy, "--control", "tcp://localhost"), capsys)
    assert "argument --control: endpoint 'tcp://localhost' has no port" in control
    assert "tcp://HOST:PORT" in control
    bind = _usage_error(runner.cli, _runner_argv(null_policy, "--control", "tcp://*:99999"), capsys)
    assert "port '99999' is not 0-65535" in bind
    emulated = ["--policy", str(null_policy), "--driver", "emulated:tcp://localhost", "--steps", "3"]
    assert "argument --driver: emulated:ENDPOINT: " in _usage_error(runner.cli, emulated, capsys)
    link = ["--learner", "foo", "--keys", str(tmp_path), "--name", "r1", "--driver", "null", "--steps", "3"]
    line = _usage_error(link_runner.cli, link, capsys)
    assert "argument --learner: endpoint 'foo' has no transport" in line


def test_the_null_driver_needs_steps_not_episodes_alone(
    null_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--policy", str(null_policy), "--driver", "null", "--episodes", "1"]  # it has no episodes to end
    assert "the null driver never ends an episode: give --steps" in _usage_error(runner.cli, argv, capsys)


@pytest.mark.parametrize(
    ("codec", "message"),
    [
        ("top", "give CAMERA=CODEC"),
        ("top=gif", "unknown frame codec 'gif'"),
        ("top=jpeg:x", "must be an integer"),
    ],
)
def test_link_runner_refuses_a_bad_camera_codec(
    codec: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--learner", "tcp://127.0.0.1:5555", "--keys", str(tmp_path), "--name", "r1", "--driver", "null"]
    line = _usage_error(link_runner.cli, [*argv, "--steps", "3", "--codec", codec], capsys)
    assert "argument --codec: " in line and message in line
    assert link_runner.parser().parse_args([*argv, "--steps", "3", "--codec", "top=jpeg:90"]).codec == [
        ("top", "jpeg:90")
    ]


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_link_runner_says_its_key_folder_is_missing_and_how_keys_are_made(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said only that NAME.key_secret was not found, as if the folder were there, before any setup."""
    keydir = tmp_path / "keys"
    if kind == "file":
        keydir.write_text("")
    if kind == "empty":
        keydir.mkdir()
    argv = ["--learner", "tcp://127.0.0.1:5555", "--keys", str(keydir), "--name", "r1", "--driver", "null"]
    line = _usage_error(link_runner.cli, [*argv, "--steps", "3", "--state", str(tmp_path / "state")], capsys)
    what = {"missing": "no such folder", "file": "is a file, not a folder", "empty": "holds no r1.key_secret"}
    what = what[kind]
    assert f"--keys {keydir}: {what}: " in line
    assert f"robot-wsrl keys new r1 --dir {keydir} --role runner" in line and "learner.sign.pub" in line
    assert not (tmp_path / "state").exists()  # refused before the latch or anything else was set up


def test_operator_tools_refuse_malformed_endpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status_cli(["--learner", "tcp://localhost", "--keys", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "robot-wsrl status: --learner: endpoint 'tcp://localhost' has no port")
    assert status_cli(["--runner", "r1=tcp://*:99999", "--plain"]) == 2
    _one_line(capsys.readouterr().err, "--runner: endpoint 'tcp://*:99999': port '99999'")
    (tmp_path / "endpoints.json").write_text(json.dumps({"runners": {"r1": "tcp://127.0.0.1"}}))
    with pytest.raises(EndpointsError, match=r"runners\.r1: endpoint 'tcp://127.0.0.1' has no port"):
        load_endpoints(tmp_path)


# ----- the policy: a folder, a sidecar that does not match -----


def test_runner_takes_a_policy_folder(null_policy: Path, tmp_path: Path) -> None:
    folder = null_policy.parent
    loaded, direct = OnnxPolicy.load(folder), OnnxPolicy.load(null_policy)
    assert loaded.path == null_policy and loaded.sha256 == direct.sha256
    result = _robot_wsrl("runner", *_runner_argv(folder, "--state", str(tmp_path / "state"), "--no-realtime"))
    assert result.returncode == 0, result.stderr
    assert f"policy {folder} version 0 on null" in result.stdout


def test_a_folder_without_a_policy_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=rf"{tmp_path / POLICY_ONNX}: cannot read policy: no such file"):
        OnnxPolicy.load(tmp_path)


def test_a_sidecar_that_does_not_match_names_the_files_and_the_fix(null_policy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    shutil.copytree(null_policy.parent, folder)
    sidecar = folder / POLICY_SIDECAR
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": "0" * 64}))
    result = _robot_wsrl("runner", *_runner_argv(folder, "--state", str(tmp_path / "state")))
    assert result.returncode == 2
    line = _one_line(
        result.stderr, f"{folder / POLICY_ONNX}: sha256 mismatch", f"sidecar {sidecar.name} says"
    )
    assert f"robot-wsrl export CHECKPOINT --out {folder}" in line


# ----- --rt-priority -----


@pytest.mark.parametrize("priority", ["0", "100", "high"])
def test_rt_priority_out_of_range_is_refused_when_parsed(
    null_policy: Path, priority: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _usage_error(runner.cli, _runner_argv(null_policy, "--rt-priority", priority), capsys)
    assert f"argument --rt-priority: must be a SCHED_FIFO priority 1-99, got {priority!r}" in line


def test_rt_priority_without_the_realtime_loop_is_refused(
    null_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _runner_argv(null_policy, "--rt-priority", "10", "--no-realtime")
    assert "drop --no-realtime or --rt-priority" in _usage_error(runner.cli, argv, capsys)
    link = ["--learner", "tcp://127.0.0.1:1", "--keys", str(tmp_path), "--name", "r1", "--driver", "null"]
    link += ["--steps", "3", "--rt-priority", "10", "--no-realtime"]
    assert "drop --no-realtime or --rt-priority" in _usage_error(link_runner.cli, link, capsys)


# ----- the e-stop latch at start-up -----


def test_a_clear_latch_is_no_warning_and_a_set_one_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="robot_wsrl.robot.control"):
        latch = open_latch(tmp_path)
        latch.trigger(EStopCause.COMMAND, "test")
        close_latch(latch)
        close_latch(open_latch(tmp_path))
    records = [r for r in caplog.records if "e-stop latch recorded" in r.getMessage()]
    assert [(r.levelno, r.getMessage().endswith("(clear)")) for r in records] == [
        (logging.INFO, True),
        (logging.WARNING, False),
    ]
    assert "(LATCHED)" in records[1].getMessage()


# ----- the operator's tools: a session folder that is not there, keys that are missing -----


@pytest.mark.parametrize(
    ("prog", "command"),
    [("console", console.cli), ("status", status_cli), ("stop", stop_cli), ("rollback", rollback.cli)],
)
def test_a_missing_session_or_keys_is_one_line(
    prog: str, command: Command, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert command(["--session", str(tmp_path / "nope")]) == 2
    first = capsys.readouterr().err.strip().splitlines()[0]  # `stop` adds: NOTHING STOPPED
    assert first == f"robot-wsrl {prog}: {tmp_path / 'nope'}: no such session folder " + (
        "(a session's --out, holding its endpoints.json)"
    )
    assert command(["--session", str(tmp_path)]) == 2
    assert "not a session folder" in capsys.readouterr().err
    (tmp_path / "endpoints.json").write_text(
        json.dumps({"runners": {"r1": "tcp://127.0.0.1:5"}, "keys": "k"})
    )
    assert command(["--session", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"robot-wsrl {prog}: {tmp_path / 'k' / 'console.key_secret'}: " in err and "Traceback" not in err
