import math

import torch
from torch import nn

from robot_wsrl.learn.networks import EnsembleLinear, ObsNormalizer, QEnsemble, TanhGaussianActor


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
    q = QEnsemble(4, 2, [16, 16], 6, True, ObsNormalizer(4))
    obs, act = torch.randn(9, 4), torch.rand(9, 2) * 2 - 1
    members = torch.tensor([4, 1])
    torch.testing.assert_close(q(obs, act, members), q(obs, act)[members])


def test_detached_evaluation_gives_action_gradient_only():
    torch.manual_seed(2)
    q = QEnsemble(4, 2, [16], 3, True, ObsNormalizer(4))
    act = (torch.rand(5, 2) * 2 - 1).requires_grad_(True)
    q(torch.randn(5, 4), act, detach=True).sum().backward()
    assert act.grad is not None and act.grad.abs().sum() > 0
    assert all(p.grad is None for p in q.parameters())


def test_q_shapes_with_extra_leading_dims():
    q = QEnsemble(4, 2, [8], 3, False, ObsNormalizer(4))
    assert q(torch.randn(5, 7, 4), torch.rand(5, 7, 2)).shape == (3, 5, 7)


def test_actor_log_prob_matches_change_of_variables():
    torch.manual_seed(3)
    actor = TanhGaussianActor(4, 2, [16], ObsNormalizer(4))
    obs = torch.randn(6, 4)
    action, log_prob = actor.sample(obs)
    mean, log_std = actor(obs)
    pre = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    base = torch.distributions.Normal(mean, log_std.exp()).log_prob(pre).sum(-1)
    expected = base - torch.log(1 - action.pow(2) + 1e-12).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=1e-3, rtol=1e-3)
    assert action.abs().max() < 1


def test_actor_many_samples_shape_and_normalizer_in_forward():
    actor = TanhGaussianActor(3, 2, [8], ObsNormalizer(3))
    action, log_prob = actor.sample(torch.randn(4, 3), num_samples=5)
    assert action.shape == (4, 5, 2) and log_prob.shape == (4, 5)
    obs = torch.randn(2, 3)
    before = actor(obs)[0]
    actor.normalizer.set_stats(torch.ones(3), torch.full((3,), 2.0))
    after = actor(obs)[0]
    raw = actor.net((obs - 1) / 2).chunk(2, -1)[0]
    torch.testing.assert_close(after, raw)
    assert not torch.allclose(before, after)


def test_log_std_is_clamped():
    actor = TanhGaussianActor(2, 1, [4], ObsNormalizer(2))
    with torch.no_grad():
        actor.net[-1].bias.fill_(100.0)
    _, log_std = actor(torch.zeros(1, 2))
    assert math.isclose(float(log_std.max()), 2.0)
