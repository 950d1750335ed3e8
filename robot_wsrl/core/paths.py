"""Where the repository's own folders are (configs, shipped policies): one definition for every module."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(os.environ.get("ROBOT_WSRL_CONFIGS", REPO_ROOT / "configs"))
