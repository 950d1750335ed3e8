"""Camera frames in the replay buffer: stored once, gathered back exactly, evicted with their transitions."""

import numpy as np
import pytest
import zmq

from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.learn.replay import FrameBatch, MixedSampler, ReplayBuffer
from robot_wsrl.wire.protocol import BatchRules, Transitions, decode, encode

CAMS = (CameraSpec("top", 4, 5, 3), CameraSpec("wrist", 2, 3, 1))


def _frame(cam: CameraSpec, step: int, episode: int) -> np.ndarray:
    """A frame whose pixels say which episode and step it shows (and which camera)."""
    flat = (episode * 37 + step * 3 + len(cam.name) + np.arange(np.prod(cam.shape))) % 256
    flat[:2] = episode, step
    return flat.astype(np.uint8).reshape(cam.shape)


def _episodes(lengths, first_episode=0):
    """Rows of consecutive episodes: columns, per-row (episode, step), every row's obs and next frames."""
    rows = [(first_episode + e, t) for e, n in enumerate(lengths) for t in range(n)]
    ends = np.array([t == lengths[e - first_episode] - 1 for e, t in rows])
    state = np.array([[e, t] for e, t in rows], np.float32)
    columns = {
        "obs": state,
        "action": np.zeros((len(rows), 1), np.float32),
        "reward": np.ones(len(rows), np.float32),
        "next_obs": state + np.array([0, 1], np.float32),
        "terminated": ends,
        "truncated": np.zeros(len(rows), bool),
    }
    obs = {c.name: np.stack([_frame(c, t, e) for e, t in rows]) for c in CAMS}
    nxt = {c.name: np.stack([_frame(c, t + 1, e) for e, t in rows]) for c in CAMS}
    return columns, obs, nxt, ends


def _add(buf, lengths, first_episode=0, keys=None):
    columns, obs, nxt, ends = _episodes(lengths, first_episode)
    buf.add_batch(keys, frames=FrameBatch.from_pairs(obs, nxt, ends), **columns)
    return columns, obs, nxt


def _check_live(buf):
    """Every live transition's gathered frames are the frames of its (episode, step) and its next step."""
    live = (buf.total_added - buf.size + np.arange(buf.size)) % buf.capacity
    obs, nxt = buf.images(live)
    state, next_state = buf.states(live)
    for c in CAMS:
        for i, (e, t) in enumerate(state.astype(int)):
            np.testing.assert_array_equal(obs[c.name][i], _frame(c, t, e))
            np.testing.assert_array_equal(nxt[c.name][i], _frame(c, t + 1, e))
        assert obs[c.name].dtype == np.uint8 and obs[c.name].shape == (buf.size, *c.shape)
    np.testing.assert_array_equal(next_state[:, 1], state[:, 1] + 1)


def test_chained_frames_are_stored_once_and_gathered_exactly():
    buf = ReplayBuffer(100, 2, 1, cameras=CAMS)
    _, obs, nxt = _add(buf, [5, 3])
    assert buf.frames_added == 5 + 1 + 3 + 1  # T + 1 frames an episode, not 2T
    _check_live(buf)
    sample = MixedSampler(buf, None, 0.0).sample(2, 3, np.random.default_rng(1))  # frames for the encoder
    rows = [int(np.flatnonzero((buf.obs[:8] == o).all(axis=1))[0]) for o in sample["obs"]]
    np.testing.assert_array_equal(sample["image/top"], obs["top"][rows])
    np.testing.assert_array_equal(sample["next_image/wrist"], nxt["wrist"][rows])


def test_a_batch_that_continues_the_last_episode_shares_its_frame():
    buf = ReplayBuffer(100, 2, 1, cameras=CAMS)
    columns, obs, nxt, ends = _episodes([6])
    ends[2] = False
    for lo, hi in (
        (0, 3),
        (3, 6),
    ):  # one episode in two batches: the second's first obs is the first's last next
        part = {k: v[lo:hi] for k, v in columns.items()}
        frames = FrameBatch.from_pairs(
            {c: f[lo:hi] for c, f in obs.items()}, {c: f[lo:hi] for c, f in nxt.items()}, ends[lo:hi]
        )
        assert not frames.chained[-1]
        buf.add_batch(frames=frames, **part)
    assert buf.frames_added == 7
    _check_live(buf)


def test_frame_ring_wrap_evicts_the_transitions_whose_frames_it_overwrote():
    buf = ReplayBuffer(20, 2, 1, cameras=CAMS, frame_capacity=12)
    for b in range(12):  # one-step episodes: two frames each, so the frame ring holds 6 transitions
        _add(buf, [1, 2], first_episode=2 * b)
        assert buf.frames_added - int(buf.obs_frame[(buf.total_added - buf.size) % 20]) <= 12
        _check_live(buf)
    assert buf.size < 20 and buf.total_added == 36
    idx = buf.sample_indices(2000, np.random.default_rng(0))
    live = set(((buf.total_added - buf.size + np.arange(buf.size)) % buf.capacity).tolist())
    assert set(idx.tolist()) == live  # uniform over the live window only


