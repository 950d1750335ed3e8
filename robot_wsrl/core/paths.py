"""Where the repository's own folders are (configs, shipped policies): one definition for every module."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(os.environ.get("ROBOT_WSRL_CONFIGS", REPO_ROOT / "configs"))


def repo_path(path: str | os.PathLike[str]) -> Path:
    """A path a user gave, found from the working directory first, then from the repository root: the
    shipped `policies/hopper` and `data/...` defaults work from any directory, a user's own file wins."""
    given = Path(path)
    if given.is_absolute() or given.exists() or not (REPO_ROOT / given).exists():
        return given.resolve()
    return (REPO_ROOT / given).resolve()
