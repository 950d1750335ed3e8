"""The one agent: SAC with a Q-ensemble, optionally regularised by CQL / Cal-QL, all by configuration.

WSRL, CQL, Cal-QL, RLPD-style and plain SAC differ only in their AgentConfig. One update is one UTD
round exactly as the official code does it: UTD critic steps on consecutive minibatch slices of one
sampled batch (Polyak after each), then one actor and one temperature step on the whole batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.losses import CQLSettings, actor_loss, cql_alpha_loss, critic_loss, temperature_loss
from robot_wsrl.learn.networks import Networks

BATCH_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "mc_return")


class Agent:
    """Actor, Q-ensemble, target ensemble, temperature (and CQL multiplier) with their optimisers.

    It learns with the networks it is given (`networks.build_networks`, or shapes read from a
    checkpoint), on their device.
    """

    def __init__(self, networks: Networks, cfg: AgentConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.actor, self.critic, self.target_critic = networks
        self.obs_dim, self.act_dim = self.actor.obs_dim, self.actor.act_dim
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
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, **adam)
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
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Normalised action(s) in [-1, 1] for one observation or a batch."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return action.cpu().numpy()

    # ---- learning -----------------------------------------------------------------------------

    def to_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(arrays[k], device=self.device) for k in BATCH_KEYS if k in arrays}

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One UTD round on a batch of utd x batch_size transitions; returns detached metrics."""
        expected = self.cfg.utd * self.cfg.batch_size
        if batch["reward"].shape[0] != expected:
            raise ValueError(
                f"update needs utd x batch_size = {expected} transitions, got {batch['reward'].shape[0]}"
            )
        info = self._update(batch)
        self.updates += 1
        return info

    def _update_round(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        temperature = self.temperature.detach()
        info: dict[str, torch.Tensor] = {}
        for k in range(cfg.utd):
            part = {key: value[k * cfg.batch_size : (k + 1) * cfg.batch_size] for key, value in batch.items()}
            info = self._critic_step(part, temperature)
        # as the official code: the temperature sees the entropy of fresh samples at s' from the actor
        # before its step (several per state where the CQL max-target backup samples several)
        with torch.no_grad():
            repeat = self.cql.num_samples if self.cql is not None and self.cql.max_target_backup else None
            next_log_prob = self.actor.sample(batch["next_obs"], repeat)[1]
        actor_info = self._actor_step(batch["obs"], temperature)
        t_loss = temperature_loss(self.log_temperature, next_log_prob, self.target_entropy)
        self.temperature_opt.zero_grad(set_to_none=True)
        t_loss.backward()
        self.temperature_opt.step()
        return (
            info
            | actor_info
            | {"temperature": self.temperature.detach(), "temperature_loss": t_loss.detach()}
        )

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
        return {
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
