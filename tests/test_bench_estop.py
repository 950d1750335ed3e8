"""`bench estop` measures what it says on a small run: real runner processes, a real stop, a real trip."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from helpers import TINY_LEARNER, TINY_SESSION, tiny_policy_dir

from robot_wsrl.bench import BENCHMARKS
from robot_wsrl.bench.estop import run_estop_benchmark


@pytest.mark.slow
def test_estop_benchmark_reports_every_key_from_real_stops(tmp_path: Path) -> None:
    # The loaded case on a tiny session: a real learner, its validations, a runner and a robot beside it.
    load = ["--policy-dir", str(tiny_policy_dir(tmp_path)), *TINY_SESSION, *TINY_LEARNER]
    result = run_estop_benchmark(
        trials=8,
        runner_counts=(1, 2),
        hz=100,
        deadman_s=0.5,
        deadman_trials=1,
        loaded_trials=5,
        load_args=load,
    )
    for count in (1, 2, "loaded"):
        p50, p99 = result[f"estop_p50_ms_{count}"], result[f"estop_p99_ms_{count}"]
        assert 0 < p50 <= p99 <= result[f"estop_max_ms_{count}"] < 2000  # a stop came back, in time
        assert result[f"estop_lost_{count}"] == 0
    for count in (1, 2):
        assert 0 < result[f"estop_confirm_p50_ms_{count}"] <= result[f"estop_confirm_p99_ms_{count}"]
    assert result["estops_loaded"] == 5 and 0 < result["loaded_cpu_busy"] <= 1
    assert 0 <= result["loaded_validating_fraction"] <= 1
    # the deadman cannot trip before its deadline; well after it means it did not work as designed
    assert result["watchdog_deadline_ms"] == 500.0
    assert 500.0 <= result["watchdog_trip_ms"] < 500.0 + 500.0
    assert set(result["targets_met"]) == {
        "estop_p99_ms_1",
        "estop_p99_ms_2",
        "estop_lost_1",
        "estop_lost_2",
        "watchdog_trip_ms",
        "estop_p99_ms_loaded",
        "estop_lost_loaded",
    }
    assert result["targets_met"]["estop_lost_loaded"] is False  # 0 lost, but of fewer than 1,000
    assert result["control_period_ms"] == 10.0 and result["trials"] == 8


def test_estop_benchmark_is_registered() -> None:
    module, function = BENCHMARKS["estop"].split(":")
    assert getattr(importlib.import_module(module), function) is run_estop_benchmark
