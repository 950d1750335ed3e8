"""The robot side never imports torch (DESIGN §3): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

ROBOT_MODULES = [
    "robot_wsrl.cli",
    "robot_wsrl.spec",
    "robot_wsrl.driver",
    "robot_wsrl.policy",
    "robot_wsrl.safety",
    "robot_wsrl.runner",
    "robot_wsrl.protocol",
    "robot_wsrl.signing",
    "robot_wsrl.keys",
    "robot_wsrl.transport",
    "robot_wsrl.spool",
    "robot_wsrl.link",
    "robot_wsrl.ingest_log",
    "robot_wsrl.validate",
    "robot_wsrl.registry",
    "robot_wsrl.gate",
    "robot_wsrl.lifetime",
    "robot_wsrl.durable",
    "robot_wsrl.control",
    "robot_wsrl.endpoints",
    "robot_wsrl.console.client",
    "robot_wsrl.operator",
]

SCRIPT = f"""
import importlib, pkgutil, sys
import drivers
modules = {ROBOT_MODULES!r} + sorted("drivers." + m.name for m in pkgutil.walk_packages(drivers.__path__))
for name in modules:
    importlib.import_module(name)
    if "torch" in sys.modules:
        sys.exit(f"importing {{name}} imported torch")
print(len(modules))
"""


def test_robot_side_modules_do_not_import_torch() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > len(ROBOT_MODULES)
