"""Replay storage: a preallocated ring buffer and a sampler that mixes online and offline data.

WSRL fine-tunes on online data only (offline ratio 0): the offline dataset is never loaded. The same
sampler with ratio 0.5 gives the RLPD-style "retain offline data" baseline, with the split exact in every
minibatch. Episodes' Monte-Carlo returns-to-go are filled in when an episode ends (Cal-QL needs them);
episodes are tracked by key, so several runners' episodes may arrive interleaved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "mc_return")
COLUMNS = FIELDS[:6]  # what a caller inserts; mc_return is computed when the episode ends
STREAM = ""  # the episode key of the single stream of contiguous episodes


class ReplayBuffer:
    """Fixed-capacity ring of transitions, numpy-backed: O(1) insert, O(batch) uniform sampling."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, discount: float = 0.99) -> None:
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity, self.obs_dim, self.act_dim, self.discount = capacity, obs_dim, act_dim, discount
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
        # Episodes in progress: key -> chunks of the global insertion indices of their transitions.
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
        n = len(columns["reward"])
        keys = np.full(n, STREAM) if episodes is None else np.asarray(episodes, dtype=str)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} episode keys for {n} transitions")
        for lo in range(0, n, self.capacity):  # a batch larger than the ring: in ring-sized pieces
            hi = min(n, lo + self.capacity)
            self._insert(keys[lo:hi], {k: columns[k][lo:hi] for k in COLUMNS})

    def _insert(self, keys: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        n = len(keys)
        index = self.total_added + np.arange(n)  # global insertion index; the slot is index % capacity
        slots = index % self.capacity
        for k in COLUMNS:
            getattr(self, k)[slots] = columns[k]
        self.mc_return[slots] = 0.0
        self.cursor = int((self.total_added + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.total_added += n
        done = (np.asarray(columns["terminated"]) != 0) | (np.asarray(columns["truncated"]) != 0)
        for key in dict.fromkeys(keys.tolist()):  # each episode in this batch, in order of appearance
            rows = np.flatnonzero(keys == key)
            ends = np.flatnonzero(done[rows]) + 1
            for part, closes in zip(np.split(rows, ends), [True] * len(ends) + [False], strict=True):
                if len(part):
                    self._open.setdefault(key, []).append(index[part])
                if closes:
                    self._close_episode(key)

    def end_episode(self) -> None:
        """Close every episode the caller cut short (a restart): its last transition counts as truncated."""
        for key in list(self._open):
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
        running = 0.0
        for i in slots[::-1]:
            running = self.reward[i] + self.discount * running
            self.mc_return[i] = running

    def open_episodes(self) -> dict[str, int]:
        """Episodes in progress and their lengths so far."""
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
            parts = np.split(data["open_index"], np.cumsum(data["open_lengths"])[:-1])
            buf._open = {str(key): [part] for key, part in zip(data["open_keys"], parts, strict=True)}
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
