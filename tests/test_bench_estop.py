"""`bench estop` measures what it says on a small run: real runner processes, a real stop, a real trip."""

from __future__ import annotations

import importlib

from robot_wsrl.bench import BENCHMARKS
from robot_wsrl.bench.estop import run_estop_benchmark


def test_estop_benchmark_reports_every_key_from_real_stops() -> None:
    result = run_estop_benchmark(trials=8, runner_counts=(1, 2), hz=100, deadman_s=0.5, deadman_trials=1)
    for count in (1, 2):
        p50, p99 = result[f"estop_p50_ms_{count}"], result[f"estop_p99_ms_{count}"]
        assert 0 < p50 <= p99 <= result[f"estop_max_ms_{count}"] < 2000  # a stop came back, in time
        assert 0 < result[f"estop_confirm_p50_ms_{count}"] <= result[f"estop_confirm_p99_ms_{count}"]
    # the deadman cannot trip before its deadline; well after it means it did not work as designed
    assert result["watchdog_deadline_ms"] == 500.0
    assert 500.0 <= result["watchdog_trip_ms"] < 500.0 + 500.0
    assert set(result["targets_met"]) == {"estop_p99_ms_1", "estop_p99_ms_2", "watchdog_trip_ms"}
    assert result["control_period_ms"] == 10.0 and result["trials"] == 8


def test_estop_benchmark_is_registered() -> None:
    module, function = BENCHMARKS["estop"].split(":")
    assert getattr(importlib.import_module(module), function) is run_estop_benchmark
