import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.checkpoint import load_actor, load_checkpoint, save_checkpoint, with_checkpoint_shapes
from robot_wsrl.learn.config import AgentConfig
from robot_wsrl.learn.networks import build_networks


def _cfg(**kw) -> AgentConfig:
    base = dict(num_critics=4, critic_hidden=[16, 16], actor_hidden=[16, 16], batch_size=8, utd=3)
    return AgentConfig(**{**base, **kw})


def _agent(cfg: AgentConfig, device: str = "cpu") -> Agent:
    return Agent(build_networks(5, 2, cfg, device), cfg)


def _batch(n: int, obs_dim: int = 5, act_dim: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "obs": torch.randn(n, obs_dim, generator=g),
        "action": torch.rand(n, act_dim, generator=g) * 2 - 1,
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, obs_dim, generator=g),
        "terminated": torch.zeros(n),
        "mc_return": torch.randn(n, generator=g),
    }


def test_one_round_is_utd_critic_steps_then_one_actor_and_temperature_step():
    torch.manual_seed(0)
    agent = _agent(_cfg())
    agent.update(_batch(24))
    step_of = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert step_of(agent.critic_opt) == 3
    assert step_of(agent.actor_opt) == 1 and step_of(agent.temperature_opt) == 1
    assert agent.updates == 1


def test_batch_must_be_utd_times_minibatch():
    agent = _agent(_cfg())
    with pytest.raises(ValueError, match="utd x batch_size"):
        agent.update(_batch(10))


def test_polyak_after_each_critic_step():
    torch.manual_seed(0)
    cfg = _cfg(utd=1, tau=0.25)
    agent = _agent(cfg)
    before_target = [p.detach().clone() for p in agent.target_critic.parameters()]
    agent.update(_batch(8))
    for t0, t1, c1 in zip(
        before_target, agent.target_critic.parameters(), agent.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(t1, 0.75 * t0 + 0.25 * c1.detach())


def test_temperature_moves_toward_target_entropy():
    torch.manual_seed(0)
    agent = _agent(_cfg(temperature_lr=0.1, target_entropy=100.0))  # unreachable: alpha must grow
    start = float(agent.temperature.detach())
    for _ in range(3):
        agent.update(_batch(24))
    assert float(agent.temperature.detach()) > start


@pytest.mark.parametrize("regularizer", ["none", "cql", "calql"])
def test_update_metrics_are_finite(regularizer):
    torch.manual_seed(0)
    agent = _agent(_cfg(regularizer=regularizer))
    info = agent.update(_batch(24))
    assert all(torch.isfinite(v).all() for v in info.values())
    assert ("cql_gap" in info) == (regularizer != "none")


def test_state_round_trip_reproduces_the_next_update():
    torch.manual_seed(0)
    a = _agent(_cfg())
    a.update(_batch(24))
    b = _agent(_cfg())
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    a.update(_batch(24))
    torch.manual_seed(1)
    b.update(_batch(24))
    # MKL may pick kernels by memory alignment, so equal up to float32 rounding, not bit for bit
    for pa, pb in zip(a.actor.parameters(), b.actor.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-3)
    assert a.updates == b.updates == 2


def test_device_placement_and_numpy_acting():
    agent = _agent(_cfg(), "cpu")
    tensors = [
        *agent.actor.parameters(),
        *agent.critic.parameters(),
        *agent.target_critic.buffers(),
        agent.log_temperature,
    ]
    assert {t.device.type for t in tensors} == {agent.device.type}
    act = agent.act(np.zeros(5, np.float32))
    assert isinstance(act, np.ndarray) and act.shape == (2,) and np.all(np.abs(act) <= 1)
    assert agent.act(np.zeros((3, 5), np.float32), deterministic=True).shape == (3, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_update_stays_on_device():
    agent = _agent(_cfg(), "cuda")
    info = agent.update(agent.to_batch({k: v.numpy() for k, v in _batch(24).items()}))
    assert all(v.device.type == "cuda" for v in info.values())


# The policy shipped before the actor had LayerNorm (the same bytes as policies/hopper had until 2026-11-29)
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-hopper" / "checkpoint.pt"


def _old_checkpoint(path: Path) -> tuple[Agent, Path]:
    """A checkpoint as written before the actor had LayerNorm: no actor_layer_norm key in its config."""
    torch.manual_seed(0)
    cfg = _cfg(actor_layer_norm=False)
    agent = _agent(cfg)
    agent.update(_batch(24))
    spec = EnvSpec("old", 5, 2, (-1.0, -1.0), (1.0, 1.0), 0.01)
    agent_config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "actor_layer_norm"}
    state = agent.state_dict()
    payload = {"spec": spec.to_dict(), "agent_config": agent_config, "config": {}, "config_hash": "old"}
    return agent, save_checkpoint(path, {**payload, "step": 1, "actor": state["actor"], "agent": state})


def test_an_old_architecture_checkpoint_still_loads(tmp_path):
    """Its actor alone (export) and its whole agent (a warm start) load in the shape they were saved in,
    although the default actor now has LayerNorm."""
    old, path = _old_checkpoint(tmp_path / "old.pt")
    obs = torch.randn(7, 5)
    actor, _, _ = load_actor(path)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in actor.net)
    torch.testing.assert_close(actor(obs), old.actor(obs))

    saved = load_checkpoint(path)["agent_config"]
    cfg = with_checkpoint_shapes(_cfg(), saved)  # the default (LayerNorm) config takes the saved shapes
    assert _cfg().actor_layer_norm and not cfg.actor_layer_norm
    warm = _agent(cfg)
    warm.load_state_dict(load_checkpoint(path)["agent"])
    torch.testing.assert_close(warm.actor(obs), old.actor(obs))
    with pytest.raises(RuntimeError):  # what loading into the default networks would do
        _agent(_cfg()).load_state_dict(load_checkpoint(path)["agent"])


def test_the_legacy_shipped_checkpoint_loads_in_its_own_shape():
    saved = load_checkpoint(LEGACY)
    actor, spec, _ = load_actor(LEGACY)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in actor.net)
    cfg = with_checkpoint_shapes(AgentConfig(compile="off"), saved["agent_config"])
    agent = Agent(build_networks(spec.obs_dim, spec.act_dim, cfg), cfg)
    agent.load_state_dict(saved["agent"])  # critics, targets, optimisers: a warm start
    obs = torch.randn(3, spec.obs_dim)
    torch.testing.assert_close(agent.actor(obs), actor(obs))


def test_the_shipped_checkpoint_has_the_official_networks_and_warm_starts_the_default_agent():
    """policies/hopper is pre-trained with the official defaults: the default agent takes it as it is."""
    shipped = Path(__file__).resolve().parents[1] / "policies" / "hopper" / "checkpoint.pt"
    saved = load_checkpoint(shipped)
    _, spec, _ = load_actor(shipped)
    cfg = AgentConfig(compile="off")
    assert with_checkpoint_shapes(cfg, saved["agent_config"]) == cfg
    Agent(build_networks(spec.obs_dim, spec.act_dim, cfg), cfg).load_state_dict(saved["agent"])
