"""Replay storage: a preallocated ring buffer and a sampler that mixes online and offline data.

WSRL fine-tunes on online data only (offline ratio 0): the offline dataset is never loaded. The same
sampler with ratio 0.5 gives the RLPD-style "retain offline data" baseline, with the split exact in every
minibatch. Episodes' Monte-Carlo returns-to-go are filled in when an episode ends (Cal-QL needs them);
episodes are tracked by key, so several runners' episodes may arrive interleaved.

A camera task's buffer also keeps each camera's frames, uint8, once: a frame ring, and per transition the
global index of its obs frame and of its next frame. A row whose next frame is the following row's obs
frame ("chained", as the wire marks it) shares that frame, and so does the first row of a batch that
continues the last transition inserted; so an episode of T steps costs T + 1 frames, not 2T. When the frame
ring wraps, the oldest transitions whose frames it overwrote leave the buffer with them (`size` shrinks),
so no live transition ever points at an overwritten frame. With a `featurize` hook the float `obs` and
`next_obs` columns hold the hook's features of (state, frames), computed once at insert: the sampler and
the UTD round consume them as they consume a state task's observations, at the cost of a state task of
that width; the state itself is kept beside them (`states`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_wsrl.core.spec import STATE, CameraSpec, Observation
from robot_wsrl.learn.encoder import image_key, next_image_key

# featurize(state float32 [n, obs_dim], {camera: uint8 [n, H, W, C]}) -> float32 [n, feature_dim]
Featurize = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]
FRAME_SLACK = 16  # default frame ring: capacity x (1 + 1/16) frames, room for episodes of 16 steps or more

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "mc_return")
COLUMNS = FIELDS[:6]  # what a caller inserts; mc_return is computed when the episode ends
STREAM = ""  # the episode key of the single stream of contiguous episodes


def settle_horizon(discount: float) -> int | None:
    """Steps after which later rewards move a return-to-go by less than 1e-9 of their own return (float32
    shows 6e-8): 2,062 for 0.99. None for a discount of 1, where every reward counts to the end."""
    if discount >= 1.0:
        return None
    return 1 if discount <= 0.0 else max(1, math.ceil(math.log(1e-9) / math.log(discount)))


def discounted_returns(rewards: np.ndarray, discount: float) -> np.ndarray:
    """G_t = r_t + discount * G_{t+1} (G after the end is 0), in O(n) numpy rather than a Python loop per
    step, so closing an episode as long as the ring costs milliseconds.

    Within blocks short enough that discount**-block stays below 1e4 (float64 keeps ~12 digits), G is a
    reverse cumulative sum of discount**k * r_k rescaled; a loop over the blocks carries G between them.
    """
    r = np.asarray(rewards, np.float64)
    if not 0.0 < discount < 1.0:
        return np.cumsum(r[::-1])[::-1] if discount == 1.0 else r.copy()
    block = int(min(1024, max(1, np.log(1e4) // -np.log(discount))))
    m = -(-len(r) // block)
    padded = np.zeros(m * block)
    padded[: len(r)] = r
    powers = discount ** np.arange(block)
    local = np.cumsum((padded.reshape(m, block) * powers)[:, ::-1], axis=1)[:, ::-1] / powers
    head = local[:, 0].tolist()
    carry = [0.0] * (m + 1)  # carry[j]: G at the start of block j (0 past the end)
    tail = discount**block
    for j in range(m - 1, -1, -1):
        carry[j] = head[j] + tail * carry[j + 1]
    out = local + np.outer(carry[1:], discount ** (block - np.arange(block)))
    return out.reshape(-1)[: len(r)]


@dataclass(frozen=True)
class FrameBatch:
    """One batch's camera frames as the wire carries them: every row's obs frame, and the next frame only
    of the rows that are not `chained` (row i is chained when row i + 1 is the same episode and its obs
    frame is row i's next frame), in row order."""

    chained: np.ndarray  # bool [n]; the last row is never chained
    obs: Mapping[str, np.ndarray]  # camera -> uint8 [n, H, W, C]
    next_unchained: Mapping[str, np.ndarray]  # camera -> uint8 [n - chained.sum(), H, W, C]

    @classmethod
    def from_pairs(
        cls, obs: Mapping[str, np.ndarray], next_obs: Mapping[str, np.ndarray], ends: np.ndarray
    ) -> FrameBatch:
        """From every row's obs and next frames (`ends`: rows after which the episode does not go on):
        a row is chained where its next frames equal the following row's obs frames, for every camera."""
        ends = np.asarray(ends, bool)
        chained = ~ends.copy()
        chained[-1:] = False
        for cam, frames in obs.items():
            n = len(frames)
            flat_next = np.asarray(next_obs[cam]).reshape(n, -1)[:-1]
            chained[:-1] &= np.all(flat_next == np.asarray(frames).reshape(n, -1)[1:], axis=1)
        return cls(chained, dict(obs), {cam: np.asarray(f)[~chained] for cam, f in next_obs.items()})

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.obs)

    def next(self, cam: str, rows: np.ndarray | None = None) -> np.ndarray:
        """The next frames of `rows` (default all), materialised: a chained row's is the next row's obs."""
        rows = np.arange(len(self.chained)) if rows is None else np.asarray(rows)
        chained = self.chained[rows]
        out = np.empty((len(rows), *self.obs[cam].shape[1:]), np.uint8)
        out[chained] = self.obs[cam][rows[chained] + 1]
        rank = np.cumsum(~self.chained) - 1  # row -> its place among the unchained rows
        out[~chained] = self.next_unchained[cam][rank[rows[~chained]]]
        return out

    def rows(self, idx: np.ndarray) -> FrameBatch:
        """The frames of rows `idx` (ascending): a row stays chained only if its successor is kept too."""
        idx = np.asarray(idx)
        if len(idx) == len(self.chained):
            return self
        chained = self.chained[idx] & np.r_[np.diff(idx) == 1, False]
        return FrameBatch(
            chained,
            {cam: f[idx] for cam, f in self.obs.items()},
            {cam: self.next(cam, idx[~chained]) for cam in self.obs},
        )

    def check(self, n: int, cameras: Sequence[CameraSpec], keys: np.ndarray, done: np.ndarray) -> None:
        """Refuse frames that do not fit `cameras` and these n rows (names, shapes, dtypes, counts), or a
        chained row that ends its episode or whose successor is another episode."""
        chained = self.chained
        if not (isinstance(chained, np.ndarray) and chained.dtype == bool and chained.shape == (n,)):
            raise ValueError(f"add_batch: 'chained' must be bool ({n},), got {_describe(chained)}")
        names = [c.name for c in cameras]
        for part, frames in (("obs", self.obs), ("next_unchained", self.next_unchained)):
            if sorted(frames) != sorted(names):
                raise ValueError(
                    f"add_batch: {part} frames are for cameras {sorted(frames)}, expected {names}"
                )
        m = n - int(chained.sum())
        for cam in cameras:
            for part, frames, rows in (("obs", self.obs, n), ("next_unchained", self.next_unchained, m)):
                a = frames[cam.name]
                if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == (rows, *cam.shape)):
                    raise ValueError(
                        f"add_batch: camera {cam.name!r} {part} frames must be uint8 {(rows, *cam.shape)}, "
                        f"got {_describe(a)}"
                    )
        if n and chained[-1]:
            raise ValueError("add_batch: the last row cannot be chained (no following row holds its frame)")
        bad = chained[:-1] & ((keys[1:] != keys[:-1]) | done[:-1])
        if bad.any():
            raise ValueError(
                f"add_batch: row {int(np.flatnonzero(bad)[0])} is chained, but its episode ends or changes"
            )


