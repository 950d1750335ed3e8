import numpy as np
import pytest

from robot_wsrl.learn.replay import MixedSampler, ReplayBuffer, discounted_returns


def _fill(buf: ReplayBuffer, rewards, ends, truncs=None):
    truncs = truncs or [False] * len(rewards)
    for i, (r, end, tr) in enumerate(zip(rewards, ends, truncs, strict=True)):
        buf.add(np.full(buf.obs_dim, i), np.zeros(buf.act_dim), r, np.full(buf.obs_dim, i + 1), end, tr)


def test_mc_return_to_go_by_hand_terminated_and_truncated():
    buf = ReplayBuffer(10, 2, 1, discount=0.5)
    _fill(buf, [1, 2, 4, 8, 16], [False, False, True, False, False], [False] * 4 + [True])
    # episode 1: rtg = [1 + .5*2 + .25*4, 2 + .5*4, 4]; episode 2 (truncated, no bootstrap): [8 + 8, 16]
    np.testing.assert_allclose(buf.mc_return[:5], [3.0, 4.0, 4.0, 16.0, 16.0])
    np.testing.assert_array_equal(buf.terminated[:5], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(buf.truncated[:5], [0, 0, 0, 0, 1])


def test_ring_overwrites_oldest_and_handles_episode_across_the_wrap():
    buf = ReplayBuffer(4, 1, 1, discount=1.0)
    _fill(buf, [1, 1, 1, 1, 1, 1], [False] * 5 + [True])
    assert len(buf) == 4 and buf.cursor == 2 and buf.total_added == 6
    # the surviving transitions are rows 2..5 (obs 2,3 at slots 2,3 and obs 4,5 at slots 0,1)
    np.testing.assert_array_equal(buf.obs[:, 0], [4, 5, 2, 3])
    np.testing.assert_allclose(buf.mc_return, [2, 1, 4, 3])  # the capped episode: last 4 steps


def test_sampling_is_uniform_over_filled_part():
    buf = ReplayBuffer(100, 1, 1)
    _fill(buf, [0.0] * 10, [False] * 10)
    idx = buf.sample_indices(5000, np.random.default_rng(0))
    assert idx.min() == 0 and idx.max() == 9
    counts = np.bincount(idx, minlength=10)
    assert counts.min() > 400  # ~500 each
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3, 1, 1).sample_indices(1, np.random.default_rng(0))


def test_end_episode_closes_a_partial_episode_as_truncated():
    buf = ReplayBuffer(10, 1, 1, discount=1.0)
    _fill(buf, [1, 1, 1], [False] * 3)
    assert buf.mc_return[:3].sum() == 0
    buf.end_episode()
    np.testing.assert_allclose(buf.mc_return[:3], [3, 2, 1])
    assert buf.truncated[2] == 1 and buf.terminated[2] == 0


def test_save_load_round_trip(tmp_path):
    buf = ReplayBuffer(8, 3, 2, discount=0.9)
    _fill(buf, list(range(11)), [i % 4 == 3 for i in range(11)])
    buf.save(tmp_path / "r.npz")
    back = ReplayBuffer.load(tmp_path / "r.npz")
    for field in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "mc_return"):
        np.testing.assert_array_equal(getattr(back, field), getattr(buf, field))
    assert (back.size, back.cursor, back.total_added, back.discount) == (8, 3, 11, 0.9)


def test_a_buffer_saved_between_episodes_loads(tmp_path):
    buf = ReplayBuffer(8, 3, 2, discount=0.9)
    _fill(buf, list(range(4)), [False, False, False, True])  # the last episode ended: none open
    buf.save(tmp_path / "r.npz")
    back = ReplayBuffer.load(tmp_path / "r.npz")
    assert len(back) == 4 and not back._open
    np.testing.assert_array_equal(back.mc_return, buf.mc_return)


def test_from_arrays_computes_returns_per_episode():
    n = 5
    buf = ReplayBuffer.from_arrays(
        1.0,
        np.zeros((n, 1)),
        np.zeros((n, 1)),
        np.ones(n),
        np.zeros((n, 1)),
        np.array([0, 1, 0, 0, 0], np.float32),
        np.array([False, True, False, False, True]),
    )
    np.testing.assert_allclose(buf.mc_return, [2, 1, 3, 2, 1])
    np.testing.assert_array_equal(buf.truncated, [0, 0, 0, 0, 1])


