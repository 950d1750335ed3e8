"""`bench camera`'s measurements measure what they name: the encoders' costs, and a replay that keeps each
frame about once (the full benchmark's timings are not asserted: speed is for the benchmark to print)."""

from __future__ import annotations

import numpy as np

from robot_wsrl.bench import BENCHMARKS
from robot_wsrl.bench import camera as bench_camera


def test_the_camera_benchmark_is_registered_and_its_pieces_measure_what_they_say() -> None:
    assert BENCHMARKS["camera"] == "robot_wsrl.bench.camera:run_camera_benchmark"
    small = bench_camera._agent(list(bench_camera.ENCODERS["camera_cpu"]), (bench_camera.TOP,))
    large = bench_camera._agent(list(bench_camera.ENCODERS["drq"]), (bench_camera.TOP,))
    (small_mflop, small_params), (large_mflop, large_params) = map(
        bench_camera._encoder_cost, (small.encoder, large.encoder)
    )
    assert 5 < small_mflop < 10 < 80 < large_mflop < 90 and small_params < large_params
    replay = bench_camera._replay(small, np.random.default_rng(0), 500)
    frame = bench_camera.TOP.frame_bytes  # 50-step episodes: 51 frames per 50 transitions, plus ring slack
    assert frame < replay["replay_bytes_per_transition"] < 1.15 * frame and replay["replay_insert_per_s"] > 0
