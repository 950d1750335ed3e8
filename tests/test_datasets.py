"""Offline dataset loading: round trips, D4RL-style next_observations, and errors that name file and field."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_wsrl.learn.datasets import (
    DatasetError,
    OfflineDataset,
    _from_raw,
    dataset_stats,
    load_dataset,
    save_dataset,
)

h5py = pytest.importorskip("h5py")

SUFFIXES = [".npz", ".hdf5", ".h5"]


def write_raw(path: Path, arrays: dict[str, Any]) -> Path:
    """Write arbitrary arrays under arbitrary keys, bypassing save_dataset's checks (to build bad files)."""
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
    return path


def raw_d4rl(n: int = 10, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid D4RL-style arrays with one timeout (row 4) and a terminal last row; no next_observations."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[4] = True
    terminals[-1] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def make_dataset(n: int = 8, seed: int = 0) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n + 1, 4)).astype(np.float32)
    terminals = np.zeros(n, dtype=bool)
    terminals[-1] = True
    return OfflineDataset(
        observations=obs[:-1],
        actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=obs[1:],
        terminals=terminals,
        timeouts=np.zeros(n, dtype=bool),
        source="test",
    )


# ---------------------------------------------------------------------------------------------------------
# Round trips and layout


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    ds = make_dataset()
    path = save_dataset(tmp_path / "sub" / f"data{suffix}", ds)
    assert path.exists() and not list(path.parent.glob(".*.tmp"))
    back = load_dataset(path)
    assert back.source == str(path)
    assert back.size == ds.size == 8
    for key, a in ds.to_arrays().items():
        b = getattr(back, key)
        assert b.dtype == a.dtype, key
        np.testing.assert_array_equal(b, a, err_msg=key)
    assert back.observations.dtype == np.float32 and back.terminals.dtype == bool


