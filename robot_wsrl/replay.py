"""Replay storage: a preallocated ring buffer and a sampler that mixes online and offline data.

WSRL fine-tunes on online data only (offline ratio 0): the offline dataset is never loaded. The same
sampler with ratio 0.5 gives the RLPD-style "retain offline data" baseline, with the split exact in every
minibatch. Episodes' Monte-Carlo returns-to-go are filled in when an episode ends (Cal-QL needs them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "mc_return")


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
        self._episode_len = 0  # transitions of the episode in progress (for the return-to-go pass)

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
        i = self.cursor
        self.obs[i], self.action[i], self.reward[i], self.next_obs[i] = obs, action, reward, next_obs
        self.terminated[i], self.truncated[i], self.mc_return[i] = float(terminated), float(truncated), 0.0
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.total_added += 1
        self._episode_len = min(self._episode_len + 1, self.capacity)
        if terminated or truncated:
            self._close_episode()

    def end_episode(self) -> None:
        """Close an episode cut short by the caller (a restart): its last transition counts as truncated."""
        if self._episode_len:
            self.truncated[(self.cursor - 1) % self.capacity] = 1.0
            self._close_episode()

    def add_batch(self, **columns: np.ndarray) -> None:
        """Insert transitions in order (keys: obs, action, reward, next_obs, terminated, truncated)."""
        n = len(columns["reward"])
        for j in range(n):
            self.add(
                *(columns[k][j] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated"))
            )

    def _close_episode(self) -> None:
        """Discounted return-to-go over the episode just ended; nothing is bootstrapped past its end.

        A truncated episode's tail is therefore an underestimate, the convention Cal-QL's code uses.
        """
        end = (self.cursor - 1) % self.capacity
        idx = (end - np.arange(self._episode_len)) % self.capacity  # newest first
        running = 0.0
        for i in idx:
            running = self.reward[i] + self.discount * running
            self.mc_return[i] = running
        self._episode_len = 0

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return rng.integers(0, self.size, size=n)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[idx] for k in FIELDS}

    def save(self, path: str | Path) -> None:
        """Write the filled part and the ring's position (np.savez: plain arrays, no pickle)."""
        path = Path(path)
        n = self.size
        np.savez(
            path,
            **{k: getattr(self, k)[:n] for k in FIELDS},
            meta=np.array(
                [
                    self.capacity,
                    self.obs_dim,
                    self.act_dim,
                    self.size,
                    self.cursor,
                    self.total_added,
                    self._episode_len,
                ],
                np.int64,
            ),
            discount=np.array(self.discount, np.float64),
        )

    @classmethod
    def load(cls, path: str | Path) -> ReplayBuffer:
        with np.load(path, allow_pickle=False) as data:
            capacity, obs_dim, act_dim, size, cursor, total, episode_len = (int(x) for x in data["meta"])
            buf = cls(capacity, obs_dim, act_dim, float(data["discount"]))
            for k in FIELDS:
                getattr(buf, k)[:size] = data[k]
        buf.size, buf.cursor, buf.total_added, buf._episode_len = size, cursor, total, episode_len
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
