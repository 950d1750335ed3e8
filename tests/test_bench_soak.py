"""`bench soak` on a short run: a real session on the tiny agent, `robot-wsrl status` polled, e-stops and
releases cycled, the runner killed mid-run and started again; every transition the runner sequenced is
in the learner once, every e-stop was confirmed, nothing crashed."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from helpers import TINY_LEARNER, TINY_SESSION, tiny_policy_dir

from robot_wsrl.bench import BENCHMARKS, CONFIGURABLE
from robot_wsrl.bench.soak import load_config, main, run_soak_benchmark

KEYS = {
    "transitions_produced",
    "transitions_ingested",
    "learner_rss_mb_start",
    "learner_rss_mb_end",
    "runner_rss_mb_start",
    "runner_rss_mb_end",
    "ingest_log_bytes",
    "estops_sent",
    "estops_confirmed",
    "crashes",
}


@pytest.mark.slow
def test_soak_loses_no_transition_and_no_stop_across_a_runner_kill(tmp_path: Path) -> None:
    cfg = load_config(["seconds=30", "cycle_every_s=3", "hold_s=0.5", f"out={tmp_path / 'soak'}"])
    cfg.policy_dir = str(tiny_policy_dir(tmp_path))
    cfg.session, cfg.learner = TINY_SESSION, TINY_LEARNER
    result = run_soak_benchmark(cfg)
    outcome = {k: result.get(k) for k in ("error", "exit_codes", "failures", "out")}
    assert result["error"] is None and result["crashes"] == 0, outcome  # a failed child: its log in out
    assert set(result) >= KEYS, KEYS - set(result)
    assert result["transitions_produced"] == result["transitions_ingested"] > 0, result
    # A stop before the restart, one at the end and at least one cycle (more on a less busy host): all
    # confirmed, and each stop released but the last.
    assert result["estops_sent"] == result["estops_confirmed"] >= 3, result["failures"]
    assert result["releases_sent"] == result["releases_confirmed"] == result["estops_sent"] - 1
    # The runner was killed while e-stopped: it came back e-stopped (a durable latch).
    assert result["restart"]["signal"] == "SIGKILL" and result["restart"]["state_after"] == "estopped"
    assert result["status_calls"] >= 3 and result["status_errors"] == 0, result["failures"]
    assert result["ingest_log_bytes"] > 0
    assert all(result[k] > 0 for k in KEYS if k.endswith(("_start", "_end")))
    saved = json.loads((Path(result["out"]) / "soak.json").read_text())
    assert saved["transitions_produced"] == result["transitions_produced"]


def test_soak_is_a_configurable_benchmark() -> None:
    module, function = BENCHMARKS["soak"].split(":")
    assert getattr(importlib.import_module(module), function) is main and "soak" in CONFIGURABLE
    assert load_config(["seconds=12"]).seconds == 12 and load_config([]).seconds == 600