def test_dtypes_are_coerced_and_column_vectors_squeezed(tmp_path: Path) -> None:
    raw = raw_d4rl()
    raw["observations"] = raw["observations"].astype(np.float64)
    raw["rewards"] = raw["rewards"].reshape(-1, 1)
    raw["terminals"] = raw["terminals"].astype(np.float32)
    ds = load_dataset(write_raw(tmp_path / "d.npz", raw))
    assert ds.observations.dtype == np.float32
    assert ds.rewards.shape == (ds.size,)
    assert ds.terminals.dtype == bool and ds.terminals[-1]


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_next_observations_derived_d4rl_style(tmp_path: Path, suffix: str) -> None:
    raw = raw_d4rl(n=10)  # episode A = rows 0..4 (timeout at 4), episode B = rows 5..9 (terminal at 9)
    obs = raw["observations"]
    ds = load_dataset(write_raw(tmp_path / f"d{suffix}", raw))
    # The timeout row 4 has no valid successor and is dropped; the terminal last row is kept.
    kept = [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert ds.size == len(kept)
    np.testing.assert_array_equal(ds.observations, obs[kept])
    np.testing.assert_array_equal(ds.actions, raw["actions"][kept])
    np.testing.assert_array_equal(ds.next_observations[:4], obs[1:5])
    np.testing.assert_array_equal(ds.next_observations[4:8], obs[6:10])
    np.testing.assert_array_equal(ds.next_observations[8], obs[9])  # terminal: s' is s itself
    # Row 3 now ends episode A (truncated), row 9 ends B (terminal).
    assert ds.timeouts.tolist() == [False, False, False, True, False, False, False, False, False]
    assert ds.terminals.tolist() == [False] * 8 + [True]
    assert np.flatnonzero(ds.episode_ends()).tolist() == [3, 8]


def test_derivation_without_timeouts_drops_unterminated_last_row(tmp_path: Path) -> None:
    raw = raw_d4rl(n=6)
    del raw["timeouts"]
    raw["terminals"][:] = False
    raw["terminals"][2] = True  # episode ends in a terminal mid-file; the last row is a cut-off
    ds = load_dataset(write_raw(tmp_path / "d.npz", raw))
    assert ds.size == 5
    np.testing.assert_array_equal(ds.next_observations[2], raw["observations"][2])
    np.testing.assert_array_equal(ds.next_observations[4], raw["observations"][5])
    assert ds.timeouts.tolist() == [False, False, False, False, True]
    assert np.flatnonzero(ds.episode_ends()).tolist() == [2, 4]


def test_episode_ends_from_discontinuity_when_no_flags() -> None:
    ds = make_dataset(n=6)
    nxt = ds.next_observations.copy()
    nxt[2] += 1.0  # next state of row 2 is not row 3's state: an unmarked episode boundary
    ds2 = OfflineDataset(**{**ds.to_arrays(), "next_observations": nxt, "terminals": np.zeros(6, bool)})
    assert np.flatnonzero(ds2.episode_ends()).tolist() == [2, 5]


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_max_transitions(tmp_path: Path, suffix: str) -> None:
    raw = raw_d4rl(n=10)
    derived = load_dataset(write_raw(tmp_path / f"a{suffix}", raw), max_transitions=3)
    assert derived.size == 3
    np.testing.assert_array_equal(derived.next_observations[2], raw["observations"][3])
    assert derived.episode_ends()[-1]
    stored = load_dataset(save_dataset(tmp_path / f"b{suffix}", make_dataset(n=8)), max_transitions=5)
    assert stored.size == 5
    assert load_dataset(tmp_path / f"b{suffix}", max_transitions=100).size == 8
    with pytest.raises(ValueError, match="max_transitions"):
        load_dataset(tmp_path / f"b{suffix}", max_transitions=0)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    ends=st.lists(st.sampled_from(["terminal", "timeout"]), min_size=6, max_size=6),
    last_unflagged=st.booleans(),
)
def test_derivation_never_crosses_episodes(lengths: list[int], ends: list[str], last_unflagged: bool) -> None:
    """Encode obs as (episode, t): every kept non-terminal s' must be (same episode, t + 1)."""
    obs, term, tout = [], [], []
    expected_rows, expected_eps = 0, 0
    for e, length in enumerate(lengths):
        kind = "none" if (last_unflagged and e == len(lengths) - 1) else ends[e]
        for t in range(length):
            obs.append([e, t])
            term.append(kind == "terminal" and t == length - 1)
            tout.append(kind == "timeout" and t == length - 1)
        kept = length if kind == "terminal" else length - 1
        expected_rows += kept
        expected_eps += kept > 0
    if expected_rows == 0:
        return
    raw = {
        "observations": np.array(obs, np.float32),
        "actions": np.zeros((len(obs), 1), np.float32),
        "rewards": np.zeros(len(obs), np.float32),
        "terminals": np.array(term),
        "timeouts": np.array(tout),
    }
    ds = _from_raw("mem", raw, None)
    assert ds.size == expected_rows
    o, n = ds.observations, ds.next_observations
    nt = ~ds.terminals
    np.testing.assert_array_equal(n[nt, 0], o[nt, 0])
    np.testing.assert_array_equal(n[nt, 1], o[nt, 1] + 1)
    np.testing.assert_array_equal(n[ds.terminals], o[ds.terminals])
    assert int(ds.episode_ends().sum()) == expected_eps