def _describe(a: object) -> str:
    return f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


class ReplayBuffer:
    """Fixed-capacity ring of transitions, numpy-backed: O(1) insert, O(batch) uniform sampling."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        discount: float = 0.99,
        *,
        cameras: Sequence[CameraSpec] = (),
        featurize: Featurize | None = None,
        feature_dim: int | None = None,
        frame_capacity: int | None = None,
    ) -> None:
        """`obs_dim` is the state's width. A camera task names its `cameras`; `featurize` with its
        `feature_dim` makes obs/next_obs the features (width feature_dim) instead of the state;
        `frame_capacity` (default capacity x (1 + 1/FRAME_SLACK)) is the frame ring's size."""
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        if (featurize is not None and feature_dim is None) or (feature_dim is not None and not cameras):
            raise ValueError("featurize needs its feature_dim, and features a camera task (cameras)")
        if feature_dim is not None and feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.capacity, self.obs_dim, self.act_dim, self.discount = capacity, obs_dim, act_dim, discount
        self.horizon = settle_horizon(discount)
        width = obs_dim if feature_dim is None else feature_dim
        self.obs = np.zeros((capacity, width), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, width), np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.truncated = np.zeros(capacity, np.float32)
        self.mc_return = np.zeros(capacity, np.float32)
        self.size = 0
        self.cursor = 0  # next slot to write
        self.total_added = 0
        # Episodes in progress: key -> chunks of the global insertion indices of their transitions whose
        # returns-to-go are not settled yet (`_settle`).
        self._open: dict[str, list[np.ndarray]] = {}
        self.cameras = tuple(cameras)
        self.featurize, self.feature_dim = featurize, feature_dim
        if self.cameras:
            self.frame_capacity = frame_capacity or capacity + max(1, -(-capacity // FRAME_SLACK))
            if self.frame_capacity < 2:
                raise ValueError(f"frame_capacity must be at least 2, got {self.frame_capacity}")
            self.frames = {c.name: np.zeros((self.frame_capacity, *c.shape), np.uint8) for c in cameras}
            self.obs_frame = np.zeros(capacity, np.int64)  # global frame index; slot = index % frame_capacity
            self.next_frame = np.zeros(capacity, np.int64)
            self.frames_added = 0
            self._tail: tuple[str, bool] | None = None  # the last transition's (key, episode goes on)
        if feature_dim is not None:
            self.state = np.zeros((capacity, obs_dim), np.float32)
            self.next_state = np.zeros((capacity, obs_dim), np.float32)

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: Observation,
        action: np.ndarray,
        reward: float,
        next_obs: Observation,
        terminated: bool,
        truncated: bool,
    ) -> None:
        """One transition of the single stream (`add_batch` takes keyed, interleaved episodes); a camera
        task's observations are the driver's parts (`state` and each camera's frame)."""
        frames = None
        if self.cameras:
            assert isinstance(obs, Mapping) and isinstance(next_obs, Mapping)
            names = [c.name for c in self.cameras]
            frames = FrameBatch.from_pairs(
                {c: np.asarray(obs[c])[None] for c in names},
                {c: np.asarray(next_obs[c])[None] for c in names},
                np.array([True]),  # one row: its next frame is its own
            )
            obs, next_obs = obs[STATE], next_obs[STATE]
        self.add_batch(
            frames=frames,
            obs=np.asarray(obs)[None],
            action=np.asarray(action)[None],
            reward=np.array([reward]),
            next_obs=np.asarray(next_obs)[None],
            terminated=np.array([terminated]),
            truncated=np.array([truncated]),
        )

    def add_batch(
        self,
        episodes: Sequence[str] | np.ndarray | None = None,
        frames: FrameBatch | None = None,
        **columns: np.ndarray,
    ) -> None:
        """Insert transitions in order (keys: obs, action, reward, next_obs, terminated, truncated; obs and
        next_obs are the state). A camera task's buffer takes the batch's `frames` too.

        `episodes` names each row's episode, so rows of several runners' episodes may interleave, within a
        batch and across batches; None puts every row in the single stream of contiguous episodes.
        """
        n = self._check_shapes(columns)
        keys = np.full(n, STREAM) if episodes is None else np.asarray(episodes, dtype=str)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} episode keys for {n} transitions")
        if (frames is None) != (not self.cameras):
            raise ValueError(
                f"add_batch: this buffer takes frames of cameras {[c.name for c in self.cameras]}, "
                f"got {'none' if frames is None else list(frames.cameras)}"
            )
        if self.feature_dim is not None and self.featurize is None:
            raise ValueError("add_batch: this buffer holds features: load it with its featurize hook")
        piece = self.capacity
        if frames is not None:
            done = (np.asarray(columns["terminated"]) != 0) | (np.asarray(columns["truncated"]) != 0)
            frames.check(n, self.cameras, keys, done)
            piece = min(piece, self.frame_capacity // 2)  # a piece's frames never overwrite each other
        for lo in range(0, n, piece):  # a batch larger than the ring: in ring-sized pieces
            hi = min(n, lo + piece)
            part = {k: columns[k][lo:hi] for k in COLUMNS}
            rows = None if frames is None else frames.rows(np.arange(lo, hi))
            if rows is not None and self.featurize is not None:
                part["state"], part["next_state"] = part["obs"], part["next_obs"]
                part["obs"], part["next_obs"] = self._features(part, rows)
            index = self._insert(keys[lo:hi], part)
            if rows is not None:
                self._insert_frames(keys[lo:hi], part, rows, index)

    def _check_shapes(self, columns: dict[str, np.ndarray]) -> int:
        """The number of rows, once every column has exactly this buffer's shape: numpy would otherwise
        broadcast a width-1 (or a scalar) column across the ring's columns without a word."""
        missing = sorted(set(COLUMNS) - set(columns))
        if missing:
            raise ValueError(f"add_batch needs the columns {missing}")
        n = np.shape(columns["reward"])[0] if np.ndim(columns["reward"]) == 1 else -1
        widths = {"obs": (self.obs_dim,), "action": (self.act_dim,), "next_obs": (self.obs_dim,)}
        for k in COLUMNS:
            want = (n, *widths.get(k, ()))
            if n < 0 or np.shape(columns[k]) != want:
                raise ValueError(
                    f"add_batch: {k!r} has shape {np.shape(columns[k])}, this buffer takes "
                    f"{('n', *want[1:])} with the same n for every column"
                )
        return n

    def _features(self, part: dict[str, np.ndarray], frames: FrameBatch) -> tuple[np.ndarray, np.ndarray]:
        """Features of every row's obs, and of its next obs: a chained row whose next state is the next
        row's state has that row's features, so the hook runs on n + (unchained rows) observations."""
        state, next_state = part["state"], part["next_state"]
        obs = self._featurize(state, dict(frames.obs))
        same = frames.chained.copy()
        same[:-1] &= np.all(np.asarray(next_state[:-1]) == np.asarray(state[1:]), axis=1)
        nxt = np.empty_like(obs)
        nxt[same] = obs[np.flatnonzero(same) + 1]
        rest = np.flatnonzero(~same)
        if len(rest):
            nxt[rest] = self._featurize(next_state[rest], {c: frames.next(c, rest) for c in frames.cameras})
        return obs, nxt

    def _featurize(self, state: np.ndarray, frames: dict[str, np.ndarray]) -> np.ndarray:
        out = np.asarray(self.featurize(np.asarray(state, np.float32), frames))  # type: ignore[misc]
        want = (len(state), self.feature_dim)
        if out.shape != want or not np.issubdtype(out.dtype, np.floating) or not np.all(np.isfinite(out)):
            raise ValueError(f"featurize returned {_describe(out)}, expected finite float32 {want}")
        return out.astype(np.float32, copy=False)

    def _insert_frames(
        self, keys: np.ndarray, part: dict[str, np.ndarray], frames: FrameBatch, index: np.ndarray
    ) -> None:
        """Write the rows' frames once each, in row order (obs unless it is the previous row's next, then
        next), point the rows at them, and drop the transitions whose frames the ring overwrote."""
        chained = frames.chained
        new_obs = np.r_[True, ~chained[:-1]]
        new_obs[0] = not self._continues(str(keys[0]), frames)
        start = self.frames_added + np.r_[0, np.cumsum(new_obs.astype(np.int64) + 1)[:-1]]
        next_at = start + new_obs  # a reused obs frame is the frame written just before the row's next
        slots = index % self.capacity
        self.obs_frame[slots], self.next_frame[slots] = next_at - 1, next_at
        fresh, linked = np.flatnonzero(new_obs), np.flatnonzero(chained)
        ring_size = self.frame_capacity
        for cam, ring in self.frames.items():
            ring[start[fresh] % ring_size] = frames.obs[cam][fresh]
            ring[next_at[linked] % ring_size] = frames.obs[cam][linked + 1]
            ring[next_at[~chained] % ring_size] = frames.next_unchained[cam]
        self.frames_added = int(next_at[-1]) + 1
        done = (part["terminated"][-1] != 0) or (part["truncated"][-1] != 0)
        self._tail = (str(keys[-1]), not done)
        self._evict_overwritten()

    def _continues(self, key: str, frames: FrameBatch) -> bool:
        """Whether the batch's first row goes on from the last transition inserted, its obs frames being
        that transition's next frames (the newest in the ring): then it shares them."""
        if self._tail != (key, True):
            return False
        newest = (self.frames_added - 1) % self.frame_capacity
        return all(np.array_equal(ring[newest], frames.obs[cam][0]) for cam, ring in self.frames.items())

    def _evict_overwritten(self) -> None:
        """Shrink the live window to the transitions whose obs frame (hence next frame) the ring still
        holds. Obs frame indices never decrease in insertion order, so a bisection finds the first."""
        floor = self.frames_added - self.frame_capacity
        lo, hi = self.total_added - self.size, self.total_added
        if self.size == 0 or self.obs_frame[lo % self.capacity] >= floor:
            return
        while hi - lo > 1:  # invariant: obs_frame[lo] < floor; hi is past the end or holds a live frame
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.obs_frame[mid % self.capacity] >= floor else (mid, hi)
        self.size = self.total_added - hi

    def _insert(self, keys: np.ndarray, columns: dict[str, np.ndarray]) -> np.ndarray:
        n = len(keys)
        index = self.total_added + np.arange(n)  # global insertion index; the slot is index % capacity
        start = self.total_added % self.capacity
        slots = slice(start, start + n) if start + n <= self.capacity else index % self.capacity
        for k, value in columns.items():
            getattr(self, k)[slots] = value
        self.mc_return[slots] = 0.0
        self.cursor = int((self.total_added + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.total_added += n
        done = (np.asarray(columns["terminated"]) != 0) | (np.asarray(columns["truncated"]) != 0)
        # runs: consecutive rows of one episode, up to its end if it ends here; a step per run, not per row
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]) | done[:-1]])
        stops = np.r_[starts[1:], n]
        fresh = []  # episodes that start and end in this batch: their returns-to-go in one pass below
        for key, lo, hi, closes in zip(
            keys[starts].tolist(), starts.tolist(), stops.tolist(), done[stops - 1].tolist(), strict=True
        ):
            chunks = self._open.get(key)
            if chunks is None and closes:
                fresh.append((lo, hi))
                continue
            if chunks is None:
                self._open[key] = chunks = []
            while chunks and chunks[0][-1] < self.total_added - self.capacity:
                chunks.pop(0)  # overwritten in the ring: an endless episode holds at most the ring
            chunks.append(index[lo:hi])
            if closes:
                self._close_episode(key)
            else:
                self._settle(key)
        if fresh:
            self._fresh_returns(fresh, columns["reward"], index % self.capacity)
        return index

    def _fresh_returns(self, runs: list[tuple[int, int]], reward: np.ndarray, slots: np.ndarray) -> None:
        """Returns-to-go of episodes wholly inside one batch (rows lo..hi-1 each): one pass over their
        rows in plain floats, so a batch of many short episodes costs about what one long one does."""
        r, g = np.asarray(reward, np.float64).tolist(), [0.0] * len(slots)
        rows = np.zeros(len(slots), bool)
        for lo, hi in runs:
            running = 0.0
            for i in range(hi - 1, lo - 1, -1):
                running = r[i] + self.discount * running
                g[i] = running
            rows[lo:hi] = True
        self.mc_return[slots[rows]] = np.asarray(g)[rows]

    def _settle(self, key: str) -> None:
        """Fix the returns-to-go of an open episode's steps more than `horizon` steps before its newest,
        which what comes later moves by under 1e-9 of its size, and forget them: an open episode holds
        at most about 2 x horizon steps, and its end costs O(horizon), not O(its length)."""
        chunks = self._open[key]
        if self.horizon is None or sum(len(c) for c in chunks) < 2 * self.horizon:
            return
        index = np.concatenate(chunks)
        index = index[index >= self.total_added - self.capacity]
        settled = len(index) - self.horizon
        slots = index % self.capacity
        if settled > 0:
            self.mc_return[slots[:settled]] = discounted_returns(self.reward[slots], self.discount)[:settled]
        self._open[key] = [index[max(settled, 0) :]]

    def end_episode(self) -> None:
        """Close every episode the caller cut short (a restart): its last transition counts as truncated."""
        for key in list(self._open):
            self.cut_episode(key)

    def cut_episode(self, key: str) -> None:
        """Close episode `key` as cut short (its last transition counts as truncated); no-op if not open."""
        if self.cameras and self._tail == (key, True):
            self._tail = (key, False)  # cut short: a later batch of this key starts afresh
        if key not in self._open:
            return
        last = int(self._open[key][-1][-1])
        if last >= self.total_added - self.capacity:
            self.truncated[last % self.capacity] = 1.0
        self._close_episode(key)

    def _close_episode(self, key: str) -> None:
        """Discounted return-to-go over the episode just ended; nothing is bootstrapped past its end.

        A truncated episode's tail is therefore an underestimate, the convention Cal-QL's code uses. Steps
        the ring has already overwritten are gone, so the sum covers the part still held.
        """
        chunks = self._open.pop(key, [])
        if not chunks:
            return
        index = np.concatenate(chunks)
        slots = index[index >= self.total_added - self.capacity] % self.capacity
        self.mc_return[slots] = discounted_returns(self.reward[slots], self.discount)

    def open_episodes(self) -> dict[str, int]:
        """Episodes in progress and their steps whose returns-to-go wait for the end (all of a short one;
        about the last 1 to 2 x `horizon` of a long one)."""
        return {key: sum(len(c) for c in chunks) for key, chunks in self._open.items()}

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform over the live transitions: slots 0..size-1 unless the frame ring has evicted the oldest
        (or a restarted learner's ring began mid-way), then the live window from its oldest slot."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        drawn = rng.integers(0, self.size, size=n)
        if self.size in (self.capacity, self.total_added):
            return drawn
        return (self.total_added - self.size + drawn) % self.capacity

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Transitions `idx` as the UTD round takes them; a camera task's buffer without features adds
        each camera's frames at s and s' (`image/CAM`, `next_image/CAM`: the encoder trains on them)."""
        out = {k: getattr(self, k)[idx] for k in FIELDS}
        if self.cameras and self.feature_dim is None:
            images, next_images = self.images(idx)
            out |= {image_key(c): f for c, f in images.items()}
            out |= {next_image_key(c): f for c, f in next_images.items()}
        return out

    def images(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The obs and next_obs frames of transitions `idx` (slots, as `sample_indices` gives): per camera
        uint8 [len(idx), H, W, C]."""
        obs, nxt = self.obs_frame[idx] % self.frame_capacity, self.next_frame[idx] % self.frame_capacity
        return {c: r[obs] for c, r in self.frames.items()}, {c: r[nxt] for c, r in self.frames.items()}

    def states(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state parts of obs and next_obs of transitions `idx` (obs/next_obs hold features when the
        buffer featurizes)."""
        if self.feature_dim is None:
            return self.obs[idx], self.next_obs[idx]
        return self.state[idx], self.next_state[idx]

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {k: getattr(self, k) for k in FIELDS}
        if self.cameras:
            arrays |= {f"frames/{c}": r for c, r in self.frames.items()}
            arrays |= {"obs_frame": self.obs_frame, "next_frame": self.next_frame}
        if self.feature_dim is not None:
            arrays |= {"state": self.state, "next_state": self.next_state}
        return arrays

    @property
    def bytes_per_transition(self) -> float:
        """Bytes the buffer's arrays hold (frames, floats, indices), per transition of capacity."""
        return sum(a.nbytes for a in self._arrays().values()) / self.capacity

    def stats(self) -> dict[str, float | int | list[str]]:
        """What the buffer holds and costs (JSON-ready): for status, metrics and benchmarks."""
        total = sum(a.nbytes for a in self._arrays().values())
        out: dict[str, float | int | list[str]] = {
            "capacity": self.capacity,
            "size": self.size,
            "total_added": self.total_added,
            "bytes": total,
            "bytes_per_transition": total / self.capacity,
        }
        if self.cameras:
            oldest = int(self.obs_frame[(self.total_added - self.size) % self.capacity]) if self.size else 0
            out |= {
                "cameras": [c.name for c in self.cameras],
                "frame_capacity": self.frame_capacity,
                "frames_added": self.frames_added,
                "frames_per_transition": (self.frames_added - oldest) / self.size if self.size else 0.0,
                "feature_dim": self.feature_dim or 0,
            }
        return out

    def save(self, path: str | Path) -> None:
        """Write the filled part, the ring's position and the episodes in progress (np.savez: plain arrays,
        no pickle), to a temporary file renamed into place: `path` is whole or absent. A camera task's
        buffer adds its frames (the written part of the ring), frame indices and cameras."""
        path = Path(path)
        n = self.size if not self.cameras else min(self.total_added, self.capacity)
        open_index = [np.concatenate(chunks) for chunks in self._open.values()]
        arrays = {k: a[:n] for k, a in self._arrays().items() if not k.startswith("frames/")}
        if self.cameras:
            written = min(self.frames_added, self.frame_capacity)
            tail_key, tail_open = self._tail or ("", False)
            arrays |= {f"frames/{c}": r[:written] for c, r in self.frames.items()}
            arrays |= {
                "camera_names": np.array([c.name for c in self.cameras], dtype=str),
                "camera_shapes": np.array([c.shape for c in self.cameras], np.int64),
                "frame_meta": np.array(
                    [self.frame_capacity, self.frames_added, self.feature_dim or 0], np.int64
                ),
                "tail": np.array([tail_key, "open" if tail_open else ""], dtype=str),
            }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    **arrays,
                    meta=np.array(
                        [self.capacity, self.obs_dim, self.act_dim, self.size, self.cursor, self.total_added],
                        np.int64,
                    ),
                    discount=np.array(self.discount, np.float64),
                    open_keys=np.array(list(self._open), dtype=str),
                    open_lengths=np.array([len(i) for i in open_index], np.int64),
                    open_index=np.concatenate(open_index) if open_index else np.zeros(0, np.int64),
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path, featurize: Featurize | None = None) -> ReplayBuffer:
        """A saved buffer as it was. One that holds features takes new batches only with its `featurize`
        hook (the features already in it are the ones that hook's encoder made when they came in)."""
        with np.load(path, allow_pickle=False) as data:
            capacity, obs_dim, act_dim, size, cursor, total = (int(x) for x in data["meta"])
            cameras: tuple[CameraSpec, ...] = ()
            frame_capacity = frames_added = feature_dim = 0
            if "camera_names" in data.files:
                cameras = tuple(
                    CameraSpec(str(name), *(int(x) for x in shape))
                    for name, shape in zip(data["camera_names"], data["camera_shapes"], strict=True)
                )
                frame_capacity, frames_added, feature_dim = (int(x) for x in data["frame_meta"])
            buf = cls(
                capacity,
                obs_dim,
                act_dim,
                float(data["discount"]),
                cameras=cameras,
                featurize=featurize,
                feature_dim=feature_dim or None,
                frame_capacity=frame_capacity or None,
            )
            for k, a in buf._arrays().items():
                stored = data[k]
                a[: len(stored)] = stored
            buf.size, buf.cursor, buf.total_added = size, cursor, total
            if cameras:
                buf.frames_added = frames_added
                key, state = (str(x) for x in data["tail"])
                buf._tail = (key, state == "open") if frames_added else None
            keys = data["open_keys"]  # np.split of nothing is one empty part, not none
            parts = np.split(data["open_index"], np.cumsum(data["open_lengths"])[:-1]) if len(keys) else []
            buf._open = {str(key): [part] for key, part in zip(keys, parts, strict=True)}
        return buf

    @classmethod
    def from_arrays(
        cls,
        discount: float,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        episode_end: np.ndarray,
        *,
        frames: Mapping[str, np.ndarray] | None = None,
        obs_frame: Mapping[str, np.ndarray] | None = None,
        next_frame: Mapping[str, np.ndarray] | None = None,
    ) -> ReplayBuffer:
        """An exactly-sized buffer holding an offline dataset, returns-to-go computed per episode. An image
        dataset's `frames` and per-camera indices (OfflineDataset's) come in as they are: its frame ring
        is the dataset's frames, and `gather` adds the rows' images."""
        n = len(reward)
        cameras = tuple(CameraSpec(c, *(int(x) for x in f.shape[1:])) for c, f in (frames or {}).items())
        frame_count = {len(f) for f in (frames or {}).values()}
        if len(frame_count) > 1:
            raise ValueError(f"the cameras hold different numbers of frames: {sorted(frame_count)}")
        buf = cls(
            n,
            obs.shape[1],
            action.shape[1],
            discount,
            cameras=cameras,
            frame_capacity=max(frame_count, default=None),
        )
        if cameras:
            for key, index, target in (
                ("obs_frame", obs_frame, buf.obs_frame),
                ("next_frame", next_frame, buf.next_frame),
            ):
                parts = list((index or {}).values())
                if len(parts) != len(cameras) or any(
                    not np.array_equal(parts[0], part) for part in parts[1:]
                ):
                    raise ValueError(f"{key}: the replay takes one frame index shared by all cameras")
                target[:] = parts[0]
            for c, ring in buf.frames.items():
                ring[:] = frames[c]  # type: ignore[index]
            buf.frames_added = len(frames[cameras[0].name])  # type: ignore[index]
        buf.obs[:], buf.action[:], buf.reward[:], buf.next_obs[:] = obs, action, reward, next_obs
        buf.terminated[:] = terminated
        buf.truncated[:] = episode_end & ~terminated.astype(bool)
        running = 0.0
        for i in range(n - 1, -1, -1):
            if episode_end[i]:
                running = 0.0
            running = reward[i] + discount * running
            buf.mc_return[i] = running
        buf.size, buf.cursor, buf.total_added = n, 0, n
        return buf


class MixedSampler:
    """Draws UTD x minibatch transitions; each minibatch has exactly round(ratio x minibatch) offline ones."""

    def __init__(
        self, online: ReplayBuffer | None, offline: ReplayBuffer | None, offline_ratio: float
    ) -> None:
        if not 0.0 <= offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must be in [0, 1], got {offline_ratio}")
        if offline_ratio > 0 and offline is None:
            raise ValueError("offline_ratio > 0 needs an offline buffer")
        if offline_ratio < 1 and online is None:
            raise ValueError("offline_ratio < 1 needs an online buffer")
        self.online, self.offline, self.offline_ratio = online, offline, offline_ratio

    def sample(self, num_minibatches: int, minibatch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n_off = round(self.offline_ratio * minibatch)
        n_on = minibatch - n_off
        parts = []
        if n_on:
            parts.append((self.online, n_on))
        if n_off:
            parts.append((self.offline, n_off))
        drawn = [buf.gather(buf.sample_indices(num_minibatches * n, rng)) for buf, n in parts]  # type: ignore[union-attr]
        if any(d.keys() != drawn[0].keys() for d in drawn):
            raise ValueError(
                f"online and offline buffers give different columns: {[sorted(d) for d in drawn]}"
            )
        # interleave so that each contiguous minibatch slice has n_on online rows then n_off offline rows
        out = {}
        for k in drawn[0]:
            sizes = (n for _, n in parts)
            chunks = [
                d[k].reshape(num_minibatches, n, *d[k].shape[1:]) for d, n in zip(drawn, sizes, strict=True)
            ]

            out[k] = np.concatenate(chunks, axis=1).reshape(num_minibatches * minibatch, *chunks[0].shape[2:])
        return out
