"""Offline pre-training with CQL or Cal-QL on a dataset, producing the checkpoint fine-tuning starts from.

A camera task pre-trains from an image dataset: each batch carries the sampled rows' frames, and the
critic loss trains the image encoder (see `agent.py`); calibration encodes the probe rows' frames.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np

from robot_wsrl.core.artifacts import CHECKPOINT, SUMMARY, kept_checkpoint
from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.calibration import (
    CALIBRATION_TOLERANCE,
    calibrated,
    make_probe,
    measure,
)
from robot_wsrl.learn.config import Config, config_hash, prepare_out_dir, resumed
from robot_wsrl.learn.datasets import DatasetError, OfflineDataset, load_dataset
from robot_wsrl.learn.encoder import image_key, next_image_key
from robot_wsrl.learn.envs import make_env
from robot_wsrl.learn.metrics import MetricsLogger
from robot_wsrl.learn.networks import build_networks
from robot_wsrl.learn.plots import plot_calibration
from robot_wsrl.learn.replay import MixedSampler, ReplayBuffer
from robot_wsrl.learn.training import (
    driver_hint,
    evaluate_agent,
    load_agent_checkpoint,
    progress_bar,
    restore_rng,
    rng_state,
    save_training_checkpoint,
    seed_everything,
)


def _load_for(path: str, spec: EnvSpec) -> OfflineDataset:
    """The dataset, checked against the task; frames at other sizes than the env's driver renders are
    refused with the driver that renders theirs (read again, on that error only, to learn their sizes)."""
    try:
        return load_dataset(path, action_low=spec.low, action_high=spec.high, cameras=spec.cameras)
    except DatasetError as exc:
        if not (spec.cameras and exc.field and exc.field.startswith("frames/")):
            raise
        try:
            frames = load_dataset(path, cameras=None).frames
        except DatasetError:
            raise exc from None
        own = tuple(CameraSpec(c.name, *frames[c.name].shape[1:]) for c in spec.cameras if c.name in frames)
        hint = driver_hint(own, spec)
        if not hint:
            raise
        raise DatasetError(exc.source, exc.field, exc.problem + hint) from exc


def pretrain(cfg: Config, steps: int | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run cfg.run.steps UTD rounds on the offline dataset; checkpoint.pt holds the result. A resumed run
    (run.resume) continues with its saved config, to `steps` updates in all when given (extending it).
    `stop` set (the command's SIGTERM or Ctrl-C) ends the run early with a checkpoint of the update it
    reached, so `run.resume` loses nothing."""
    cfg = resumed(cfg)
    if steps is not None:
        cfg.run.steps = steps
    if not cfg.run.dataset:
        raise ValueError("pretrain needs a dataset: run.dataset=PATH (.hdf5, .npz or minari:ID)")
    out = prepare_out_dir(cfg)
    rng = seed_everything(cfg.seed, cfg.threads)
    eval_env = make_env(cfg.env, seed=cfg.seed + 10_000)
    spec = eval_env.spec
    ds = _load_for(cfg.run.dataset, spec)
    if ds.obs_dim != spec.obs_dim or ds.act_dim != spec.act_dim:
        raise ValueError(
            f"{cfg.run.dataset}: obs/action sizes {ds.obs_dim}/{ds.act_dim} do not match "
            f"{cfg.env.driver} ({spec.obs_dim}/{spec.act_dim})"
        )
    offline = ReplayBuffer.from_arrays(
        cfg.agent.discount,
        ds.observations,
        spec.to_normalised(ds.actions),
        ds.rewards,
        ds.next_observations,
        ds.terminals.astype("float32"),
        ds.episode_ends(),
    )
    sampler = MixedSampler(None, offline, 1.0)
    probe = make_probe(offline, seed=cfg.seed)
    networks = build_networks(spec.obs_dim, spec.act_dim, cfg.agent, cfg.device, cameras=spec.cameras)
    agent = Agent(networks, cfg.agent)

    def sample() -> dict[str, np.ndarray]:
        if not spec.cameras:
            return sampler.sample(cfg.agent.utd, cfg.agent.batch_size, rng)
        return image_batch(offline, ds, cfg.agent.utd * cfg.agent.batch_size, rng)

    def calibration() -> dict[str, float]:
        if not spec.cameras:
            return measure(agent, offline, probe)
        features = agent.featurize(offline.obs[probe.rows], ds.images(probe.rows)[0])  # [state, features]
        return measure(agent, offline, probe, obs=features)

    step = 0
    if cfg.run.resume:
        payload = load_agent_checkpoint(str(out / CHECKPOINT), agent, spec, with_optimizers=True)
        step = int(payload["step"])
        restore_rng(rng, payload["extra"]["rng"])

    logger = MetricsLogger(out, tensorboard=cfg.tensorboard)
    run = cfg.run

    def save(step: int) -> None:
        """checkpoint.pt is the resume point, overwritten; run.keep_checkpoints keeps a copy per step, so
        the one to ship can be chosen afterwards from calibration.csv (`ship RUN --select calibrated`)."""
        extra = {"rng": rng_state(rng)}
        save_training_checkpoint(out / CHECKPOINT, agent, spec, cfg, step, extra)
        if run.keep_checkpoints:
            save_training_checkpoint(kept_checkpoint(out, step), agent, spec, cfg, step, extra)

    last_eval: dict[str, float] = {}
    bar = progress_bar(run.steps, step, cfg.progress, "pretrain", "update")
    started, first_step = time.perf_counter(), step
    while step < run.steps and not (stop is not None and stop.is_set()):
        info = agent.update(agent.to_batch(sample()))
        step += 1
        if run.log_every and step % run.log_every == 0:
            rate = (step - first_step) / max(time.perf_counter() - started, 1e-9)
            logger.log("train", step, {"updates_per_s": rate, **{k: float(v) for k, v in info.items()}})
            logger.log("calibration", step, calibration())
        if run.eval_every and step % run.eval_every == 0:
            last_eval = evaluate_agent(agent, eval_env, run.eval_episodes, seed=cfg.seed + 20_000)
            logger.log("eval", step, last_eval)
        if run.checkpoint_every and step % run.checkpoint_every == 0:
            save(step)
        bar.update(1)
        if last_eval and step % 100 == 0:
            bar.set_postfix(eval=f"{last_eval['return_mean']:.0f}", refresh=False)
    bar.close()
    save(step)
    final_calibration = calibration()
    logger.log("calibration", step, final_calibration)
    logger.close()
    eval_env.close()
    plot_calibration(
        out / "calibration.csv",
        out / "calibration.png",
        CALIBRATION_TOLERANCE,
        f"critic calibration on {ds.size:,} dataset transitions ({cfg.agent.regularizer}, {step:,} updates)",
    )
    summary = {
        "out_dir": str(out),
        "steps": step,
        "stopped": step < run.steps,  # by a signal: `run.resume=OUT_DIR` continues from this checkpoint
        "dataset": run.dataset,
        "dataset_size": ds.size,
        "final_eval": last_eval,
        "calibration": final_calibration,
        "calibrated": calibrated(final_calibration["q_calibration"]),
        "config_hash": config_hash(cfg),
        "checkpoint": str(out / CHECKPOINT),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def image_batch(
    offline: ReplayBuffer, ds: OfflineDataset, n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """n rows drawn as the state task draws them (`offline` holds the dataset's rows in its order), with
    their frames at s and s' (`image/CAM`, `next_image/CAM`)."""
    idx = offline.sample_indices(n, rng)
    images, next_images = ds.images(idx)
    return (
        offline.gather(idx)
        | {image_key(cam): frames for cam, frames in images.items()}
        | {next_image_key(cam): frames for cam, frames in next_images.items()}
    )