def _tagged(n: int, tag: float) -> ReplayBuffer:
    buf = ReplayBuffer(n, 1, 1)
    _fill(buf, [tag] * n, [False] * n)
    return buf


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_mixed_sampler_exact_split_in_every_minibatch(ratio):
    sampler = MixedSampler(_tagged(50, 1.0), _tagged(50, 2.0), ratio)
    batch = sampler.sample(4, 32, np.random.default_rng(0))
    assert batch["reward"].shape == (128,) and batch["obs"].shape == (128, 1)
    for k in range(4):
        offline = (batch["reward"][k * 32 : (k + 1) * 32] == 2.0).sum()
        assert offline == round(ratio * 32)


def test_mixed_sampler_wsrl_needs_no_offline_buffer():
    sampler = MixedSampler(_tagged(10, 1.0), None, 0.0)
    assert sampler.sample(2, 4, np.random.default_rng(0))["reward"].tolist() == [1.0] * 8
    with pytest.raises(ValueError, match="offline buffer"):
        MixedSampler(_tagged(10, 1.0), None, 0.5)


def _columns(rewards, ends) -> dict[str, np.ndarray]:
    n = len(rewards)
    return {
        "obs": np.arange(n, dtype=np.float32)[:, None],
        "action": np.zeros((n, 1), np.float32),
        "reward": np.asarray(rewards, np.float32),
        "next_obs": np.zeros((n, 1), np.float32),
        "terminated": np.asarray(ends, bool),
        "truncated": np.zeros(n, bool),
    }


def test_interleaved_episodes_of_two_runners_get_their_own_returns_to_go():
    # Runner a's episode: rewards 1, 2, 4 (ends); runner b's: 10, 20 (ends). Rows interleave within a batch
    # and across two batches; each episode's return-to-go must ignore the other's rows.
    buf = ReplayBuffer(10, 1, 1, discount=0.5)
    buf.add_batch(["a", "b", "a"], **_columns([1, 10, 2], [False, False, False]))
    assert buf.open_episodes() == {"a": 2, "b": 1}
    buf.add_batch(["b", "a"], **_columns([20, 4], [True, True]))
    assert buf.open_episodes() == {}
    # slots in arrival order: a1, b10, a2, b20, a4
    np.testing.assert_allclose(buf.mc_return[:5], [1 + 0.5 * 2 + 0.25 * 4, 10 + 0.5 * 20, 2 + 0.5 * 4, 20, 4])


def test_a_batch_holding_the_end_of_one_episode_and_the_start_of_the_next():
    buf = ReplayBuffer(10, 1, 1, discount=1.0)
    buf.add_batch(["a/0", "a/0", "a/1"], **_columns([1, 1, 5], [False, True, False]))
    np.testing.assert_allclose(buf.mc_return[:3], [2, 1, 0])
    assert buf.open_episodes() == {"a/1": 1}
    buf.end_episode()
    np.testing.assert_allclose(buf.mc_return[:3], [2, 1, 5])
    assert buf.truncated[2] == 1


def test_open_episodes_survive_save_and_load(tmp_path):
    whole = ReplayBuffer(6, 1, 1, discount=0.9)
    _fill(whole, [1, 2, 3, 4, 5], [False] * 4 + [True])
    cut = ReplayBuffer(6, 1, 1, discount=0.9)
    _fill(cut, [1, 2, 3], [False] * 3)
    cut.save(tmp_path / "r.npz")
    back = ReplayBuffer.load(tmp_path / "r.npz")
    assert back.open_episodes() == {"": 3}
    for i, r in enumerate([4, 5]):
        back.add(np.full(1, 3 + i), np.zeros(1), r, np.full(1, 4 + i), i == 1, False)
    np.testing.assert_allclose(back.mc_return, whole.mc_return)


def test_episode_keys_must_match_the_rows():
    with pytest.raises(ValueError, match="2 episode keys for 3 transitions"):
        ReplayBuffer(4, 1, 1).add_batch(["a", "a"], **_columns([1, 1, 1], [False] * 3))


def _naive_returns(rewards, discount):
    out, running = [], 0.0
    for r in reversed(list(rewards)):
        running = r + discount * running
        out.append(running)
    return out[::-1]


