"""Neural networks of the agent: a tanh-Gaussian actor and a vectorised Q-ensemble, and their builder.

The ensemble keeps all E critics in batched weights shaped [E, in, out]: one batched matmul per layer
instead of a Python loop over E modules. Its training-time passes run the hand-written kernels of
`kernels.py`; `QEnsemble(fused=False)` composes the layer modules under plain autograd, the reference
they are tested against. `build_networks` makes every network an `Agent` learns with, initialised as the
official WSRL code does (orthogonal, gain sqrt(2); `kernel_scale_final` for each trunk's last hidden layer).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from robot_wsrl.core.spec import CameraSpec
from robot_wsrl.learn.allocator import tune_cpu_allocator
from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.encoder import ImageEncoder
from robot_wsrl.learn.kernels import EnsembleMLPFunction, ensemble_min_q, ensemble_mlp_forward

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int, layer_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), *([nn.LayerNorm(width)] if layer_norm else []), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), sigma(s))): state-dependent std, actions in [-1, 1]^act_dim.

    An MLP with optional LayerNorm after each hidden layer; one output layer holds both heads (mean rows,
    then log-std rows), so the exported graph has one output matrix.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.net = _mlp(obs_dim, hidden, 2 * act_dim, layer_norm)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and clamped log-std: exactly what the exported ONNX graph outputs."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
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


class CameraActor(nn.Module):
    """The policy a camera robot runs: state and raw frames -> the actor's (mean, log_std).

    `forward(state [B, obs_dim] float32, *frames uint8 [B, H, W, C])` is the exported graph's signature."""

    def __init__(self, encoder: ImageEncoder, actor: TanhGaussianActor) -> None:
        super().__init__()
        self.encoder, self.actor = encoder, actor
        self.obs_dim, self.act_dim = actor.obs_dim - encoder.out_dim, actor.act_dim
        self.camera_names = encoder.camera_names

    def forward(self, state: torch.Tensor, *frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(torch.cat([state, self.encoder(*frames)], dim=-1))


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
    """E critics Q_i(s, a), MLPs with optional LayerNorm after each hidden layer, evaluated in one pass.

    With `fused` (the default) a forward that needs gradients runs as one autograd node with a
    hand-written backward (`EnsembleMLPFunction`); `fused=False` composes the layer modules under plain
    autograd, the reference that the fused path is tested against.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        ensemble_size: int,
        layer_norm: bool,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.layer_norm = layer_norm
        self.fused = fused
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
        obs, act = self._flat_inputs(obs, act)
        if not self.fused:
            q = self._composed(obs, act, members, detach)
        else:
            params = self._params(members, detach)
            tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (obs, act, *params))
            if tracked:
                q = EnsembleMLPFunction.apply(obs, act, self.layer_norm, self._eps, *params)
            else:
                q = ensemble_mlp_forward(obs, act, params, self.layer_norm, self._eps)
        return q.reshape(q.shape[0], *lead)

    def actor_value(self, obs: torch.Tensor, act: torch.Tensor, objective: str) -> torch.Tensor:
        """Q(s, a) reduced over all members ("min" or "mean"), differentiable in the action only.

        This is the actor step's critic evaluation. With "min" on CPU the backward runs through each
        sample's minimising member alone (`EnsembleMinQFunction`): the same gradient, without the E-1
        members that contribute zeros. Elsewhere it is the dense pass with detached weights.
        """
        sparse = (
            self.fused
            and objective == "min"
            and obs.device.type == "cpu"
            and torch.is_grad_enabled()
            and act.requires_grad
            and not obs.requires_grad
        )
        if not sparse:
            return reduce_ensemble(self(obs, act, detach=True), objective)
        lead = obs.shape[:-1]
        obs, act = self._flat_inputs(obs, act)
        return ensemble_min_q(obs, act, self.layer_norm, self._eps, *self._params(None, True)).reshape(lead)

    def _flat_inputs(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return obs.reshape(-1, obs.shape[-1]), act.reshape(-1, act.shape[-1])

    @property
    def _eps(self) -> float:
        return self.norms[0].eps if self.norms is not None else 0.0

    def _params(self, members: torch.Tensor | None, detach: bool) -> list[torch.Tensor]:
        """Parameters in `ensemble_mlp_forward`'s order, member subset and detached as asked."""
        params: list[torch.Tensor] = []
        for i, linear in enumerate(self.hidden):
            params += [linear.weight, linear.bias]
            if self.norms is not None:
                params += [self.norms[i].weight, self.norms[i].bias]
        params += [self.out.weight, self.out.bias]
        return [_pick(p, members, detach) for p in params]

    def _composed(
        self, obs: torch.Tensor, act: torch.Tensor, members: torch.Tensor | None, detach: bool
    ) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1)
        for i, linear in enumerate(self.hidden):
            x = linear(x, members, detach)
            if self.norms is not None:
                x = self.norms[i](x, members, detach)
            x = F.relu(x)
        return self.out(x, members, detach).squeeze(-1)


