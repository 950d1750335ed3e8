"""`robot-wsrl bench camera`: what a camera task costs the learner, side by side in one process.

For cam:reacher's shapes (state 8, actions 2, camera `top` 84x84 RGB) and each encoder (`camera_cpu`:
recipe=camera_cpu's 16-32-32 trunk, the one shipped; `drq`: the default DrQ/SERL 32-32-32-32 trunk): its
forward cost, one CQL pre-training update at batch 256 beside a state task's, one WSRL UTD round (UTD 4,
batch 256) with the encoder trained online, and the frames per second the frozen encoder featurizes. Then
the design's point: one WSRL round on cached [state, features] against a state task's, at batch 256 and
1,024, and the online replay's bytes per transition and insert rate with one camera. Medians over
`rounds` after one warm-up. The exported policy's onboard step is `bench runner`'s `camera_policy_*`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from robot_wsrl.bench.machine import cpu_description
from robot_wsrl.core.spec import CameraSpec
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.encoder import ImageEncoder, image_key, next_image_key
from robot_wsrl.learn.networks import build_networks
from robot_wsrl.learn.replay import FrameBatch
from robot_wsrl.learn.trainer import online_buffer

STATE_DIM, ACT_DIM = 8, 2
TOP = CameraSpec("top", 84, 84)
ENCODERS = {
    "camera_cpu": ["agent.encoder.channels=[16,32,32]", "agent.encoder.strides=[2,2,2]"],
    "drq": [],  # configs/agent/sac.yaml's default
}
EPISODE = 50  # cam:reacher's steps per episode: the replay's frame sharing depends on it


def _agent(overrides: list[str], cameras: tuple[CameraSpec, ...]) -> Agent:
    cfg = compose_config("finetune", ["device=cpu", "progress=false", "tensorboard=false", *overrides])
    return Agent(build_networks(STATE_DIM, ACT_DIM, cfg.agent, "cpu", cameras=cameras), cfg.agent)


def _batch(n: int, width: int, frames: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {
        "obs": rng.standard_normal((n, width)).astype(np.float32),
        "next_obs": rng.standard_normal((n, width)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "terminated": np.zeros(n, np.float32),
        "mc_return": rng.standard_normal(n).astype(np.float32),
    }
    if frames:
        for key in (image_key(TOP.name), next_image_key(TOP.name)):
            out[key] = rng.integers(0, 256, (n, *TOP.shape), dtype=np.uint8)
    return out


def _update_s(agent: Agent, arrays: dict[str, np.ndarray], rounds: int) -> float:
    batch = agent.to_batch(arrays)
    agent.update(batch)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        agent.update(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _encoder_cost(encoder: ImageEncoder) -> tuple[float, int]:
    """Multiply-adds x 2 of one 84x84 frame's forward pass, and the encoder's parameter count."""
    flops, side, channels = 0, TOP.height, TOP.channels
    for conv in (m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)):
        side = (side - 3) // conv.stride[0] + 1
        flops += 2 * side * side * conv.out_channels * channels * 9
        channels = conv.out_channels
    flops += 2 * sum(
        m.in_features * m.out_features for m in encoder.modules() if isinstance(m, torch.nn.Linear)
    )
    return flops / 1e6, sum(p.numel() for p in encoder.parameters())


def _replay(agent: Agent, rng: np.random.Generator, transitions: int) -> dict[str, float]:
    """The online replay of a frozen-encoder camera agent, filled one episode batch at a time."""
    buffer = online_buffer(agent, transitions, (TOP,))
    frames = rng.integers(0, 256, (EPISODE + 1, *TOP.shape), dtype=np.uint8)
    done = np.zeros(EPISODE, bool)
    done[-1] = True
    columns = {
        "obs": rng.standard_normal((EPISODE, STATE_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, (EPISODE, ACT_DIM)).astype(np.float32),
        "reward": np.zeros(EPISODE, np.float32),
        "next_obs": rng.standard_normal((EPISODE, STATE_DIM)).astype(np.float32),
        "terminated": np.zeros(EPISODE, bool),
        "truncated": done,
    }
    episode = FrameBatch.from_pairs({TOP.name: frames[:-1]}, {TOP.name: frames[1:]}, done)
    start = time.perf_counter()
    for _ in range(transitions // EPISODE):
        buffer.add_batch(frames=episode, **columns)
    took = time.perf_counter() - start
    return {"replay_bytes_per_transition": float(buffer.bytes_per_transition),
            "replay_insert_per_s": transitions // EPISODE * EPISODE / took}  # fmt: skip


def run_camera_benchmark(rounds: int = 5, threads: int = 2) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    for name, overrides in ENCODERS.items():
        cql = _agent(["agent=cql", "agent.batch_size=256", *overrides], (TOP,))
        result[f"encoder_mflop_per_frame_{name}"], result[f"encoder_params_{name}"] = _encoder_cost(
            cql.encoder
        )
        result[f"cql_update_s_{name}"] = _update_s(cql, _batch(256, STATE_DIM, True, rng), rounds)
        online = _agent(["agent.batch_size=256", "agent.encoder.train_online=true", *overrides], (TOP,))
        result[f"wsrl_round_train_online_s_{name}"] = _update_s(online, _batch(1024, STATE_DIM, True, rng), 2)
        frames = {TOP.name: rng.integers(0, 256, (1024, *TOP.shape), dtype=np.uint8)}
        start = time.perf_counter()
        cql.featurize(np.zeros((1024, STATE_DIM), np.float32), frames)
        result[f"featurize_frames_per_s_{name}"] = 1024 / (time.perf_counter() - start)
    state_cql = _agent(["agent=cql", "agent.batch_size=256"], ())
    result["cql_update_s_state"] = _update_s(state_cql, _batch(256, STATE_DIM, False, rng), rounds)
    for batch_size in (256, 1024):
        state = _agent([f"agent.batch_size={batch_size}"], ())
        camera = _agent([f"agent.batch_size={batch_size}", *ENCODERS["camera_cpu"]], (TOP,))
        n = 4 * batch_size  # one UTD round's batch
        result[f"wsrl_round_s_state_b{batch_size}"] = _update_s(
            state, _batch(n, STATE_DIM, False, rng), rounds
        )
        result[f"wsrl_round_s_cached_features_b{batch_size}"] = _update_s(
            camera, _batch(n, camera.input_dim, False, rng), rounds
        )
    result |= _replay(_agent(list(ENCODERS["camera_cpu"]), (TOP,)), rng, 5_000)
    result.update(threads=threads, rounds=rounds, torch=torch.__version__, cpu=cpu_description(),
                  load_average_1min=os.getloadavg()[0])  # fmt: skip
    return result
