"""ValidationWorker: validations in child processes, the reference kept as the last passed version, newer
versions superseding waiting ones (never silently), timeouts and clean shutdown; the gate benchmark's
derived candidates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import BALANCES, FALLS, FAST, write_linear_policy

from robot_wsrl.bench import gate as gate_bench
from robot_wsrl.bench.gate import noisy_weights, scaled_actions, sharper_sampling
from robot_wsrl.gate.registry import validation_state
from robot_wsrl.gate.worker import ValidationWorker
from robot_wsrl.robot.policy import OnnxPolicy

# The robot's preset nominal, nothing else: the balancing policy ties there in every episode.
FAST_GATE = [*(o for o in FAST if not o.startswith("variants")), "variants=[]", "preset=nominal"]
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
    # A restart on version 3 keeps its verdict and report (its episodes are what a candidate reuses) and
    # measures nothing again; a version whose report is gone is measured again, its stale verdict removed.
    v3 = run / "policies" / "v000003"
    report = (v3 / "validation" / "report.json").read_bytes()
    with ValidationWorker(v3, initial_version=3, overrides=FAST_GATE, allow_unsigned=True) as worker:
        assert not worker.busy and worker.wait(1) == []
    assert (v3 / "validation" / "report.json").read_bytes() == report
    (v0 / "validation" / "report.json").unlink()
    with ValidationWorker(v0, overrides=FAST_GATE, allow_unsigned=True) as worker:
        assert worker.busy and not (v0 / "validation" / "verdict.json").exists()
        assert [v.status for v in worker.wait(120)] == ["passed"]
    assert (v0 / "validation" / "report.json").is_file()


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


def test_the_gate_benchmarks_candidates_change_what_they_claim(tmp_path: Path) -> None:
    """The benchmark's derived candidates: loadable, verified policies whose outputs differ from their
    source's exactly as named (noise on the weights, a scaled mean, a shifted log-std)."""
    source = _version(tmp_path, 0, BALANCES)
    obs = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    mean, log_std = OnnxPolicy.load(source / "policy.onnx").forward(obs)
    scaled = OnnxPolicy.load(scaled_actions(source, tmp_path / "scaled", 0.5) / "policy.onnx").forward(obs)
    np.testing.assert_allclose(scaled[0], 0.5 * mean, rtol=1e-6)
    np.testing.assert_array_equal(scaled[1], log_std)
    sharper = OnnxPolicy.load(sharper_sampling(source, tmp_path / "sharp", -1.0) / "policy.onnx").forward(obs)
    np.testing.assert_array_equal(sharper[0], mean)
    np.testing.assert_allclose(sharper[1], log_std - 1.0, rtol=1e-6)
    noisy = noisy_weights(source, tmp_path / "noisy", 0.3, seed=1) / "policy.onnx"
    assert noisy_weights(source, tmp_path / "again", 0.3, seed=1).joinpath("policy.onnx").read_bytes() == (
        noisy.read_bytes()
    )  # seeded: the same candidate every time
    assert not np.allclose(OnnxPolicy.load(noisy).forward(obs)[0], mean)


def test_the_gate_benchmarks_families_name_their_fixtures(tmp_path: Path) -> None:
    """configs/bench/gate.yaml picks the families; each judges its stored and derived candidates against its
    own reference; a family that is not defined, or no trial, is refused before anything runs."""
    (family,) = gate_bench.families(gate_bench.load_config(["include=[session]", "trials=2"]))
    kinds = family.candidates(tmp_path)
    assert set(kinds["better"]) == {f"session/better_{v}" for v in ("demo0_v3", "demo1_v8", "demo4_v6")}
    assert "session/weights_noise_0.3_seed2" in kinds["worse"]
    assert all((path / "policy.onnx").is_file() for paths in kinds.values() for path in paths.values())
    reference = OnnxPolicy.load(family.reference / "policy.onnx")
    noisy = OnnxPolicy.load(kinds["worse"]["session/weights_noise_0.3_seed2"] / "policy.onnx")
    assert noisy.spec == reference.spec
    with pytest.raises(ValueError, match="no family 'sesion'"):
        gate_bench.load_config(["include=[sesion]"])
    with pytest.raises(ValueError, match="trials must be at least 1"):
        gate_bench.load_config(["trials=0"])
