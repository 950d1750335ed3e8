"""`robot-wsrl runner --json` ends with one strict JSON line on stdout (with the policy step's p99 for every
policy), and the live status never corrupts it: off with --json, whole newline-ended lines where stderr is
not a terminal, redrawn in place only on a terminal."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from robot_wsrl.apps.runner import StatusLine, cli
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner

STEPS = 40


def test_json_is_the_one_last_line_of_stdout(null_policy: Path, tmp_path: Path) -> None:
    args = ["--policy", str(null_policy), "--driver", "null", "--steps", str(STEPS), "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", "runner", *args, "--state", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and proc.stdout.endswith("\n"), proc.stdout
    summary = json.loads(lines[-1], parse_constant=pytest.fail)  # strict: no NaN or Infinity
    assert summary["policy"] == str(null_policy) and summary["driver"] == "null"
    assert summary["state"] == "idle" and summary["steps"] == STEPS and summary["episodes_done"] == 0
    assert summary["policy_step_p50_us"] > 0
    assert summary["policy_step_p99_us"] >= summary["policy_step_p50_us"]
    assert " v0 | ep " not in proc.stderr  # no live status with --json


def test_without_json_the_status_lines_are_whole_lines_off_a_terminal(
    null_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--policy", str(null_policy), "--driver", "null", "--steps", str(STEPS)]
    assert cli([*args, "--state", str(tmp_path / "state")]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and err.endswith("\n")
    assert err.splitlines()[-1].startswith("idle ")  # the final status, ended
    assert "policy_step_p99_us" in out and f"steps                {STEPS}" in out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_status_is_redrawn_and_the_last_one_ended(null_policy: Path) -> None:
    driver = NullDriver(3, 1, control_period_s=0.01)
    runner = Runner(driver, OnnxPolicy.load(null_policy), realtime=False)
    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        line = StatusLine(stream)
        line.show(runner.status())
        line.show(runner.status())  # a log gets a line every LOG_STATUS_PERIOD_S only
        line.end(runner.run(max_steps=3))
    assert terminal.getvalue().count("\r") == 3 and terminal.getvalue().endswith("\x1b[K\n")
    assert "\n" not in terminal.getvalue()[:-1]
    logged = log.getvalue()
    assert "\r" not in logged and len(logged.splitlines()) == 2 and logged.endswith("\n")
