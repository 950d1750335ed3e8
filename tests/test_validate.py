"""`robot-wsrl validate`: the sim-first gate on InvertedPendulum with hand-made linear ONNX policies (no
torch): paired episodes in the onboard Runner, absolute and reference checks, the report and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from robot_wsrl.core.driver import DriverFault, StepResult
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.gate.validate import (
    Setup,
    TimedPolicy,
    ValidateConfig,
    cli,
    load_config,
    paired_lower_bound,
    run_episode,
)
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import PolicyMetadata, sha256_bytes

PENDULUM = EnvSpec("InvertedPendulum-v5", 4, 1, (-3.0,), (3.0,), 0.04)
BALANCES = [0.3, 3.0, 0.3, 0.5]  # action = 3 tanh(obs . w): a PD controller that holds the pole up
FALLS = [0.0, 0.0, 0.0, 0.0]  # no action: the pole falls in about 20 steps
# Short episodes, two variants, three paired seeds: each validation runs in well under a second.
FAST = ["env=inverted_pendulum", "episodes=3", "max_episode_steps=50", "variants=[nominal,real]"]
FAST += ["success_return.inverted_pendulum=50"]


def write_linear_policy(
    directory: Path, weights: list[float], version: int = 0, parent: int | None = None, step: int = 0
) -> Path:
    """A policy file pair as `robot-wsrl export` writes it: mean = obs @ weights, log_std = -1."""
    w = np.asarray(weights, dtype=np.float32).reshape(PENDULUM.obs_dim, 1)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "w"], ["mean"]),
            helper.make_node("MatMul", ["obs", "zero"], ["flat"]),
            helper.make_node("Add", ["flat", "minus_one"], ["log_std"]),
        ],
        "linear",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", PENDULUM.obs_dim])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1]) for n in ("mean", "log_std")],
        [
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
            helper.make_tensor("zero", TensorProto.FLOAT, w.shape, [0.0] * w.size),
            helper.make_tensor("minus_one", TensorProto.FLOAT, [], [-1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = PolicyMetadata(PENDULUM, version, parent, step, "test").to_dict()
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.onnx").write_bytes(data)
    side = {**meta, "file": "policy.onnx", "size_bytes": len(data), "sha256": sha256_bytes(data)}
    (directory / "policy.json").write_text(json.dumps(side, indent=2))
    return directory / "policy.onnx"


def _validate(policy: Path, *extra: str) -> tuple[int, dict[str, Any] | None]:
    out = policy.parent / "validation"
    code = cli([str(policy), *FAST, "--allow-unsigned", *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return code, report


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_linear_policy(tmp_path_factory.mktemp("good"), BALANCES)


def test_a_balancing_policy_passes_with_report_plot_and_progress(good: Path, capsys) -> None:
    code, report = _validate(good)
    assert code == 0 and report is not None and report["passed"] and report["reasons"] == []
    assert set(report["candidate"]["variants"]) == {"nominal", "real"}
    for result in report["candidate"]["variants"].values():
        assert result["returns"] == [50.0, 50.0, 50.0] and result["success_rate"] == 1.0
        assert result["faults"] == 0 and result["steps"] == 150
        assert [e["seed"] for e in result["episodes"]] == [1000, 1001, 1002]
        assert {e["end"] for e in result["episodes"]} == {"time limit"}
        assert 0 < result["step_latency_us"]["p50"] <= result["step_latency_us"]["p99"]
    assert (good.parent / "validation" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err
    assert err.count("validate candidate") == 6 and "episode 3/3 seed 1002" in err


def test_a_worse_candidate_fails_against_the_reference_on_paired_seeds(good: Path, tmp_path: Path) -> None:
    bad = write_linear_policy(tmp_path / "bad", FALLS, version=1, parent=0)
    code, report = _validate(bad, "--reference", str(good))
    assert code == 1 and report is not None and not report["passed"]
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert {"vs_reference[nominal]", "vs_reference[real]"} <= failed
    assert not any(name.startswith(("faults", "clipped")) for name in failed)  # falling is not a fault
    for variant, result in report["candidate"]["variants"].items():
        assert max(result["returns"]) < 40 and result["success_rate"] == 0.0
        reference = report["reference"]["variants"][variant]
        assert reference["returns"] == [50.0] * 3
        assert [e["seed"] for e in result["episodes"]] == [e["seed"] for e in reference["episodes"]]
        assert {e["end"] for e in result["episodes"]} == {"terminated"}


def test_an_equal_candidate_passes_and_reuses_the_reference_measurement(good: Path, tmp_path: Path) -> None:
    assert _validate(good)[0] == 0  # the reference's own report, with the same setup
    same = tmp_path / "v1"
    write_linear_policy(same, BALANCES, version=1, parent=0)
    code, report = _validate(same / "policy.onnx", "--reference", str(good.parent))
    assert code == 0 and report is not None
    assert report["reference"]["reused_from"] == str(good.parent / "validation" / "report.json")
    assert (
        report["candidate"]["variants"]["real"]["returns"]
        == report["reference"]["variants"]["real"]["returns"]
    )
    # A different setup measures the reference again instead of reusing a report that does not apply.
    code, report = _validate(same / "policy.onnx", "--reference", str(good.parent), "seed=7")
    assert code == 0 and report is not None and "reused_from" not in report["reference"]


def test_absolute_thresholds_fail_with_their_reasons(good: Path, tmp_path: Path) -> None:
    falls = write_linear_policy(tmp_path / "falls", FALLS)
    code, report = _validate(falls, "thresholds.min_return.nominal=40", "thresholds.min_success_rate=0.5")
    assert code == 1 and report is not None
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert failed == {"min_return[nominal]", "success_rate[nominal]", "success_rate[real]"}
    # A tight rate limit on the balancing policy: safety activity counted from the runner's envelope.
    limited = tmp_path / "limited"
    shutil.copytree(good.parent, limited, ignore=shutil.ignore_patterns("validation"))
    code, report = _validate(limited / "policy.onnx", "max_delta_per_step=0.002")
    assert code == 1 and report is not None
    nominal = report["candidate"]["variants"]["nominal"]
    assert nominal["safety"]["rate_limited"] > 0 and nominal["rate_limited_fraction"] > 0.25
    assert any(r.startswith("rate_limited[nominal]") for r in report["reasons"])


class _FaultyDriver:
    """The pendulum, whose link fails at a given step (a driver fault)."""

    def __init__(self, fail_at: int) -> None:
        self._inner = make_driver("gym:InvertedPendulum-v5", max_episode_steps=50)
        self.spec, self.fail_at, self.steps, self.safe_stops = self._inner.spec, fail_at, 0, 0

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return self._inner.reset(seed=seed)

    def step(self, action: np.ndarray) -> StepResult:
        self.steps += 1
        if self.steps == self.fail_at:
            raise DriverFault("EtherCAT link lost")
        return self._inner.step(action)

    def safe_stop(self) -> None:
        self.safe_stops += 1

    def close(self) -> None:
        self._inner.close()


def test_an_estop_ends_the_episode_at_once_and_counts_as_a_fault(good: Path) -> None:
    driver = _FaultyDriver(fail_at=5)
    setup = Setup("gym:InvertedPendulum-v5", 50, ["nominal"], 1, 0, True, None, None)
    try:
        episode = run_episode(driver, TimedPolicy.load(good), setup, seed=3)
    finally:
        driver.close()
    assert episode.steps == 4 and driver.steps == 5 and driver.safe_stops >= 1
    assert episode.end.startswith("e-stop (driver_fault)") and "EtherCAT" in episode.end
    assert episode.faults == 1 and episode.safety["estops"] == 1 and episode.success is None


def test_paired_lower_bound() -> None:
    ref = np.array([10.0, 20.0, 30.0, 40.0])
    assert paired_lower_bound(ref + 5.0, ref, 0.95, 1000) == pytest.approx(5.0)  # constant difference
    noisy = ref + np.array([-4.0, 6.0, -2.0, 4.0])  # mean +1, but one-sided 95% bound below zero
    bound = paired_lower_bound(noisy, ref, 0.95, 5000)
    assert -4.0 <= bound < 0.0
    assert paired_lower_bound(noisy, ref, 0.95, 5000) == bound  # seeded: the same verdict every time


def test_config_defaults_and_bad_values() -> None:
    cfg = load_config()
    assert isinstance(cfg, ValidateConfig) and cfg.variants == ["nominal", "real_mild", "real"]
    assert cfg.episodes >= 3 and cfg.thresholds.max_faults == 0
    with pytest.raises(ValueError, match="episodes must be positive"):
        load_config(overrides=["episodes=0"])
    with pytest.raises(ValueError, match="min_return names variants"):
        load_config(overrides=["variants=[nominal]", "thresholds.min_return.real=1"])
    with pytest.raises(ValueError, match="validate config"):
        load_config(overrides=["no_such_key=1"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["episodes=1", "--reference", "GOOD"], "needs episodes >= 3"),
        (["variants=[nominal,moon]"], "are not shift presets"),
        (["env=hopper"], "does not fit"),
        (["thresholds.max_faults=-1"], "max_faults must be >= 0"),
    ],
)
def test_bad_input_exits_2(good: Path, extra: list[str], message: str, capsys) -> None:
    extra = [str(good) if e == "GOOD" else e for e in extra]
    assert cli([str(good), *FAST, "--allow-unsigned", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robot-wsrl validate: ") and message in err


def test_unsigned_and_tampered_policies_are_refused(good: Path, tmp_path: Path, capsys) -> None:
    assert cli([str(good), *FAST]) == 2
    err = capsys.readouterr().err
    assert "unsigned" in err and "--allow-unsigned" in err
    tampered = tmp_path / "tampered"
    shutil.copytree(good.parent, tampered)
    data = bytearray((tampered / "policy.onnx").read_bytes())
    data[-1] ^= 1
    (tampered / "policy.onnx").write_bytes(bytes(data))
    assert cli([str(tampered), *FAST, "--allow-unsigned"]) == 2
    assert "TAMPERED" in capsys.readouterr().err
    assert cli([str(tmp_path / "missing"), *FAST, "--allow-unsigned"]) == 2
    assert "no policy here" in capsys.readouterr().err
