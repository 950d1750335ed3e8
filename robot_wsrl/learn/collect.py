"""Recording offline datasets from a behaviour policy running on a driver (D4RL-style keys).

Two recipes: `collect` trains a behaviour SAC on a state task and keeps its medium snapshot's rollouts
and its replay (D4RL's medium and medium-replay); `record` rolls a given behaviour on any driver, a
camera task's included (its scripted expert, or an exported ONNX policy), into one dataset whose images
are stored once each (datasets.py).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robot_wsrl.core.artifacts import MANIFEST, actor_snapshot
from robot_wsrl.core.driver import Driver
from robot_wsrl.core.spec import STATE, EnvSpec, Observation
from robot_wsrl.learn.datasets import OfflineDataset, save_dataset
from robot_wsrl.robot.drivers import make_driver

Behaviour = Callable[[Observation], np.ndarray]  # observation -> action in robot units
FRAME_CHUNK = 4096  # frames per allocation while recording: memory grows with the frames, not ahead


class _FrameStore:
    """A camera's frames as they arrive, each kept once; `add` returns its index."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.count = 0

    def add(self, frame: np.ndarray) -> int:
        if self.count == len(self.chunks) * FRAME_CHUNK:
            self.chunks.append(np.empty((FRAME_CHUNK, *frame.shape), np.uint8))
        self.chunks[-1][self.count % FRAME_CHUNK] = frame
        self.count += 1
        return self.count - 1

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks)[: self.count]


