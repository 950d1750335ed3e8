"""Atomic file writes: readers see the old file or the new one, with the permissions `open` would give."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from robot_wsrl.core.files import write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


def test_written_files_are_readable_by_others_under_the_usual_umask(tmp_path: Path) -> None:
    """A policy exported on the host must be readable by a runner container running as another uid."""
    script = "import os, sys; os.umask(0o022); from pathlib import Path; from robot_wsrl.core.files import "
    script += "write_atomic; write_atomic(Path(sys.argv[1]), b'x')"
    path = tmp_path / "policy.onnx"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
