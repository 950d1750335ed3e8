"""In-process warm-start fine-tuning (WSRL) and its baselines.

Phases: (1) the agent starts from the pre-trained actor, critics and temperature; (2) warmup: the frozen
pre-trained policy (stochastic samples, never random actions) fills an EMPTY online buffer for K steps,
no gradient update; (3) online SAC with UTD rounds on online data only. Baselines are configs:
warmup 0 (no warmup), offline ratio 0.5 with a dataset (RLPD-style retain), no checkpoint (scratch).
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import Config, compose_config, config_hash, prepare_out_dir, resumed
from robot_wsrl.learn.envs import make_env, step_normalised
from robot_wsrl.learn.metrics import MetricsLogger
from robot_wsrl.learn.replay import MixedSampler, ReplayBuffer
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
    from robot_wsrl.learn.guarded import DeployedPolicy

CHECKPOINT = "checkpoint.pt"


def load_offline_buffer(cfg: Config, spec) -> ReplayBuffer:
    """Only the retain-offline baselines call this: WSRL never loads the offline dataset."""
    from robot_wsrl.learn.datasets import load_dataset

    ds = load_dataset(cfg.run.dataset, action_low=spec.low, action_high=spec.high)
    return ReplayBuffer.from_arrays(
        cfg.agent.discount,
        ds.observations,
        spec.to_normalised(ds.actions),
        ds.rewards,
        ds.next_observations,
        ds.terminals.astype(np.float32),
        ds.episode_ends(),
    )


def finetune(cfg: Config) -> dict[str, Any]:
    """Run fine-tuning to cfg.run.steps environment steps; returns a summary (also in summary.json)."""
    cfg = resumed(cfg)
    out = prepare_out_dir(cfg)
    rng = seed_everything(cfg.seed, cfg.threads)
    env, eval_env = make_env(cfg.env, seed=cfg.seed), make_env(cfg.env, seed=cfg.seed + 10_000)
    spec = env.spec
    agent = Agent(spec.obs_dim, spec.act_dim, cfg.agent, cfg.device)
    run = cfg.run

    online = ReplayBuffer(run.buffer_capacity, spec.obs_dim, spec.act_dim, cfg.agent.discount)
    step, episode = 0, 0
    if run.resume:
        payload = load_agent_checkpoint(str(out / CHECKPOINT), agent, spec, with_optimizers=True)
        online = ReplayBuffer.load(out / payload["extra"]["replay"])
        online.end_episode()  # the episode in progress at the checkpoint restarts from a reset
        step, episode = int(payload["step"]), int(payload["extra"]["episode"])
        restore_rng(rng, payload["extra"]["rng"])
    elif run.checkpoint:
        load_agent_checkpoint(run.checkpoint, agent, spec, with_optimizers=True)
        agent.updates = 0
    offline = load_offline_buffer(cfg, spec) if run.offline_ratio > 0 else None
    deployed = None
    if run.gate_every:  # the guarded variant: the robot runs only validated versions
        from robot_wsrl.learn.guarded import DeployedPolicy

        deployed = DeployedPolicy(out, spec, run.gate_args, cfg.seed)
        deployed.start(agent.actor, int(payload["extra"]["deployed"]) if run.resume else 0)
    sampler = MixedSampler(online, offline, run.offline_ratio)

    logger = MetricsLogger(out, tensorboard=cfg.tensorboard)
    recent_returns: deque[float] = deque(maxlen=10)
    obs, _ = env.reset(seed=cfg.seed + episode)
    episode_return, episode_len = 0.0, 0
    last_eval: dict[str, float] = {}
    info: dict[str, Any] = {}
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

        phase = "warmup" if len(online) < run.warmup_steps else "online"
        if phase == "online" and len(online) >= cfg.agent.batch_size:
            batch = agent.to_batch(sampler.sample(cfg.agent.utd, cfg.agent.batch_size, rng))
            info = agent.update(batch)
            if deployed is not None and step % run.gate_every == 0:
                logger.log("gate", step, deployed.consider(agent.actor, step))
        if run.log_every and step % run.log_every == 0:
            row = {
                "phase": phase,
                "updates": agent.updates,
                "buffer": len(online),
                "recent_return": float(np.mean(recent_returns)) if recent_returns else float("nan"),
                "steps_per_s": (step - first_step) / max(time.perf_counter() - started, 1e-9),
                "q_online": _q_online(agent, online),
                **{k: float(v) for k, v in info.items()},
            }
            logger.log("train", step, row)
        if run.eval_every and step % run.eval_every == 0:
            last_eval = evaluate_agent(agent, eval_env, run.eval_episodes, seed=cfg.seed + 20_000)
            logger.log("eval", step, {"phase": phase, **last_eval})
            if run.snapshots:  # the actor as evaluated, for datasets recorded from intermediate policies
                save_actor_snapshot(out / "snapshots" / f"actor-{step:09d}.pt", agent, spec, cfg, step)
        if run.checkpoint_every and step % run.checkpoint_every == 0:
            _save(out, agent, spec, cfg, step, episode, online, rng, deployed)
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(
                phase=phase,
                updates=agent.updates,
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
        "updates": agent.updates,
        "episodes": episode,
        "final_eval": last_eval,
        "config_hash": config_hash(cfg),
        "checkpoint": str(out / CHECKPOINT),
    }
    (out / "summary.json").write_text(_json(summary))
    return summary


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


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robot-wsrl finetune",
        description="Warm-start fine-tuning. Hydra overrides, e.g.: env=hopper agent.utd=4 "
        "run.checkpoint=policies/hopper/checkpoint.pt run.warmup_steps=5000",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    args = parser.parse_args(argv)
    summary = finetune(compose_config("finetune", args.overrides))
    print(
        f"fine-tuning done: {summary['steps']} steps, {summary['updates']} updates, "
        f"final eval return {summary['final_eval'].get('return_mean', float('nan')):.1f}"
    )
    print(f"outputs: {summary['out_dir']}")
    return 0