def test_interleaved_episodes_and_a_batch_larger_than_the_ring():
    buf = ReplayBuffer(16, 2, 1, cameras=CAMS, frame_capacity=24)
    columns, obs, nxt, ends = _episodes([30, 25])
    a, b = np.arange(30), 30 + np.arange(25)  # two runners' episodes, alternating in runs of 3 rows
    order = np.concatenate([np.r_[a[i : i + 3], b[i : i + 3]] for i in range(0, 30, 3)])
    keys = np.where(columns["obs"][order, 0] == 0, "a", "b")
    columns = {k: v[order] for k, v in columns.items()}
    pick = {c: f[order] for c, f in obs.items()}, {c: f[order] for c, f in nxt.items()}
    frames = FrameBatch.from_pairs(*pick, ends[order])
    assert frames.chained.sum() < len(order) - 10  # chained only inside each run of one episode
    buf.add_batch(keys, frames=frames, **columns)
    assert 0 < buf.size <= 16 and buf.total_added == 55
    _check_live(buf)


def test_save_load_round_trip_keeps_frames_indices_and_continuation(tmp_path):
    buf = ReplayBuffer(10, 2, 1, discount=0.9, cameras=CAMS, frame_capacity=9)
    columns, obs, nxt, ends = _episodes([7, 9])
    ends[-1] = False
    buf.add_batch(frames=FrameBatch.from_pairs(obs, nxt, ends), **columns)
    buf.save(tmp_path / "r.npz")
    back = ReplayBuffer.load(tmp_path / "r.npz")
    assert back.cameras == CAMS and back.stats() == buf.stats()
    for k in ("obs", "reward", "mc_return", "obs_frame", "next_frame"):
        np.testing.assert_array_equal(getattr(back, k), getattr(buf, k))
    for c in CAMS:
        written = min(buf.frames_added, buf.frame_capacity)
        np.testing.assert_array_equal(back.frames[c.name][:written], buf.frames[c.name][:written])
    _check_live(back)
    # the episode left open goes on in the loaded buffer, sharing the frame it ended on
    columns, obs, nxt, ends = _episodes([10], first_episode=1)  # its step 9, the step after the save
    frames = FrameBatch.from_pairs(
        {c: f[-1:] for c, f in obs.items()}, {c: f[-1:] for c, f in nxt.items()}, ends[-1:]
    )
    more = {k: v[-1:] for k, v in columns.items()}
    added = back.frames_added
    back.add_batch(frames=frames, **more)
    assert back.frames_added == added + 1
    _check_live(back)
    assert not list(tmp_path.glob(".*tmp"))


