"""Bad input, as a new user types it: exit 2, a line or three on stderr naming the problem and the fix, no
traceback; `--debug` (or ROBOT_WSRL_DEBUG=1) shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robot_wsrl.apps.errors import DEBUG_ENV
from robot_wsrl.core.paths import REPO_ROOT


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**base, "MUJOCO_GL": "disable", **env},
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str, max_lines: int = 1) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert 1 <= len(lines) <= max_lines and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["finetune", "agent.utd=abc"], ["robot-wsrl finetune: ", "agent.utd", "'abc'", "Integer"]),
        (
            ["finetune", "env=hoper"],
            ["env=hoper", "available: cartpole_swingup, halfcheetah, hopper", "did you mean env=hopper?"],
        ),
        (["finetune", "agent.uttd=4"], ["agent.uttd: no such key", "did you mean agent.utd?"]),
        (["finetune", "agent.utd"], ["agent.utd", "missing EQUAL"]),
        (["learner", "service.keyz=keys"], ["robot-wsrl learner: ", "did you mean service.keys?"]),
        (["learner", "run.checkpoint=x.pt"], ["service.keys=DIR is required"]),
        (["learner", "--bind", "tcp://127.0.0.1:0"], ["--bind is now service.bind=VALUE"]),
        (
            ["session", "--preset", "marsrover"],
            ["marsrover", "describes gym:Hopper-v5; its presets: nominal, real, real_mild"],
        ),
    ],
)
def test_bad_overrides_and_options_are_one_line(argv: list[str], words: list[str]) -> None:
    _one_line_error(_run(argv), *words)


def test_missing_files_are_one_line(tmp_path: Path) -> None:
    checkpoint = _run(["finetune", "run.checkpoint=/nope.pt", f"out_dir={tmp_path / 'f'}"])
    _one_line_error(checkpoint, "robot-wsrl finetune: /nope.pt: checkpoint not found")
    dataset = _run(["pretrain", "run.dataset=/nope.npz", f"out_dir={tmp_path / 'p'}"])
    _one_line_error(dataset, "robot-wsrl pretrain: /nope.npz: file not found")


def test_a_checkpoint_for_another_robot_is_refused(tmp_path: Path, learner_keydir: Path) -> None:
    """The learner serves the env it is told to: a Hopper checkpoint cannot be fine-tuned as a Walker."""
    argv = ["learner", f"service.keys={learner_keydir}", "service.bind=tcp://127.0.0.1:0", "env=walker2d"]
    result = _run([*argv, "run.checkpoint=policies/hopper/checkpoint.pt", f"out_dir={tmp_path / 'l'}"])
    _one_line_error(result, "made for Hopper-v5", "env=walker2d drives Walker2d-v5")
    no_dataset = _run(["pretrain", f"out_dir={tmp_path / 'p'}"])
    _one_line_error(no_dataset, "run.dataset=null: pretrain needs a dataset")


def test_session_names_the_child_that_failed_and_its_log(tmp_path: Path) -> None:
    out = tmp_path / "session"
    result = _run(["session", "agent.utd=abc", "--out", str(out)])
    log = out / "logs" / "learner.log"
    first = _one_line_error(result, "agent.utd", "'abc'", max_lines=3)
    assert first == f"robot-wsrl session: learner exited with code 2 before it was ready; its log: {log}"
    assert "robot-wsrl learner: agent.utd" in log.read_text()  # the line shown is the learner's own


@pytest.mark.parametrize("debug", [["--debug"], []])
def test_debug_shows_the_traceback(debug: list[str]) -> None:
    result = _run(["finetune", "agent.utd=abc", *debug], **({} if debug else {DEBUG_ENV: "1"}))
    assert result.returncode == 2  # a user's mistake either way; the traceback is for whoever reports it
    assert "Traceback" in result.stderr and "ValidationError" in result.stderr
