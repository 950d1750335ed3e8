"""`robot-wsrl validate`: the sim-first gate on InvertedPendulum with hand-made linear ONNX policies (no
torch): episodes as the robot runs them (sampled actions, the preset's latency), paired by environment seed
with independent action noise, in worker processes; the sequential test (on synthetic returns: its error
rate, early stops and budget); absolute and reference checks, the report and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import BALANCES, FALLS, FAST, PENDULUM, write_linear_policy
from omegaconf.errors import ConfigKeyError

from robot_wsrl.apps.validate import cli
from robot_wsrl.core.driver import DriverFault, StepResult
from robot_wsrl.gate.episodes import EpisodeSetup, TimedPolicy, run_episode, variant_driver
from robot_wsrl.gate.stats import SequentialTest, alpha_spending, look_schedule, t_quantile
from robot_wsrl.gate.validate import ReferenceConfig, ValidateConfig, load_config, success_check
from robot_wsrl.learn.envs import make_env
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.sim.env_config import EnvConfig
from robot_wsrl.sim.latency import ActionLatency

# The pendulum's nominal preset as the robot's (the balancing policy holds it in every episode: a steady
# verdict from three pairs), `real` as the safety net.
GATE = [*FAST, "preset=nominal"]


def _validate(policy: Path, *extra: str) -> tuple[int, dict[str, Any] | None]:
    out = policy.parent / "validation"  # beside the policy, as the learner's gate keeps its reports
    code = cli([str(policy), *GATE, "--allow-unsigned", "--out", str(out), *extra])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return code, report


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_linear_policy(tmp_path_factory.mktemp("good"), BALANCES)


def test_a_balancing_policy_passes_with_report_plot_and_progress(good: Path, capsys) -> None:
    code, report = _validate(good)
    assert code == 0 and report is not None and report["passed"] and report["reasons"] == []
    assert list(report["candidate"]["variants"]) == ["nominal", "real"]  # the robot's preset first
    for result in report["candidate"]["variants"].values():
        assert result["faults"] == 0 and result["steps"] >= sum(result["returns"]) > 0
        assert [e["seed"] for e in result["episodes"]] == [1000, 1001, 1002]
        assert {e["end"] for e in result["episodes"]} <= {"time limit", "terminated"}
        assert 0 < result["step_latency_us"]["p50"] <= result["step_latency_us"]["p99"]
    assert (good.parent / "validation" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["candidate"]["variants"]["nominal"]["returns"] == [50.0] * 3
    assert report["sequential"] is None and report["episodes_run"]["candidate"] == 6
    assert "validate candidate v0: 6 episodes on nominal, real (up to 3 each)" in capsys.readouterr().err


def test_a_worse_candidate_fails_against_the_reference_on_paired_seeds(good: Path, tmp_path: Path) -> None:
    bad = write_linear_policy(tmp_path / "bad", FALLS, version=1, parent=0)
    code, report = _validate(bad, "--reference", str(good))
    assert code == 1 and report is not None and not report["passed"]
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert "vs_reference[nominal]" in failed  # shown below the line on the robot's preset
    assert "success_vs_reference[nominal]" in failed  # 0 of 3 episodes reach success_return against 3 of 3
    assert not any(name.startswith(("faults", "clipped")) for name in failed)  # falling is not a fault
    assert report["sequential"]["nominal"]["name"] == "improve"
    assert report["sequential"]["real"]["name"] == "safety_net"
    for variant, result in report["candidate"]["variants"].items():
        assert max(result["returns"]) < 40 and result["success_rate"] == 0.0
        reference = report["reference"]["variants"][variant]
        assert [e["seed"] for e in result["episodes"]] == [e["seed"] for e in reference["episodes"]]
        assert {e["end"] for e in result["episodes"]} == {"terminated"}
    assert report["reference"]["variants"]["nominal"]["returns"] == [50.0] * 3


def test_an_equal_candidate_passes_and_reuses_the_reference_measurement(good: Path, tmp_path: Path) -> None:
    assert _validate(good)[0] == 0  # the reference's own report, with the same setup
    same = tmp_path / "v1"
    write_linear_policy(same, BALANCES, version=1, parent=0)
    code, report = _validate(same / "policy.onnx", "--reference", str(good.parent))
    assert code == 0 and report is not None  # a tie on the robot's preset, within the margin
    assert report["reference"]["episodes_reused"] == 6 and report["episodes_run"]["reference"] == 0
    # A different setup measures the reference again instead of reusing a report that does not apply.
    code, report = _validate(same / "policy.onnx", "--reference", str(good.parent), "seed=7")
    assert code == 0 and report is not None and report["reference"]["episodes_reused"] == 0
    assert report["episodes_run"]["reference"] == 6


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
    setup = EpisodeSetup("gym:InvertedPendulum-v5", 50, 0, True, None, None)
    try:
        episode = run_episode(driver, TimedPolicy.load(good), setup, index=3)
    finally:
        driver.close()
    assert episode.steps == 4 and driver.steps == 5 and driver.safe_stops >= 1
    assert episode.end.startswith("e-stop (driver_fault)") and "EtherCAT" in episode.end
    assert episode.faults == 1 and episode.safety["estops"] == 1 and episode.success is None


def test_config_defaults_and_bad_values() -> None:
    cfg = load_config()
    assert isinstance(cfg, ValidateConfig) and cfg.preset is None  # the robot's: known with its driver
    assert cfg.for_robot("gym:InvertedPendulum-v5").judged() == ["real", "nominal"]
    assert cfg.for_robot("cam:reacher@top:24x24").judged() == ["reacher_real", "nominal"]
    assert cfg.for_robot("dmc:cartpole-swingup").judged() == ["nominal"]  # no preset describes it
    assert not cfg.deterministic  # as the runner runs a policy
    assert cfg.episodes >= 3 and cfg.thresholds.max_faults == 0
    hopper = load_config(overrides=["variants=[nominal,real]"]).for_robot("gym:Hopper-v5")
    assert hopper.judged() == ["real", "nominal"]  # the robot's preset first
    assert load_config(overrides=["variants=[]", "preset=real_mild"]).judged() == ["real_mild"]
    with pytest.raises(ValueError, match="episodes must be positive"):
        load_config(overrides=["episodes=0"])
    with pytest.raises(ValueError, match="min_return names variants"):
        load_config(overrides=["variants=[nominal]", "thresholds.min_return.real_mild=1"]).for_robot("gym:a")
    with pytest.raises(ValueError, match="did you mean driver=cam:reacher@top:24x24"):
        load_config(overrides=["env.driver=cam:reacher@top:24x24"])
    with pytest.raises(ConfigKeyError, match="no_such_key"):  # apps/errors.py words it with the known keys
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
    assert cli([str(good), *GATE, "--allow-unsigned", *extra]) == 2
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


# ----- the statistics (no MuJoCo) -----


def test_t_quantile_matches_the_tables() -> None:
    table = {(0.95, 2): 2.919986, (0.975, 10): 2.228139, (0.9875, 15): 2.489880, (0.99, 63): 2.387008}
    for (p, df), value in table.items():
        assert t_quantile(p, df) == pytest.approx(value, abs=1e-5)
        assert t_quantile(1 - p, df) == pytest.approx(-value, abs=1e-5)
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-5)


def test_look_schedule_is_spread_over_the_budget() -> None:
    assert look_schedule(128, 4) == [16, 32, 64, 128]  # each look doubles the last
    assert look_schedule(40, 4) == [8, 10, 20, 40]  # none before 8 pairs
    assert look_schedule(3, 4) == [3] and look_schedule(64, 1) == [64]
    assert alpha_spending([16, 32, 64, 128], 0.05) == pytest.approx([0.00625, 0.00625, 0.0125, 0.025])


def _bimodal(rng: np.random.Generator, n: int, mean_shift: float = 0.0) -> np.ndarray:
    """Hopper-like returns: a fall early in a quarter of the episodes, a long hop otherwise."""
    fell = rng.random(n) < 0.25
    return np.where(fell, rng.normal(30.0, 10.0, n), rng.normal(400.0, 80.0, n)) + mean_shift


def _decide(rng: np.random.Generator, shift: float, margin: float = 0.0, undecided: str = "fail"):
    test = SequentialTest([16, 32, 64, 128], 0.95, margin, undecided)
    while test.decision is None:
        test.update(_bimodal(rng, test.pairs, shift), _bimodal(rng, test.pairs))
    return test


def test_equal_policies_pass_a_no_margin_test_at_most_alpha_of_the_time() -> None:
    rng = np.random.default_rng(0)
    runs = [_decide(rng, 0.0) for _ in range(3000)]
    passed = np.mean([t.decision == "pass" for t in runs])
    assert passed <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / len(runs)), passed  # alpha spent over 4 looks
    assert passed > 0.0  # the bound is not vacuous either
    assert max(t.path[-1]["pairs"] for t in runs) == 128 and all(len(t.path) <= 4 for t in runs)


def test_the_sequential_test_stops_early_when_clearly_better_or_worse() -> None:
    rng = np.random.default_rng(1)
    better = [_decide(rng, +300.0) for _ in range(200)]
    worse = [_decide(rng, -300.0) for _ in range(200)]
    assert all(t.decision == "pass" for t in better) and all(t.decision == "fail" for t in worse)
    assert np.mean([t.path[-1]["pairs"] == 16 for t in [*better, *worse]]) >= 0.9  # most at the first look
    # Undecided at the budget: the rule's verdict, after exactly the budget and never more.
    tie = SequentialTest([8, 16], 0.95, 0.0, "pass")
    same = np.full(8, 100.0)
    assert tie.update(same, same) is None and tie.pairs == 16
    assert tie.update(np.full(16, 100.0), np.full(16, 100.0)) == "pass" and tie.path[-1]["pairs"] == 16
    with pytest.raises(RuntimeError, match="decided already"):
        tie.update(same, same)


def test_the_margin_line_is_relative_to_the_reference() -> None:
    reference = np.array([100.0, 200.0, 300.0, 400.0] * 4)
    test = SequentialTest([16], 0.95, 0.05, "fail")
    assert test.update(reference * 0.97, reference) == "pass"  # 3% worse, within a 5% margin
    assert test.path[-1]["line"] == pytest.approx(-12.5) and test.path[-1]["mean_difference"] < 0
    test = SequentialTest([16], 0.95, 0.05, "fail")
    assert test.update(reference * 0.9, reference) == "fail"  # 10% worse: below the line


# ----- the episodes: as the robot runs them, paired, in parallel -----


class _Recorder:
    """A driver that records the actions it applies (for the latency wrapper)."""

    spec = PENDULUM

    def __init__(self) -> None:
        self.applied: list[float] = []

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return np.zeros(4, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> StepResult:
        self.applied.append(float(action[0]))
        return StepResult(np.zeros(4, dtype=np.float32), 0.0, False, False, np.asarray(action))

    def safe_stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_presets_action_latency_is_applied_as_the_emulated_robot_does() -> None:
    inner = _Recorder()
    lagged = ActionLatency(inner, 1)  # `real`: one control step
    lagged.reset(seed=0)
    for a in (1.0, 2.0, 3.0):
        lagged.step(np.array([a], dtype=np.float32))
    lagged.reset(seed=1)  # a new episode starts with nothing in flight
    lagged.step(np.array([4.0], dtype=np.float32))
    assert inner.applied == [0.0, 1.0, 2.0, 0.0]
    setup = EpisodeSetup("gym:InvertedPendulum-v5", 50, 0, False, None, None)
    assert isinstance(variant_driver(setup, "real"), ActionLatency)
    assert not isinstance(variant_driver(setup, "nominal"), ActionLatency)
    # fine-tuning trains on the same robot the gate judges: the learner's env lags as the preset says
    trained_on = make_env(EnvConfig(driver="gym:InvertedPendulum-v5", max_episode_steps=50, shift="real"))
    assert isinstance(trained_on, ActionLatency)
    trained_on.close()


def test_pairs_share_environment_seeds_with_independent_action_noise(good: Path, tmp_path: Path) -> None:
    same = write_linear_policy(tmp_path / "v1", BALANCES, version=1, parent=0)  # other bytes, same weights
    _, report = _validate(same, "--reference", str(good), "episodes=8")
    assert report is not None
    for variant in ("nominal", "real"):
        cand = report["candidate"]["variants"][variant]["episodes"]
        ref = report["reference"]["variants"][variant]["episodes"]
        assert [e["seed"] for e in cand] == [e["seed"] for e in ref] == list(range(1000, 1008))
        assert all(c["action_seed"] != r["action_seed"] for c, r in zip(cand, ref, strict=True))
        assert len({e["action_seed"] for e in cand}) == 8
    # On the shifted pendulum the sampled actions matter: the same weights give different returns, so a
    # pair is two episodes, not one counted twice.
    real = [report[p]["variants"]["real"]["returns"] for p in ("candidate", "reference")]
    assert real[0] != real[1]
    # An episode is a function of (setup, policy, index) only: run again, the same episode.
    setup = EpisodeSetup("gym:InvertedPendulum-v5", 50, 1000, False, None, None)
    driver = variant_driver(setup, "real")
    try:
        runs = [run_episode(driver, TimedPolicy.load(same), setup, index=i) for i in (5, 2, 5)]
    finally:
        driver.close()
    assert runs[0] == runs[2] and runs[0].seed == 1005 and runs[1].seed == 1002
    assert [e["ret"] for e in report["candidate"]["variants"]["real"]["episodes"]][5] == runs[0].ret


def test_the_gate_stops_early_and_the_worker_count_does_not_change_the_verdict(
    good: Path, tmp_path: Path
) -> None:
    falls = write_linear_policy(tmp_path / "falls", FALLS, version=1)
    budget = ["episodes=40", "reference.looks=4"]  # looks at 8, 10, 20 and 40 pairs
    reports = {}
    for workers in (1, 2):
        for name, (cand, ref) in {"better": (good, falls), "worse": (falls, good)}.items():
            out = tmp_path / f"{name}-{workers}"
            args = [*GATE, *budget, f"workers={workers}", "--allow-unsigned", "--reference", str(ref)]
            assert cli([str(cand), *args, "--out", str(out)]) == (0 if name == "better" else 1)
            reports[name, workers] = json.loads((out / "report.json").read_text())
    for name in ("better", "worse"):
        one, two = reports[name, 1], reports[name, 2]
        assert one["episodes_run"]["workers"] == 1 and two["episodes_run"]["workers"] == 2
        assert {v: p["pairs"] for v, p in one["sequential"].items()} == {"nominal": 8, "real": 8}
        for key in ("passed", "reasons", "sequential"):
            if key == "sequential":
                for path in (*one[key].values(), *two[key].values()):
                    for step in path["looks"]:
                        step.pop("seconds")
            assert one[key] == two[key], key
        for role in ("candidate", "reference"):
            assert one[role]["variants"]["real"]["returns"] == two[role]["variants"]["real"]["returns"]
    better = reports["better", 1]["sequential"]
    assert better["nominal"]["decision"] == better["real"]["decision"] == "pass"
    assert reports["worse", 1]["sequential"]["nominal"]["decision"] == "fail"


def test_the_success_check_fails_only_a_success_rate_shown_below_the_references() -> None:
    def episodes(successes: list[int]) -> list[dict[str, Any]]:
        return [{"success": bool(x)} for x in successes]

    cfg = ReferenceConfig(success_margin=0.1, confidence=0.95)
    same = success_check(cfg, "real", episodes([1, 0] * 8), episodes([1, 0] * 8))
    assert same.passed and "0.50 vs the reference's 0.50 (16 pairs)" in same.detail
    noisy = success_check(cfg, "real", episodes([1, 0, 0, 1] * 4), episodes([1, 1, 0, 0] * 4))
    assert noisy.passed  # as many lost as won: nothing is shown
    worse = success_check(cfg, "real", episodes([0] * 12 + [1] * 4), episodes([1] * 16))
    assert not worse.passed and worse.name == "success_vs_reference[real]"


class _Reaching(_Recorder):
    """A task that reports success at every step: reached only when the last command was positive."""

    def step(self, action: np.ndarray) -> StepResult:
        result = super().step(action)
        result.truncated, result.info = len(self.applied) >= 5, {"success": bool(action[0] > 0)}
        return result


def test_an_episodes_success_is_the_drivers_at_its_last_step(good: Path) -> None:
    setup = EpisodeSetup("gym:InvertedPendulum-v5", 5, 0, False, None, success_return=None)
    policy = TimedPolicy.load(good)
    driver = _Reaching()
    episode = run_episode(driver, policy, setup, 0)
    assert episode.steps == 5 and episode.success == (driver.applied[-1] > 0)
