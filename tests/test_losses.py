"""Losses: hand-computed values on tiny tensors, and gradients only on each loss's own parameters."""

import math

import pytest
import torch

from robot_wsrl.learn.losses import (
    CQLSettings,
    actor_loss,
    cql_alpha_loss,
    cql_gap,
    critic_loss,
    reduce_ensemble,
    td_target,
    temperature_loss,
)
from robot_wsrl.learn.networks import QEnsemble, TanhGaussianActor


def test_td_target_by_hand():
    reward = torch.tensor([1.0, 2.0])
    terminated = torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[3.0, 10.0], [5.0, 4.0]])  # two target critics, min per column: [3, 4]
    log_prob = torch.tensor([-1.0, -2.0])
    alpha = torch.tensor(0.5)
    plain = td_target(reward, terminated, next_q, log_prob, 0.9, alpha, backup_entropy=False)
    torch.testing.assert_close(plain, torch.tensor([1.0 + 0.9 * 3.0, 2.0]))
    with_entropy = td_target(reward, terminated, next_q, log_prob, 0.9, alpha, backup_entropy=True)
    torch.testing.assert_close(with_entropy, torch.tensor([1.0 + 0.9 * (3.0 + 0.5), 2.0]))


def _gap_inputs():
    q_data = torch.tensor([[1.0]])  # E=1, B=1
    q_random = torch.tensor([[[0.0, 2.0]]])  # N=2
    q_pi = torch.tensor([[[1.0, 3.0]]])
    q_pi_next = torch.tensor([[[0.5, 0.0]]])
    lp = torch.tensor([[0.0, -1.0]])
    lp_next = torch.tensor([[-0.5, 0.0]])
    return q_data, q_random, q_pi, q_pi_next, lp, lp_next


def test_cql_gap_importance_sampling_by_hand():
    q_data, q_random, q_pi, q_pi_next, lp, lp_next = _gap_inputs()
    gap, _ = cql_gap(q_data, q_random, q_pi, q_pi_next, lp, lp_next, act_dim=1, settings=CQLSettings())
    u = math.log(0.5)
    terms = [0.0 - u, 2.0 - u, 0.5 + 0.5, 0.0 - 0.0, 1.0 - 0.0, 3.0 + 1.0]
    expected = math.log(sum(math.exp(t) for t in terms)) - 1.0
    assert gap.shape == (1, 1)
    assert float(gap) == pytest.approx(expected, rel=1e-6)


def test_cql_gap_without_importance_sampling_includes_data_q():
    q_data, q_random, q_pi, q_pi_next, lp, lp_next = _gap_inputs()
    settings = CQLSettings(importance_sampling=False, temperature=2.0)
    gap, _ = cql_gap(q_data, q_random, q_pi, q_pi_next, lp, lp_next, 1, settings)
    terms = [0.0, 2.0, 1.0, 0.5, 0.0, 1.0, 3.0]
    expected = 2.0 * math.log(sum(math.exp(t / 2.0) for t in terms)) - 1.0
    assert float(gap) == pytest.approx(expected, rel=1e-6)


def test_calql_floor_active_exactly_where_q_below_mc_return():
    q_data = torch.zeros(1, 2)
    q_pi = torch.tensor([[[1.0, 5.0], [0.0, 0.0]]])  # B=2, N=2
    q_pi_next = torch.tensor([[[2.0, 6.0], [0.0, 0.0]]])
    zeros = torch.zeros(1, 2, 2)
    lp = torch.zeros(2, 2)
    mc = torch.tensor([3.0, -1.0])  # floors row 0 where Q < 3 (1.0 and 2.0), never row 1
    settings = CQLSettings(calql=True, importance_sampling=False)
    gap, floored = cql_gap(q_data, zeros, q_pi, q_pi_next, lp, lp, 1, settings, mc)
    assert float(floored) == pytest.approx(2 / 8)
    row0 = [0.0, 0.0, 0.0, 3.0, 6.0, 3.0, 5.0]  # random, data, floored next, floored current
    row1 = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    expected = [math.log(sum(math.exp(t) for t in row)) for row in (row0, row1)]
    torch.testing.assert_close(gap[0], torch.tensor(expected))
    plain, _ = cql_gap(q_data, zeros, q_pi, q_pi_next, lp, lp, 1, CQLSettings(importance_sampling=False))
    assert float(plain[0, 0]) < float(gap[0, 0]) and float(plain[0, 1]) == pytest.approx(float(gap[0, 1]))


