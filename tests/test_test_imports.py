"""Test modules share code only through helpers.py (plain functions, classes, constants) and conftest.py
(pytest fixtures): a test module that imports another one couples the two files and makes pytest collect
the imported module's tests and fixtures where they do not belong."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> list[str]:
    """The test modules (test_*, conftest) that `source` imports, wherever the import statement is."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0].startswith("test_") or n.split(".")[0] == "conftest"]
    return found


def test_the_check_finds_imports_of_test_modules_anywhere() -> None:
    source = "import os\nfrom helpers import x\ndef f():\n    from test_a import b\n    import conftest\n"
    assert imported_test_modules(source) == ["test_a", "conftest"]


def test_no_test_module_imports_another_test_module() -> None:
    offenders = {
        str(path.relative_to(TESTS)): imported
        for path in sorted(TESTS.rglob("*.py"))
        if (imported := imported_test_modules(path.read_text()))
    }
    assert offenders == {}, "share through helpers.py or conftest.py instead"
