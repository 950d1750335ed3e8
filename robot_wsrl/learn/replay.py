"""Replay storage: a preallocated ring buffer and a sampler that mixes online and offline data.

WSRL fine-tunes on online data only (offline ratio 0): the offline dataset is never loaded. The same
sampler with ratio 0.5 gives the RLPD-style "retain offline data" baseline, with the split exact in every
minibatch. Episodes' Monte-Carlo returns-to-go are filled in when an episode ends (Cal-QL needs them);
episodes are tracked by key, so several runners' episodes may arrive interleaved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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


class ReplayBuffer:
    """Fixed-capacity ring of transitions, numpy-backed: O(1) insert, O(batch) uniform sampling."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, discount: float = 0.99) -> None:
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity, self.obs_dim, self.act_dim, self.discount = capacity, obs_dim, act_dim, discount
        self.horizon = settle_horizon(discount)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.truncated = np.zeros(capacity, np.float32)
        self.mc_return = np.zeros(capacity, np.float32)
        self.size = 0
        self.cursor = 0  # next slot to write
        self.total_added = 0
        # Episodes in progress: key -> chunks of the global insertion indices of their transitions whose
        # returns-to-go are not settled yet (`_settle`).
        self._open: dict[str, list[np.ndarray]] = {}

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
    ) -> None:
        """One transition of the single stream (`add_batch` takes keyed, interleaved episodes)."""
        self.add_batch(
            obs=np.asarray(obs)[None],
            action=np.asarray(action)[None],
            reward=np.array([reward]),
            next_obs=np.asarray(next_obs)[None],
            terminated=np.array([terminated]),
            truncated=np.array([truncated]),
        )

    def add_batch(self, episodes: Sequence[str] | np.ndarray | None = None, **columns: np.ndarray) -> None:
        """Insert transitions in order (keys: obs, action, reward, next_obs, terminated, truncated).

        `episodes` names each row's episode, so rows of several runners' episodes may interleave, within a
        batch and across batches; None puts every row in the single stream of contiguous episodes.
        """
        n = self._check_shapes(columns)
        keys = np.full(n, STREAM) if episodes is None else np.asarray(episodes, dtype=str)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} episode keys for {n} transitions")
        for lo in range(0, n, self.capacity):  # a batch larger than the ring: in ring-sized pieces
            hi = min(n, lo + self.capacity)
            self._insert(keys[lo:hi], {k: columns[k][lo:hi] for k in COLUMNS})

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

    def _insert(self, keys: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        n = len(keys)
        index = self.total_added + np.arange(n)  # global insertion index; the slot is index % capacity
        start = self.total_added % self.capacity
        slots = slice(start, start + n) if start + n <= self.capacity else index % self.capacity
        for k in COLUMNS:
            getattr(self, k)[slots] = columns[k]
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
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return rng.integers(0, self.size, size=n)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[idx] for k in FIELDS}

    def save(self, path: str | Path) -> None:
        """Write the filled part, the ring's position and the episodes in progress (np.savez: plain arrays,
        no pickle)."""
        path = Path(path)
        n = self.size
        open_index = [np.concatenate(chunks) for chunks in self._open.values()]
        np.savez(
            path,
            **{k: getattr(self, k)[:n] for k in FIELDS},
            meta=np.array(
                [self.capacity, self.obs_dim, self.act_dim, self.size, self.cursor, self.total_added],
                np.int64,
            ),
            discount=np.array(self.discount, np.float64),
            open_keys=np.array(list(self._open), dtype=str),
            open_lengths=np.array([len(i) for i in open_index], np.int64),
            open_index=np.concatenate(open_index) if open_index else np.zeros(0, np.int64),
        )

    @classmethod
    def load(cls, path: str | Path) -> ReplayBuffer:
        with np.load(path, allow_pickle=False) as data:
            capacity, obs_dim, act_dim, size, cursor, total = (int(x) for x in data["meta"])
            buf = cls(capacity, obs_dim, act_dim, float(data["discount"]))
            for k in FIELDS:
                getattr(buf, k)[:size] = data[k]
            buf.size, buf.cursor, buf.total_added = size, cursor, total
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
    ) -> ReplayBuffer:
        """An exactly-sized buffer holding an offline dataset, returns-to-go computed per episode."""
        n = len(reward)
        buf = cls(n, obs.shape[1], action.shape[1], discount)
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
        # interleave so that each contiguous minibatch slice has n_on online rows then n_off offline rows
        out = {}
        for k in FIELDS:
            sizes = (n for _, n in parts)
            chunks = [
                d[k].reshape(num_minibatches, n, *d[k].shape[1:]) for d, n in zip(drawn, sizes, strict=True)
            ]

            out[k] = np.concatenate(chunks, axis=1).reshape(num_minibatches * minibatch, *chunks[0].shape[2:])
        return out
