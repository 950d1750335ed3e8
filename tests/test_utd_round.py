"""The four facts of a WSRL UTD round, with utd=4 (the official `update_high_utd`):

1. the 4 critic steps use 4 disjoint consecutive slices of the sampled batch;
2. Polyak averaging runs after each critic step, not once per round;
3. each critic step's target is the min over 2 *target* members drawn at random (with replacement, as the
   official randint) out of N;
4. the actor and temperature steps see the whole batch.

Each fact is checked by watching the round from outside (the loss functions it calls) and the whole round
against a reference computed step by step from the public loss functions.
"""

from __future__ import annotations

import copy

import pytest
import torch

from robot_wsrl.learn import agent as agent_module
from robot_wsrl.learn import losses
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.networks import Networks, build_networks

UTD, MINIBATCH, CRITICS, OBS, ACT = 4, 8, 5, 5, 2


def _cfg() -> AgentConfig:
    return AgentConfig(
        num_critics=CRITICS,
        num_target_critics=2,
        critic_hidden=[16, 16],
        actor_hidden=[16, 16],
        batch_size=MINIBATCH,
        utd=UTD,
        tau=0.25,  # large, so that a missing or extra Polyak step shows
        compile="off",
    )


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = UTD * MINIBATCH
    return {
        "obs": torch.randn(n, OBS, generator=g),
        "action": torch.rand(n, ACT, generator=g) * 2 - 1,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, OBS, generator=g),
        "terminated": (torch.rand(n, generator=g) < 0.2).float(),
    }


def _agent() -> Agent:
    torch.manual_seed(0)
    cfg = _cfg()
    return Agent(build_networks(OBS, ACT, cfg), cfg)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


class _Watch:
    """Records every critic_loss / actor_loss / temperature_loss call the round makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, agent: Agent) -> None:
        self.critic_calls: list[dict] = []
        self.actor_obs: list[torch.Tensor] = []
        self.temperature_log_probs: list[torch.Tensor] = []
        self.target_calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        critic_loss, actor_loss = agent_module.critic_loss, agent_module.actor_loss
        temperature_loss, td_target = agent_module.temperature_loss, losses.td_target
        target_forward = agent.target_critic.forward

        def watched_critic_loss(critic, target, actor, batch, *args, **kwargs):
            call = {"batch": batch, "critic": _flat(critic), "target": _flat(target), "td": []}
            self.critic_calls.append(call)
            return critic_loss(critic, target, actor, batch, *args, **kwargs)

        def watched_td_target(reward, terminated, next_q, *args):
            out = td_target(reward, terminated, next_q, *args)
            self.critic_calls[-1]["td"].append((next_q, out))
            return out

        def watched_target(obs, act, members=None, detach=False):
            out = target_forward(obs, act, members, detach)
            self.target_calls.append((obs, act, members, out))
            return out

        def watched_actor_loss(actor, critic, obs, *args):
            self.actor_obs.append(obs)
            return actor_loss(actor, critic, obs, *args)

        def watched_temperature_loss(log_temperature, log_prob, target_entropy):
            self.temperature_log_probs.append(log_prob)
            return temperature_loss(log_temperature, log_prob, target_entropy)

        monkeypatch.setattr(agent_module, "critic_loss", watched_critic_loss)
        monkeypatch.setattr(losses, "td_target", watched_td_target)
        monkeypatch.setattr(agent.target_critic, "forward", watched_target)
        monkeypatch.setattr(agent_module, "actor_loss", watched_actor_loss)
        monkeypatch.setattr(agent_module, "temperature_loss", watched_temperature_loss)


def test_critic_steps_use_disjoint_consecutive_slices(monkeypatch):
    agent, batch = _agent(), _batch()
    watch = _Watch(monkeypatch, agent)
    agent.update(batch)
    assert len(watch.critic_calls) == UTD
    for k, call in enumerate(watch.critic_calls):
        rows = slice(k * MINIBATCH, (k + 1) * MINIBATCH)
        assert call["batch"].keys() == batch.keys()
        for key, value in batch.items():
            torch.testing.assert_close(call["batch"][key], value[rows], rtol=0, atol=0, msg=key)


def test_polyak_runs_after_each_critic_step(monkeypatch):
    agent, batch = _agent(), _batch()
    watch = _Watch(monkeypatch, agent)
    tau = agent.cfg.tau
    agent.update(batch)
    # the critic as step k sees it is the critic after step k-1; the target must have moved toward it
    critics = [call["critic"] for call in watch.critic_calls] + [_flat(agent.critic)]
    targets = [call["target"] for call in watch.critic_calls] + [_flat(agent.target_critic)]
    for k in range(1, UTD + 1):
        expected = (1 - tau) * targets[k - 1] + tau * critics[k]
        torch.testing.assert_close(targets[k], expected, rtol=1e-5, atol=1e-6, msg=f"after critic step {k}")
        assert not torch.equal(targets[k], targets[k - 1])


def test_each_target_is_the_min_over_two_randomly_drawn_target_members(monkeypatch):
    agent, batch = _agent(), _batch()
    watch = _Watch(monkeypatch, agent)
    for _ in range(25):
        agent.update(batch)
    draws = []
    assert len(watch.target_calls) == 25 * UTD  # one target evaluation per critic step
    for call, (obs, _act, members, q) in zip(watch.critic_calls, watch.target_calls, strict=True):
        assert members is not None and members.shape == (2,)
        assert int(members.min()) >= 0 and int(members.max()) < CRITICS
        draws.append(tuple(members.tolist()))
        assert q.shape == (2, MINIBATCH)  # the drawn members only, at s'
        torch.testing.assert_close(obs, call["batch"]["next_obs"], rtol=0, atol=0)
        ((next_q, target),) = call["td"]
        assert next_q is q
        part = call["batch"]
        expected = part["reward"] + agent.cfg.discount * (1 - part["terminated"]) * q.min(0).values
        torch.testing.assert_close(target, expected)
    # drawn at random: every member comes up, pairs differ; with replacement, a member can come up twice
    assert {m for pair in draws for m in pair} == set(range(CRITICS))
    assert len(set(draws)) > 5
    assert any(a == b for a, b in draws)


def test_targets_are_the_drawn_members_of_the_target_ensemble(monkeypatch):
    """Members drawn are looked up in the target ensemble: Q values equal the target's own members."""
    agent, batch = _agent(), _batch()
    with torch.no_grad():  # make the target differ from the critics, so a mix-up shows
        for p in agent.target_critic.parameters():
            p.add_(0.5 * torch.randn_like(p))
    watch = _Watch(monkeypatch, agent)
    snapshots = []
    critic_loss = agent_module.critic_loss

    def snapshot_then_loss(critic, target, *args, **kwargs):
        snapshots.append(copy.deepcopy(target))
        return critic_loss(critic, target, *args, **kwargs)

    monkeypatch.setattr(agent_module, "critic_loss", snapshot_then_loss)
    agent.update(batch)
    for target, (obs, act, members, q) in zip(snapshots, watch.target_calls, strict=True):
        with torch.no_grad():
            full = target.__class__.forward(target, obs, act)
        torch.testing.assert_close(q, full.index_select(0, members), rtol=1e-5, atol=1e-6)


