"""The agent's losses as pure functions of tensors and modules.

Each loss touches only its own parameters: the critic loss samples the actor and evaluates the targets
without gradients; the actor loss evaluates the critics with detached weights (only dQ/da flows);
the temperature loss sees detached log-probabilities. CQL and Cal-QL are one regulariser with a floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from robot_wsrl.learn.networks import QEnsemble, TanhGaussianActor
from robot_wsrl.learn.networks import reduce_ensemble as reduce_ensemble  # re-exported: the actor's reduction


@dataclass(frozen=True)
class CQLSettings:
    """The CQL / Cal-QL regulariser's knobs (see configs/agent/cql.yaml)."""

    alpha: float = 5.0
    num_samples: int = 10
    importance_sampling: bool = True
    temperature: float = 1.0
    calql: bool = False
    lagrange: bool = False
    target_action_gap: float = 1.0
    max_target_backup: bool = True


def draw_members(ensemble_size: int, count: int, device: torch.device) -> torch.Tensor:
    """`count` ensemble members drawn uniformly with replacement (the official code's randint)."""
    return torch.randint(ensemble_size, (count,), device=device)


def td_target(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    next_q: torch.Tensor,
    next_log_prob: torch.Tensor,
    discount: float,
    temperature: torch.Tensor,
    backup_entropy: bool,
) -> torch.Tensor:
    """r + gamma (1 - terminated) (min_i Q_i(s', a') [- alpha log pi(a'|s')]).

    `next_q` is [M, B]: the M target critics drawn for this step; the minimum is over them.
    Truncated transitions still bootstrap: only `terminated` cuts the backup.
    """
    next_v = next_q.min(dim=0).values
    if backup_entropy:
        next_v = next_v - temperature * next_log_prob
    return reward + discount * (1.0 - terminated) * next_v


