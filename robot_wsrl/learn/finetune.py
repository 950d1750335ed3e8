"""In-process warm-start fine-tuning (WSRL) and its baselines.

Phases: (1) the agent starts from the pre-trained actor, critics and temperature; (2) warmup: the frozen
pre-trained policy (stochastic samples, never random actions) fills an EMPTY online buffer for K steps,
no gradient update; (3) online SAC with UTD rounds on online data only. Baselines are configs:
warmup 0 (no warmup), offline ratio 0.5 with a dataset (RLPD-style retain), no checkpoint (scratch).
When to update and to validate (the guarded variant) is `trainer.Trainer`'s, as in the networked learner.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robot_wsrl.core.artifacts import CHECKPOINT, SUMMARY, actor_snapshot
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.checkpoint import load_checkpoint, with_checkpoint_shapes
from robot_wsrl.learn.config import Config, config_hash, prepare_out_dir, resumed
from robot_wsrl.learn.envs import make_env, step_normalised
from robot_wsrl.learn.metrics import MetricsLogger
from robot_wsrl.learn.networks import build_networks
from robot_wsrl.learn.replay import ReplayBuffer
from robot_wsrl.learn.trainer import Trainer, online_buffer
from robot_wsrl.learn.training import (
    evaluate_agent,
    load_agent_checkpoint,
    progress_bar,
    restore_rng,
    rng_state,
    save_actor_snapshot,
    save_training_checkpoint,
    seed_everything,
)

if TYPE_CHECKING:
    from robot_wsrl.learn.datasets import OfflineDataset
    from robot_wsrl.learn.guarded import DeployedPolicy, Judge

OFFLINE_FEATURE_CHUNK = 1024  # dataset rows whose frames are gathered and encoded at once


def load_offline_buffer(cfg: Config, spec, agent: Agent) -> ReplayBuffer:
    """Only the retain-offline baselines call this: WSRL never loads the offline dataset. A camera task's
    dataset is held as the frozen encoder's [state, features], as the online replay holds its own
    (`trainer.online_buffer`), so both mix in one minibatch at a state task's cost; its frames are encoded
    once, here, in chunks (`offline_features`)."""
    from robot_wsrl.learn.datasets import load_dataset

    if spec.cameras and agent.replay_featurize is None:
        raise ValueError(
            "run.offline_ratio > 0 (retain offline data) on a camera task needs the encoder frozen online "
            "(agent.encoder.train_online=false: the dataset is kept as its features); use that, or "
            "run.offline_ratio=0 (WSRL)"
        )
    ds = load_dataset(cfg.run.dataset, action_low=spec.low, action_high=spec.high, cameras=spec.cameras)
    obs, next_obs = offline_features(agent, ds) if spec.cameras else (ds.observations, ds.next_observations)
    return ReplayBuffer.from_arrays(
        cfg.agent.discount,
        obs,
        spec.to_normalised(ds.actions),
        ds.rewards,
        next_obs,
        ds.terminals.astype(np.float32),
        ds.episode_ends(),
    )


def offline_features(
    agent: Agent, ds: OfflineDataset, chunk: int = OFFLINE_FEATURE_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The image dataset `ds`'s observations and next observations as `agent.featurize` gives them, `chunk`
    rows at a time: the frames of 20,000 transitions at 84x84 would be 0.85 GB if gathered at once."""
    n = len(ds.rewards)
    obs = np.empty((n, agent.input_dim), np.float32)
    next_obs = np.empty_like(obs)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        frames, next_frames = ds.images(rows)
        obs[rows] = agent.featurize(ds.observations[rows], frames)
        next_obs[rows] = agent.featurize(ds.next_observations[rows], next_frames)
    return obs, next_obs


