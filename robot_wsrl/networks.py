"""Neural networks of the agent: a tanh-Gaussian actor and a vectorised Q-ensemble.

The ensemble keeps all E critics in batched weights shaped [E, in, out] (one batched matmul per layer
instead of a Python loop over E modules), which is both faster and what makes one UTD round a single
graph when compiled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0


class ObsNormalizer(nn.Module):
    """Fixed affine observation normalisation, stored as buffers so that export bakes it into the graph."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-3) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype).clamp_min(min_std))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), sigma(s))): state-dependent std, actions in [-1, 1]^act_dim."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], normalizer: ObsNormalizer) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.normalizer = normalizer
        self.net = _mlp(obs_dim, hidden, 2 * act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and clamped log-std: exactly what the exported ONNX graph outputs."""
        mean, log_std = self.net(self.normalizer(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample and its log-probability (tanh change of variables included).

        With `num_samples`, returns shape [..., num_samples, act_dim] (CQL draws several per state).
        """
        mean, log_std = self(obs)
        if num_samples is not None:
            mean = mean.unsqueeze(-2).expand(*mean.shape[:-1], num_samples, self.act_dim)
            log_std = log_std.unsqueeze(-2).expand_as(mean)
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        return torch.tanh(pre_tanh), tanh_gaussian_log_prob(pre_tanh, noise, log_std)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(obs)[0])


def tanh_gaussian_log_prob(
    pre_tanh: torch.Tensor, noise: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log pi(tanh(u)) summed over action dims; `noise` is (u - mu) / sigma, reused to avoid a division.

    The tanh correction uses log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
    """
    gaussian = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    correction = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (gaussian - correction).sum(-1)


def _pick(param: torch.Tensor, members: torch.Tensor | None, detach: bool) -> torch.Tensor:
    param = param.detach() if detach else param
    return param if members is None else param.index_select(0, members)


class EnsembleLinear(nn.Module):
    """E independent linear layers evaluated as one batched matmul: weight [E, in, out], bias [E, 1, out]."""

    def __init__(self, ensemble_size: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # the same init nn.Linear gives each member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, x: torch.Tensor, members: torch.Tensor | None = None, detach: bool = False
    ) -> torch.Tensor:
        """x: [M, B, in] (per member) or [B, in] (shared by all members) -> [M, B, out].

        `members` selects a subset of the ensemble (M = len(members)); `detach` evaluates without
        gradients to the weights (the actor step needs dQ/da only).
        """
        weight, bias = _pick(self.weight, members, detach), _pick(self.bias, members, detach)
        if x.dim() == 2:
            return torch.matmul(x, weight) + bias
        return torch.baddbmm(bias, x, weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over features with a separate scale and shift for each ensemble member."""

    def __init__(self, ensemble_size: int, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(
        self, x: torch.Tensor, members: torch.Tensor | None = None, detach: bool = False
    ) -> torch.Tensor:
        weight, bias = _pick(self.weight, members, detach), _pick(self.bias, members, detach)
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=self.eps), weight)


class QEnsemble(nn.Module):
    """E critics Q_i(s, a), MLPs with optional LayerNorm after each hidden layer, evaluated in one pass."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        ensemble_size: int,
        layer_norm: bool,
        normalizer: ObsNormalizer,
    ) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.layer_norm = layer_norm
        self.normalizer = normalizer
        dims = [obs_dim + act_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(ensemble_size, i, o) for i, o in itertools.pairwise(dims))
        self.norms = (
            nn.ModuleList(EnsembleLayerNorm(ensemble_size, o) for o in dims[1:]) if layer_norm else None
        )
        self.out = EnsembleLinear(ensemble_size, dims[-1], 1)

    def forward(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        members: torch.Tensor | None = None,
        detach: bool = False,
    ) -> torch.Tensor:
        """obs [..., obs_dim], act [..., act_dim] -> Q [M, ...] for the selected members (all by default)."""
        lead = obs.shape[:-1]
        x = torch.cat([self.normalizer(obs), act], dim=-1).reshape(-1, obs.shape[-1] + act.shape[-1])
        for i, linear in enumerate(self.hidden):
            x = linear(x, members, detach)
            if self.norms is not None:
                x = self.norms[i](x, members, detach)
            x = F.relu(x)
        q = self.out(x, members, detach)
        return q.reshape(q.shape[0], *lead)
