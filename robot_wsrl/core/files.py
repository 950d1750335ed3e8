"""File writes that a crash cannot leave half done (robot side: no torch)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# The process's umask, read once at import (reading it means setting it, which is racy once threads run).
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers see the old file or the new one. The
    file gets the permissions `open` would give it (mkstemp's are 0600): a policy exported here must be
    readable by a runner in a container under another uid."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
