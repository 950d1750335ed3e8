"""`repo_path`: the shipped defaults (policies/hopper, data/...) work from any directory; a user's own file
of the same name wins, and a path found nowhere stays the user's, so the error names what they typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot_wsrl.core.paths import REPO_ROOT, repo_path


def test_a_path_is_found_from_the_cwd_then_from_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert repo_path("policies/hopper") == REPO_ROOT / "policies" / "hopper"
    (tmp_path / "policies" / "hopper").mkdir(parents=True)  # the user's own, same name: it wins
    assert repo_path("policies/hopper") == tmp_path / "policies" / "hopper"
    assert repo_path("nowhere/at/all") == tmp_path / "nowhere" / "at" / "all"
    assert repo_path(tmp_path / "x") == tmp_path / "x"