def finetune(cfg: Config, judge: Judge | None = None) -> dict[str, Any]:
    """Run fine-tuning to cfg.run.steps environment steps; returns a summary (also in summary.json).
    The guarded variant (run.gate_every) needs the `judge` that validates each candidate."""
    cfg = resumed(cfg)
    if cfg.run.checkpoint and not cfg.run.resume:  # a warm start keeps the pre-trained networks' shapes
        cfg.agent = with_checkpoint_shapes(cfg.agent, load_checkpoint(cfg.run.checkpoint)["agent_config"])
    out = prepare_out_dir(cfg)
    rng = seed_everything(cfg.seed, cfg.threads)
    env, eval_env = make_env(cfg.env, seed=cfg.seed), make_env(cfg.env, seed=cfg.seed + 10_000)
    spec = env.spec
    networks = build_networks(spec.obs_dim, spec.act_dim, cfg.agent, cfg.device, cameras=spec.cameras)
    agent = Agent(networks, cfg.agent)
    run = cfg.run

    online = online_buffer(agent, run.buffer_capacity, spec.cameras)
    step, episode = 0, 0
    if run.resume:
        payload = load_agent_checkpoint(str(out / CHECKPOINT), agent, spec, with_optimizers=True)
        online = ReplayBuffer.load(out / payload["extra"]["replay"], featurize=agent.replay_featurize)
        online.end_episode()  # the episode in progress at the checkpoint restarts from a reset
        step, episode = int(payload["step"]), int(payload["extra"]["episode"])
        restore_rng(rng, payload["extra"]["rng"])
    elif run.checkpoint:
        load_agent_checkpoint(run.checkpoint, agent, spec, with_optimizers=True)
    deployed = None
    if run.gate_every:  # the guarded variant: the robot runs only validated versions
        from robot_wsrl.learn.guarded import DeployedPolicy

        if judge is None:
            raise ValueError("run.gate_every needs a judge: the validation of each candidate")
        deployed = DeployedPolicy(out, spec, judge, cfg.seed)
        deployed.start(agent.policy_module(), int(payload["extra"]["deployed"]) if run.resume else 0)

    logger = MetricsLogger(out, tensorboard=cfg.tensorboard)
    trainer = Trainer(
        agent,
        online,
        rng,
        run.warmup_steps,
        offline=load_offline_buffer(cfg, spec, agent) if run.offline_ratio > 0 else None,
        offline_ratio=run.offline_ratio,
        updates=agent.updates if run.resume else 0,  # a pre-trained checkpoint's rounds are not this run's
        publish_every=run.gate_every,
        on_publish=None if deployed is None else functools.partial(_gate, deployed, agent, online, logger),
        anchor="transitions",  # the guarded variant validates after the rounds of steps N, 2N, ...
    )
    recent_returns: deque[float] = deque(maxlen=10)
    obs, _ = env.reset(seed=cfg.seed + episode)
    episode_return, episode_len = 0.0, 0
    last_eval: dict[str, float] = {}
    if step == 0 and run.eval_every > 0:
        last_eval = evaluate_agent(agent, eval_env, run.eval_episodes, seed=cfg.seed + 20_000)
        logger.log("eval", 0, {"phase": "pretrained", **last_eval})
    bar = progress_bar(run.steps, step, cfg.progress, "finetune", "step")
    started, first_step = time.perf_counter(), step
    while step < run.steps:
        # stochastic: warmup uses the pre-trained policy's samples, never random actions
        action = agent.act(obs) if deployed is None else deployed.act(obs)
        result, executed = step_normalised(env, action)
        next_obs, reward, terminated, truncated = (
            result.obs,
            result.reward,
            result.terminated,
            result.truncated,
        )
        online.add(obs, executed, reward, next_obs, terminated, truncated)  # what the robot actually did
        step += 1
        episode_return += float(reward)
        episode_len += 1
        obs = next_obs
        if terminated or truncated:
            recent_returns.append(episode_return)
            row = {"return": episode_return, "length": episode_len, "episode": episode}
            if deployed is not None:
                row["policy_version"] = deployed.version  # the deployed-return curve
            logger.log("episodes", step, row)
            episode += 1
            obs, _ = env.reset(seed=cfg.seed + episode)
            episode_return, episode_len = 0.0, 0

        phase = "warmup" if trainer.warming_up else "online"
        while trainer.owed:  # in-process pacing: every round owed, right after the step that owes it
            trainer.update()
        if run.log_every and step % run.log_every == 0:
            row = {
                "phase": phase,
                "updates": trainer.updates,
                "buffer": len(online),
                "recent_return": float(np.mean(recent_returns)) if recent_returns else float("nan"),
                "steps_per_s": (step - first_step) / max(time.perf_counter() - started, 1e-9),
                "q_online": _q_online(agent, online),
                **{k: float(v) for k, v in trainer.last_info.items()},
            }
            logger.log("train", step, row)
        if run.eval_every and step % run.eval_every == 0:
            last_eval = evaluate_agent(agent, eval_env, run.eval_episodes, seed=cfg.seed + 20_000)
            logger.log("eval", step, {"phase": phase, **last_eval})
            if run.snapshots:  # the actor as evaluated, for datasets recorded from intermediate policies
                save_actor_snapshot(actor_snapshot(out, step), agent, spec, cfg, step)
        if run.checkpoint_every and step % run.checkpoint_every == 0:
            _save(out, agent, spec, cfg, step, episode, online, rng, deployed)
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(
                phase=phase,
                updates=trainer.updates,
                ret=f"{recent_returns[-1]:.0f}" if recent_returns else "-",
                eval=f"{last_eval.get('return_mean', float('nan')):.0f}",
                refresh=False,
            )
    bar.close()
    _save(out, agent, spec, cfg, step, episode, online, rng, deployed)
    logger.close()
    env.close()
    eval_env.close()
    summary = {
        "out_dir": str(out),
        "steps": step,
        "updates": trainer.updates,
        "episodes": episode,
        "final_eval": last_eval,
        "config_hash": config_hash(cfg),
        "checkpoint": str(out / CHECKPOINT),
    }
    (out / SUMMARY).write_text(_json(summary))
    return summary


