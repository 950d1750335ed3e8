"""The one agent: SAC with a Q-ensemble, optionally regularised by CQL / Cal-QL, all by configuration.

WSRL, CQL, Cal-QL, RLPD-style and plain SAC differ only in their AgentConfig. One update is one UTD
round exactly as the official code does it: UTD critic steps on consecutive minibatch slices of one
sampled batch (Polyak after each), then one actor and one temperature step on the whole batch.

A camera task's agent also holds the image encoder (`encoder.py`). A batch carrying frames (`image/CAM`,
`next_image/CAM`: pre-training, or train_online) trains it through each critic step; the actor and the
temperature see those steps' features detached. A batch without frames already holds [state, features]
vectors (the replay cached them with `featurize`): the round is then exactly the state task's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.encoder import IMAGE_PREFIX, NEXT_IMAGE_PREFIX, observation_tensors
from robot_wsrl.learn.losses import CQLSettings, actor_loss, cql_alpha_loss, critic_loss, temperature_loss
from robot_wsrl.learn.networks import CameraActor, Networks, TanhGaussianActor

BATCH_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "mc_return")
FEATURIZE_CHUNK = 1024  # frames encoded at once by `featurize` (bounds its activations' memory)


class Agent:
    """Actor, Q-ensemble, target ensemble, temperature (and CQL multiplier) with their optimisers.

    It learns with the networks it is given (`networks.build_networks`, or shapes read from a
    checkpoint), on their device.
    """

    def __init__(self, networks: Networks, cfg: AgentConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.actor, self.critic, self.target_critic, self.encoder = networks
        # input_dim: what actor and critics read; obs_dim: the state part of it (all of it without cameras)
        self.input_dim, self.act_dim = self.actor.obs_dim, self.actor.act_dim
        self.obs_dim = self.input_dim - (self.encoder.out_dim if self.encoder is not None else 0)
        self.cameras = self.encoder.camera_names if self.encoder is not None else ()
        self.device = next(self.actor.parameters()).device
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature), device=self.device))
        self.log_cql_alpha = nn.Parameter(torch.zeros((), device=self.device))

        # the official default: -dim(A)/2 (its SAC replaces any target >= 0 by that)
        self.target_entropy = (
            float(cfg.target_entropy) if cfg.target_entropy is not None else -self.act_dim / 2.0
        )
        self.cql = self._cql_settings(cfg)
        # one multi-tensor kernel per step: fused Adam on CPU (a loop of small ops costs more than the
        # update itself there), foreach on CUDA where the update may be traced into a compiled graph
        adam = dict(foreach=True) if self.device.type == "cuda" else dict(fused=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, **adam)
        # the encoder learns with the critics (the actor's loss never reaches it)
        encoder_params = list(self.encoder.parameters()) if self.encoder is not None else []
        self.critic_opt = torch.optim.Adam(
            [*self.critic.parameters(), *encoder_params], lr=cfg.critic_lr, **adam
        )
        self.temperature_opt = torch.optim.Adam([self.log_temperature], lr=cfg.temperature_lr, **adam)
        self.cql_alpha_opt = torch.optim.Adam([self.log_cql_alpha], lr=cfg.critic_lr, **adam)
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        self.compiled = cfg.compile == "on" or (cfg.compile == "auto" and self.device.type == "cuda")
        self._update = torch.compile(self._update_round) if self.compiled else self._update_round
        self.updates = 0

    @staticmethod
    def _cql_settings(cfg: AgentConfig) -> CQLSettings | None:
        if cfg.regularizer == "none":
            return None
        c = cfg.cql
        return CQLSettings(
            alpha=c.alpha,
            num_samples=c.num_samples,
            importance_sampling=c.importance_sampling,
            temperature=c.temperature,
            calql=cfg.regularizer == "calql",
            lagrange=c.lagrange,
            target_action_gap=c.target_action_gap,
            max_target_backup=c.max_target_backup,
        )

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    # ---- acting -------------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: np.ndarray | Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """Normalised action(s) in [-1, 1] for one observation or a batch (a camera task's: its parts)."""
        if self.encoder is not None:
            state, frames = observation_tensors(obs, self.cameras, self.device)  # type: ignore[arg-type]
            x = torch.cat([state, self.encoder(*frames)], dim=-1)
            x = x[0] if np.ndim(obs["state"]) == 1 else x  # type: ignore[index]
        else:
            x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return action.cpu().numpy()

    def policy_module(self) -> TanhGaussianActor | CameraActor:
        """What a robot runs (and export writes): the actor, behind the encoder on a camera task."""
        return self.actor if self.encoder is None else CameraActor(self.encoder, self.actor)

    @property
    def replay_featurize(self) -> Callable[[np.ndarray, Mapping[str, np.ndarray]], np.ndarray] | None:
        """What the online replay applies to arriving transitions: `featurize` while the encoder is frozen
        online (the default), None for a state task or an encoder trained online (batches carry frames)."""
        if self.encoder is None or self.cfg.encoder.train_online:
            return None
        return self.featurize

    @torch.no_grad()
    def featurize(self, state: np.ndarray, frames: Mapping[str, np.ndarray]) -> np.ndarray:
        """[state, encoder features] float32 [n, input_dim] of n observations (no augmentation): the
        vectors a frozen encoder's replay caches and the UTD round samples as obs / next_obs."""
        if self.encoder is None:
            raise ValueError("featurize needs a camera task's agent (this one has no image encoder)")
        state = np.asarray(state, dtype=np.float32)
        out = np.empty((state.shape[0], self.input_dim), np.float32)
        out[:, : self.obs_dim] = state
        for start in range(0, state.shape[0], FEATURIZE_CHUNK):
            rows = slice(start, start + FEATURIZE_CHUNK)
            chunk = [torch.as_tensor(frames[name][rows], device=self.device) for name in self.cameras]
            out[rows, self.obs_dim :] = self.encoder(*chunk).cpu().numpy()
        return out

    # ---- learning -----------------------------------------------------------------------------

    def to_batch(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        keys = [*BATCH_KEYS, *(p + name for name in self.cameras for p in (IMAGE_PREFIX, NEXT_IMAGE_PREFIX))]
        return {k: torch.as_tensor(arrays[k], device=self.device) for k in keys if k in arrays}

    def _carries_frames(self, batch: Mapping[str, torch.Tensor]) -> bool:
        return any(key.startswith(IMAGE_PREFIX) for key in batch)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One UTD round on a batch of utd x batch_size transitions; returns detached metrics."""
        expected = self.cfg.utd * self.cfg.batch_size
        if batch["reward"].shape[0] != expected:
            raise ValueError(
                f"update needs utd x batch_size = {expected} transitions, got {batch['reward'].shape[0]}"
            )
        frames = self._carries_frames(batch)
        if frames and self.encoder is None:
            raise ValueError("the batch carries camera frames but this agent has no image encoder")
        width = self.obs_dim if frames else self.input_dim
        if batch["obs"].shape[-1] != width:
            raise ValueError(
                f"update needs obs of width {width} ("
                + ("the state beside the frames" if frames else "[state, features] cached by featurize")
                + f"), got {batch['obs'].shape[-1]}"
            )
        info = self._update(batch)
        self.updates += 1
        return info

    def _update_round(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        temperature = self.temperature.detach()
        info: dict[str, torch.Tensor] = {}
        frames = self._carries_frames(batch)
        obs, next_obs = [], []
        for k in range(cfg.utd):
            part = {key: value[k * cfg.batch_size : (k + 1) * cfg.batch_size] for key, value in batch.items()}
            if frames:
                part = self._encoded(part)
                obs.append(part["obs"].detach())
                next_obs.append(part["next_obs"])
            info = self._critic_step(part, temperature)
        # the actor and the temperature read the features the critic steps computed, detached (DrQ)
        batch_obs = torch.cat(obs) if frames else batch["obs"]
        batch_next_obs = torch.cat(next_obs) if frames else batch["next_obs"]
        # as the official code: the temperature sees the entropy of fresh samples at s' from the actor
        # before its step (several per state where the CQL max-target backup samples several)
        with torch.no_grad():
            repeat = self.cql.num_samples if self.cql is not None and self.cql.max_target_backup else None
            next_log_prob = self.actor.sample(batch_next_obs, repeat)[1]
        actor_info = self._actor_step(batch_obs, temperature)
        t_loss = temperature_loss(self.log_temperature, next_log_prob, self.target_entropy)
        self.temperature_opt.zero_grad(set_to_none=True)
        t_loss.backward()
        self.temperature_opt.step()
        return (
            info
            | actor_info
            | {"temperature": self.temperature.detach(), "temperature_loss": t_loss.detach()}
        )

    def _encoded(self, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A minibatch with [state, features] as obs and next_obs, from randomly shifted frames: the
        features at s carry the critic loss's gradient to the encoder, those at s' none (DrQ-v2's target)."""
        assert self.encoder is not None
        obs = torch.cat([part["obs"], self.encoder.features(part, IMAGE_PREFIX, augment=True)], dim=-1)
        with torch.no_grad():
            next_features = self.encoder.features(part, NEXT_IMAGE_PREFIX, augment=True)
        return part | {"obs": obs, "next_obs": torch.cat([part["next_obs"], next_features], dim=-1)}

    def _critic_step(
        self, batch: dict[str, torch.Tensor], temperature: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        loss, info = critic_loss(
            self.critic,
            self.target_critic,
            self.actor,
            batch,
            temperature,
            discount=self.cfg.discount,
            num_target_critics=self.cfg.num_target_critics,
            backup_entropy=self.cfg.backup_entropy,
            cql=self.cql,
            cql_alpha=self.log_cql_alpha.exp(),
        )
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.tau)
        if self.cql is not None and self.cql.lagrange:
            a_loss = cql_alpha_loss(
                self.log_cql_alpha, info["cql_gap"], self.cql.alpha, self.cql.target_action_gap
            )
            self.cql_alpha_opt.zero_grad(set_to_none=True)
            a_loss.backward()
            self.cql_alpha_opt.step()
            info["cql_alpha"] = self.log_cql_alpha.detach().exp()
        return info | {"critic_loss": loss.detach()}

    def _actor_step(self, obs: torch.Tensor, temperature: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, info = actor_loss(self.actor, self.critic, obs, temperature, self.cfg.actor_objective)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return info

    @torch.no_grad()
    def mean_q(self, obs: torch.Tensor, action: torch.Tensor) -> float:
        """Mean Q over the ensemble on given pairs: the trace that shows a post-warmup collapse."""
        return float(self.critic(obs, action).mean())

    # ---- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        encoder = {"encoder": self.encoder.state_dict()} if self.encoder is not None else {}
        return encoder | {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_temperature": self.log_temperature.detach().clone(),
            "log_cql_alpha": self.log_cql_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "temperature_opt": self.temperature_opt.state_dict(),
            "cql_alpha_opt": self.cql_alpha_opt.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any], *, with_optimizers: bool = True) -> None:
        """Load networks and temperature; optimiser moments too unless a new phase starts fresh."""
        if (self.encoder is None) != ("encoder" not in state):
            raise KeyError("encoder: the state and the agent disagree on having an image encoder")
        if self.encoder is not None:
            self.encoder.load_state_dict(state["encoder"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])
            self.log_cql_alpha.copy_(state["log_cql_alpha"])
        if with_optimizers:
            self.actor_opt.load_state_dict(state["actor_opt"])
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.temperature_opt.load_state_dict(state["temperature_opt"])
            self.cql_alpha_opt.load_state_dict(state["cql_alpha_opt"])
            self.updates = int(state["updates"])
