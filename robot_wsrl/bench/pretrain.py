"""Pre-training benchmark: CQL updates per second of our agent against a straightforward PyTorch version.

All run the shipped pre-training recipe (configs/agent/cql.yaml, Hopper-sized inputs): one critic step
with the max-target backup over 10 sampled next actions and the CQL penalty on 2 random critics (10
uniform, 10 pi(s) and 10 pi(s') actions per state, importance-sampled), one actor step, one temperature
step. Ours evaluates only the drawn members, with the batched kernels of the UTD round (one pass over all
sampled actions). `naive_updates_per_s` is plain PyTorch in the official code's order of computation:
a loop over separate critic modules, every critic evaluated on every sampled (and next) action, then the
drawn ones used; `naive_drawn_only_updates_per_s` is the same loop evaluating the drawn critics alone.
Measured as `bench learner` is: interleaved, medians over `repeats`.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

from robot_wsrl.bench.learner import ACT_DIM, OBS_DIM, NaiveWSRL, random_batch, run_context, timer
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import AgentConfig, compose_config
from robot_wsrl.learn.networks import build_networks, resolve_device


class NaiveCQL(NaiveWSRL):
    """The same CQL update written plainly: separate critic modules and a Python loop over them.

    `evaluate_all`: every critic's Q on the sampled actions, then the drawn ones used (the official code's
    order); otherwise the drawn critics alone are evaluated.
    """

    def __init__(self, *args: Any, evaluate_all: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluate_all = evaluate_all

    def update(self, batch: dict[str, torch.Tensor]) -> None:
        cfg, n = self.cfg, self.cfg.cql.num_samples
        alpha = self.log_alpha.exp().detach()
        obs, action, next_obs = batch["obs"], batch["action"], batch["next_obs"]
        size = obs.shape[0]
        obs_rep, next_obs_rep = obs.repeat_interleave(n, 0), next_obs.repeat_interleave(n, 0)
        with torch.no_grad():  # max-target backup: the best of n next actions under the min of 2 targets
            next_action, _ = self._sample(next_obs_rep)
            drawn = torch.randint(cfg.num_critics, (cfg.num_target_critics,)).tolist()
            next_in = torch.cat([next_obs_rep, next_action], dim=-1)
            evaluated = range(cfg.num_critics) if self.evaluate_all else drawn
            next_all = {i: self.targets[i](next_in).view(size, n) for i in evaluated}
            next_q = torch.stack([next_all[i] for i in drawn]).min(0).values
            target = batch["reward"] + cfg.discount * (1.0 - batch["terminated"]) * next_q.max(-1).values
        q_data = [critic(torch.cat([obs, action], dim=-1)).squeeze(-1) for critic in self.critics]
        td_loss = torch.stack([(q - target).pow(2).mean() for q in q_data]).mean()

        with torch.no_grad():
            random_action = torch.rand(size * n, self.act_dim, device=obs.device) * 2.0 - 1.0
            pi_action, pi_log_prob = self._sample(obs_rep)
            next_pi_action, next_pi_log_prob = self._sample(next_obs_rep)
        uniform_log_density = self.act_dim * math.log(0.5)
        penalised = torch.randint(cfg.num_critics, (cfg.num_target_critics,)).tolist()
        sampled = {
            i: [
                self.critics[i](torch.cat([obs_rep, a], dim=-1)).view(size, n)
                for a in (random_action, pi_action, next_pi_action)
            ]
            for i in (range(cfg.num_critics) if self.evaluate_all else penalised)
        }
        gaps = []
        for i in penalised:
            q_random, q_pi, q_next = sampled[i]
            candidates = torch.cat(
                [
                    q_random - uniform_log_density,
                    q_next - next_pi_log_prob.view(size, n),
                    q_pi - pi_log_prob.view(size, n),
                ],
                dim=-1,
            )
            gaps.append(torch.logsumexp(candidates, dim=-1) - q_data[i])
        loss = td_loss + cfg.cql.alpha * torch.stack(gaps).mean()
        self.critic_step(loss)

        with torch.no_grad():
            entropy_log_prob = self._sample(next_obs_rep)[1]
        self.actor_and_temperature_step(obs, entropy_log_prob, alpha)


def _recipe(compile_mode: str) -> AgentConfig:
    """The shipped pre-training agent config (configs/agent/cql.yaml; composed with the fine-tuning run,
    which needs no dataset)."""
    return compose_config("finetune", ["agent=cql", f"agent.compile={compile_mode}"]).agent


def run_pretrain_benchmark(
    device: str = "auto", rounds: int = 10, repeats: int = 5, compile_mode: str = "off"
) -> dict[str, Any]:
    """CQL pre-training throughput: `updates_per_s` (ours) and `naive_updates_per_s` side by side.

    `compile_mode` "off" by default: the eager update is what `robot-wsrl pretrain` runs on CPU ("auto").
    """
    dev = resolve_device(device)
    torch.manual_seed(0)
    cfg = _recipe(compile_mode)
    agent = Agent(build_networks(OBS_DIM, ACT_DIM, cfg, dev), cfg)
    naive = NaiveCQL(OBS_DIM, ACT_DIM, cfg, dev, evaluate_all=True)
    drawn_only = NaiveCQL(OBS_DIM, ACT_DIM, cfg, dev, evaluate_all=False)
    batch = random_batch(cfg.utd * cfg.batch_size, dev)
    timed = timer(dev)

    start = time.perf_counter()
    timed(lambda: agent.update(batch), 2)
    warmup_s = time.perf_counter() - start
    timed(lambda: naive.update(batch), 1)
    timed(lambda: drawn_only.update(batch), 1)
    ours, theirs, loop = [], [], []
    for _ in range(repeats):
        ours.append(1.0 / timed(lambda: agent.update(batch), rounds))
        theirs.append(1.0 / timed(lambda: naive.update(batch), rounds))
        loop.append(1.0 / timed(lambda: drawn_only.update(batch), rounds))
    updates_per_s, naive_updates_per_s = statistics.median(ours), statistics.median(theirs)
    return {
        "updates_per_s": updates_per_s,
        "naive_updates_per_s": naive_updates_per_s,
        "naive_drawn_only_updates_per_s": statistics.median(loop),
        "speedup": updates_per_s / naive_updates_per_s,
        "updates_per_s_spread": [min(ours), max(ours)],
        "naive_updates_per_s_spread": [min(theirs), max(theirs)],
        "batch_size": cfg.batch_size,
        "num_critics": cfg.num_critics,
        "cql_num_samples": cfg.cql.num_samples,
        "warmup_s": warmup_s,
        "rounds": rounds,
        "repeats": repeats,
        "compiled": agent.compiled,
        **run_context(dev),
    }
