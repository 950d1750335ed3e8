"""Learner benchmark: UTD rounds per second of the WSRL agent against a straightforward PyTorch version.

Everything is measured in one run on one device: our `Agent.update`, a naive implementation of the same
algorithm (a Python loop over 10 separate critic modules, as a typical repository writes it), and the
device's fp32 matmul peak, so that `peak_fraction` and `speedup` compare like with like (DESIGN §6).
Timings are medians over `repeats`, the measurements interleaved so that a noisy neighbour hurts all of
them alike; the naive version runs in the same process, so it shares the malloc setting that our agent
applies on CPU (`tune_cpu_allocator`).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.networks import build_networks, resolve_device

OBS_DIM, ACT_DIM = 11, 3  # Hopper
MATMUL_SIZE = 2048
TARGETS = {"cpu": {"peak_fraction": 0.75, "speedup": 1.2}, "cuda": {"updates_per_s": 500.0, "speedup": 5.0}}


def _mlp_macs(dims: Sequence[int]) -> int:
    return sum(i * o for i, o in itertools.pairwise(dims))


def round_flops(
    obs_dim: int,
    act_dim: int,
    cfg: AgentConfig,
    target_critics: int | None = None,
    actor_backward_critics: int | None = None,
) -> float:
    """FLOPs of one UTD round counted from the layer sizes (matmuls only, multiply-add = 2 FLOPs).

    With B = batch_size, N = utd * B, E = num_critics, T = target critics evaluated, K = critics the
    actor step back-propagates through, and a / q the multiply-adds of one actor / one critic forward
    on one sample:

        critic step = 2 B (a + T q + 3 E q)       actor forward on s', T target critics forward,
                                                  E critics forward + backward (backward = 2x forward)
        actor step  = 2 N (3 a + E q + K q)       actor forward + backward, E critics forward on N,
                                                  backward to the action input only (1x forward)
        round       = utd * critic step + actor step

    The reference count (both None) takes T = K = E, as the issue defines it: about 9.1 GFLOP for the
    WSRL config on Hopper. What our CPU path executes: T = num_target_critics (only the drawn target
    critics are evaluated) and K = 1 (the gradient of the min over critics flows through each sample's
    minimising critic alone, see `EnsembleMinQFunction`).
    """
    a = _mlp_macs([obs_dim, *cfg.actor_hidden, 2 * act_dim])
    q = _mlp_macs([obs_dim + act_dim, *cfg.critic_hidden, 1])
    e = cfg.num_critics
    t = e if target_critics is None else target_critics
    k = e if actor_backward_critics is None else actor_backward_critics
    critic_step = 2 * cfg.batch_size * (a + t * q + 3 * e * q)
    actor_step = 2 * cfg.utd * cfg.batch_size * (3 * a + e * q + k * q)
    return float(cfg.utd * critic_step + actor_step)


class NaiveWSRL:
    """The same WSRL UTD round written plainly: separate critic modules, a Python loop over them.

    Like a typical repository (CleanRL / SpinningUp style): one nn.Sequential per critic, a loop for every
    forward, min over 2 randomly drawn target critics, UTD critic steps with Polyak after each, then one
    actor step (min over all critics, critics frozen as SpinningUp does) and one temperature step on the
    entropy at s' (as the official code), Adam.
    """

    def __init__(self, obs_dim: int, act_dim: int, cfg: AgentConfig, device: torch.device) -> None:
        self.cfg, self.act_dim, self.device = cfg, act_dim, device
        self.actor = self._mlp(obs_dim, cfg.actor_hidden, 2 * act_dim, cfg.actor_layer_norm).to(device)
        self.critics = [
            self._mlp(obs_dim + act_dim, cfg.critic_hidden, 1, cfg.critic_layer_norm).to(device)
            for _ in range(cfg.num_critics)
        ]
        self.targets = [copy.deepcopy(c).requires_grad_(False) for c in self.critics]
        self.critic_params = [p for c in self.critics for p in c.parameters()]
        self.target_params = [p for c in self.targets for p in c.parameters()]
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temperature_lr)

    @staticmethod
    def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int, layer_norm: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), *([nn.LayerNorm(width)] if layer_norm else []), nn.ReLU()]
            in_dim = width
        return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))

    def _sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs).chunk(2, dim=-1)
        std = log_std.clamp(-20.0, 2.0).exp()
        pre_tanh = mean + std * torch.randn_like(mean)
        action = torch.tanh(pre_tanh)
        log_prob = torch.distributions.Normal(mean, std).log_prob(pre_tanh)
        log_prob = log_prob - 2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))
        return action, log_prob.sum(-1)

    def update(self, batch: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        alpha = self.log_alpha.exp().detach()
        for k in range(cfg.utd):
            part = {key: v[k * cfg.batch_size : (k + 1) * cfg.batch_size] for key, v in batch.items()}
            with torch.no_grad():
                next_action, _ = self._sample(part["next_obs"])
                next_in = torch.cat([part["next_obs"], next_action], dim=-1)
                drawn = torch.randint(cfg.num_critics, (cfg.num_target_critics,)).tolist()
                next_q = torch.stack([self.targets[i](next_in).squeeze(-1) for i in drawn]).min(0).values
                target = part["reward"] + cfg.discount * (1.0 - part["terminated"]) * next_q
            x = torch.cat([part["obs"], part["action"]], dim=-1)
            losses = [(critic(x).squeeze(-1) - target).pow(2).mean() for critic in self.critics]
            loss = torch.stack(losses).mean()
            self.critic_step(loss)

        with torch.no_grad():
            next_log_prob = self._sample(batch["next_obs"])[1]
        self.actor_and_temperature_step(batch["obs"], next_log_prob, alpha)

    def critic_step(self, loss: torch.Tensor) -> None:
        """One optimiser step of every critic on `loss`, then Polyak averaging into the targets."""
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_opt.step()
        with torch.no_grad():
            for p_target, p in zip(self.target_params, self.critic_params, strict=True):
                p_target.mul_(1.0 - self.cfg.tau).add_(p, alpha=self.cfg.tau)

    def actor_and_temperature_step(
        self, obs: torch.Tensor, entropy_log_prob: torch.Tensor, alpha: torch.Tensor
    ) -> None:
        """The actor on the min over all critics, then the temperature on the entropy of `entropy_log_prob`
        (samples at s', as the official code)."""
        for p in self.critic_params:
            p.requires_grad_(False)
        action, log_prob = self._sample(obs)
        x = torch.cat([obs, action], dim=-1)
        q = torch.stack([critic(x).squeeze(-1) for critic in self.critics]).min(0).values
        actor_loss = (alpha * log_prob - q).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        for p in self.critic_params:
            p.requires_grad_(True)
        alpha_loss = self.log_alpha.exp() * (-entropy_log_prob + self.act_dim / 2.0).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()


def random_batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A Hopper-sized batch of random transitions (Monte-Carlo returns too, for Cal-QL), seeded."""
    g = torch.Generator().manual_seed(0)
    arrays = {
        "obs": torch.randn(n, OBS_DIM, generator=g),
        "action": torch.rand(n, ACT_DIM, generator=g) * 2.0 - 1.0,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, OBS_DIM, generator=g),
        "terminated": (torch.rand(n, generator=g) < 0.01).float(),
        "mc_return": torch.randn(n, generator=g),
    }
    return {k: v.to(device) for k, v in arrays.items()}


def timer(device: torch.device) -> Callable[[Callable[[], Any], int], float]:
    """Seconds per call of fn, averaged over `calls`; CUDA work is synchronised at both ends."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn: Callable[[], Any], calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls

    return timed


def run_context(dev: torch.device) -> dict[str, Any]:
    """Where a torch benchmark ran, for its JSON line: device, torch build, threads and the load beside it."""
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }


