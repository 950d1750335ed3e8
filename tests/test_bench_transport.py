"""`robot-wsrl bench transport` at tiny scale: every key is there, and every transition sent is counted once.

The figures themselves are not checked (a benchmark measures, a test does not time anything).
"""

from __future__ import annotations

import json
import math

from robot_wsrl.bench import BENCHMARKS
from robot_wsrl.bench.transport import run_transport_benchmark
from robot_wsrl.robot.link import LinkOptions

TRANSITIONS, WARMUP, PUBLISHES = 1024, 256, 3
RUNNER_COUNTS = (1, 8)
IMAGE_TRANSITIONS, IMAGE_SIDES, IMAGE_CODECS = 256, (24,), ("raw", "png")


def test_tiny_run_reports_every_key_and_counts_each_transition_once() -> None:
    result = run_transport_benchmark(
        transitions=TRANSITIONS,
        warmup=WARMUP,
        publishes=PUBLISHES,
        publish_interval_s=0.2,
        image_transitions=IMAGE_TRANSITIONS,
        image_warmup=64,
        image_sides=IMAGE_SIDES,
        image_codecs=IMAGE_CODECS,
    )
    json.dumps(result)  # one JSON line
    for suffix in ("", "_plain"):
        for runners in RUNNER_COUNTS:
            rate = result[f"ingest_per_s_{runners}{suffix}"]
            assert math.isfinite(rate) and rate > 0
            assert result[f"ingest_transitions_{runners}{suffix}"] == TRANSITIONS
        p50, p99 = result[f"swap_latency_p50_ms{suffix}"], result[f"swap_latency_p99_ms{suffix}"]
        assert 0 < p50 <= p99 < 10_000
        assert 0 < result[f"swap_accepted_p50_ms{suffix}"] <= p50
        assert 0 <= result[f"swap_missed{suffix}"] < PUBLISHES
        assert 0 < result[f"publish_held_p50_ms{suffix}"] <= result[f"publish_held_p99_ms{suffix}"]
    # each configuration: a warm-up of max(batch, WARMUP / runners) per runner, then TRANSITIONS in all
    batch = LinkOptions().batch_size
    sent = 2 * sum(TRANSITIONS + runners * max(batch, WARMUP // runners) for runners in RUNNER_COUNTS)
    assert result["ingest_sent_total"] == sent
    assert result["ingest_logged_total"] == sent  # in the learner's durable log ...
    assert result["ingest_buffered_total"] == sent  # ... and its replay buffer
    assert result["ingest_duplicates_total"] == 0
    assert result["ingest_rejected_total"] == 0
    assert result["ingest_counted_exactly_once"] is True
    assert result["batch_size"] == batch and result["cpu_count"] >= 1
    assert set(result["targets_met"]) == {
        *(f"ingest_per_s_{n}{s}" for n in RUNNER_COUNTS for s in ("", "_plain")),
        "swap_latency_p99_ms",
        "swap_latency_p99_ms_plain",
    }
    configs = [(f"{side}x{side}x3", codec) for side in IMAGE_SIDES for codec in IMAGE_CODECS]
    images = result["image_ingest"]
    assert [(e["image"], e["codec"], e["runners"]) for e in images] == [
        (image, codec, runners) for image, codec in configs for runners in RUNNER_COUNTS
    ]
    for entry in images:
        assert entry["transitions"] == IMAGE_TRANSITIONS and entry["exactly_once"] is True
        assert entry["rejected"] == 0 and entry["curve"] is True
        assert (
            entry["transitions_per_s"] > 0
            and entry["mb_per_s"] > 0
            and entry["wire_bytes_per_transition"] > 0
        )
    codecs = result["image_codecs"]
    assert [(e["image"], e["codec"]) for e in codecs] == configs
    assert all(e["max_abs_error"] == 0 and e["bytes_per_frame"] > 0 for e in codecs)  # both lossless


def test_registered_as_bench_transport() -> None:
    assert BENCHMARKS["transport"] == "robot_wsrl.bench.transport:run_transport_benchmark"
