"""Neural networks of the agent: a tanh-Gaussian actor and a vectorised Q-ensemble.

The ensemble keeps all E critics in batched weights shaped [E, in, out]: one batched matmul per layer
instead of a Python loop over E modules. Its training-time passes are explicit tensor code with
hand-written backwards (`EnsembleMLPFunction`, `EnsembleMinQFunction`), checked against plain autograd
through the layer modules in tests/test_agent_fast_path.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

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
        normalizer: ObsNormalizer,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        self.layer_norm = layer_norm
        self.normalizer = normalizer
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
        return _ensemble_min_q(obs, act, self.layer_norm, self._eps, *self._params(None, True)).reshape(lead)

    def _flat_inputs(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalizer(obs).reshape(-1, obs.shape[-1]), act.reshape(-1, act.shape[-1])

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


# ---- the ensemble MLP as explicit tensor code ---------------------------------------------------------
#
# Parameters travel as one flat list: per hidden layer weight [E, in, out], bias [E, 1, out] and, with
# LayerNorm, scale and shift [E, 1, out]; then the output layer's weight [E, in, 1] and bias [E, 1, 1].


class _Hidden(NamedTuple):
    weight: torch.Tensor
    bias: torch.Tensor
    scale: torch.Tensor | None
    shift: torch.Tensor | None


class _Saved(NamedTuple):
    """What a hidden layer's backward reads: the LayerNorm's input, normalised output, mean and 1/std
    (None without LayerNorm) and the post-ReLU output."""

    pre: torch.Tensor | None
    normed: torch.Tensor | None
    mean: torch.Tensor | None
    rstd: torch.Tensor | None
    post: torch.Tensor


def _unpack(params: Sequence[torch.Tensor], layer_norm: bool) -> list[_Hidden]:
    per_layer = 4 if layer_norm else 2
    hidden = params[:-2]
    return [
        _Hidden(*hidden[i : i + per_layer]) if layer_norm else _Hidden(*hidden[i : i + 2], None, None)
        for i in range(0, len(hidden), per_layer)
    ]


def _forward(
    obs: torch.Tensor, act: torch.Tensor, params: Sequence[torch.Tensor], layer_norm: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor, list[_Saved]]:
    """(Q [E, N], the concatenated input [N, in], each hidden layer's saved activations)."""
    x = torch.cat([obs, act], dim=-1)
    ensemble = params[0].shape[0]
    a = x.expand(ensemble, *x.shape)
    saved: list[_Saved] = []
    for layer in _unpack(params, layer_norm):
        h = torch.baddbmm(layer.bias, a, layer.weight)
        if layer.scale is None or layer.shift is None:
            a = h.relu_()
            saved.append(_Saved(None, None, None, None, a))
            continue
        normed, mean, rstd = torch.native_layer_norm(h, h.shape[-1:], None, None, eps)
        a = torch.addcmul(layer.shift, normed, layer.scale).relu_()
        saved.append(_Saved(h, normed, mean, rstd, a))
    weight, bias = params[-2], params[-1]
    if a.device.type == "cpu":
        # the 1-wide output layer as one matrix-vector product per member: on CPU a batched matmul with
        # a single output column takes a path several times slower
        columns = zip(a.unbind(0), weight[:, :, 0].unbind(0), strict=True)
        q = torch.stack([torch.mv(a_e, w_e) for a_e, w_e in columns])
        return q.add_(bias.view(ensemble, 1)), x, saved
    return torch.baddbmm(bias, a, weight).squeeze(-1), x, saved


def ensemble_mlp_forward(
    obs: torch.Tensor, act: torch.Tensor, params: Sequence[torch.Tensor], layer_norm: bool, eps: float
) -> torch.Tensor:
    """Q [E, N] of the ensemble on shared inputs obs [N, obs_dim], act [N, act_dim]."""
    return _forward(obs, act, params, layer_norm, eps)[0]


def _layer_norm_input_grad(grad_normed: torch.Tensor, saved: _Saved) -> torch.Tensor:
    """Gradient to a LayerNorm's input from the gradient at its normalised (not yet scaled) output."""
    pre, mean, rstd = saved.pre, saved.mean, saved.rstd
    assert pre is not None and mean is not None and rstd is not None
    mask = [True, False, False]  # the input's gradient only: scale and shift are the caller's
    return torch.ops.aten.native_layer_norm_backward(
        grad_normed, pre, pre.shape[-1:], mean, rstd, None, None, mask
    )[0]


class EnsembleMLPFunction(torch.autograd.Function):
    """The ensemble MLP as one autograd node with a hand-written backward.

    Plain autograd through the layer modules spends more time on LayerNorm, broadcasts and temporaries
    than on the matmuls; here each gradient is a batched matmul or a single pass, and only the inputs
    that need a gradient get one (the actor step's dense path needs dQ/da alone).
    """

    @staticmethod
    def forward(ctx, obs, act, layer_norm, eps, *params):  # type: ignore[override]
        q, x, saved = _forward(obs, act, params, layer_norm, eps)
        ctx.layer_norm, ctx.obs_dim, ctx.num_params = layer_norm, obs.shape[-1], len(params)
        ctx.save_for_backward(x, *params, *(t for layer in saved for t in layer))
        return q

    @staticmethod
    def backward(ctx, grad_q):  # type: ignore[override]
        x, *rest = ctx.saved_tensors
        params, flat = rest[: ctx.num_params], rest[ctx.num_params :]
        width = len(_Saved._fields)
        saved = [_Saved(*flat[i : i + width]) for i in range(0, len(flat), width)]
        layers = _unpack(params, ctx.layer_norm)
        needs = ctx.needs_input_grad
        needs_obs, needs_act, needs_params = needs[0], needs[1], needs[4:]
        per_layer = 4 if ctx.layer_norm else 2
        grads: list[torch.Tensor | None] = [None] * ctx.num_params

        if needs_params[-2]:
            grads[-2] = torch.bmm(grad_q.unsqueeze(1), saved[-1].post).transpose(1, 2)
        if needs_params[-1]:
            grads[-1] = grad_q.sum(1).view(-1, 1, 1)
        grad_a = grad_q.unsqueeze(-1) * params[-2].transpose(1, 2)  # outer product, not a matmul
        grad_obs = grad_act = None
        for i in reversed(range(len(layers))):
            layer, acts, base = layers[i], saved[i], i * per_layer
            grad_h = torch.ops.aten.threshold_backward(grad_a, acts.post, 0)
            if layer.scale is not None:
                if needs_params[base + 2]:
                    grads[base + 2] = (grad_h * acts.normed).sum(1, keepdim=True)
                if needs_params[base + 3]:
                    grads[base + 3] = grad_h.sum(1, keepdim=True)
                grad_h = _layer_norm_input_grad(grad_h * layer.scale, acts)
            below = saved[i - 1].post if i > 0 else x
            if needs_params[base]:
                grads[base] = torch.matmul(below.transpose(-1, -2), grad_h)
            if needs_params[base + 1]:
                grads[base + 1] = grad_h.sum(1, keepdim=True)
            if i > 0:
                grad_a = torch.bmm(grad_h, layer.weight.transpose(1, 2))
            elif needs_obs or needs_act:
                # only the first weight's rows that feed the inputs wanting a gradient
                start = 0 if needs_obs else ctx.obs_dim
                rows = layer.weight[:, start : None if needs_act else ctx.obs_dim]
                grad_x = torch.bmm(rows, grad_h.transpose(1, 2)).sum(0).t()
                grad_obs = grad_x[:, : ctx.obs_dim] if needs_obs else None
                grad_act = grad_x[:, ctx.obs_dim - start :] if needs_act else None
        return grad_obs, grad_act, None, None, *grads


class EnsembleMinQFunction(torch.autograd.Function):
    """min over all members of Q(s, a) [N], with a backward to the action through one member per sample.

    d min_i Q_i(s, a) / da = dQ_i*(s, a) / da with i* each sample's argmin, exactly what autograd through
    `min` computes; the dense backward multiplies the other E-1 members' paths by zero. Here the forward
    keeps each sample's argmin-member activations, rows are grouped by member, and the backward is one
    small matmul per member and layer: a tenth of the dense backward for 10 critics. CPU only, as the
    grouping reads the group sizes on the host.
    """

    @staticmethod
    def forward(ctx, obs, act, layer_norm, eps, *params):  # type: ignore[override]
        q, _, saved = _forward(obs, act, params, layer_norm, eps)
        q_min, member = q.min(0)
        member, order = torch.sort(member, stable=True)
        flat = member * obs.shape[0] + order  # row of each (argmin member, sample) in [E * N, ...]
        kept = [layer._replace(normed=None) for layer in saved]  # the backward works from `pre`
        rows = [
            t.flatten(0, 1).index_select(0, flat) if t is not None else None for acts in kept for t in acts
        ]
        ctx.layer_norm, ctx.obs_dim, ctx.num_params = layer_norm, obs.shape[-1], len(params)
        ctx.counts = torch.bincount(member, minlength=params[0].shape[0]).tolist()
        ctx.save_for_backward(member, order, *params, *rows)
        return q_min

    @staticmethod
    def backward(ctx, grad_q):  # type: ignore[override]
        member, order, *rest = ctx.saved_tensors
        params, rows = rest[: ctx.num_params], rest[ctx.num_params :]
        bounds = list(itertools.accumulate(ctx.counts, initial=0))
        grad_a = grad_q[order].unsqueeze(-1) * params[-2][:, :, 0][member]
        width = len(_Saved._fields)
        for i, layer in reversed(list(enumerate(_unpack(params, ctx.layer_norm)))):
            acts = _Saved(*rows[i * width : (i + 1) * width])
            grad_h = torch.ops.aten.threshold_backward(grad_a, acts.post, 0)
            if layer.scale is not None:
                grad_h = _layer_norm_input_grad(grad_h * layer.scale[:, 0][member], acts)  # rows' own scales
            weight = layer.weight[:, ctx.obs_dim :] if i == 0 else layer.weight
            grad_a = grad_h.new_empty(grad_h.shape[0], weight.shape[1])
            for e, (start, stop) in enumerate(itertools.pairwise(bounds)):
                if stop > start:
                    torch.mm(grad_h[start:stop], weight[e].t(), out=grad_a[start:stop])
        grad_act = torch.empty_like(grad_a).index_copy_(0, order, grad_a)
        return None, grad_act, None, None, *([None] * ctx.num_params)


@torch.compiler.disable
def _ensemble_min_q(
    obs: torch.Tensor, act: torch.Tensor, layer_norm: bool, eps: float, *params: torch.Tensor
) -> torch.Tensor:
    """Left out of compiled graphs: its backward groups rows by sizes read on the host."""
    return EnsembleMinQFunction.apply(obs, act, layer_norm, eps, *params)
