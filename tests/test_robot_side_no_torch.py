"""The robot side never imports torch (DESIGN §3): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

ROBOT_MODULES = [
    "robot_wsrl.apps.cli",
    "robot_wsrl.core.spec",
    "robot_wsrl.core.driver",
    "robot_wsrl.robot.policy",
    "robot_wsrl.robot.safety",
    "robot_wsrl.robot.runner",
    "robot_wsrl.wire.protocol",
    "robot_wsrl.wire.signing",
    "robot_wsrl.wire.keys",
    "robot_wsrl.wire.transport",
    "robot_wsrl.wire.spool",
    "robot_wsrl.robot.link",
    "robot_wsrl.learn.ingest_log",
    "robot_wsrl.gate.validate",
    "robot_wsrl.gate.registry",
    "robot_wsrl.gate.worker",
    "robot_wsrl.core.lifetime",
    "robot_wsrl.core.durable",
    "robot_wsrl.robot.control",
    "robot_wsrl.wire.endpoints",
    "robot_wsrl.console.client",
    "robot_wsrl.console.operator",
]

SCRIPT = f"""
import importlib, pkgutil, sys
import robot_wsrl.robot.drivers as drivers
modules = {ROBOT_MODULES!r} + sorted(drivers.__name__ + "." + m.name for m in pkgutil.walk_packages(drivers.__path__))
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
