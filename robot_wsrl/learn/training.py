"""What pre-training and fine-tuning share: seeding, agent construction, evaluation and checkpoints."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from robot_wsrl.learn.config import Config, config_hash, to_dict
from robot_wsrl.learn.envs import evaluate
from robot_wsrl.robot.drivers import simulator_name


def progress_bar(total: int, initial: int, enabled: bool, desc: str, unit: str) -> tqdm:
    """A progress bar that redraws at most once a second (log files stay readable)."""
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit=unit, mininterval=1.0)


def seed_everything(seed: int, threads: int = 0) -> np.random.Generator:
    """Seed every RNG a run uses (and set torch's CPU thread count when `threads` > 0)."""
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def evaluate_agent(agent: Agent, env, episodes: int, seed: int) -> dict[str, float]:
    return evaluate(lambda obs: agent.act(obs, deterministic=True), env, episodes, seed).summary()


def config_header(spec: EnvSpec, cfg: Config) -> dict[str, Any]:
    """The checkpoint fields a run never changes (its spec and resolved config). Converting the config
    takes OmegaConf hundreds of milliseconds on a busy machine: a service makes this once, not per save."""
    config = to_dict(cfg)
    return {
        "spec": spec.to_dict(),
        "agent_config": config["agent"],
        "config": config,
        "config_hash": config_hash(cfg),
    }


def state_payload(agent: Agent, header: dict[str, Any], step: int, extra: dict[str, Any]) -> dict[str, Any]:
    state = agent.state_dict()
    policy = {key: state[key] for key in ("actor", "encoder") if key in state}  # what a robot runs
    return {**header, "step": step, **policy, "agent": state, "extra": extra}


def checkpoint_payload(
    agent: Agent, spec: EnvSpec, cfg: Config, step: int, extra: dict[str, Any]
) -> dict[str, Any]:
    return state_payload(agent, config_header(spec, cfg), step, extra)


def _cpu_copy(value: Any) -> Any:
    """Tensors copied to the CPU (nested in dicts and lists); plain values as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def checkpoint_snapshot(
    agent: Agent, header: dict[str, Any], step: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """A checkpoint payload that later updates do not change (a CPU copy): to be saved in the background.
    `header`: `config_header(spec, cfg)`, made once."""
    return _cpu_copy(state_payload(agent, header, step, extra))


def save_training_checkpoint(
    path: Path, agent: Agent, spec: EnvSpec, cfg: Config, step: int, extra: dict[str, Any]
) -> Path:
    return save_checkpoint(path, checkpoint_payload(agent, spec, cfg, step, extra))


def save_actor_snapshot(path: Path, agent: Agent, spec: EnvSpec, cfg: Config, step: int) -> Path:
    """An actor-only checkpoint (what `load_actor` and export read), without the learner state."""
    payload = checkpoint_payload(agent, spec, cfg, step, {})
    del payload["agent"]
    return save_checkpoint(path, payload)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """RNG states as plain values (weights_only checkpoints hold no numpy objects)."""
    state = rng.bit_generator.state
    return {
        "numpy": {
            "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]),
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        },
        "torch": torch.get_rng_state(),
    }


def restore_rng(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    n = saved["numpy"]
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(n["state"]), "inc": int(n["inc"])},
        "has_uint32": n["has_uint32"],
        "uinteger": n["uinteger"],
    }
    torch.set_rng_state(saved["torch"])


def _sizes(spec: EnvSpec) -> str:
    cameras = f", cameras={ {c.name: c.shape for c in spec.cameras} }" if spec.cameras else ""
    return f"obs_dim={spec.obs_dim}, act_dim={spec.act_dim}{cameras} ({spec.name})"


def driver_hint(cameras: tuple[CameraSpec, ...], spec: EnvSpec) -> str:
    """A message's ending that names the driver rendering `cameras` (a dataset's, a checkpoint's) when
    they are the task's own at other sizes than the env's driver renders: "; did you mean env.driver=...?".
    Empty otherwise."""

    def kinds(cams: tuple[CameraSpec, ...]) -> list[tuple[str, int]]:
        return [(c.name, c.channels) for c in cams]

    if cameras == spec.cameras or kinds(cameras) != kinds(spec.cameras):
        return ""
    return f"; did you mean env.driver={simulator_name(dataclasses.replace(spec, cameras=cameras))}?"


def load_agent_checkpoint(path: str, agent: Agent, spec: EnvSpec, *, with_optimizers: bool) -> dict[str, Any]:
    """Load a checkpoint into `agent` after checking it was made for the same observation/action sizes."""
    payload = load_checkpoint(path, map_location=agent.device)
    saved = EnvSpec.from_dict(payload["spec"])
    if (saved.obs_dim, saved.act_dim, saved.cameras) != (spec.obs_dim, spec.act_dim, spec.cameras):
        same_sizes = (saved.obs_dim, saved.act_dim) == (spec.obs_dim, spec.act_dim)
        hint = driver_hint(saved.cameras, spec) if same_sizes else ""
        raise CheckpointError(f"{path}: made for {_sizes(saved)}; this env has {_sizes(spec)}{hint}")
    if "agent" not in payload:
        raise CheckpointError(f"{path}: holds no learner state (an actor-only export cannot be fine-tuned)")
    try:
        agent.load_state_dict(payload["agent"], with_optimizers=with_optimizers)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: does not fit the configured agent ({exc})") from exc
    return payload
