"""The camera agent: the image encoder, DrQ's random shift, who trains the encoder, frozen-online features,
checkpoints, and pre-training end to end on a synthetic image dataset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL_AGENT

from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.learn import agent as agent_module
from robot_wsrl.learn import pretrain as pretrain_module
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.checkpoint import load_actor, load_checkpoint, with_checkpoint_shapes
from robot_wsrl.learn.config import AgentConfig, EncoderConfig, compose_config
from robot_wsrl.learn.datasets import OfflineDataset, save_dataset
from robot_wsrl.learn.encoder import ImageEncoder, image_key, next_image_key, random_shift
from robot_wsrl.learn.networks import CameraActor, build_networks
from robot_wsrl.learn.replay import FrameBatch, ReplayBuffer
from robot_wsrl.learn.training import load_agent_checkpoint, save_training_checkpoint

CAMERAS = (CameraSpec("top", 24, 24), CameraSpec("wrist", 16, 20, 1))
SPEC = EnvSpec("cam-test", 5, 2, (-1.0, -1.0), (1.0, 1.0), 0.02, CAMERAS)
ENCODER = EncoderConfig(channels=[8, 8], strides=[2, 1], feature_dim=6, augment_pad=2)
CFG = AgentConfig(
    actor_hidden=[32, 32],
    critic_hidden=[32, 32],
    num_critics=3,
    batch_size=8,
    utd=2,
    regularizer="cql",
    encoder=ENCODER,
    compile="off",
)


def make_agent(cfg: AgentConfig = CFG, seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    return Agent(build_networks(SPEC.obs_dim, SPEC.act_dim, cfg, "cpu", cameras=SPEC.cameras), cfg)


def frames(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {c.name: rng.integers(0, 256, (n, *c.shape), dtype=np.uint8) for c in CAMERAS}


def image_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch as pre-training samples it: state obs/next_obs and each camera's frames at s and s'."""
    rng = np.random.default_rng(seed)
    now, nxt = frames(n, rng), frames(n, rng)
    return {
        "obs": rng.standard_normal((n, SPEC.obs_dim)).astype(np.float32),
        "next_obs": rng.standard_normal((n, SPEC.obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, SPEC.act_dim)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "terminated": (rng.random(n) < 0.1).astype(np.float32),
        "mc_return": rng.standard_normal(n).astype(np.float32),
        **{image_key(c): f for c, f in now.items()},
        **{next_image_key(c): f for c, f in nxt.items()},
    }


def weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


# ---- the encoder and its augmentation ----------------------------------------------------------------


def test_encoder_concatenates_each_cameras_features_from_raw_uint8_frames():
    encoder = ImageEncoder(CAMERAS, ENCODER)
    batch = frames(4, np.random.default_rng(0))
    out = encoder(*(torch.from_numpy(batch[c.name]) for c in CAMERAS))
    assert out.shape == (4, 2 * ENCODER.feature_dim) and out.dtype == torch.float32
    assert encoder.out_dim == 12 and bool((out.abs() <= 1).all())  # tanh features
    # each camera's block depends on its own frames only
    other = dict(batch, wrist=batch["wrist"][::-1].copy())
    out2 = encoder(*(torch.from_numpy(other[c.name]) for c in CAMERAS))
    assert torch.equal(out[:, :6], out2[:, :6]) and not torch.equal(out[:, 6:], out2[:, 6:])


def test_the_default_encoder_is_drq_serl_at_84x84():
    """32 channels, 3x3, strides 2-1-1-1: 35x35 maps flattened into a 50-wide LayerNorm + tanh head."""
    trunk = ImageEncoder((CameraSpec("top", 84, 84),), EncoderConfig()).trunks["top"]
    convs = [m for m in trunk.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (3, 3), (s, s)) for s in (2, 1, 1, 1)
    ]
    assert (trunk.head.in_features, trunk.head.out_features) == (32 * 35 * 35, 50)


