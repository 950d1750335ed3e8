"""The optimised learner paths compute exactly what the plain autograd reference computes.

The fused ensemble (`EnsembleMLPFunction`, a hand-written backward), the actor step's sparse min-Q
backward (`EnsembleMinQFunction`) and fused Adam are checked against module composition under plain
autograd with the for-loop Adam: gradients in float64 to tight tolerance, whole UTD rounds in float32.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch._inductor.config

from robot_wsrl.bench.learner import NaiveWSRL, round_flops
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.networks import QEnsemble, build_networks, reduce_ensemble


def _ensemble(layer_norm: bool, hidden: list[int], size: int) -> QEnsemble:
    q = QEnsemble(5, 2, hidden, size, layer_norm).double()
    with torch.no_grad():
        for p in q.parameters():  # move LayerNorm scales/shifts off their all-ones/zeros init
            p.add_(0.3 * torch.randn_like(p))
    return q


def _grads(q: QEnsemble, run) -> list[torch.Tensor | None]:
    q.zero_grad(set_to_none=True)
    out, inputs = run()
    return [out.detach(), *(t.grad for t in inputs), *(p.grad for p in q.parameters())]


@pytest.mark.parametrize(
    ("layer_norm", "hidden", "subset", "detach", "obs_grad"),
    list(itertools.product([True, False], [[16, 16], [8, 8, 8]], *[[False, True]] * 3)),
)
def test_fused_ensemble_matches_autograd_composition(layer_norm, hidden, subset, detach, obs_grad):
    torch.manual_seed(0)
    q = _ensemble(layer_norm, hidden, 4)
    members = torch.tensor([3, 1]) if subset else None
    weight = torch.randn(2 if subset else 4, 7, 3, dtype=torch.float64)

    def run():
        obs = torch.randn(7, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        act = torch.rand(7, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        obs.requires_grad_(obs_grad)
        act.requires_grad_(True)
        out = q(obs, act, members, detach)
        (out * weight).sum().backward()
        return out, (obs, act) if obs_grad else (act,)

    fused = _grads(q, run)
    q.fused = False
    reference = _grads(q, run)
    for got, want in zip(fused, reference, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("layer_norm", "size"), [(True, 10), (True, 1), (False, 4)])
def test_sparse_min_q_backward_matches_dense(layer_norm, size):
    torch.manual_seed(0)
    q = _ensemble(layer_norm, [16, 16], size)
    obs = torch.randn(64, 5, dtype=torch.float64)
    weight = torch.randn(64, dtype=torch.float64)

    def action_grad(value_fn):
        act = torch.rand(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1
        act.requires_grad_(True)
        value = value_fn(act)
        (value * weight).sum().backward()
        return value.detach(), act.grad

    sparse = action_grad(lambda act: q.actor_value(obs, act, "min"))
    dense = action_grad(lambda act: reduce_ensemble(q(obs, act, detach=True), "min"))
    for got, want in zip(sparse, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in q.parameters())


def _reference(agent: Agent) -> Agent:
    """The same agent on the plain path: composed modules under autograd, for-loop Adam."""
    cfg = agent.cfg
    agent.critic.fused = agent.target_critic.fused = False
    plain = dict(foreach=False, fused=False)
    agent.actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=cfg.actor_lr, **plain)
    agent.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr, **plain)
    agent.temperature_opt = torch.optim.Adam([agent.log_temperature], lr=cfg.temperature_lr, **plain)
    agent.cql_alpha_opt = torch.optim.Adam([agent.log_cql_alpha], lr=cfg.critic_lr, **plain)
    return agent


def _batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "obs": torch.randn(n, 5, generator=g),
        "action": torch.rand(n, 2, generator=g) * 2 - 1,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, 5, generator=g),
        "terminated": (torch.rand(n, generator=g) < 0.2).float(),
        "mc_return": torch.randn(n, generator=g),
    }


def _small_wsrl(**overrides) -> AgentConfig:
    base = dict(num_critics=10, critic_hidden=[32, 32], actor_hidden=[32, 32], batch_size=16, utd=3)
    return AgentConfig(**{**base, "compile": "off", **overrides})


def _agent(cfg: AgentConfig) -> Agent:
    return Agent(build_networks(5, 2, cfg), cfg)


def _assert_same_rounds(fast: Agent, reference: Agent, rounds: int = 3) -> None:
    """From identical state and random draws, `rounds` UTD rounds leave both agents in the same state."""
    reference.load_state_dict(fast.state_dict(), with_optimizers=False)
    batch = _batch(fast.cfg.utd * fast.cfg.batch_size)
    infos = []
    for agent in (fast, reference):
        torch.manual_seed(1)  # identical draws: target members, actor noise, CQL samples
        infos.append([agent.update(batch) for _ in range(rounds)])
    for name in ("critic", "target_critic", "actor"):
        got, want = getattr(fast, name).state_dict(), getattr(reference, name).state_dict()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
    torch.testing.assert_close(fast.log_temperature, reference.log_temperature)
    for got, want in zip(*infos, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"actor_objective": "mean"},
        {"critic_layer_norm": False, "num_critics": 3},
        {"regularizer": "calql"},
    ],
    ids=["wsrl", "mean-objective", "no-layernorm", "calql"],
)
def test_utd_rounds_match_the_reference_path(overrides):
    cfg = _small_wsrl(**overrides)
    cfg.cql.lagrange = True  # used by the Cal-QL case only
    torch.manual_seed(0)
    _assert_same_rounds(_agent(cfg), _reference(_agent(cfg)))


@pytest.mark.slow
def test_compiled_rounds_match_eager_rounds():
    """compile="on" (CPU inductor, the sparse min-Q step left out of the graph) changes no numbers.

    Inductor draws its own random numbers unless told to fall back to eager's generator.
    """
    torch.manual_seed(0)
    compiled = _agent(_small_wsrl(compile="on"))
    with torch._inductor.config.patch(fallback_random=True):
        _assert_same_rounds(compiled, _reference(_agent(_small_wsrl())), rounds=2)


def test_reference_flop_count_of_a_wsrl_round():
    cfg = AgentConfig()
    critic = 14 * 256 + 256 * 256 + 256  # multiply-adds of one critic on one Hopper sample
    assert round_flops(11, 3, cfg) / 1e9 == pytest.approx(9.097, abs=1e-3)
    # evaluating only the 2 drawn target critics of 10: 4 steps x 8 critics x 2 x 256 samples fewer
    assert round_flops(11, 3, cfg) - round_flops(11, 3, cfg, 2) == 4 * 8 * 2 * 256 * critic
    # the actor step's backward through one critic per sample instead of 10, on 1024 samples
    assert round_flops(11, 3, cfg, 2) - round_flops(11, 3, cfg, 2, 1) == 9 * 2 * 1024 * critic


def test_naive_baseline_runs_the_same_round_structure():
    cfg = AgentConfig(num_critics=4, critic_hidden=[8, 8], actor_hidden=[8, 8], batch_size=4, utd=2)
    naive = NaiveWSRL(5, 2, cfg, torch.device("cpu"))
    before = [p.detach().clone() for p in naive.critic_params]
    target_before = [p.detach().clone() for p in naive.target_params]
    naive.update(_batch(8))
    assert all(not torch.equal(a, b) for a, b in zip(before, naive.critic_params, strict=True))
    # Polyak after each critic step keeps the targets close to, but not at, the critics
    for t0, t1 in zip(target_before, naive.target_params, strict=True):
        assert 0 < (t1 - t0).abs().max() < 0.1
    assert all(p.requires_grad for p in naive.critic_params)