def test_featurize_stores_features_as_obs_and_calls_the_hook_once_per_distinct_obs():
    calls = []

    def featurize(state, frames):
        calls.append(len(state))
        top = frames["top"].reshape(len(state), -1).astype(np.float32).mean(axis=1)
        return np.stack([state[:, 0], state[:, 1], top], axis=1)

    buf = ReplayBuffer(50, 2, 1, cameras=CAMS, featurize=featurize, feature_dim=3)
    columns, _, nxt = _add(buf, [4, 6])
    assert calls == [10, 2]  # every obs, then only the two episode-ending next observations
    n = 10
    np.testing.assert_array_equal(buf.obs[:n, :2], columns["obs"])
    np.testing.assert_array_equal(buf.next_obs[:n, :2], columns["next_obs"])
    np.testing.assert_allclose(buf.next_obs[:n, 2], nxt["top"].reshape(n, -1).mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(buf.states(np.arange(n))[0], columns["obs"])
    _check_live(buf)
    sample = MixedSampler(buf, None, 0.0).sample(2, 4, np.random.default_rng(0))
    assert sample["obs"].shape == (8, 3) and sample["next_obs"].dtype == np.float32


def test_featurize_output_is_checked_and_a_loaded_feature_buffer_needs_its_hook(tmp_path):
    buf = ReplayBuffer(10, 2, 1, cameras=CAMS, featurize=lambda s, f: np.zeros((len(s), 2)), feature_dim=3)
    with pytest.raises(
        ValueError, match=r"featurize returned float64 \(3, 2\), expected finite float32 \(3, 3\)"
    ):
        _add(buf, [3])
    good = ReplayBuffer(10, 2, 1, cameras=CAMS, featurize=lambda s, f: np.zeros((len(s), 3)), feature_dim=3)
    _add(good, [3])
    good.save(tmp_path / "f.npz")
    back = ReplayBuffer.load(tmp_path / "f.npz")
    assert back.feature_dim == 3 and back.obs.shape == (10, 3)
    np.testing.assert_array_equal(back.states(np.arange(3))[0], good.states(np.arange(3))[0])
    with pytest.raises(ValueError, match="featurize hook"):
        _add(back, [2])


def test_bytes_per_transition_is_measured_from_the_arrays():
    state_only = ReplayBuffer(1000, 11, 2)
    assert state_only.bytes_per_transition == (11 * 2 + 2 + 4) * 4
    cam = CameraSpec("top", 84, 84, 3)
    buf = ReplayBuffer(1600, 11, 2, cameras=(cam,))
    frames = 1700 * cam.frame_bytes / 1600
    assert buf.bytes_per_transition == pytest.approx(frames + (11 * 2 + 2 + 4) * 4 + 16)
    assert buf.stats()["bytes_per_transition"] == buf.bytes_per_transition


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: FrameBatch(f.chained, {"top": f.obs["top"]}, f.next_unchained), "cameras"),
        (lambda f: FrameBatch(f.chained, {**f.obs, "top": f.obs["top"][:, :3]}, f.next_unchained), "top"),
        (lambda f: FrameBatch(f.chained, {**f.obs, "top": f.obs["top"] * 1.0}, f.next_unchained), "uint8"),
        (lambda f: FrameBatch(f.chained, f.obs, {c: v[:-1] for c, v in f.next_unchained.items()}), "next"),
        (lambda f: FrameBatch(np.ones_like(f.chained), f.obs, f.next_unchained), "chained"),
        (lambda f: FrameBatch(f.chained.astype(int), f.obs, f.next_unchained), "chained"),
    ],
)
def test_frames_that_do_not_fit_are_refused_and_change_nothing(change, match):
    buf = ReplayBuffer(10, 2, 1, cameras=CAMS)
    columns, obs, nxt, ends = _episodes([3, 2])
    with pytest.raises(ValueError, match=match):
        buf.add_batch(frames=change(FrameBatch.from_pairs(obs, nxt, ends)), **columns)
    assert buf.total_added == 0 and buf.frames_added == 0
    with pytest.raises(ValueError, match="takes frames"):
        buf.add_batch(**columns)
    with pytest.raises(ValueError, match="takes frames"):
        ReplayBuffer(10, 2, 1).add_batch(frames=FrameBatch.from_pairs(obs, nxt, ends), **columns)


def test_frames_rows_keeps_chaining_only_between_kept_neighbours():
    _, obs, nxt, ends = _episodes([5])
    frames = FrameBatch.from_pairs(obs, nxt, ends)
    part = frames.rows(np.array([0, 1, 3]))
    np.testing.assert_array_equal(part.chained, [True, False, False])
    for c in frames.cameras:
        np.testing.assert_array_equal(part.next(c), nxt[c][[0, 1, 3]])


def test_a_wire_batch_goes_into_the_replay_as_the_learner_inserts_it():
    """The learner's ingest: a decoded camera batch's chained frames (rows accepted after dedup) into the
    replay, and a run of rows logged as a batch of its own; what comes back out is what went in."""
    columns, obs, nxt, _ = _episodes([5, 4])
    batch = Transitions.make(
        "r1",
        0,
        obs=columns["obs"],
        action=columns["action"],
        reward=columns["reward"],
        next_obs=columns["next_obs"],
        terminated=columns["terminated"],
        truncated=columns["truncated"],
        episode_id=columns["obs"][:, 0].astype(np.int64),
        policy_version=np.zeros(9, np.int64),
        camera_obs=obs,
        camera_next=nxt,
    )
    decoded = decode(encode(batch))
    BatchRules(2, 1, cameras=CAMS).check(decoded)
    for kept in (np.arange(9), np.array([0, 1, 3, 4, 5, 8])):  # all rows; rows a dedup let through
        buf = ReplayBuffer(20, 2, 1, cameras=CAMS)
        cams = decoded.cameras
        frames = FrameBatch(
            decoded.chained,
            {c: decoded.camera_obs(c) for c in cams},
            {c: decoded.camera_next_unchained(c) for c in cams},
        ).rows(kept)
        part = {k: v[kept] for k, v in columns.items()}
        part["truncated"] = part["truncated"] | np.r_[np.diff(part["obs"][:, 0]) != 0, False]
        buf.add_batch(part["obs"][:, 0].astype(str), frames, **part)
        _check_live(buf)
    run = decoded.rows(2, 7)
    np.testing.assert_array_equal(run.camera_next("top"), nxt["top"][2:7])


# ----- the learner's ingest of camera batches -----

