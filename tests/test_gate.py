"""ValidationWorker: validations in child processes, the reference kept as the last passed version, newer
versions superseding waiting ones (never silently), timeouts and clean shutdown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_validate import BALANCES, FALLS, FAST, write_linear_policy

from robot_wsrl.gate.registry import validation_state
from robot_wsrl.gate.worker import ValidationWorker

FAST_GATE = [*(o for o in FAST if not o.startswith("variants")), "variants=[nominal]"]
# Enough episodes to keep a validation busy for minutes: for the timeout and shutdown tests.
SLOW = [*FAST_GATE, "episodes=100000"]


def _version(run: Path, version: int, weights: list[float]) -> Path:
    directory = run / "policies" / f"v{version:06d}"
    write_linear_policy(directory, weights, version=version, parent=version - 1 if version else None)
    return directory


def _children() -> set[int]:
    """Live child processes of this test process (zombies are not children that run)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


def test_versions_are_gated_against_the_last_passed_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    v0 = _version(run, 0, BALANCES)
    with ValidationWorker(v0, overrides=FAST_GATE, allow_unsigned=True, timeout_s=120) as worker:
        worker.submit(1, _version(run, 1, BALANCES))
        worker.submit(2, _version(run, 2, FALLS))  # arrives while 1 waits: 1 is superseded, 2 validated
        first = worker.wait(120)
        assert [(v.version, v.status) for v in first] == [(1, "superseded"), (0, "passed"), (2, "failed")]
        superseded, initial, failed = first
        assert "superseded by version 2" in superseded.reasons[0] and superseded.report is None
        assert "passes by definition" in initial.reasons[0] and initial.reference_version is None
        assert (
            failed.reference_version == 0 and failed.report == run / "policies/v000002/validation/report.json"
        )
        assert any(r.startswith("vs_reference[nominal]") for r in failed.reasons)
        assert worker.reference == (0, v0)  # a failed version never becomes the reference
        worker.submit(3, _version(run, 3, BALANCES))
        (passed,) = worker.wait(120)
        assert (passed.version, passed.status, passed.reference_version, passed.reasons) == (
            3,
            "passed",
            0,
            [],
        )
        assert worker.reference == (3, run / "policies" / "v000003")
    # Every verdict is on disk beside its version, where the registry reads it.
    states = {v: validation_state(run / "policies" / f"v{v:06d}", _sha(run, v)) for v in range(4)}
    assert states == {0: "passed", 1: "superseded", 2: "failed", 3: "passed"}
    assert "vs_reference" in (run / "policies/v000002/validation/validate.log").read_text()


def _sha(run: Path, version: int) -> str:
    return json.loads((run / "policies" / f"v{version:06d}" / "policy.json").read_text())["sha256"]


def test_a_hung_validation_times_out_and_close_kills_the_running_one(tmp_path: Path) -> None:
    before = _children()
    worker = ValidationWorker(
        _version(tmp_path, 0, BALANCES), overrides=SLOW, allow_unsigned=True, timeout_s=0.5
    )
    try:
        assert _children() - before  # validating version 0 in a child process
        (verdict,) = worker.wait(30)
        assert verdict.status == "error" and "timed out" in verdict.reasons[0]
        assert _children() == before and not worker.busy
        worker.timeout_s = 600
        worker.submit(1, _version(tmp_path, 1, BALANCES))
        assert _children() - before and worker.busy
    finally:
        worker.close()
    assert _children() == before and not worker.busy and worker.poll() == []


def test_bad_submissions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no policy\.onnx"):
        ValidationWorker(tmp_path / "nowhere")
    with ValidationWorker(_version(tmp_path, 0, BALANCES), overrides=SLOW, allow_unsigned=True) as worker:
        with pytest.raises(ValueError, match="versions must increase"):
            worker.submit(0, tmp_path / "policies" / "v000000")
        with pytest.raises(ValueError, match=r"no policy\.onnx"):
            worker.submit(1, tmp_path / "empty")


def test_a_validation_that_cannot_run_is_an_error_verdict(tmp_path: Path) -> None:
    with ValidationWorker(_version(tmp_path, 0, BALANCES), overrides=FAST_GATE, timeout_s=60) as worker:
        (verdict,) = worker.wait(60)  # unsigned, and not allowed: validate refuses with exit 2
    assert verdict.status == "error" and "exited 2" in verdict.reasons[0] and "unsigned" in verdict.reasons[0]