def run_learner_benchmark(
    device: str = "auto", rounds: int = 20, repeats: int = 7, compile_mode: str = "on"
) -> dict[str, Any]:
    """WSRL learner throughput on Hopper-sized inputs: ours, naive, matmul peak, FLOP-based efficiency.

    `updates_per_s` is our agent with `compile_mode`, by default "on": the compiled UTD round, which is
    what "auto" runs on CUDA and the fastest mode on CPU too, where "auto" stays eager so that short runs
    and tests never wait for a compile; `updates_per_s_eager` is the same agent uncompiled. Each repeat
    times `rounds` UTD rounds of each implementation and a burst of matmuls, interleaved; the result
    keys are medians over `repeats`. Warm-up rounds (and the compilation) come first, reported apart.
    """
    dev = resolve_device(device)
    torch.manual_seed(0)
    cfg = AgentConfig(compile=compile_mode)
    agent = Agent(build_networks(OBS_DIM, ACT_DIM, cfg, dev), cfg)
    eager_cfg = AgentConfig(compile="off")
    eager = Agent(build_networks(OBS_DIM, ACT_DIM, eager_cfg, dev), eager_cfg)
    eager.load_state_dict(agent.state_dict())
    naive = NaiveWSRL(OBS_DIM, ACT_DIM, cfg, dev)
    batch = random_batch(cfg.utd * cfg.batch_size, dev)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=dev)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=dev)
    out = torch.empty_like(a)
    timed = timer(dev)
    matmul_calls = 5 if dev.type == "cpu" else 50

    start = time.perf_counter()
    timed(lambda: agent.update(batch), 3)
    warmup_s = time.perf_counter() - start
    timed(lambda: eager.update(batch), 2)
    timed(lambda: naive.update(batch), 2)
    timed(lambda: torch.mm(a, b, out=out), matmul_calls)

    ours, uncompiled, theirs, matmul = [], [], [], []
    for _ in range(repeats):
        ours.append(1.0 / timed(lambda: agent.update(batch), rounds))
        uncompiled.append(1.0 / timed(lambda: eager.update(batch), rounds))
        theirs.append(1.0 / timed(lambda: naive.update(batch), max(1, rounds // 2)))
        matmul.append(2.0 * MATMUL_SIZE**3 / timed(lambda: torch.mm(a, b, out=out), matmul_calls) / 1e9)

    updates_per_s = statistics.median(ours)
    naive_updates_per_s = statistics.median(theirs)
    matmul_gflops = statistics.median(matmul)
    gflop_per_round = round_flops(OBS_DIM, ACT_DIM, cfg) / 1e9
    sparse_actor = dev.type == "cpu" and cfg.actor_objective == "min"  # as QEnsemble.actor_value decides
    executed = round_flops(OBS_DIM, ACT_DIM, cfg, cfg.num_target_critics, 1 if sparse_actor else None)
    gflops_per_s = gflop_per_round * updates_per_s
    result: dict[str, Any] = {
        "updates_per_s": updates_per_s,
        "naive_updates_per_s": naive_updates_per_s,
        "speedup": updates_per_s / naive_updates_per_s,
        "matmul_gflops": matmul_gflops,
        "gflop_per_round": gflop_per_round,
        "gflop_per_round_executed": executed / 1e9,
        "gflops_per_s": gflops_per_s,
        "peak_fraction": gflops_per_s / matmul_gflops,
        "updates_per_s_spread": [min(ours), max(ours)],
        "updates_per_s_eager": statistics.median(uncompiled),
        "peak_fraction_eager": gflop_per_round * statistics.median(uncompiled) / matmul_gflops,
        "warmup_s": warmup_s,
        "rounds": rounds,
        "repeats": repeats,
        "compile": cfg.compile,
        "compiled": agent.compiled,
        **run_context(dev),
    }
    targets = TARGETS["cuda" if dev.type == "cuda" else "cpu"]
    result["targets_met"] = {key: result[key] >= target for key, target in targets.items()}
    return result