def test_calql_without_returns_is_an_error():
    args = _gap_inputs()
    with pytest.raises(ValueError, match="Monte-Carlo"):
        cql_gap(*args, act_dim=1, settings=CQLSettings(calql=True))


def test_temperature_loss_by_hand_and_its_gradient():
    log_t = torch.nn.Parameter(torch.tensor(math.log(2.0)))
    log_prob = torch.tensor([-1.0, 0.0], requires_grad=True)
    loss = temperature_loss(log_t, log_prob, target_entropy=-1.0)
    # alpha (H - H_target) with H = mean(-log_prob) = 0.5: 2 * (0.5 + 1) = 3
    assert float(loss.detach()) == pytest.approx(3.0)
    loss.backward()
    assert float(log_t.grad) == pytest.approx(3.0)  # d/dlog(alpha) alpha * c = alpha * c
    assert log_prob.grad is None


def test_cql_alpha_loss_rises_multiplier_while_gap_exceeds_target():
    log_a = torch.nn.Parameter(torch.tensor(0.0))
    loss = cql_alpha_loss(log_a, torch.tensor(2.0), alpha=5.0, target_gap=0.5)
    assert float(loss) == pytest.approx(-7.5)
    loss.backward()
    assert float(log_a.grad) < 0  # gradient descent increases log alpha


def test_reduce_ensemble():
    q = torch.tensor([[1.0, 4.0], [3.0, 2.0]])
    torch.testing.assert_close(reduce_ensemble(q, "min"), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(reduce_ensemble(q, "mean"), torch.tensor([2.0, 3.0]))
    with pytest.raises(ValueError):
        reduce_ensemble(q, "max")


def _modules():
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, [8])
    critic = QEnsemble(3, 2, [8], 4, True)
    target = QEnsemble(3, 2, [8], 4, True).requires_grad_(False)
    target.load_state_dict(critic.state_dict())
    b = 6
    batch = {
        "obs": torch.randn(b, 3),
        "action": torch.rand(b, 2) * 2 - 1,
        "reward": torch.randn(b),
        "next_obs": torch.randn(b, 3),
        "terminated": torch.zeros(b),
        "mc_return": torch.randn(b),
    }
    return actor, critic, target, batch


@pytest.mark.parametrize(
    "cql", [None, CQLSettings(), CQLSettings(calql=True), CQLSettings(max_target_backup=False)]
)
def test_critic_loss_gradients_only_on_critic(cql):
    actor, critic, target, batch = _modules()
    log_t = torch.nn.Parameter(torch.tensor(0.0))
    loss, info = critic_loss(
        critic,
        target,
        actor,
        batch,
        log_t.exp(),
        discount=0.99,
        num_target_critics=2,
        backup_entropy=True,
        cql=cql,
    )
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())
    assert all(p.grad is None for p in actor.parameters())
    assert all(p.grad is None for p in target.parameters())
    assert log_t.grad is None
    assert ("cql_gap" in info) == (cql is not None)


def test_critic_loss_lagrange_uses_multiplier():
    actor, critic, target, batch = _modules()
    settings = CQLSettings(lagrange=True, max_target_backup=False)  # the same TD target as without CQL
    torch.manual_seed(5)
    small, _ = critic_loss(
        critic,
        target,
        actor,
        batch,
        torch.tensor(1.0),
        discount=0.99,
        num_target_critics=2,
        backup_entropy=False,
        cql=settings,
        cql_alpha=torch.tensor(0.0),
    )
    torch.manual_seed(5)
    plain, _ = critic_loss(
        critic,
        target,
        actor,
        batch,
        torch.tensor(1.0),
        discount=0.99,
        num_target_critics=2,
        backup_entropy=False,
        cql=None,
    )
    torch.testing.assert_close(small, plain)  # a zero multiplier (same random draws): no penalty
    with pytest.raises(ValueError, match="Lagrange"):
        critic_loss(
            critic,
            target,
            actor,
            batch,
            torch.tensor(1.0),
            discount=0.99,
            num_target_critics=2,
            backup_entropy=False,
            cql=settings,
        )


@pytest.mark.parametrize("objective", ["min", "mean"])
def test_actor_loss_gradients_only_on_actor(objective):
    actor, critic, _, batch = _modules()
    log_t = torch.nn.Parameter(torch.tensor(0.0))
    loss, _ = actor_loss(actor, critic, batch["obs"], log_t.exp(), objective)
    loss.backward()
    assert all(p.grad is not None for p in actor.parameters())
    assert all(p.grad is None for p in critic.parameters())
    assert log_t.grad is None
