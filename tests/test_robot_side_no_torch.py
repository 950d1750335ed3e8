"""The robot side never imports torch (DESIGN §3), checked at run time as well as by import-linter.

import-linter's contract (pyproject.toml) reads import statements; this test imports every module of the
contract's packages in a fresh interpreter, so an import by name (importlib, a driver picked by a string)
cannot bring the learner's packages in either. Packages and forbidden names come from the contract itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib, json, pkgutil, sys
packages, forbidden = json.loads(sys.argv[1])
modules = []
for package in packages:
    path = importlib.import_module(package).__path__
    modules += [package] + [m.name for m in pkgutil.walk_packages(path, prefix=package + ".")]
for name in modules:
    importlib.import_module(name)
    leaked = sorted(top for top in forbidden if top in sys.modules)
    if leaked:
        sys.exit(f"importing {name} imported {leaked}")
print(json.dumps(modules))
"""


def _robot_side_contract() -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [
        c for c in contracts if c["type"] == "forbidden" and "robot_wsrl.robot" in c["source_modules"]
    ]
    return contract


def test_robot_side_modules_do_not_import_the_learners_packages() -> None:
    contract = _robot_side_contract()
    packages, forbidden = contract["source_modules"], contract["forbidden_modules"]
    assert {"robot_wsrl.robot", "robot_wsrl.wire", "robot_wsrl.core", "robot_wsrl.sim"} <= set(packages)
    assert "torch" in forbidden
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([packages, forbidden])],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout)
    # The walk reached the leaves: every driver and the runner, not only the packages themselves.
    assert {"robot_wsrl.robot.runner", "robot_wsrl.robot.drivers.null", "robot_wsrl.wire.protocol"} <= set(
        imported
    )
