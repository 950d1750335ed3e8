"""The `robot-wsrl` entry point: unknown commands and missing extras are one-line errors, exit 2."""

from __future__ import annotations

import subprocess
import sys

BLOCK_AND_RUN = (
    "import sys; sys.modules[{blocked!r}] = None\n"  # import of it now raises ModuleNotFoundError
    "from robot_wsrl.apps.cli import main; sys.exit(main({argv!r}))"
)


def _run(blocked: str, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    code = BLOCK_AND_RUN.format(blocked=blocked, argv=argv)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**env, "PATH": ""}
    )


def test_missing_extra_names_the_extra_to_install() -> None:
    result = _run("torch", ["finetune"])  # `--help` needs no torch: running does
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "robot-wsrl finetune: needs the 'learner' extra (torch is not installed): "
        "pip install 'robot-wsrl[learner]'"
    ]


def test_debug_shows_the_traceback() -> None:
    result = _run("torch", ["finetune"], ROBOT_WSRL_DEBUG="1")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_unknown_command_suggests_the_close_one(capsys) -> None:
    from robot_wsrl.apps.cli import main

    assert main(["stat"]) == 2
    assert "did you mean 'status'?" in capsys.readouterr().err