@pytest.mark.parametrize("discount", [0.0, 0.5, 0.9, 0.99, 0.999, 1.0])
@pytest.mark.parametrize("n", [1, 7, 1000, 5000])
def test_discounted_returns_match_the_step_by_step_sum(discount, n):
    rewards = np.random.default_rng(n).standard_normal(n)
    np.testing.assert_allclose(
        discounted_returns(rewards, discount), _naive_returns(rewards, discount), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"obs": np.zeros((3, 1), np.float32)},  # a width-1 column was broadcast across the ring's columns
        {"action": np.zeros((3, 5), np.float32)},
        {"next_obs": np.zeros(3, np.float32)},
        {"reward": np.zeros((3, 1), np.float32)},
        {"terminated": np.zeros(2, bool)},
        {"obs": np.float32(0)},
    ],
)
def test_add_batch_refuses_wrong_shapes_and_changes_nothing(bad):
    buf = ReplayBuffer(10, 4, 2)
    columns = {
        "obs": np.ones((3, 4), np.float32),
        "action": np.ones((3, 2), np.float32),
        "reward": np.ones(3, np.float32),
        "next_obs": np.ones((3, 4), np.float32),
        "terminated": np.zeros(3, bool),
        "truncated": np.zeros(3, bool),
    }
    buf.add_batch(**columns)
    with pytest.raises(ValueError, match=r"add_batch: .* has shape"):
        buf.add_batch(**{**columns, **bad})
    assert buf.total_added == 3 and buf.obs[3:].sum() == 0


def test_cut_episode_closes_one_episode_as_truncated():
    buf = ReplayBuffer(10, 1, 1, discount=1.0)
    buf.add_batch(["a", "b", "a"], **_columns([1, 10, 2], [False, False, False]))
    buf.cut_episode("a")
    buf.cut_episode("missing")  # not open: nothing to do
    assert buf.open_episodes() == {"b": 1}
    np.testing.assert_allclose(buf.mc_return[:3], [3, 0, 2])
    assert buf.truncated[2] == 1 and buf.truncated[0] == 0


def test_an_endless_episode_holds_no_more_than_the_ring():
    buf = ReplayBuffer(8, 1, 1, discount=0.5)
    for _ in range(50):
        buf.add_batch(["a"] * 3, **_columns([1, 1, 1], [False] * 3))
    assert sum(len(c) for c in buf._open["a"]) <= 8 + 3
    buf.add_batch(["a"], **_columns([1], [True]))
    np.testing.assert_allclose(sorted(buf.mc_return), sorted(_naive_returns([1] * 8, 0.5)))


def test_a_batch_of_many_episodes_gets_the_returns_of_adding_them_row_by_row():
    rng = np.random.default_rng(3)
    n = 400
    cuts = np.sort(rng.choice(np.arange(1, n), 99, replace=False))
    keys = np.repeat([f"k{i}" for i in range(100)], np.diff(np.r_[0, cuts, n]))
    last = np.r_[keys[1:] != keys[:-1], True]
    ends = last & (rng.random(n) < 0.7)  # most episodes end at their last row, the rest stay open
    columns = _columns(rng.standard_normal(n), ends)
    whole, rows = ReplayBuffer(1000, 1, 1, 0.9), ReplayBuffer(1000, 1, 1, 0.9)
    whole.add_batch(keys, **columns)
    for i in range(n):
        rows.add_batch(keys[i : i + 1], **{k: v[i : i + 1] for k, v in columns.items()})
    np.testing.assert_allclose(whole.mc_return, rows.mc_return, rtol=1e-6, atol=1e-6)
    assert whole.open_episodes() == rows.open_episodes()


@pytest.mark.parametrize("discount", [0.9, 0.99, 1.0])
def test_a_long_episode_settles_as_it_goes_and_ends_in_bounded_work(discount):
    """Steps far behind the newest get their returns-to-go while the episode runs (what comes later
    cannot change them at float32's resolution), so an open episode holds ~2 x horizon steps."""
    rng = np.random.default_rng(0)
    n, batch = 9000, 97
    rewards = rng.standard_normal(n)
    buf = ReplayBuffer(20000, 1, 1, discount)
    held = []
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        buf.add_batch(["e"] * (hi - lo), **_columns(rewards[lo:hi], [False] * (hi - lo - 1) + [hi == n]))
        held.append(sum(buf.open_episodes().values()))
    want = np.asarray(_naive_returns(rewards.astype(np.float32).astype(np.float64), discount), np.float32)
    np.testing.assert_allclose(buf.mc_return[:n], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert max(held) <= (n if buf.horizon is None else 2 * buf.horizon + batch)