def _gate(deployed: DeployedPolicy, agent: Agent, online: ReplayBuffer, logger: MetricsLogger) -> None:
    """The guarded variant's publishing hook: validate the current actor against the deployed version (the
    robot runs the last pass), at the step the last transition was."""
    step = online.total_added
    logger.log("gate", step, deployed.consider(agent.policy_module(), step))


def _q_online(agent: Agent, online: ReplayBuffer, n: int = 256) -> float:
    """Mean ensemble Q on the latest `n` online transitions, logged in warmup too: the trace then spans
    the switch to online updates, where a collapse (the "downward spiral") shows. No RNG is drawn."""
    idx = (online.cursor - 1 - np.arange(min(n, len(online)))) % online.capacity
    batch = agent.to_batch(online.gather(idx))
    return agent.mean_q(batch["obs"], batch["action"])


def _save(
    out: Path,
    agent: Agent,
    spec,
    cfg: Config,
    step: int,
    episode: int,
    online: ReplayBuffer,
    rng: np.random.Generator,
    deployed: DeployedPolicy | None = None,
) -> None:
    """Replay under a step-stamped name, then the checkpoint naming it, then old replays go.

    The checkpoint only ever names a complete replay file, so a crash at any point leaves a consistent pair.
    """
    replay_name = f"replay-{step:09d}.npz"
    online.save(out / replay_name)
    extra = {"episode": episode, "rng": rng_state(rng), "replay": replay_name}
    if deployed is not None:
        extra["deployed"] = deployed.version
    save_training_checkpoint(out / CHECKPOINT, agent, spec, cfg, step, extra)
    for old in out.glob("replay-*.npz"):
        if old.name != replay_name:
            old.unlink()


def _json(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, indent=2, default=float) + "\n"