def rollout(
    driver: Driver,
    policy: Behaviour,
    transitions: int,
    seed: int,
    path: Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[OfflineDataset, list[bool]]:
    """Roll `policy` for `transitions` steps; the dataset of the EXECUTED actions (a camera task's frames
    stored once: an episode of T steps keeps T + 1 per camera) and each finished episode's success (its
    last step's `info["success"]`, where the driver reports one). Every observation is checked against
    the driver's spec as it enters; `progress(steps done)` after each step."""
    spec = driver.spec
    where = f"driver {spec.name}"
    cols: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
    stores = {cam: _FrameStore() for cam in spec.camera_names}
    index: dict[str, tuple[list[int], list[int]]] = {cam: ([], []) for cam in spec.camera_names}
    successes: list[bool] = []

    def enter(obs: Observation) -> tuple[np.ndarray, dict[str, int]]:
        """The state part, and each camera's frame kept (its index)."""
        spec.check_observation(obs, where)
        if not spec.cameras:
            return np.asarray(obs), {}
        return obs[STATE], {cam: stores[cam].add(obs[cam]) for cam in stores}  # type: ignore[index]

    obs, _ = driver.reset(seed=seed)
    state, frames = enter(obs)
    for i in range(transitions):
        r = driver.step(policy(obs))
        last = i == transitions - 1
        next_state, next_frames = enter(r.obs)
        for key, value in zip(
            cols,
            (state, r.executed_action, r.reward, next_state, r.terminated, r.truncated or last),
            strict=True,
        ):
            cols[key].append(value)
        for cam, (obs_index, next_index) in index.items():
            obs_index.append(frames[cam])
            next_index.append(next_frames[cam])
        obs, state, frames = r.obs, next_state, next_frames
        if r.terminated or r.truncated:
            if "success" in r.info:
                successes.append(bool(r.info["success"]))
            if not last:
                obs, _ = driver.reset(seed=seed + i + 1)
                state, frames = enter(obs)
        if progress is not None:
            progress(i + 1)
    dataset = OfflineDataset(
        observations=np.array(cols["obs"]),
        actions=np.array(cols["act"]),
        rewards=np.array(cols["rew"]),
        next_observations=np.array(cols["next"]),
        terminals=np.array(cols["term"]),
        timeouts=np.array(cols["trunc"]),
        source=str(path),
        frames={cam: store.array() for cam, store in stores.items()},
        obs_frame={cam: np.array(i[0], np.int64) for cam, i in index.items()},
        next_frame={cam: np.array(i[1], np.int64) for cam, i in index.items()},
    )
    return dataset, successes


def record_dataset(driver: Driver, policy: Behaviour, transitions: int, seed: int, path: Path) -> Path:
    """Roll `policy` (obs -> robot-unit action) for `transitions` steps and save what `rollout` records."""
    return save_dataset(path, rollout(driver, policy, transitions, seed, path)[0])


EXPERT = "expert"


def behaviour_for(
    driver: Driver, behaviour: str, expert_noise: float | None, seed: int
) -> tuple[Behaviour, Any]:
    """The behaviour `record` rolls and what the manifest says of it: the driver's scripted expert with
    Gaussian `expert_noise` on each action entry (`expert`), or the ONNX policy at path `behaviour`
    sampling its actions (checked against the driver's spec when it loads)."""
    if behaviour == EXPERT:
        expert = getattr(driver, "expert_action", None)
        if expert is None:
            raise ValueError(
                f"driver {driver.spec.name} has no scripted expert (--behaviour expert): the camera tasks "
                "have one (e.g. --driver cam:reacher); or give a policy: --behaviour PATH/policy.onnx"
            )
        noise = 0.0 if expert_noise is None else expert_noise
        rng = np.random.default_rng(seed)
        return (lambda obs: expert(noise, rng)), {"expert": {"noise_std": noise}}
    if expert_noise is not None:
        raise ValueError(f"--expert-noise applies to --behaviour expert, not to a policy ({behaviour})")
    from robot_wsrl.robot.policy import OnnxPolicy

    policy = OnnxPolicy.load(behaviour, expected_spec=driver.spec, seed=seed)
    spec: EnvSpec = driver.spec
    return (lambda obs: spec.to_robot_action(policy.act(obs, deterministic=False))), {
        "policy": {"path": str(policy.path), "sha256": policy.sha256, "version": policy.version}
    }


def record(
    driver_name: str,
    behaviour: str,
    transitions: int,
    out: Path,
    *,
    seed: int = 0,
    expert_noise: float | None = None,
    compress: bool = False,
    command: str = "",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Roll `behaviour` (`expert` or an ONNX policy's path) on driver `driver_name` for `transitions`
    steps into `out/expert.npz` (or `out/policy.npz`), and write `manifest.json` beside it: the command
    that made it, the driver, behaviour, seed, the dataset's size, sha256, returns and success rate."""
    if transitions <= 0:
        raise ValueError(f"--transitions must be positive, got {transitions}")
    driver = make_driver(driver_name, seed=seed)
    try:
        policy, described = behaviour_for(driver, behaviour, expert_noise, seed)
        name = "expert" if behaviour == EXPERT else "policy"
        path = out / f"{name}.npz"
        dataset, successes = rollout(driver, policy, transitions, seed, path, progress)
        spec = driver.spec
    finally:
        driver.close()
    save_dataset(path, dataset, compress=compress)
    entry = describe_dataset(path)
    if successes:
        entry |= {"finished_episodes": len(successes), "success_rate": float(np.mean(successes))}
    manifest = {
        "command": command,
        "driver": driver_name,
        "behaviour": described,
        "seed": seed,
        "spec": spec.to_dict(),
        "datasets": {name: entry},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def describe_dataset(path: Path) -> dict[str, Any]:
    """What a manifest says of a dataset file: name, sha256, size, episodes, returns (and its cameras)."""
    from robot_wsrl.learn.datasets import dataset_stats, load_dataset

    stats = dataset_stats(load_dataset(path))
    keep = ("size", "episodes", "return_mean", "return_min", "return_max", "cameras", "frames")
    return {"file": path.name, "sha256": file_sha256(path), **{k: stats[k] for k in keep if k in stats}}


def record_pendulum_controller_dataset(
    path: Path, transitions: int, seed: int, max_episode_steps: int = 1000
) -> Path:
    """InvertedPendulum rollouts of a noisy, weakly tuned PD controller: balances a while, then falls
    (mean return ~55 of 1000): a "medium" dataset for the demo and the tests."""
    driver = make_driver("gym:InvertedPendulum-v5", seed=seed, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)

    def controller(obs: np.ndarray) -> np.ndarray:
        return np.clip(2.0 * obs[1] + 0.5 * obs[3] + rng.normal(0.0, 0.5, 1), -3.0, 3.0).astype(np.float32)

    try:
        return record_dataset(driver, controller, transitions, seed, path)
    finally:
        driver.close()


def pick_medium_snapshot(evals: list[tuple[int, float]], fraction: float) -> tuple[int, float]:
    """The evaluated snapshot whose return is closest to `fraction` of the best return (D4RL's "medium")."""
    if not evals:
        raise ValueError("no evaluated snapshots to choose from")
    best = max(r for _, r in evals)
    return min(evals, key=lambda e: (abs(e[1] - fraction * best), e[0]))


def collect(train_overrides: list[str], out: Path, medium_size: int, fraction: float, seed: int) -> dict:
    """Train a behaviour SAC on a nominal sim task with snapshots, then write D4RL-style datasets:
    `medium.npz` (rollouts of the snapshot at ~`fraction` of the best return) and `medium-replay.npz` (the
    replay buffer up to that snapshot), plus `manifest.json`."""
    import csv

    import torch

    from robot_wsrl.learn.checkpoint import load_actor
    from robot_wsrl.learn.config import compose_config, config_hash
    from robot_wsrl.learn.envs import make_env
    from robot_wsrl.learn.finetune import finetune
    from robot_wsrl.learn.replay import ReplayBuffer

    cfg = compose_config(
        "finetune",
        ["agent=sac", "run.snapshots=true", f"seed={seed}", f"out_dir={out / 'behaviour'}", *train_overrides],
    )
    kind, _, name = cfg.env.driver.partition(":")
    if kind == "cam" or "@" in name:
        raise ValueError(
            f"env driver {cfg.env.driver} has cameras: the behaviour-SAC recipe records state tasks; record "
            f"a camera task with --driver {cfg.env.driver} --behaviour expert (or --behaviour POLICY.onnx)"
        )
    if cfg.run.buffer_capacity < cfg.run.steps:
        raise ValueError("collect keeps the whole behaviour replay: run.buffer_capacity must be >= run.steps")
    summary = finetune(cfg)
    run_dir = Path(summary["out_dir"])
    with (run_dir / "eval.csv").open() as f:
        evals = [(int(r["step"]), float(r["return_mean"])) for r in csv.DictReader(f) if int(r["step"]) > 0]
    snap_step, snap_return = pick_medium_snapshot(evals, fraction)
    actor, spec, _ = load_actor(actor_snapshot(run_dir, snap_step))
    torch.manual_seed(seed)

    def behaviour(obs: np.ndarray) -> np.ndarray:  # stochastic, as D4RL recorded its medium policies
        with torch.no_grad():
            action = actor.sample(torch.as_tensor(obs, dtype=torch.float32))[0].numpy()
        return spec.to_robot_action(action)

    driver = make_env(cfg.env, seed=seed + 1)
    try:
        medium = record_dataset(driver, behaviour, medium_size, seed + 1, out / "medium.npz")
    finally:
        driver.close()
    replay = ReplayBuffer.load(next(run_dir.glob("replay-*.npz")))
    rows = slice(0, snap_step)
    ends = replay.terminated[rows].astype(bool) | replay.truncated[rows].astype(bool)
    ends[-1] = True
    medium_replay = save_dataset(
        out / "medium-replay.npz",
        OfflineDataset(
            observations=replay.obs[rows],
            actions=spec.to_robot_action(replay.action[rows]),
            rewards=replay.reward[rows],
            next_observations=replay.next_obs[rows],
            terminals=replay.terminated[rows].astype(bool),
            timeouts=ends & ~replay.terminated[rows].astype(bool),
            source=str(out / "medium-replay.npz"),
        ),
    )

    options = ["--out", str(out), "--medium-size", str(medium_size), "--fraction", repr(fraction)]
    manifest = {
        "command": shlex.join(["robot-wsrl", "collect", *options, "--seed", str(seed), *train_overrides]),
        "env": cfg.env.name,
        "driver": cfg.env.driver,
        "shift": cfg.env.shift,
        "seed": seed,
        "behaviour_config_hash": config_hash(cfg),
        "behaviour_steps": summary["steps"],
        "snapshot_returns": [{"step": s, "return": r} for s, r in evals],
        "medium_snapshot": {"step": snap_step, "return": snap_return, "fraction_of_best": fraction},
        "datasets": {"medium": describe_dataset(medium), "medium-replay": describe_dataset(medium_replay)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_entry(path: Path) -> dict[str, str]:
    """What a shipped policy's manifest says about its offline dataset: path, sha256 and the `collect`
    command that made it (from the manifest `collect` wrote beside the file)."""
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{path}: no collect manifest beside it ({manifest_path})")
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["datasets"].values():
        if entry["file"] == path.name:
            if entry["sha256"] != file_sha256(path):
                raise ValueError(
                    f"{path}: sha256 differs from {manifest_path}; the file changed after collect"
                )
            return {"path": str(path), "sha256": entry["sha256"], "command": manifest["command"]}
    raise ValueError(f"{path}: not listed in {manifest_path}")