def reduce_ensemble(q_all: torch.Tensor, objective: str) -> torch.Tensor:
    """The actor's value of an ensemble's Q [E, ...]: min (WSRL, conservative) or mean (RLPD)."""
    if objective == "min":
        return q_all.min(dim=0).values
    if objective == "mean":
        return q_all.mean(dim=0)
    raise ValueError(f"actor objective must be 'min' or 'mean', got {objective!r}")


# ---- building and initialising ------------------------------------------------------------------------

SQRT2 = math.sqrt(2.0)


class Networks(NamedTuple):
    """What an Agent learns with: the actor, the critic ensemble and its target. They read raw
    observations, as the official WSRL code does (no observation normalisation). A camera task adds the
    image encoder they share: actor and critics then read [state, features]."""

    actor: TanhGaussianActor
    critic: QEnsemble
    target_critic: QEnsemble
    encoder: ImageEncoder | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_networks(
    obs_dim: int,
    act_dim: int,
    cfg: AgentConfig,
    device: str | torch.device = "cpu",
    cameras: Sequence[CameraSpec] = (),
) -> Networks:
    """The actor, critics and target critics of `cfg`, initialised as the official code does, on `device`;
    with `cameras`, the image encoder of cfg.encoder too (then actor and critics read obs_dim + its
    features).

    The target starts as a copy of the critics. On the CPU the allocator is tuned for the update's
    activations (see `allocator.tune_cpu_allocator`).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    encoder = ImageEncoder(cameras, cfg.encoder) if cameras else None
    in_dim = obs_dim + (encoder.out_dim if encoder is not None else 0)
    actor = TanhGaussianActor(in_dim, act_dim, cfg.actor_hidden, cfg.actor_layer_norm)
    critic = QEnsemble(in_dim, act_dim, cfg.critic_hidden, cfg.num_critics, cfg.critic_layer_norm)
    init_actor(actor, cfg.kernel_scale_final)
    init_critic(critic, cfg.kernel_scale_final)
    target = QEnsemble(
        in_dim, act_dim, cfg.critic_hidden, cfg.num_critics, cfg.critic_layer_norm
    ).requires_grad_(False)
    target.load_state_dict(critic.state_dict())
    if device.type == "cpu":
        tune_cpu_allocator()
    return Networks(
        actor.to(device), critic.to(device), target.to(device), encoder.to(device) if encoder else None
    )


@torch.no_grad()
def _orthogonal_(weight: torch.Tensor, gain: float) -> None:
    """Orthogonal init of an nn.Linear [out, in] matrix, or of each member's [in, out] matrix."""
    for matrix in weight.unsqueeze(0) if weight.dim() == 2 else weight:
        nn.init.orthogonal_(matrix, gain=gain)


def _trunk_gains(layers: int, final_scale: float | None) -> list[float]:
    """Gain of each hidden layer: sqrt(2), the last one `final_scale` (the official kernel_scale_final)."""
    gains = [SQRT2] * layers
    if gains and final_scale is not None:
        gains[-1] = final_scale
    return gains


@torch.no_grad()
def init_actor(actor: TanhGaussianActor, final_scale: float | None) -> None:
    """Orthogonal trunk, zero biases; the mean and log-std heads each orthogonal with gain sqrt(2)."""
    *hidden, head = [m for m in actor.net if isinstance(m, nn.Linear)]
    for linear, gain in zip(hidden, _trunk_gains(len(hidden), final_scale), strict=True):
        _orthogonal_(linear.weight, gain)
        linear.bias.zero_()
    for rows in head.weight.split(actor.act_dim):  # mean rows, then log-std rows: two heads
        _orthogonal_(rows, SQRT2)
    head.bias.zero_()


@torch.no_grad()
def init_critic(critic: QEnsemble, final_scale: float | None) -> None:
    """Each member: orthogonal trunk and head (gain sqrt(2), the last hidden layer `final_scale`), zero
    biases."""
    for linear, gain in zip(critic.hidden, _trunk_gains(len(critic.hidden), final_scale), strict=True):
        _orthogonal_(linear.weight, gain)
        linear.bias.zero_()
    _orthogonal_(critic.out.weight, SQRT2)
    critic.out.bias.zero_()
