import math

import torch
from torch import nn

from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.networks import (
    EnsembleLinear,
    QEnsemble,
    TanhGaussianActor,
    build_networks,
)


def test_ensemble_linear_equals_separate_linear_layers():
    torch.manual_seed(0)
    layer = EnsembleLinear(5, 7, 3)
    separate = []
    for i in range(5):
        lin = nn.Linear(7, 3)
        with torch.no_grad():
            lin.weight.copy_(layer.weight[i].T)
            lin.bias.copy_(layer.bias[i, 0])
        separate.append(lin)
    shared = torch.randn(11, 7)
    per_member = torch.randn(5, 11, 7)
    expected_shared = torch.stack([lin(shared) for lin in separate])
    expected_member = torch.stack([lin(per_member[i]) for i, lin in enumerate(separate)])
    torch.testing.assert_close(layer(shared), expected_shared)
    torch.testing.assert_close(layer(per_member), expected_member)


def test_member_subset_matches_full_ensemble_rows():
    torch.manual_seed(1)
    q = QEnsemble(4, 2, [16, 16], 6, True)
    obs, act = torch.randn(9, 4), torch.rand(9, 2) * 2 - 1
    members = torch.tensor([4, 1])
    torch.testing.assert_close(q(obs, act, members), q(obs, act)[members])


def test_detached_evaluation_gives_action_gradient_only():
    torch.manual_seed(2)
    q = QEnsemble(4, 2, [16], 3, True)
    act = (torch.rand(5, 2) * 2 - 1).requires_grad_(True)
    q(torch.randn(5, 4), act, detach=True).sum().backward()
    assert act.grad is not None and act.grad.abs().sum() > 0
    assert all(p.grad is None for p in q.parameters())


def test_q_shapes_with_extra_leading_dims():
    q = QEnsemble(4, 2, [8], 3, False)
    assert q(torch.randn(5, 7, 4), torch.rand(5, 7, 2)).shape == (3, 5, 7)


def test_actor_log_prob_matches_change_of_variables():
    torch.manual_seed(3)
    actor = TanhGaussianActor(4, 2, [16])
    obs = torch.randn(6, 4)
    action, log_prob = actor.sample(obs)
    mean, log_std = actor(obs)
    pre = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    base = torch.distributions.Normal(mean, log_std.exp()).log_prob(pre).sum(-1)
    expected = base - torch.log(1 - action.pow(2) + 1e-12).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=1e-3, rtol=1e-3)
    assert action.abs().max() < 1


def test_actor_many_samples_shape_and_raw_observations_in_forward():
    actor = TanhGaussianActor(3, 2, [8])
    action, log_prob = actor.sample(torch.randn(4, 3), num_samples=5)
    assert action.shape == (4, 5, 2) and log_prob.shape == (4, 5)
    obs = torch.randn(2, 3) * 10 + 5  # far from zero mean and unit scale: nothing rescales it
    torch.testing.assert_close(actor(obs)[0], actor.net(obs).chunk(2, -1)[0])
    assert not list(actor.buffers())  # no normaliser state


def test_log_std_is_clamped():
    actor = TanhGaussianActor(2, 1, [4])
    with torch.no_grad():
        actor.net[-1].bias.fill_(100.0)
    _, log_std = actor(torch.zeros(1, 2))
    assert math.isclose(float(log_std.max()), 2.0)


def _gram(weight: torch.Tensor) -> torch.Tensor:
    """W^T W or W W^T, whichever is the smaller (orthogonal init makes it gain^2 I)."""
    return weight.T @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.T


def test_build_networks_initialises_as_the_official_code():
    """Orthogonal gain sqrt(2) everywhere, kernel_scale_final on each trunk's last hidden layer, each
    head orthogonal, zero biases, LayerNorm in the actor and critics, target = critics."""
    torch.manual_seed(0)
    cfg = AgentConfig(actor_hidden=[16, 16], critic_hidden=[16, 16], num_critics=3)
    actor, critic, target, encoder = build_networks(5, 2, cfg)
    assert encoder is None  # a state task has no image encoder
    eye = torch.eye
    first, last, head = [m for m in actor.net if isinstance(m, nn.Linear)]
    assert any(isinstance(m, nn.LayerNorm) for m in actor.net)
    torch.testing.assert_close(_gram(first.weight.detach()), 2.0 * eye(5))
    torch.testing.assert_close(_gram(last.weight.detach()), 1e-4 * eye(16))
    for rows in head.weight.detach().split(2):  # mean head, log-std head
        torch.testing.assert_close(_gram(rows), 2.0 * eye(2))
    for member in range(3):
        torch.testing.assert_close(_gram(critic.hidden[0].weight[member].detach()), 2.0 * eye(7))
        torch.testing.assert_close(_gram(critic.hidden[1].weight[member].detach()), 1e-4 * eye(16))
        torch.testing.assert_close(_gram(critic.out.weight[member].detach()), 2.0 * eye(1))
    biases = [first.bias, last.bias, head.bias, *(m.bias for m in (*critic.hidden, critic.out))]
    assert all(not b.detach().any() for b in biases)
    assert critic.norms is not None
    for key, value in critic.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
    assert not any(p.requires_grad for p in target.parameters())


def test_kernel_scale_final_none_keeps_sqrt2_everywhere():
    cfg = AgentConfig(actor_hidden=[16, 16], critic_hidden=[16, 16], num_critics=2, kernel_scale_final=None)
    actor, critic, _, _ = build_networks(5, 2, cfg)
    last = [m for m in actor.net if isinstance(m, nn.Linear)][1]
    torch.testing.assert_close(_gram(last.weight.detach()), 2.0 * torch.eye(16))
    torch.testing.assert_close(_gram(critic.hidden[1].weight[0].detach()), 2.0 * torch.eye(16))