LEARNER_CAMS = (CameraSpec("top", 24, 24, 3), CameraSpec("wrist", 16, 20, 1))
LEARNER_SPEC = EnvSpec("cam-test", 5, 2, (-1.0, -1.0), (1.0, 1.0), 0.02, LEARNER_CAMS)
TINY_ENCODER = ["agent.encoder.channels=[4,4]", "agent.encoder.strides=[2,2]", "agent.encoder.feature_dim=3"]


def _camera_batch(first_seq: int, n: int, episode: int = 0) -> tuple[Transitions, dict, dict]:
    rng = np.random.default_rng(first_seq)
    states = rng.standard_normal((n + 1, 5)).astype(np.float32)
    frames = {c.name: rng.integers(0, 256, (n + 1, *c.shape), dtype=np.uint8) for c in LEARNER_CAMS}
    batch = Transitions.make(
        "runner-0",
        first_seq,
        obs=states[:-1],
        action=np.zeros((n, 2)),
        reward=np.ones(n),
        next_obs=states[1:],
        terminated=np.zeros(n),
        truncated=np.zeros(n),
        episode_id=np.full(n, episode),
        policy_version=np.zeros(n),
        camera_obs={c: f[:-1] for c, f in frames.items()},
        camera_next={c: f[1:] for c, f in frames.items()},
        sender="runner-0",
    )
    return batch, {c: f[:-1] for c, f in frames.items()}, {c: f[1:] for c, f in frames.items()}


def test_the_learner_puts_camera_batches_in_a_featurizing_replay_and_gets_them_back_after_a_restart(
    tmp_path, learner_keydir
):
    from helpers import SMALL_AGENT

    from robot_wsrl.learn.agent import Agent
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.learner import Learner, LearnerOptions
    from robot_wsrl.learn.networks import build_networks
    from robot_wsrl.learn.training import save_training_checkpoint
    from robot_wsrl.wire import keys, transport

    overrides = [*SMALL_AGENT, *TINY_ENCODER, "device=cpu", "threads=1"]
    cfg = compose_config("finetune", overrides)
    agent = Agent(build_networks(5, 2, cfg.agent, "cpu", cameras=LEARNER_CAMS), cfg.agent)
    checkpoint = save_training_checkpoint(tmp_path / "c.pt", agent, LEARNER_SPEC, cfg, 0, {})
    cfg = compose_config(
        "finetune", [*overrides, f"run.checkpoint={checkpoint}", f"out_dir={tmp_path / 'out'}"]
    )
    ctx, started = zmq.Context(), []

    def start() -> Learner:
        sock = transport.plain_server(ctx, zmq.ROUTER, f"inproc://camera-learner-{len(started)}")
        started.append(sock)
        return Learner(
            cfg,
            sock,
            tmp_path / "out",
            keys.load_signing_key(learner_keydir, "learner"),
            LearnerOptions(),
            False,
        )

    try:
        learner = start()
        first, obs, nxt = _camera_batch(0, 12)
        learner._ingest(b"peer", first)
        resent, obs2, nxt2 = _camera_batch(8, 10)  # rows 8..11 again (dedup drops them), then 12..17
        learner._ingest(b"peer", resent)
        learner._commit()
        buf = learner.buffer
        assert len(buf) == 18 and buf.obs.shape[1] == learner.agent.input_dim == 5 + 2 * 3
        rows = np.arange(18)
        state = np.concatenate([first.obs, resent.obs[4:]])
        np.testing.assert_array_equal(buf.states(rows)[0], state)
        np.testing.assert_array_equal(buf.obs[rows, :5], state)
        features = learner.agent.featurize(state, {c: np.concatenate([obs[c], obs2[c][4:]]) for c in obs})
        np.testing.assert_allclose(buf.obs[rows], features, atol=1e-6)
        images, next_images = buf.images(rows)
        for c in obs:
            np.testing.assert_array_equal(images[c], np.concatenate([obs[c], obs2[c][4:]]))
            np.testing.assert_array_equal(next_images[c], np.concatenate([nxt[c], nxt2[c][4:]]))
        status = learner.status()["replay"]
        assert status["cameras"] == ["top", "wrist"] and status["bytes_per_transition"] > 24 * 24 * 3
        learner.close()
        learner.sock.close()

        again = start()  # the ingest log gives the same replay back
        np.testing.assert_array_equal(again.buffer.images(rows)[1]["wrist"], next_images["wrist"])
        np.testing.assert_allclose(again.buffer.next_obs[rows], buf.next_obs[rows], atol=1e-6)
        assert len(again.buffer) == 18
        again.close()
        again.sock.close()
    finally:
        ctx.destroy(linger=0)  # closes a failed run's sockets too: term() would wait for them forever
