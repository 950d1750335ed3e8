"""Offline datasets: D4RL-style HDF5, .npz and (when installed) Minari, loaded into one flat layout.

Numpy only at import time; h5py and minari are imported inside the loaders that need them, so the robot
side can import this module (e.g. to write recorded runs as .npz) without the learner's dependencies.

Every problem with a file raises `DatasetError`, whose message names the file and the field, because the
usual failure is "someone handed us the wrong file" and the fix starts with knowing which file and key.

Layout: one row per transition (s, a, r, s', terminal, timeout). `terminals` stops the TD backup;
`timeouts` only marks that an episode was cut off (the backup continues through s').

An image dataset (a camera task's, as `collect` records it) adds per camera its frames once each,
`frames/{cam}` uint8 [F, H, W, C], and per row the index of the obs frame and of the next frame,
`obs_frame/{cam}` and `next_frame/{cam}` [N]: an episode of T steps stores T + 1 frames. `observations`
and `next_observations` are then the state part. `OfflineDataset.images(idx)` gives rows' images; a
replay buffer made with `ReplayBuffer.from_arrays(..., frames=, obs_frame=, next_frame=)` samples them
with the rows (the batch the UTD round takes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_wsrl.core.spec import CameraSpec

__all__ = [
    "ACTION_TOLERANCE",
    "DatasetError",
    "OfflineDataset",
    "dataset_stats",
    "load_dataset",
    "save_dataset",
]

#: Slack on the action bounds check: float32 round-off of actions recorded exactly at the limit.
ACTION_TOLERANCE = 1e-6

_REQUIRED = ("observations", "actions", "rewards", "terminals")
_OPTIONAL = ("timeouts", "next_observations")
_HDF5_SUFFIXES = (".hdf5", ".h5")
_NPZ_SUFFIXES = (".npz",)
_MINARI_PREFIX = "minari:"
_IMAGE_KEYS = ("frames", "obs_frame", "next_frame")  # an image dataset's keys: KEY/{camera}

# (action_low, action_high) as given to load_dataset, or None when no bounds check is wanted.
_Bounds = tuple[Any, Any] | None


class DatasetError(ValueError):
    """A dataset cannot be used; the message says which file and which field, and what is wrong."""

    def __init__(self, source: str | os.PathLike[str], field: str | None, problem: str) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        where = self.source if field is None else f"{self.source}: field '{field}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the exception picklable (multiprocessing) despite the three-argument constructor.
        return (type(self), (self.source, self.field, self.problem))


@dataclass(frozen=True, eq=False)
class OfflineDataset:
    """Flat transitions. Arrays are coerced to float32/bool and checked for consistent shapes on creation."""

    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N, act_dim] float32
    rewards: np.ndarray  # [N] float32
    next_observations: np.ndarray  # [N, obs_dim] float32
    terminals: np.ndarray  # [N] bool
    timeouts: np.ndarray  # [N] bool
    source: str = "<memory>"
    frames: Mapping[str, np.ndarray] = field(default_factory=dict)  # camera -> uint8 [F, H, W, C]
    obs_frame: Mapping[str, np.ndarray] = field(default_factory=dict)  # camera -> int64 [N] into frames
    next_frame: Mapping[str, np.ndarray] = field(default_factory=dict)  # camera -> int64 [N] into frames

    def __post_init__(self) -> None:
        fields = _check_fields(
            self.source,
            {
                "observations": self.observations,
                "actions": self.actions,
                "rewards": self.rewards,
                "next_observations": self.next_observations,
                "terminals": self.terminals,
                "timeouts": self.timeouts,
            },
        )
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "source", str(self.source))
        images = {f"{key}/{cam}": v for key in _IMAGE_KEYS for cam, v in getattr(self, key).items()}
        checked = _check_images(self.source, images, self.size, None)
        for key in _IMAGE_KEYS:
            parts = {k.split("/", 1)[1]: v for k, v in checked.items() if k.startswith(f"{key}/")}
            object.__setattr__(self, key, parts)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.frames)

    def images(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The obs and next_obs images of rows `idx`: per camera uint8 [len(idx), H, W, C]."""
        return (
            {cam: f[self.obs_frame[cam][idx]] for cam, f in self.frames.items()},
            {cam: f[self.next_frame[cam][idx]] for cam, f in self.frames.items()},
        )

    @property
    def size(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def episode_ends(self) -> np.ndarray:
        """Bool [N]: True on the last row of each episode.

        An episode ends at a terminal or timeout, where the stored next observation is not the following
        row's observation (D4RL files without explicit boundaries), and always at the last row.
        """
        ends = self.terminals | self.timeouts
        if self.size > 1:
            ends[:-1] |= np.any(self.next_observations[:-1] != self.observations[1:], axis=1)
        if self.size:
            ends[-1] = True
        return ends

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays under their file keys (what `save_dataset` writes)."""
        return {
            "observations": self.observations,
            "actions": self.actions,
            "rewards": self.rewards,
            "next_observations": self.next_observations,
            "terminals": self.terminals,
            "timeouts": self.timeouts,
            **{f"{key}/{cam}": value for key in _IMAGE_KEYS for cam, value in getattr(self, key).items()},
        }

    def head(self, n: int) -> OfflineDataset:
        """The first n rows (a view), e.g. to honour `max_transitions`; the frames they use."""
        rows = {k: v[:n] for k, v in self.to_arrays().items() if "/" not in k}
        used = {
            cam: max(int(self.obs_frame[cam][:n].max()), int(self.next_frame[cam][:n].max()))
            for cam in self.frames
        }
        return OfflineDataset(
            **rows,
            source=self.source,
            frames={cam: f[: used[cam] + 1] for cam, f in self.frames.items()},
            obs_frame={cam: i[:n] for cam, i in self.obs_frame.items()},
            next_frame={cam: i[:n] for cam, i in self.next_frame.items()},
        )


# ----------------------------------------------------------------------------------------------------------
# Loading


def load_dataset(
    path: str | os.PathLike[str],
    *,
    action_low: float | np.ndarray | list[float] | tuple[float, ...] | None = None,
    action_high: float | np.ndarray | list[float] | tuple[float, ...] | None = None,
    max_transitions: int | None = None,
    cameras: Sequence[CameraSpec] | None = None,
) -> OfflineDataset:
    """Load `path` (.hdf5/.h5, .npz, or `minari:DATASET_ID`) and validate it.

    Files need the D4RL keys `observations, actions, rewards, terminals` at the top level; `timeouts`
    defaults to all False and `next_observations` is derived when absent (see `_derive_next_observations`:
    rows whose successor belongs to another episode are dropped, so the result can be shorter than the
    file). `action_low`/`action_high` (scalars or per-dimension) reject data recorded outside the robot's
    limits, with tolerance `ACTION_TOLERANCE`. `max_transitions` keeps at most the first that many rows.
    `cameras` (a task's `spec.cameras`; () for a state task) are the image parts the file must hold,
    exactly, in their shapes; None takes the file's own (checked for consistency).
    """
    if max_transitions is not None and (isinstance(max_transitions, bool) or int(max_transitions) <= 0):
        raise ValueError(f"max_transitions must be a positive integer, got {max_transitions!r}")
    limit = None if max_transitions is None else int(max_transitions)
    bounds = None if action_low is None and action_high is None else (action_low, action_high)

    if isinstance(path, str) and path.startswith(_MINARI_PREFIX):
        ds = _load_minari(path, path[len(_MINARI_PREFIX) :], limit, bounds)
        if cameras:
            raise DatasetError(path, None, "Minari datasets load as state only: this task has cameras")
    else:
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in _HDF5_SUFFIXES + _NPZ_SUFFIXES:
            raise DatasetError(
                p, None, f"unsupported file type {p.suffix!r}; expected .hdf5, .h5, .npz or minari:DATASET_ID"
            )
        if not p.exists():
            raise DatasetError(p, None, "file not found")
        if not p.is_file():
            raise DatasetError(p, None, "not a regular file")
        load = _load_hdf5 if suffix in _HDF5_SUFFIXES else _load_npz
        ds = load(p, limit, bounds, cameras)
    return ds


def _load_npz(
    path: Path, limit: int | None, bounds: _Bounds, cameras: Sequence[CameraSpec] | None
) -> OfflineDataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files if k in _REQUIRED + _OPTIONAL or k.split("/")[0] in _IMAGE_KEYS}
    except Exception as e:  # OSError, ValueError (pickled/non-npz), zipfile.BadZipFile (truncated)
        raise DatasetError(path, None, f"cannot read as .npz: {type(e).__name__}: {e}") from e
    return _from_raw(path, raw, limit, bounds, cameras)


def _load_hdf5(
    path: Path, limit: int | None, bounds: _Bounds, cameras: Sequence[CameraSpec] | None
) -> OfflineDataset:
    try:
        import h5py
    except ImportError as e:
        raise DatasetError(path, None, "reading HDF5 needs h5py (pip install 'robot-wsrl[learner]')") from e
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(path, None, f"cannot read as HDF5: {e}") from e
    with f:
        raw: dict[str, Any] = {}
        for key in _REQUIRED + _OPTIONAL:
            if key not in f:
                continue
            node = f[key]
            if not isinstance(node, h5py.Dataset):
                raise DatasetError(path, key, f"is an HDF5 {type(node).__name__}, expected an array")
            raw[key] = node  # read lazily: only the rows we keep (see _from_raw)
        for group in _IMAGE_KEYS:
            node = f.get(group)
            if isinstance(node, h5py.Group):
                raw |= {f"{group}/{cam}": node[cam] for cam in node}
            elif node is not None:
                raise DatasetError(
                    path, group, f"is an HDF5 {type(node).__name__}, expected a group per camera"
                )
        return _from_raw(path, raw, limit, bounds, cameras)


def _from_raw(
    source: str | os.PathLike[str],
    raw: Mapping[str, Any],
    limit: int | None,
    bounds: _Bounds = None,
    cameras: Sequence[CameraSpec] | None = None,
) -> OfflineDataset:
    """Check keys and lengths on the stored shapes, read (at most) the rows needed, derive s' if absent.

    Values (finiteness, action bounds) are checked before deriving s', so reported rows are file rows.
    Image parts are checked (`_check_images`) before any state row is read.
    """
    images = {k: raw[k] for k in raw if "/" in k}
    raw = {k: v for k, v in raw.items() if "/" not in k}
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        present = ", ".join(sorted(raw)) or "none of the expected keys"
        raise DatasetError(source, missing[0], f"missing required key(s) {missing}; found: {present}")
    for key, arr in raw.items():
        if len(arr.shape) == 0:
            raise DatasetError(source, key, "is a scalar, expected one row per transition")
    n = int(raw["observations"].shape[0])
    if images and "next_observations" not in raw:
        raise DatasetError(
            source, "next_observations", "an image dataset stores next_observations (with next_frame/{cam})"
        )
    images = _check_images(source, images, n, cameras)
    if limit is not None:
        images = {k: v if k.startswith("frames/") else v[:limit] for k, v in images.items()}
    for key, arr in raw.items():
        if int(arr.shape[0]) != n:
            raise DatasetError(
                source, key, f"has {arr.shape[0]} rows but 'observations' has {n} (length mismatch)"
            )
    if n == 0:
        raise DatasetError(source, "observations", "empty dataset (0 rows)")

    derive = "next_observations" not in raw
    # Deriving s' needs the row after the last kept one.
    stop = None if limit is None else limit + (1 if derive else 0)
    arrays = {k: np.asarray(v[:stop]) for k, v in raw.items()}
    if "timeouts" not in arrays:
        arrays["timeouts"] = np.zeros(arrays["observations"].shape[0], dtype=bool)

    checked = _check_fields(source, arrays, with_next=not derive)
    if bounds is not None:
        _check_action_bounds(source, checked["actions"], *bounds)
    if derive:
        checked = _derive_next_observations(source, checked)
    parts = {
        key: {k.split("/", 1)[1]: v for k, v in images.items() if k.startswith(f"{key}/")}
        for key in _IMAGE_KEYS
    }
    ds = OfflineDataset(**checked, source=str(source), **parts)
    return ds if limit is None or (ds.size <= limit and not ds.frames) else ds.head(limit)


def _check_images(
    source: str | os.PathLike[str], images: Mapping[str, Any], n: int, cameras: Sequence[CameraSpec] | None
) -> dict[str, np.ndarray]:
    """Check an image dataset's parts: per camera `frames/{cam}` uint8 [F, H, W, C] and its two index
    arrays [n] within 0..F-1, the cameras being exactly `cameras` (in their shapes) when given. Returns
    the arrays, indices as int64."""
    names = sorted({key.split("/", 1)[1] for key in images})
    expected = None if cameras is None else {c.name: c for c in cameras}
    for name in names:
        for key in _IMAGE_KEYS:
            if f"{key}/{name}" not in images:
                raise DatasetError(
                    source,
                    f"{key}/{name}",
                    f"missing: a camera needs {', '.join(k + '/' + name for k in _IMAGE_KEYS)}",
                )
        if expected is not None and name not in expected:
            raise DatasetError(
                source,
                f"frames/{name}",
                f"camera {name!r} is not one of the task's cameras {sorted(expected)}",
            )
    missing = sorted(set(expected or ()) - set(names))
    if missing:
        raise DatasetError(
            source,
            f"frames/{missing[0]}",
            f"missing: the task's cameras are {sorted(expected or ())}, the file has {names}",
        )
    out: dict[str, np.ndarray] = {}
    for name in names:
        key = f"frames/{name}"
        frames = images[key]
        shape, dtype = tuple(frames.shape), np.dtype(frames.dtype)
        if expected is not None:
            want = "[F, " + ", ".join(str(x) for x in expected[name].shape) + "]"
            fits = len(shape) == 4 and shape[1:] == expected[name].shape
        else:
            want = "[F, H, W, C] with C 1 or 3"
            fits = len(shape) == 4 and shape[1] > 0 and shape[2] > 0 and shape[3] in (1, 3)
        if dtype != np.uint8 or not fits or shape[0] == 0:
            raise DatasetError(source, key, f"is {dtype} {list(shape)}, expected uint8 {want} with F > 0")
        try:
            CameraSpec(name, *(int(x) for x in shape[1:]))
        except ValueError as e:
            raise DatasetError(source, key, str(e)) from e
        out[key] = np.asarray(frames)
        for index_key in (f"obs_frame/{name}", f"next_frame/{name}"):
            index = np.asarray(images[index_key])
            if not np.issubdtype(index.dtype, np.integer) or index.shape != (n,):
                raise DatasetError(
                    source,
                    index_key,
                    f"is {index.dtype} {list(index.shape)}, expected integer [{n}] (one per row)",
                )
            bad = (index < 0) | (index >= shape[0])
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DatasetError(
                    source,
                    index_key,
                    f"row {row} points at frame {int(index[row])}, outside 0..{shape[0] - 1} ({key} has "
                    f"{shape[0]} frames)",
                )
            out[index_key] = index.astype(np.int64, copy=False)
    return out


def _derive_next_observations(
    source: str | os.PathLike[str], f: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """D4RL-style s' for files that store only s: next_obs[i] = obs[i+1] within an episode.

    A row whose successor is in another episode has no valid s', so it is dropped: timeout rows and the
    file's last row, as d4rl.qlearning_dataset does. Terminal rows are kept because the backup ignores s'
    there (it is set to obs[i] itself). The kept row just before a dropped one is marked as a timeout, so
    the episode boundary stays explicit. Files that mark neither terminals nor timeouts at episode ends
    cannot be split correctly; nothing in the data says where they end.
    """
    obs, term, tout = f["observations"], f["terminals"], f["timeouts"]
    n = obs.shape[0]
    nxt = np.empty_like(obs)
    nxt[:-1] = obs[1:]
    nxt[-1] = obs[-1]
    nxt[term] = obs[term]
    keep = term | ~tout
    keep[-1] = term[-1]
    # Kept, non-terminal rows whose successor is dropped now end their (truncated) episode.
    cut = np.zeros(n, dtype=bool)
    cut[:-1] = keep[:-1] & ~term[:-1] & ~keep[1:]
    tout = tout | cut
    if not keep.any():
        raise DatasetError(
            source, "next_observations", f"none of the {n} rows has a successor in the same episode"
        )
    return {
        "observations": obs[keep],
        "actions": f["actions"][keep],
        "rewards": f["rewards"][keep],
        "next_observations": nxt[keep],
        "terminals": term[keep],
        "timeouts": tout[keep],
    }


def _check_fields(
    source: str | os.PathLike[str], f: Mapping[str, Any], *, with_next: bool = True
) -> dict[str, np.ndarray]:
    """Coerce dtypes and check ndim, widths, lengths and finiteness; returns new arrays."""
    out: dict[str, np.ndarray] = {}
    for key in ("observations", "actions") + (("next_observations",) if with_next else ()):
        a = _numeric(source, key, f[key])
        if a.ndim != 2:
            raise DatasetError(source, key, f"has ndim {a.ndim} (shape {a.shape}), expected 2: [N, dim]")
        if a.shape[1] == 0:
            raise DatasetError(source, key, f"has shape {a.shape}: zero width")
        out[key] = _finite(source, key, a.astype(np.float32, copy=False))
    for key in ("rewards", "terminals", "timeouts"):
        a = _numeric(source, key, f[key])
        if a.ndim == 2 and a.shape[1] == 1:  # some writers store [N, 1]
            a = a[:, 0]
        if a.ndim != 1:
            raise DatasetError(source, key, f"has ndim {a.ndim} (shape {a.shape}), expected 1: [N]")
        if key == "rewards":
            out[key] = _finite(source, key, a.astype(np.float32, copy=False))
        else:
            if a.dtype != bool and np.issubdtype(a.dtype, np.floating):
                _finite(source, key, a)
            out[key] = a.astype(bool, copy=False)
    n = out["observations"].shape[0]
    for key, a in out.items():
        if a.shape[0] != n:
            raise DatasetError(
                source, key, f"has {a.shape[0]} rows but 'observations' has {n} (length mismatch)"
            )
    if with_next and out["next_observations"].shape != out["observations"].shape:
        raise DatasetError(
            source,
            "next_observations",
            f"has shape {out['next_observations'].shape} but 'observations' has {out['observations'].shape}",
        )
    return out


def _numeric(source: str | os.PathLike[str], key: str, value: Any) -> np.ndarray:
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise DatasetError(source, key, f"cannot be read as an array: {e}") from e
    if not (a.dtype == bool or np.issubdtype(a.dtype, np.number)):
        raise DatasetError(source, key, f"has non-numeric dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise DatasetError(source, key, f"has complex dtype {a.dtype}")
    return a


def _finite(source: str | os.PathLike[str], key: str, a: np.ndarray) -> np.ndarray:
    """Reject NaN/inf (after the float32 cast, so float64 values beyond float32 range count as inf)."""
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan = int(np.isnan(a).sum())
        n_inf = int(bad.sum()) - n_nan
        row = int(np.flatnonzero(bad.reshape(a.shape[0], -1).any(axis=1))[0])
        raise DatasetError(source, key, f"contains {n_nan} NaN and {n_inf} inf value(s); first bad row {row}")
    return a


def _check_action_bounds(source: str | os.PathLike[str], actions: np.ndarray, low: Any, high: Any) -> None:
    n, act_dim = actions.shape

    def bound(value: Any, name: str, default: float) -> np.ndarray:
        if value is None:
            return np.full(act_dim, default)
        b = np.asarray(value, dtype=np.float64).reshape(-1)
        if b.size == 1:
            return np.full(act_dim, b[0])
        if b.size != act_dim:
            raise DatasetError(source, "actions", f"{name} has {b.size} entries but actions have {act_dim}")
        return b

    lo, hi = bound(low, "action_low", -np.inf), bound(high, "action_high", np.inf)
    if np.any(lo > hi):
        raise ValueError(f"action_low must not exceed action_high: {lo.tolist()} vs {hi.tolist()}")
    a = actions.astype(np.float64)
    excess = np.maximum(lo - a, a - hi)  # > 0 outside the box
    outside = excess > ACTION_TOLERANCE
    if outside.any():
        rows = int(outside.any(axis=1).sum())
        r, d = np.unravel_index(int(np.argmax(excess)), excess.shape)
        raise DatasetError(
            source,
            "actions",
            f"{rows} of {n} row(s) outside [action_low, action_high] (tolerance {ACTION_TOLERANCE:g}); "
            f"worst value {a[r, d]:.6g} at row {r}, dim {d}, bounds [{lo[d]:.6g}, {hi[d]:.6g}]",
        )


# ----------------------------------------------------------------------------------------------------------
# Minari


def _load_minari(source: str, dataset_id: str, limit: int | None, bounds: _Bounds) -> OfflineDataset:
    """Concatenate the episodes of a locally present Minari dataset (never downloads)."""
    if not dataset_id:
        raise DatasetError(source, None, "empty dataset id; use minari:DATASET_ID")
    try:
        import minari
    except ImportError as e:
        raise DatasetError(
            source, None, "the 'minari' package is not installed (pip install minari) to load Minari datasets"
        ) from e
    try:
        mds = minari.load_dataset(dataset_id)
    except Exception as e:  # minari raises FileNotFoundError/ValueError depending on the version
        raise DatasetError(
            source,
            None,
            f"Minari dataset {dataset_id!r} not found locally ({type(e).__name__}: {e}); "
            f"fetch it first with `minari download {dataset_id}`",
        ) from e

    space = getattr(mds, "observation_space", None)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _REQUIRED + _OPTIONAL}
    total = 0
    for ep in mds.iterate_episodes():
        acts = np.asarray(ep.actions)
        t = acts.shape[0]
        if t == 0:
            continue
        acts = acts.reshape(t, -1)
        obs = _flatten_obs(ep.observations, space)
        if obs.shape[0] != t + 1:
            raise DatasetError(
                source,
                "observations",
                f"episode {getattr(ep, 'id', '?')} has {obs.shape[0]} observations for {t} actions "
                "(Minari stores T+1)",
            )
        term = np.asarray(ep.terminations, dtype=bool).reshape(-1)
        trunc = np.asarray(ep.truncations, dtype=bool).reshape(-1)
        trunc = trunc.copy()
        trunc[-1] |= not term[-1]  # every episode ends at its last step, whatever it recorded
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(acts)
        parts["rewards"].append(np.asarray(ep.rewards).reshape(-1))
        parts["terminals"].append(term)
        parts["timeouts"].append(trunc)
        total += t
        if limit is not None and total >= limit:
            break
    if total == 0:
        raise DatasetError(source, "observations", "empty dataset (no transitions in any episode)")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    for key, a in arrays.items():
        if a.shape[0] != total:
            raise DatasetError(source, key, f"has {a.shape[0]} rows but the episodes hold {total} actions")
    checked = _check_fields(source, arrays)
    if bounds is not None:
        _check_action_bounds(source, checked["actions"], *bounds)
    ds = OfflineDataset(**checked, source=source)
    return ds if limit is None or ds.size <= limit else ds.head(limit)


def _flatten_obs(obs: Any, space: Any) -> np.ndarray:
    """[T+1, ...] observations (possibly dict/tuple) to [T+1, D], in the space's key order like gymnasium."""
    if isinstance(obs, Mapping):
        sub = getattr(space, "spaces", None)
        if not isinstance(sub, Mapping):
            sub = dict.fromkeys(sorted(obs))
        return np.concatenate([_flatten_obs(obs[k], sub[k]) for k in sub], axis=1)
    if isinstance(obs, tuple):  # gymnasium Tuple space
        sub = getattr(space, "spaces", None)
        return np.concatenate(
            [_flatten_obs(o, sub[i] if sub is not None else None) for i, o in enumerate(obs)], axis=1
        )
    a = np.asarray(obs)
    return a.reshape(a.shape[0], -1)


# ----------------------------------------------------------------------------------------------------------
# Saving and summaries


def save_dataset(path: str | os.PathLike[str], dataset: OfflineDataset, *, compress: bool = False) -> Path:
    """Write `dataset` as .npz or .hdf5/.h5 (by suffix) with the D4RL keys, next_observations included
    (and an image dataset's frames and indices). `compress`: deflate every array (lossless; images
    shrink several times, at a CPU cost when written and read).

    Written to a temporary file and renamed, so a crashed `collect` never leaves a half-written dataset.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _HDF5_SUFFIXES + _NPZ_SUFFIXES:
        raise DatasetError(
            p, None, f"unsupported file type {p.suffix!r} for saving; expected .npz, .hdf5 or .h5"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    arrays = dataset.to_arrays()
    try:
        if suffix in _NPZ_SUFFIXES:
            _write_npz(tmp, arrays, compress)
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                for key, a in arrays.items():
                    f.create_dataset(key, data=a, compression="gzip" if compress else None)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
    """An .npz as np.savez (np.savez_compressed with `compress`) writes it, but every member stamped
    1980-01-01 instead of the current time: equal arrays then make byte-identical files, so a dataset's
    sha256 can check a regenerated copy."""
    import zipfile

    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method, allowZip64=True) as archive:
        for key, array in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = method
            with archive.open(member, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def dataset_stats(ds: OfflineDataset) -> dict[str, Any]:
    """JSON-ready summary for run manifests: sizes, observation moments and per-episode returns."""
    ends = np.flatnonzero(ds.episode_ends())
    starts = np.concatenate([[0], ends[:-1] + 1])
    returns = np.add.reduceat(ds.rewards.astype(np.float64), starts)
    obs = ds.observations.astype(np.float64)
    return {
        "source": ds.source,
        "size": ds.size,
        "obs_dim": ds.obs_dim,
        "act_dim": ds.act_dim,
        "episodes": len(ends),
        "terminals": int(ds.terminals.sum()),
        "episode_length_mean": float(ds.size / len(ends)),
        "obs_mean": obs.mean(axis=0).tolist(),
        "obs_std": obs.std(axis=0).tolist(),
        "return_mean": float(returns.mean()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        **(
            {
                "cameras": {cam: list(f.shape[1:]) for cam, f in ds.frames.items()},
                "frames": {cam: len(f) for cam, f in ds.frames.items()},
            }
            if ds.frames
            else {}
        ),
    }