def test_an_encoder_refuses_a_camera_too_small_for_its_strides():
    with pytest.raises(ValueError, match="too small"):
        ImageEncoder((CameraSpec("tiny", 4, 4),), EncoderConfig(channels=[4, 4], strides=[2, 2]))


def test_random_shift_is_a_replicate_pad_and_crop_and_is_seeded():
    x = torch.randint(0, 256, (6, 10, 12, 3), dtype=torch.uint8)
    a = random_shift(x, 3, torch.Generator().manual_seed(1))
    b = random_shift(x, 3, torch.Generator().manual_seed(1))
    c = random_shift(x, 3, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.uint8 and a.shape == x.shape
    assert random_shift(x, 0) is x
    # the reference: replicate-pad by 3, crop at the offsets the same generator draws
    offsets = torch.randint(0, 7, (2, 6, 1), generator=torch.Generator().manual_seed(1))
    padded = F.pad(x.permute(0, 3, 1, 2).float(), (3, 3, 3, 3), mode="replicate").permute(0, 2, 3, 1)
    for i in range(6):
        dy, dx = int(offsets[0, i, 0]), int(offsets[1, i, 0])
        assert torch.equal(a[i].float(), padded[i, dy : dy + 10, dx : dx + 12])


# ---- who trains the encoder -----------------------------------------------------------------------------


def test_the_critic_loss_trains_the_encoder_and_the_actor_loss_does_not():
    batch = image_arrays(CFG.utd * CFG.batch_size)
    # critics frozen (lr 0): the actor step alone moves the actor, never the encoder
    agent = make_agent(dataclasses.replace(CFG, critic_lr=0.0))
    encoder, actor = weights(agent.encoder), weights(agent.actor)
    agent.update(agent.to_batch(batch))
    assert moved(actor, agent.actor) and not moved(encoder, agent.encoder)
    # actor frozen: the critic steps move the encoder
    agent = make_agent(dataclasses.replace(CFG, actor_lr=0.0))
    encoder, actor = weights(agent.encoder), weights(agent.actor)
    info = agent.update(agent.to_batch(batch))
    assert moved(encoder, agent.encoder) and not moved(actor, agent.actor)
    assert all(torch.isfinite(v) for v in info.values())


@pytest.mark.parametrize("pad", [0, 2])
def test_training_encodes_randomly_shifted_frames_and_features_at_s_prime_carry_no_gradient(pad):
    cfg = dataclasses.replace(CFG, encoder=dataclasses.replace(ENCODER, augment_pad=pad))
    agent = make_agent(cfg)
    part = agent.to_batch(image_arrays(CFG.batch_size))
    encoded = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        encoded.append(agent._encoded(part))
    same = torch.equal(encoded[0]["obs"], encoded[1]["obs"])
    assert same == (pad == 0)  # the shift draws new offsets each time; without it the features repeat
    assert encoded[0]["obs"].requires_grad and not encoded[0]["next_obs"].requires_grad
    assert encoded[0]["obs"].shape == (CFG.batch_size, agent.input_dim)


def test_update_refuses_a_batch_of_the_wrong_width():
    agent = make_agent()
    batch = image_arrays(CFG.utd * CFG.batch_size)
    features = {k: v for k, v in batch.items() if "image/" not in k}
    with pytest.raises(ValueError, match="width 17"):  # no frames: obs must be [state, features]
        agent.update(agent.to_batch(features))


# ---- frozen online: cached features ---------------------------------------------------------------------


def test_featurize_gives_the_state_then_the_encoders_features_and_a_frozen_round_keeps_the_encoder(
    monkeypatch,
):
    agent = make_agent()
    assert agent.replay_featurize == agent.featurize  # frozen online is the default
    rng = np.random.default_rng(3)
    n = 2 * CFG.utd * CFG.batch_size
    state, now = rng.standard_normal((n, SPEC.obs_dim)).astype(np.float32), frames(n, rng)
    cached = agent.featurize(state, now)
    with torch.no_grad():
        direct = agent.encoder(*(torch.from_numpy(now[c.name]) for c in CAMERAS)).numpy()
    assert cached.shape == (n, agent.input_dim) and cached.dtype == np.float32
    np.testing.assert_array_equal(cached[:, : SPEC.obs_dim], state)
    np.testing.assert_allclose(cached[:, SPEC.obs_dim :], direct, rtol=0, atol=1e-5)
    monkeypatch.setattr(agent_module, "FEATURIZE_CHUNK", 5)  # encoded in chunks: the same features
    np.testing.assert_allclose(
        agent.featurize(state, now), cached, rtol=0, atol=1e-5
    )  # conv kernels vary by batch
    # the online replay caches exactly these vectors as obs and next_obs
    buffer = ReplayBuffer(
        n,
        SPEC.obs_dim,
        SPEC.act_dim,
        cameras=CAMERAS,
        featurize=agent.replay_featurize,
        feature_dim=agent.input_dim,
    )
    ends = np.zeros(n, bool)
    ends[-1] = True
    later = {c: np.roll(f, -1, axis=0) for c, f in now.items()}  # each row's next frame is the next row's
    buffer.add_batch(
        frames=FrameBatch.from_pairs(now, later, ends),
        obs=state,
        action=np.zeros((n, SPEC.act_dim), np.float32),
        reward=np.zeros(n, np.float32),
        next_obs=np.roll(state, -1, axis=0),
        terminated=np.zeros(n, np.float32),
        truncated=ends.astype(np.float32),
    )
    np.testing.assert_allclose(buffer.obs[:n], cached, rtol=0, atol=1e-5)
    np.testing.assert_allclose(buffer.next_obs[: n - 1], cached[1:], rtol=0, atol=1e-5)
    # a UTD round on cached features (what the replay samples) trains actor and critics, not the encoder
    arrays = image_arrays(CFG.utd * CFG.batch_size)
    half = CFG.utd * CFG.batch_size
    arrays |= {"obs": cached[:half], "next_obs": cached[half:]}
    before = weights(agent.encoder)
    agent.update(agent.to_batch({k: v for k, v in arrays.items() if "image/" not in k}))
    assert not moved(before, agent.encoder)


def test_an_encoder_trained_online_gives_the_replay_no_featurize():
    cfg = dataclasses.replace(CFG, encoder=dataclasses.replace(ENCODER, train_online=True))
    assert make_agent(cfg).replay_featurize is None
    state_agent = Agent(build_networks(3, 1, CFG, "cpu"), CFG)
    assert state_agent.replay_featurize is None and state_agent.encoder is None
    with pytest.raises(ValueError, match="no image encoder"):
        state_agent.featurize(np.zeros((1, 3), np.float32), {})


def test_act_takes_a_camera_observation_as_the_driver_gives_it():
    agent = make_agent()
    rng = np.random.default_rng(0)
    one = {"state": rng.standard_normal(SPEC.obs_dim).astype(np.float32)}
    one |= {c: f[0] for c, f in frames(1, rng).items()}
    action = agent.act(one, deterministic=True)
    assert action.shape == (SPEC.act_dim,)
    batched = {k: v[None] for k, v in one.items()}
    np.testing.assert_allclose(agent.act(batched, deterministic=True)[0], action, atol=1e-6)
    module = agent.policy_module()
    assert isinstance(module, CameraActor) and module.obs_dim == SPEC.obs_dim
    with torch.no_grad():
        mean, _ = module(
            torch.from_numpy(batched["state"]), *(torch.from_numpy(batched[c.name]) for c in CAMERAS)
        )
    np.testing.assert_allclose(np.tanh(mean.numpy()[0]), action, atol=1e-6)


# ---- checkpoints -----------------------------------------------------------------------------------------


def test_a_checkpoint_saves_and_restores_the_encoder(tmp_path):
    cfg = compose_config(
        "finetune", [*SMALL_AGENT, "agent.encoder.channels=[8,8]", "agent.encoder.strides=[2,1]"]
    )
    agent = Agent(build_networks(SPEC.obs_dim, SPEC.act_dim, cfg.agent, "cpu", cameras=CAMERAS), cfg.agent)
    agent.update(agent.to_batch(image_arrays(cfg.agent.utd * cfg.agent.batch_size)))
    path = save_training_checkpoint(tmp_path / "c.pt", agent, SPEC, cfg, 1, {})
    payload = load_checkpoint(path)
    assert set(payload["encoder"]) == set(agent.encoder.state_dict())
    # the run that starts from it gets the encoder's shapes from the checkpoint, not its own config
    fresh_cfg = with_checkpoint_shapes(
        dataclasses.replace(cfg.agent, encoder=EncoderConfig()), payload["agent_config"]
    )
    assert fresh_cfg.encoder.channels == [8, 8] and fresh_cfg.encoder.train_online is False
    fresh = Agent(build_networks(SPEC.obs_dim, SPEC.act_dim, fresh_cfg, "cpu", cameras=CAMERAS), fresh_cfg)
    load_agent_checkpoint(str(path), fresh, SPEC, with_optimizers=True)
    for a, b in zip(agent.state_dict()["encoder"].values(), fresh.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh.updates == 1 and len(fresh.critic_opt.state) == len(agent.critic_opt.state)
    # the policy a robot runs comes back from the file alone
    policy, spec, _ = load_actor(path)
    assert isinstance(policy, CameraActor) and spec == SPEC
    inputs = image_arrays(4)
    tensors = (
        torch.from_numpy(inputs["obs"]),
        *(torch.from_numpy(inputs[image_key(c.name)]) for c in CAMERAS),
    )
    with torch.no_grad():
        assert torch.equal(policy(*tensors)[0], agent.policy_module()(*tensors)[0])
    # another camera layout is refused by name
    other = dataclasses.replace(SPEC, cameras=(CameraSpec("top", 24, 24),))
    with pytest.raises(ValueError, match="cameras="):
        load_agent_checkpoint(str(path), fresh, other, with_optimizers=False)


def test_a_state_checkpoint_does_not_load_into_a_camera_agent(tmp_path):
    cfg = compose_config("finetune", SMALL_AGENT)
    state_spec = dataclasses.replace(SPEC, cameras=())
    state_agent = Agent(build_networks(SPEC.obs_dim, SPEC.act_dim, cfg.agent, "cpu"), cfg.agent)
    path = save_training_checkpoint(tmp_path / "s.pt", state_agent, state_spec, cfg, 0, {})
    assert "encoder" not in load_checkpoint(path)
    camera_agent = Agent(
        build_networks(SPEC.obs_dim, SPEC.act_dim, cfg.agent, "cpu", cameras=CAMERAS), cfg.agent
    )
    with pytest.raises(KeyError, match="encoder"):
        camera_agent.load_state_dict(load_checkpoint(path)["agent"])


# ---- pre-training end to end -----------------------------------------------------------------------------


class _SpecOnlyEnv:
    """The task's spec without a renderer (the suite runs with MUJOCO_GL=disable; evaluation is off)."""

    spec = SPEC

    def close(self) -> None:
        pass


def synthetic_image_dataset(path, episodes: int = 6, steps: int = 20, seed: int = 0):
    """Episodes whose reward is the brightness of the top camera's frame: only the images tell it."""
    rng = np.random.default_rng(seed)
    n = episodes * steps
    top = rng.integers(0, 256, (episodes * (steps + 1), 24, 24, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (episodes * (steps + 1), 16, 20, 1), dtype=np.uint8)
    rows = np.arange(n) + np.repeat(np.arange(episodes), steps)  # T + 1 frames per episode
    state = rng.standard_normal((n, SPEC.obs_dim)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[steps - 1 :: steps] = True
    ds = OfflineDataset(
        observations=state,
        actions=rng.uniform(-1, 1, (n, SPEC.act_dim)).astype(np.float32),
        rewards=(top[rows].mean(axis=(1, 2, 3)) / 255.0).astype(np.float32),
        next_observations=np.roll(state, -1, axis=0),
        terminals=np.zeros(n, bool),
        timeouts=timeouts,
        frames={"top": top, "wrist": wrist},
        obs_frame={"top": rows, "wrist": rows},
        next_frame={"top": rows + 1, "wrist": rows + 1},
    )
    return save_dataset(path, ds)


@pytest.mark.parametrize("agent", ["cql", "calql"])
def test_pretraining_from_an_image_dataset_trains_the_encoder_and_checkpoints_it(
    agent, tmp_path, monkeypatch
):
    monkeypatch.setattr(pretrain_module, "make_env", lambda env_cfg, seed=None: _SpecOnlyEnv())
    dataset = synthetic_image_dataset(tmp_path / "images.npz")
    cfg = compose_config(
        "pretrain",
        [
            f"agent={agent}",
            *SMALL_AGENT,
            "agent.encoder.channels=[8,8]",
            "agent.encoder.strides=[2,1]",
            "agent.encoder.feature_dim=6",
            "env.driver=cam:reacher",
            f"run.dataset={dataset}",
            "run.steps=4",
            "run.eval_every=0",
            "run.log_every=2",
            "run.checkpoint_every=0",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    torch.manual_seed(0)
    initial = ImageEncoder(CAMERAS, cfg.agent.encoder).state_dict()  # what build_networks draws first
    summary = pretrain_module.pretrain(cfg)
    payload = load_checkpoint(summary["checkpoint"])
    assert payload["step"] == 4 and set(payload["encoder"]) == set(initial)
    assert any(not torch.equal(initial[k], payload["encoder"][k]) for k in initial)  # the encoder learned
    assert np.isfinite(summary["calibration"]["q_calibration"])
    assert (tmp_path / "run" / "calibration.csv").read_text().count("\n") == 1 + 2 + 1
    policy, spec, _ = load_actor(summary["checkpoint"])
    assert isinstance(policy, CameraActor) and spec.cameras == CAMERAS


def test_the_camera_cpu_recipe_is_the_cpu_recipe_with_a_smaller_encoder():
    data = ["run.dataset=d.npz"]
    cpu = compose_config("pretrain", ["recipe=cpu", *data])
    camera = compose_config("pretrain", ["recipe=camera_cpu", *data])
    assert (camera.agent.encoder.channels, camera.agent.encoder.strides) == ([16, 32, 32], [2, 2, 2])
    assert dataclasses.replace(camera.agent, encoder=cpu.agent.encoder) == cpu.agent
    assert camera.run == cpu.run and camera.agent.encoder != cpu.agent.encoder


class _ImageDataset:
    """What `offline_features` reads of an OfflineDataset: rows' states and their frames at s and s'."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.rewards = np.zeros(n, np.float32)
        self.observations = rng.standard_normal((n, SPEC.obs_dim)).astype(np.float32)
        self.next_observations = rng.standard_normal((n, SPEC.obs_dim)).astype(np.float32)
        self.obs_frames, self.next_frames = frames(n, rng), frames(n, rng)

    def images(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return (
            {c: f[rows] for c, f in self.obs_frames.items()},
            {c: f[rows] for c, f in self.next_frames.items()},
        )


def test_a_retained_image_dataset_is_held_as_the_frozen_encoders_features_chunk_by_chunk():
    """Retain-offline on a camera task mixes the dataset into minibatches of cached features: each row's
    [state, features] at s and s' must be what featurize gives for the whole dataset at once, however it is
    chunked (7 rows in chunks of 3: a short last chunk)."""
    from robot_wsrl.learn.finetune import offline_features

    agent = make_agent()
    ds = _ImageDataset(7, np.random.default_rng(3))
    obs, next_obs = offline_features(agent, ds, chunk=3)
    assert obs.shape == next_obs.shape == (7, agent.input_dim) and obs.dtype == np.float32
    np.testing.assert_allclose(obs, agent.featurize(ds.observations, ds.obs_frames), atol=1e-6)
    np.testing.assert_allclose(next_obs, agent.featurize(ds.next_observations, ds.next_frames), atol=1e-6)
    np.testing.assert_array_equal(obs[:, : SPEC.obs_dim], ds.observations)  # the state rides in front
