"""Robot-side benchmark: onboard policy step latency and control-loop timing (DESIGN §6 targets).

Measures, in one process: the onnxruntime step of a 2x256 actor (obs 11, act 3, one thread, one sampled
action per call, as the runner does it); the same step of a camera policy (state + one 84x84 frame, the
`camera_policy_*` keys; target p99 <= 5 ms on one core); the 2x256 step in eager torch for comparison
(torch is imported here only, never by the robot-side modules); and the jitter and missed deadlines of
the real Runner on the null driver at 500 Hz and 1 kHz, with normal scheduling and, where permitted,
SCHED_FIFO, each once with nothing of ours beside it and once (`_busy` keys) beside a learner-like process
(single-threaded torch matrix products, as the learner's update loop on a shared core). Loop timing
depends on what else the machine runs: `load_average_1min` is reported next to it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from robot_wsrl.bench.machine import cpu_description
from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner

OBS_DIM, ACT_DIM, HIDDEN = 11, 3, (256, 256)
RATES = {"500hz": 500, "1khz": 1000}
FIFO_PRIORITY = 80
TARGETS = {
    "policy_step_p99_us": 50.0,
    "camera_policy_step_p99_us": 5000.0,
    "loop_jitter_p99_us_1khz": 100.0,
    "missed_deadlines_500hz": 0,
}
# The camera policy: cam:reacher's shapes (state 8, actions 2, camera `top` 84x84 RGB), with the encoder
# of recipe=camera_cpu (the key without a suffix: what ships) and the default DrQ/SERL one (`_drq`).
CAMERA_SPEC = EnvSpec(
    "bench-camera", 8, 2, (-1.0, -1.0), (1.0, 1.0), 0.02, cameras=(CameraSpec("top", 84, 84),)
)
CAMERA_ENCODERS = {"": ([16, 32, 32], [2, 2, 2]), "_drq": ([32, 32, 32, 32], [2, 1, 1, 1])}
BUSY_LEARNER = (
    "import torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(256, 256)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)
BUSY_WARMUP_S = 2.0  # the busy process imports torch before it is busy


def _percentiles_us(samples: np.ndarray) -> tuple[float, float]:
    p50, p99 = np.percentile(samples, [50, 99]) * 1e6
    return float(p50), float(p99)


def _time_calls(step: Any, observations: np.ndarray, calls: int, warmup: int) -> np.ndarray:
    """Per-call wall times of `step(obs)`, cycling through `observations`, after `warmup` untimed calls."""
    n = len(observations)
    for i in range(warmup):
        step(observations[i % n])
    times = np.empty(calls)
    clock = time.perf_counter
    for i in range(calls):
        obs = observations[i % n]
        start = clock()
        step(obs)
        times[i] = clock() - start
    return times


def _export(actor: Any, out_dir: Path, period_s: float) -> OnnxPolicy:
    from robot_wsrl.learn.export import export_policy

    spec = EnvSpec("bench-null", OBS_DIM, ACT_DIM, (-1.0,) * ACT_DIM, (1.0,) * ACT_DIM, period_s)
    return OnnxPolicy.load(export_policy(actor, out_dir, spec=spec))


def _loop(policy: OnnxPolicy, hz: int, seconds: float, rt_priority: int | None) -> dict[str, Any]:
    driver = NullDriver(OBS_DIM, ACT_DIM, control_period_s=1.0 / hz)
    return Runner(driver, policy, seed=0, rt_priority=rt_priority).run(max_steps=int(seconds * hz))


def _camera_step_us(
    out_dir: Path, channels: list[int], strides: list[int], calls: int
) -> tuple[float, float]:
    """The onboard step of an exported camera policy: state + one 84x84 frame in, a sampled action out."""
    from robot_wsrl.learn.checkpoint import build_camera_actor
    from robot_wsrl.learn.config import EncoderConfig
    from robot_wsrl.learn.export import export_policy

    encoder = EncoderConfig(channels=channels, strides=strides)
    actor = build_camera_actor(CAMERA_SPEC, list(HIDDEN), True, encoder).eval()
    policy = OnnxPolicy.load(export_policy(actor, out_dir, spec=CAMERA_SPEC))
    rng = np.random.default_rng(0)
    observations = [
        {
            "state": rng.standard_normal(8).astype(np.float32),
            "top": rng.integers(0, 256, (84, 84, 3), np.uint8),
        }
        for _ in range(64)
    ]
    times = _time_calls(lambda obs: policy.act(obs, False), observations, calls, warmup=calls // 10)
    return _percentiles_us(times)


@contextlib.contextmanager
def _beside(busy: bool) -> Iterator[None]:
    """Run the body with a learner-like busy process beside it (or alone)."""
    if not busy:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LEARNER])
    try:
        time.sleep(BUSY_WARMUP_S)
        yield
    finally:
        proc.kill()
        proc.wait()


def _torch_step_us(actor: Any, observations: np.ndarray, calls: int, warmup: int) -> tuple[float, float]:
    """The same sampled step in eager torch, one thread, no autograd: what the ONNX path replaces."""
    import torch

    def step(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            mean, log_std = actor(torch.from_numpy(obs).unsqueeze(0))
            return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))[0].numpy()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _percentiles_us(_time_calls(step, observations, calls, warmup))
    finally:
        torch.set_num_threads(threads)


def run_runner_benchmark(
    calls: int = 20_000,
    warmup: int = 2_000,
    loop_seconds: float = 3.0,
    rt_priority: int = FIFO_PRIORITY,
    camera_calls: int = 2_000,
) -> dict[str, Any]:
    """Policy step latency and loop timing; loop keys without a suffix use normal scheduling, `_fifo` keys
    the runner's opt-in SCHED_FIFO (present only where the process may use it)."""
    import torch

    from robot_wsrl.learn.checkpoint import build_actor

    torch.manual_seed(0)
    spec = EnvSpec("bench-null", OBS_DIM, ACT_DIM, (-1.0,) * ACT_DIM, (1.0,) * ACT_DIM, 1e-3)
    actor = build_actor(spec, list(HIDDEN)).eval()
    observations = np.random.default_rng(0).standard_normal((1024, OBS_DIM)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        policies = {hz: _export(actor, Path(tmp) / f"{hz}hz", 1.0 / hz) for hz in RATES.values()}

        result: dict[str, Any] = {}
        for suffix, (channels, strides) in CAMERA_ENCODERS.items():
            p50, p99 = _camera_step_us(Path(tmp) / f"camera{suffix}", channels, strides, camera_calls)
            result[f"camera_policy_step_p50_us{suffix}"] = p50
            result[f"camera_policy_step_p99_us{suffix}"] = p99

    policy = policies[1000]
    times = _time_calls(lambda obs: policy.act(obs, False), observations, calls, warmup)
    result["policy_step_p50_us"], result["policy_step_p99_us"] = _percentiles_us(times)
    result["torch_step_p50_us"], result["torch_step_p99_us"] = _torch_step_us(
        actor, observations, calls, warmup
    )
    for busy in (False, True):
        with _beside(busy):
            for label, hz in RATES.items():
                for suffix, priority in (("", None), ("_fifo", rt_priority)):
                    status = _loop(policies[hz], hz, loop_seconds, priority)
                    if priority is not None and not status["sched_fifo"]:
                        continue
                    key = f"{label}{suffix}{'_busy' if busy else ''}"
                    result[f"loop_jitter_p50_us_{key}"] = status["jitter_p50_us"]
                    result[f"loop_jitter_p99_us_{key}"] = status["jitter_p99_us"]
                    result[f"missed_deadlines_{key}"] = status["overruns"]
                    result[f"loop_rate_hz_{key}"] = status["loop_rate_hz"]
    result["targets_met"] = {key: result[key] <= target for key, target in TARGETS.items()}
    result.update(
        policy_calls=calls,
        camera_policy_calls=camera_calls,
        loop_seconds=loop_seconds,
        device="cpu",
        cpu=cpu_description(),
        load_average_1min=os.getloadavg()[0],
        versions={
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    )
    return result