def test_dataset_stats() -> None:
    ds = make_dataset(n=6)
    rewards = np.arange(6, dtype=np.float32)
    terminals = np.array([0, 1, 0, 0, 0, 1], bool)
    ds = OfflineDataset(**{**ds.to_arrays(), "rewards": rewards, "terminals": terminals}, source="s")
    stats = dataset_stats(ds)
    assert stats["size"] == 6 and stats["episodes"] == 2
    assert stats["return_min"] == 1.0 and stats["return_max"] == 14.0 and stats["return_mean"] == 7.5
    assert len(stats["obs_mean"]) == len(stats["obs_std"]) == 4
    np.testing.assert_allclose(stats["obs_mean"], ds.observations.mean(0), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Errors name the file and the field


def _bad(kind: str) -> tuple[dict[str, Any], str]:
    raw = raw_d4rl()
    if kind == "missing_key":
        del raw["rewards"]
        return raw, "rewards"
    if kind == "length_mismatch":
        raw["actions"] = raw["actions"][:-1]
        return raw, "actions"
    if kind == "nan":
        raw["observations"][3, 1] = np.nan
        return raw, "observations"
    if kind == "inf":
        raw["rewards"][5] = np.inf
        return raw, "rewards"
    if kind == "nan_next":
        raw["next_observations"] = raw["observations"].copy()
        raw["next_observations"][0, 0] = np.nan
        return raw, "next_observations"
    if kind == "wrong_ndim":
        raw["observations"] = raw["observations"][:, 0]
        return raw, "observations"
    if kind == "empty":
        return {k: v[:0] for k, v in raw.items()}, "observations"
    if kind == "non_numeric":
        raw["terminals"] = np.array(["x"] * len(raw["terminals"]), dtype="S1")
        return raw, "terminals"
    raise AssertionError(kind)


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
@pytest.mark.parametrize(
    "kind", ["missing_key", "length_mismatch", "nan", "inf", "nan_next", "wrong_ndim", "empty", "non_numeric"]
)
def test_bad_file_errors_name_file_and_field(tmp_path: Path, suffix: str, kind: str) -> None:
    raw, field = _bad(kind)
    path = write_raw(tmp_path / f"bad_{kind}{suffix}", raw)
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert path.name in msg and f"'{field}'" in msg, msg
    assert info.value.field == field
    if kind in ("nan", "inf"):
        assert kind.upper()[:3] in msg.upper()


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_actions_out_of_bounds(tmp_path: Path, suffix: str) -> None:
    raw = raw_d4rl()
    raw["actions"][2, 1] = 1.5
    raw["actions"][6, 0] = -1.75  # the worst; row 6 of the file (row 5 after dropping the timeout row 4)
    path = write_raw(tmp_path / f"oob{suffix}", raw)
    with pytest.raises(DatasetError) as info:
        load_dataset(path, action_low=-1.0, action_high=[1.0, 1.0])
    msg = str(info.value)
    assert path.name in msg and "'actions'" in msg and "2 of 10 row" in msg, msg
    assert "worst value -1.75 at row 6, dim 0" in msg, msg
    # Only one side given: the other is unbounded.
    load_dataset(path, action_low=-2.0)
    with pytest.raises(DatasetError, match="actions"):
        load_dataset(path, action_high=1.0)


def test_actions_at_bound_within_tolerance_pass(tmp_path: Path) -> None:
    raw = raw_d4rl()
    raw["actions"][0, 0] = np.float32(1.0) + np.float32(5e-7)
    raw["actions"][1, 0] = -1.0
    load_dataset(write_raw(tmp_path / "edge.npz", raw), action_low=-1.0, action_high=1.0)


def test_action_bounds_wrong_length(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "d.npz", raw_d4rl())
    with pytest.raises(DatasetError, match=r"d\.npz.*'actions'.*action_low has 3 entries"):
        load_dataset(path, action_low=[-1, -1, -1], action_high=1)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"data\.csv.*unsupported file type '\.csv'"):
        load_dataset(path)
    with pytest.raises(DatasetError, match=r"out\.csv.*unsupported"):
        save_dataset(tmp_path / "out.csv", make_dataset())


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_missing_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"nowhere{suffix}"
    with pytest.raises(DatasetError, match=rf"nowhere\{suffix}: file not found"):
        load_dataset(path)


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_corrupt_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"not a dataset at all" * 10)
    with pytest.raises(DatasetError, match=rf"junk\{suffix}: cannot read"):
        load_dataset(path)