def test_actor_and_temperature_steps_see_the_whole_batch(monkeypatch):
    agent, batch = _agent(), _batch()
    watch = _Watch(monkeypatch, agent)
    agent.update(batch)
    (actor_obs,) = watch.actor_obs
    torch.testing.assert_close(actor_obs, batch["obs"], rtol=0, atol=0)
    (log_prob,) = watch.temperature_log_probs
    assert log_prob.shape[0] == UTD * MINIBATCH


def test_round_matches_a_step_by_step_reference():
    """The whole round against the official order written out with the public loss functions."""
    agent, batch = _agent(), _batch()
    cfg = agent.cfg
    ref_nets = Networks(*(copy.deepcopy(m) for m in (agent.actor, agent.critic, agent.target_critic)))
    ref = Agent(ref_nets, cfg)  # its own optimisers, identical state

    torch.manual_seed(7)
    agent.update(batch)

    torch.manual_seed(7)
    temperature = ref.temperature.detach()
    for k in range(UTD):
        part = {key: v[k * MINIBATCH : (k + 1) * MINIBATCH] for key, v in batch.items()}
        loss, _ = losses.critic_loss(
            ref.critic,
            ref.target_critic,
            ref.actor,
            part,
            temperature,
            discount=cfg.discount,
            num_target_critics=cfg.num_target_critics,
            backup_entropy=cfg.backup_entropy,
        )
        ref.critic_opt.zero_grad()
        loss.backward()
        ref.critic_opt.step()
        with torch.no_grad():
            for t, c in zip(ref.target_critic.parameters(), ref.critic.parameters(), strict=True):
                t.mul_(1 - cfg.tau).add_(c, alpha=cfg.tau)
    with torch.no_grad():  # the temperature's entropy: fresh samples at s' from the actor before its step
        next_log_prob = ref.actor.sample(batch["next_obs"])[1]
    loss, _ = losses.actor_loss(ref.actor, ref.critic, batch["obs"], temperature, cfg.actor_objective)
    ref.actor_opt.zero_grad()
    loss.backward()
    ref.actor_opt.step()
    t_loss = losses.temperature_loss(ref.log_temperature, next_log_prob, -ACT / 2)
    ref.temperature_opt.zero_grad()
    t_loss.backward()
    ref.temperature_opt.step()

    for name in ("critic", "target_critic", "actor"):
        torch.testing.assert_close(
            _flat(getattr(agent, name)), _flat(getattr(ref, name)), rtol=1e-4, atol=1e-5, msg=name
        )
    torch.testing.assert_close(agent.log_temperature, ref.log_temperature)
