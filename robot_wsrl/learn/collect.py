"""Recording offline datasets from a behaviour policy running on a driver (D4RL-style keys)."""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robot_wsrl.core.artifacts import MANIFEST, actor_snapshot
from robot_wsrl.core.driver import Driver
from robot_wsrl.learn.datasets import OfflineDataset, save_dataset
from robot_wsrl.robot.drivers import make_driver


def record_dataset(
    driver: Driver, policy: Callable[[np.ndarray], np.ndarray], transitions: int, seed: int, path: Path
) -> Path:
    """Roll `policy` (obs -> robot-unit action) for `transitions` steps; store the EXECUTED actions."""
    cols: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
    obs, _ = driver.reset(seed=seed)
    for i in range(transitions):
        r = driver.step(policy(obs))
        last = i == transitions - 1
        for key, value in zip(
            cols, (obs, r.executed_action, r.reward, r.obs, r.terminated, r.truncated or last), strict=True
        ):
            cols[key].append(value)
        obs = r.obs
        if r.terminated or r.truncated:
            obs, _ = driver.reset(seed=seed + i + 1)
    dataset = OfflineDataset(
        observations=np.array(cols["obs"]),
        actions=np.array(cols["act"]),
        rewards=np.array(cols["rew"]),
        next_observations=np.array(cols["next"]),
        terminals=np.array(cols["term"]),
        timeouts=np.array(cols["trunc"]),
        source=str(path),
    )
    return save_dataset(path, dataset)


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
    from robot_wsrl.learn.datasets import dataset_stats, load_dataset
    from robot_wsrl.learn.envs import make_env
    from robot_wsrl.learn.finetune import finetune
    from robot_wsrl.learn.replay import ReplayBuffer

    cfg = compose_config(
        "finetune",
        ["agent=sac", "run.snapshots=true", f"seed={seed}", f"out_dir={out / 'behaviour'}", *train_overrides],
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

    def describe(path: Path) -> dict:
        stats = dataset_stats(load_dataset(path))
        keep = ("size", "episodes", "return_mean", "return_min", "return_max")
        return {
            "file": path.name,
            "sha256": file_sha256(path),
            **{k: stats[k] for k in keep if k in stats},
        }

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
        "datasets": {"medium": describe(medium), "medium-replay": describe(medium_replay)},
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