def test_hdf5_group_instead_of_array(tmp_path: Path) -> None:
    path = tmp_path / "grp.hdf5"
    raw = raw_d4rl()
    with h5py.File(path, "w") as f:
        for k, v in raw.items():
            if k != "observations":
                f.create_dataset(k, data=v)
        f.create_group("observations").create_dataset("pos", data=raw["observations"])
    with pytest.raises(DatasetError, match=r"grp\.hdf5: field 'observations': is an HDF5 Group"):
        load_dataset(path)


def test_in_memory_dataset_validates_shapes() -> None:
    ds = make_dataset(n=4)
    with pytest.raises(DatasetError, match=r"'next_observations'.*shape"):
        OfflineDataset(**{**ds.to_arrays(), "next_observations": ds.next_observations[:, :2]}, source="mem")
    with pytest.raises(DatasetError, match=r"mem: field 'rewards'.*length mismatch"):
        OfflineDataset(**{**ds.to_arrays(), "rewards": ds.rewards[:3]}, source="mem")


def test_dataset_error_pickles() -> None:
    err = DatasetError("f.npz", "actions", "bad")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "f.npz: field 'actions': bad" and back.field == "actions"
    assert isinstance(back, ValueError)


# ---------------------------------------------------------------------------------------------------------
# Minari


def test_minari_not_installed_or_dataset_missing() -> None:
    try:
        import minari  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetError, match=r"minari:some/ds-v0: the 'minari' package is not installed"):
            load_dataset("minari:some/ds-v0")
    else:
        with pytest.raises(DatasetError, match=r"minari:no-such/dataset-v999.*not found locally"):
            load_dataset("minari:no-such/dataset-v999")


def test_minari_not_installed_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "minari", None)  # makes `import minari` raise ImportError
    with pytest.raises(DatasetError, match="'minari' package is not installed"):
        load_dataset("minari:x/y-v0")


def test_minari_episodes_concatenated_with_fake_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Minari stores T+1 observations per episode; dict observations flatten in the space's key order."""

    def episode(ep_id: int, t: int, terminated: bool) -> types.SimpleNamespace:
        base = 100 * ep_id + np.arange(t + 1, dtype=np.float64)
        term = np.zeros(t, bool)
        term[-1] = terminated
        return types.SimpleNamespace(
            id=ep_id,
            observations={"b": np.stack([base, base], 1), "a": base},
            actions=np.full((t, 2), 0.5),
            rewards=np.ones(t),
            terminations=term,
            truncations=np.zeros(t, bool),
        )

    space = types.SimpleNamespace(spaces={"b": None, "a": None})
    fake_ds = types.SimpleNamespace(
        observation_space=space,
        iterate_episodes=lambda: iter([episode(0, 3, True), episode(1, 2, False)]),
    )

    def fake_load(dataset_id: str) -> Any:
        if dataset_id != "fake/ds-v0":
            raise FileNotFoundError(dataset_id)
        return fake_ds

    monkeypatch.setitem(sys.modules, "minari", types.SimpleNamespace(load_dataset=fake_load))
    ds = load_dataset("minari:fake/ds-v0")
    assert ds.source == "minari:fake/ds-v0" and ds.size == 5 and ds.obs_dim == 3
    np.testing.assert_array_equal(ds.observations[:, 0], [0, 1, 2, 100, 101])  # "b" first, as the space says
    np.testing.assert_array_equal(ds.next_observations[:, 2], [1, 2, 3, 101, 102])
    assert ds.terminals.tolist() == [False, False, True, False, False]
    assert ds.timeouts.tolist() == [False, False, False, False, True]  # unmarked end counts as truncation
    assert np.flatnonzero(ds.episode_ends()).tolist() == [2, 4]
    assert load_dataset("minari:fake/ds-v0", max_transitions=2).size == 2
    with pytest.raises(DatasetError, match=r"minari:other/ds-v0.*not found locally.*minari download"):
        load_dataset("minari:other/ds-v0")
    with pytest.raises(DatasetError, match=r"minari:fake/ds-v0: field 'actions'.*outside"):
        load_dataset("minari:fake/ds-v0", action_low=-0.1, action_high=0.1)
