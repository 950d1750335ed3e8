"""Checkpoints: one file with everything the learner needs to resume, loaded without unpickling code.

Layout (a dict of tensors and plain values, read back with `torch.load(weights_only=True)`):
  format, spec (EnvSpec dict), agent_config, config (resolved run config), config_hash, step,
  actor (the actor's state: with a camera task's encoder, the only part a robot ever needs), encoder (a
  camera task's image encoder's state; absent for a state task), agent (critics, targets, temperature,
  optimisers; the encoder again), extra (loop counters and anything a run needs for an exact resume).
Writes are atomic and durable (temp file + fsync + rename + fsync of the folder), so a crash mid-save
never leaves a truncated checkpoint. `CheckpointWriter` makes them in a background thread, so a service
loop (the learner) snapshots its state and goes on while the file is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.config import AgentConfig, EncoderConfig
from robot_wsrl.learn.encoder import ImageEncoder
from robot_wsrl.learn.networks import CameraActor, TanhGaussianActor

FORMAT = "robot-wsrl-checkpoint/1"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or not one of ours."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class CheckpointWriter:
    """Saves `snapshot()`s to `path` in a background thread: at most one write in flight, and a newer
    snapshot replaces one still waiting (only the newest state matters). `close()` saves a final one.

    `snapshot` runs in the caller's thread and must return a payload that no later training step changes
    (a copy of the tensors), so the write never races the loop that goes on training.
    """

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path, self._snapshot = path, snapshot
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a write a kill cut short
            stale.unlink()
        self.written = 0
        self.failed = 0
        self._waiting: dict[str, Any] | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def save(self) -> None:
        """Snapshot now, write soon (never waits for a write)."""
        payload = self._snapshot()
        with self._cond:
            self._waiting = payload
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._closed:
                    self._cond.wait()
                if self._waiting is None:
                    return
                payload, self._waiting = self._waiting, None
            try:
                save_checkpoint(self.path, payload)
                self.written += 1
            except Exception:  # a full disk must not kill the service: logged, counted, retried next time
                self.failed += 1
                log.exception("could not save %s", self.path)

    def close(self, timeout_s: float = 120.0) -> None:
        """Save the state as it is now, write whatever waits, and stop."""
        self.save()
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        # Not torch's text: for a file it cannot unpickle safely it advises weights_only=False, i.e. to run
        # whatever code the file holds.
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}): "
            "give a checkpoint.pt that pretrain or finetune wrote"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a robot-wsrl checkpoint (expected format {FORMAT!r})")
    for key in ("spec", "agent_config", "actor", "step", "config_hash"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks the field {key!r}")
    _drop_legacy_normaliser(path, payload)
    return payload


# Checkpoints written while the networks had an observation normaliser hold its buffers in the actor's and
# the critics' states. Nothing ever fitted it (identity: mean 0, std 1), so they load without it.
_LEGACY_NORMALISER = ("normalizer.mean", "normalizer.std")


def _drop_legacy_normaliser(path: Path, payload: dict[str, Any]) -> None:
    agent = payload.get("agent", {})
    states = [payload["actor"], *(agent[k] for k in ("actor", "critic", "target_critic") if k in agent)]
    for state in states:
        mean, std = (state.pop(key, None) for key in _LEGACY_NORMALISER)
        if mean is not None and not (bool((mean == 0).all()) and std is not None and bool((std == 1).all())):
            raise CheckpointError(
                f"{path}: holds a fitted observation normaliser, which this version no longer applies"
            )


# The agent-config keys that decide the networks' shapes (what a checkpoint's weights fit), and the
# value of each key added later for checkpoints written before it existed.
SHAPE_KEYS = ("actor_hidden", "actor_layer_norm", "critic_hidden", "num_critics", "critic_layer_norm")
ENCODER_SHAPE_KEYS = ("channels", "strides", "feature_dim")  # agent.encoder's keys that shape its weights
_BEFORE_ADDED = {"actor_layer_norm": False}  # the actor had no LayerNorm before the official default


def network_shapes(agent_config: dict[str, Any]) -> dict[str, Any]:
    """The network shapes a checkpoint's saved agent config describes (old checkpoints included; an
    actor-only export may describe the actor alone)."""
    keys = [key for key in SHAPE_KEYS if key in agent_config or key in _BEFORE_ADDED]
    return {key: agent_config.get(key, _BEFORE_ADDED.get(key)) for key in keys}


def encoder_shapes(cfg: EncoderConfig, agent_config: dict[str, Any]) -> EncoderConfig:
    """`cfg` with the encoder shapes a checkpoint's agent config saved (how it trains stays `cfg`'s)."""
    saved = agent_config.get("encoder", {})
    return dataclasses.replace(cfg, **{key: saved[key] for key in ENCODER_SHAPE_KEYS if key in saved})


def with_checkpoint_shapes(cfg: AgentConfig, agent_config: dict[str, Any]) -> AgentConfig:
    """`cfg` with the network shapes of a checkpoint it starts from: the weights decide them."""
    return dataclasses.replace(
        cfg, **network_shapes(agent_config), encoder=encoder_shapes(cfg.encoder, agent_config)
    )


def build_actor(spec: EnvSpec, actor_hidden: list[int], layer_norm: bool = False) -> TanhGaussianActor:
    return TanhGaussianActor(spec.obs_dim, spec.act_dim, actor_hidden, layer_norm)


def build_camera_actor(
    spec: EnvSpec, actor_hidden: list[int], layer_norm: bool, encoder: EncoderConfig
) -> CameraActor:
    """A camera task's policy: the encoder of `encoder` for the spec's cameras, and the actor on
    [state, features]."""
    image_encoder = ImageEncoder(spec.cameras, encoder)
    actor = TanhGaussianActor(spec.obs_dim + image_encoder.out_dim, spec.act_dim, actor_hidden, layer_norm)
    return CameraActor(image_encoder, actor)


def load_actor(path: str | Path) -> tuple[TanhGaussianActor | CameraActor, EnvSpec, dict[str, Any]]:
    """The policy alone (CPU, eval mode, in the shape it was saved with: the actor, behind its image
    encoder on a camera task), its spec and the metadata export needs."""
    payload = load_checkpoint(path)
    spec = EnvSpec.from_dict(payload["spec"])
    shapes = network_shapes(payload["agent_config"])
    hidden, layer_norm = list(shapes["actor_hidden"]), shapes["actor_layer_norm"]
    actor: TanhGaussianActor | CameraActor
    if spec.cameras:
        if "encoder" not in payload:
            raise CheckpointError(f"{path}: a camera task's checkpoint without its image encoder")
        encoder = encoder_shapes(EncoderConfig(), payload["agent_config"])
        actor = build_camera_actor(spec, hidden, layer_norm, encoder)
        actor.encoder.load_state_dict(payload["encoder"])
        actor.actor.load_state_dict(payload["actor"])
    else:
        actor = build_actor(spec, hidden, layer_norm)
        actor.load_state_dict(payload["actor"])
    actor.eval()
    meta = {
        "step": int(payload["step"]),
        "config_hash": str(payload["config_hash"]),
        "agent_config": payload["agent_config"],
        "extra": payload.get("extra", {}),
    }
    return actor, spec, meta