def cql_gap(
    q_data: torch.Tensor,
    q_random: torch.Tensor,
    q_pi_current: torch.Tensor,
    q_pi_next: torch.Tensor,
    log_prob_current: torch.Tensor,
    log_prob_next: torch.Tensor,
    act_dim: int,
    settings: CQLSettings,
    mc_return: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-critic, per-sample CQL gap: soft-max of Q over sampled actions minus Q on data actions.

    Shapes: q_data [E, B]; q_random, q_pi_* [E, B, N]; log_prob_* [B, N]; mc_return [B].
    With Cal-QL the Q-values of policy actions are floored at the Monte-Carlo return-to-go first.
    Returns (gap [E, B], fraction of policy Q-values that the Cal-QL floor raised).
    """
    floored = torch.zeros((), device=q_data.device)
    if settings.calql:
        if mc_return is None:
            raise ValueError("Cal-QL needs the Monte-Carlo return-to-go of every sampled transition")
        floor = mc_return[None, :, None]
        floored = torch.cat([q_pi_current < floor, q_pi_next < floor], dim=-1).float().mean()
        q_pi_current = torch.maximum(q_pi_current, floor)
        q_pi_next = torch.maximum(q_pi_next, floor)
    if settings.importance_sampling:
        uniform_log_density = act_dim * math.log(0.5)  # uniform on [-1, 1]^act_dim
        candidates = torch.cat(
            [q_random - uniform_log_density, q_pi_next - log_prob_next, q_pi_current - log_prob_current],
            dim=-1,
        )
    else:
        candidates = torch.cat([q_random, q_data.unsqueeze(-1), q_pi_next, q_pi_current], dim=-1)
    t = settings.temperature
    soft_max_q = torch.logsumexp(candidates / t, dim=-1) * t
    return soft_max_q - q_data, floored


def critic_loss(
    critic: QEnsemble,
    target_critic: QEnsemble,
    actor: TanhGaussianActor,
    batch: dict[str, torch.Tensor],
    temperature: torch.Tensor,
    *,
    discount: float,
    num_target_critics: int,
    backup_entropy: bool,
    cql: CQLSettings | None = None,
    cql_alpha: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared TD error over all critics, plus the CQL / Cal-QL regulariser when `cql` is given.

    As the official code: the target is the min over `num_target_critics` target members drawn at
    random (with replacement), and the CQL gap is taken on that many members drawn again, so only their
    sampled-action Q-values are computed. `cql_alpha` is the Lagrange multiplier when settings.lagrange
    (its own loss is the negated penalty, see `cql_alpha_loss`); otherwise settings.alpha is used.
    """
    obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
    with torch.no_grad():
        members = draw_members(critic.ensemble_size, num_target_critics, obs.device)
        if cql is not None and cql.max_target_backup:
            next_action, next_log_prob = actor.sample(next_obs, cql.num_samples)
            next_obs_rep = next_obs.unsqueeze(1).expand(-1, cql.num_samples, -1)
            next_q_all = target_critic(next_obs_rep, next_action, members)  # [M, B, N]
            best = next_q_all.min(dim=0).values.argmax(dim=-1, keepdim=True)  # [B, 1]
            next_q = next_q_all.gather(-1, best.expand(next_q_all.shape[0], -1, 1)).squeeze(-1)
            next_log_prob = next_log_prob.gather(-1, best).squeeze(-1)
        else:
            next_action, next_log_prob = actor.sample(next_obs)
            next_q = target_critic(next_obs, next_action, members)
        target = td_target(
            batch["reward"], batch["terminated"], next_q, next_log_prob, discount, temperature, backup_entropy
        )
    q = critic(obs, action)
    td_loss = (q - target).pow(2).mean()
    info = {"critic_td_loss": td_loss.detach(), "q_mean": q.detach().mean(), "target_q_mean": target.mean()}
    if cql is None:
        return td_loss, info

    batch_size, n = obs.shape[0], cql.num_samples
    obs_rep = obs.unsqueeze(1).expand(-1, n, -1)
    with torch.no_grad():
        random_action = torch.rand(batch_size, n, action.shape[-1], device=obs.device) * 2.0 - 1.0
        pi_action, pi_log_prob = actor.sample(obs, n)
        next_pi_action, next_pi_log_prob = actor.sample(next_obs, n)
        penalised = draw_members(critic.ensemble_size, num_target_critics, obs.device)
    # one critic pass over all 3N sampled actions of every state, for the penalised members only
    sampled = torch.cat([random_action, pi_action, next_pi_action], dim=1)
    q_sampled = critic(obs_rep.repeat(1, 3, 1), sampled, penalised)
    q_random, q_pi, q_pi_next = q_sampled.split(n, dim=-1)
    gap, floored = cql_gap(
        q.index_select(0, penalised),
        q_random,
        q_pi,
        q_pi_next,
        pi_log_prob,
        next_pi_log_prob,
        action.shape[-1],
        cql,
        batch.get("mc_return"),
    )
    if cql.lagrange:
        if cql_alpha is None:
            raise ValueError("CQL with a Lagrange multiplier needs cql_alpha")
        penalty = cql_alpha.detach() * cql.alpha * (gap.mean(dim=1) - cql.target_action_gap)
        penalty = penalty.mean()
    else:
        penalty = cql.alpha * gap.mean()
    info |= {"cql_gap": gap.detach().mean(), "cql_penalty": penalty.detach(), "calql_floored": floored}
    return td_loss + penalty, info


def cql_alpha_loss(
    log_cql_alpha: torch.Tensor, gap_mean: torch.Tensor, alpha: float, target_gap: float
) -> torch.Tensor:
    """Lagrange dual step: the multiplier grows while the CQL gap exceeds its target."""
    multiplier = log_cql_alpha.exp().clamp(0.0, 1e6)
    return -(multiplier * alpha * (gap_mean.detach() - target_gap))


def actor_loss(
    actor: TanhGaussianActor,
    critic: QEnsemble,
    obs: torch.Tensor,
    temperature: torch.Tensor,
    objective: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha log pi(a|s) - Q(s, a), a ~ pi, with Q the min (WSRL) or mean (RLPD) over all critics."""
    action, log_prob = actor.sample(obs)
    q = critic.actor_value(obs, action, objective)
    loss = (temperature.detach() * log_prob - q).mean()
    return loss, {"actor_loss": loss.detach(), "entropy": -log_prob.detach().mean()}


def temperature_loss(
    log_temperature: nn.Parameter, log_prob: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """alpha (H(pi) - H_target): alpha rises when the policy's entropy falls below the target."""
    return log_temperature.exp() * (-log_prob.detach() - target_entropy).mean()
