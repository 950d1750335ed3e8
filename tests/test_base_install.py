"""The base install (no extras) is the robot image: every command's `--help` works there, a command whose
extra is missing says which one in one line, and the null-driver runner runs.

The fresh venv is made offline: the project is built into a wheel and installed without dependencies, and
the base dependencies (the project's requirements without extras, and theirs) are linked in from the test
venv's site-packages. Nothing else is there: no system site-packages, so no torch, onnx, hydra or textual.
The contract the command apps follow is in robot_wsrl/apps/cli.py: parse first, import the extra's packages
after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from robot_wsrl.apps.cli import COMMANDS, EXTRAS

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
POLICY = str(ROOT / "policies" / "hopper" / "policy.onnx")
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

FIND_PACKAGES = "import importlib.util, sys; print([n for n in sys.argv[1:] if importlib.util.find_spec(n)])"
IMPORT_APPS = """
import importlib, json, sys
modules, extras = json.loads(sys.argv[1])
brought = {}  # module -> the extras' packages its import brought in (each blamed on the first one only)
for name in modules:
    before = set(sys.modules)
    importlib.import_module(name)
    new = sorted(top for top in extras if top in sys.modules and top not in before)
    if new:
        brought[name] = new
print(json.dumps(brought))
"""


def test_command_modules_import_none_of_the_extras() -> None:
    """The dispatcher and every command's module: importing them needs no extra (then `--help` needs none)."""
    commands = sorted({f"robot_wsrl.{module.partition(':')[0]}" for module, _ in COMMANDS.values()})
    modules = ["robot_wsrl.apps.cli", *commands]
    ran = subprocess.run(
        [sys.executable, "-c", IMPORT_APPS, json.dumps([modules, sorted(EXTRAS)])],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {}


def _base_distributions() -> set[str]:
    """pyproject.toml's dependencies (no extras) and all of theirs, as installed in this venv."""
    seen: set[str] = set()
    todo: list[str | None] = [None]  # None: the project
    while todo:
        dist = todo.pop()
        for line in PROJECT["dependencies"] if dist is None else metadata.requires(dist) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def _link_distribution(name: str, site: Path) -> None:
    """Link a distribution's top-level files and folders (its package, its .dist-info) into `site`."""
    dist = metadata.distribution(name)
    tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops - {"__pycache__"}:
        source = Path(dist.locate_file(top))
        if source.exists() and not (site / top).exists():
            (site / top).symlink_to(source)


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("base-install")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "robot_wsrl", source / "robot_wsrl", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    wheels = work / "wheels"
    build = [*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", wheels, source]
    subprocess.run(build, check=True, timeout=300)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env=CLEAN_ENV,
        ).stdout.strip()
    )
    assert site != Path(sysconfig.get_path("purelib"))
    for name in _base_distributions():
        _link_distribution(name, site)
    (wheel,) = wheels.glob("robot_wsrl-*.whl")
    install = [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel]
    subprocess.run(install, check=True, timeout=300)
    # Every base requirement is met, and no extra's package can be imported.
    subprocess.run([*pip, "--python", python, "check"], check=True, timeout=120)
    present = subprocess.run(
        [python, "-c", FIND_PACKAGES, *sorted(EXTRAS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=CLEAN_ENV,
    )
    assert present.stdout.strip() == "[]"
    return venv


def _robot_wsrl(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [venv / "bin" / "robot-wsrl", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=CLEAN_ENV)


def _listed_commands(usage: str) -> list[str]:
    lines = usage.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [line.split()[0] for line in lines]


@pytest.mark.slow
def test_every_commands_help_works_on_a_base_install(base_venv: Path, tmp_path: Path) -> None:
    listed = _robot_wsrl(base_venv, "--help", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    commands = _listed_commands(listed.stdout)
    assert sorted(commands) == sorted(COMMANDS)
    failed = []
    for name in commands:
        ran = _robot_wsrl(base_venv, name, "--help", cwd=tmp_path)
        if ran.returncode != 0 or f"usage: robot-wsrl {name}" not in ran.stdout:
            failed.append(f"{name}: exit {ran.returncode}: {ran.stderr.strip()[-300:]}")
    assert not failed, "\n".join(failed)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["pretrain"], "learner"),
        (["validate", POLICY], "learner"),
        (["console"], "console"),
        (["runner", "--driver", "gym:Hopper-v5", "--policy", POLICY, "--steps", "5", "--state", "s"], "sim"),
    ],
    ids=["pretrain", "validate", "console", "runner-gym"],
)
def test_a_command_without_its_extra_names_it_in_one_line(
    base_venv: Path, tmp_path: Path, argv: list[str], extra: str
) -> None:
    ran = _robot_wsrl(base_venv, *argv, cwd=tmp_path)
    errors = [line for line in ran.stderr.splitlines() if line.startswith(f"robot-wsrl {argv[0]}:")]
    assert ran.returncode == 2, ran.stderr
    assert len(errors) == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert errors[0].endswith(f"pip install 'robot-wsrl[{extra}]'"), ran.stderr


@pytest.mark.slow
def test_the_null_driver_runner_runs_on_a_base_install(base_venv: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = ["--driver", "null", "--policy", POLICY, "--steps", "50", "--no-realtime", "--state", str(state)]
    ran = _robot_wsrl(base_venv, "runner", *args, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"^\s*steps\s+50$", ran.stdout, re.MULTILINE), ran.stdout
    assert os.listdir(tmp_path) == ["state"]  # the e-stop latch's record, nothing beside it
