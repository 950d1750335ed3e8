"""Checkpoints: one file with everything the learner needs to resume, loaded without unpickling code.

Layout (a dict of tensors and plain values, read back with `torch.load(weights_only=True)`):
  format, spec (EnvSpec dict), agent_config, config (resolved run config), config_hash, step,
  actor (the actor's state: the only part a robot ever needs), agent (critics, targets, temperature,
  optimisers), extra (loop counters and anything a run needs for an exact resume).
Writes are atomic (temp file + rename) so a crash mid-save never leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from robot_wsrl.networks import ObsNormalizer, TanhGaussianActor
from robot_wsrl.spec import EnvSpec

FORMAT = "robot-wsrl-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or not one of ours."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a robot-wsrl checkpoint (expected format {FORMAT!r})")
    for key in ("spec", "agent_config", "actor", "step", "config_hash"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks the field {key!r}")
    return payload


def build_actor(spec: EnvSpec, actor_hidden: list[int]) -> TanhGaussianActor:
    return TanhGaussianActor(spec.obs_dim, spec.act_dim, actor_hidden, ObsNormalizer(spec.obs_dim))


def load_actor(path: str | Path) -> tuple[TanhGaussianActor, EnvSpec, dict[str, Any]]:
    """The actor alone (CPU, eval mode), its spec and the metadata export needs."""
    payload = load_checkpoint(path)
    spec = EnvSpec.from_dict(payload["spec"])
    actor = build_actor(spec, list(payload["agent_config"]["actor_hidden"]))
    actor.load_state_dict(payload["actor"])
    actor.eval()
    meta = {
        "step": int(payload["step"]),
        "config_hash": str(payload["config_hash"]),
        "agent_config": payload["agent_config"],
        "extra": payload.get("extra", {}),
    }
    return actor, spec, meta
