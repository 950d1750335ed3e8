"""Hand-written kernels of the Q-ensemble: its MLP as explicit tensor code with custom backwards.

Plain autograd through the layer modules (`networks.QEnsemble(fused=False)`) spends more time on
LayerNorm, broadcasts and temporaries than on the matmuls; these kernels make each gradient one batched
matmul or one pass. They are checked against that plain-autograd reference in tests/test_agent_fast_path.py.

Parameters travel as one flat list: per hidden layer weight [E, in, out], bias [E, 1, out] and, with
LayerNorm, scale and shift [E, 1, out]; then the output layer's weight [E, in, 1] and bias [E, 1, 1].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch


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
def ensemble_min_q(
    obs: torch.Tensor, act: torch.Tensor, layer_norm: bool, eps: float, *params: torch.Tensor
) -> torch.Tensor:
    """Left out of compiled graphs: its backward groups rows by sizes read on the host."""
    return EnsembleMinQFunction.apply(obs, act, layer_norm, eps, *params)
