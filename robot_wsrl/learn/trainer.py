"""WSRL's schedule of updates: one implementation for the in-process fine-tuning loop (`finetune`) and the
networked learner service (`learner`), so the benchmark measures the algorithm a session runs.

Phases: warmup until the online buffer has received K = `warmup_steps` transitions (no update: the frozen
pre-trained policy fills it), then fine-tuning. Owed updates: one UTD round per online transition from the
first at which the buffer holds max(K, batch_size) of them, so a run that does every round owed makes
exactly `utd` critic steps per transition. How many owed rounds to do now is the caller's pacing, not the
trainer's: all of them after each step in-process and in lockstep, as many as time allows in real time,
none while an operator has paused learning. Publishing: every `publish_every` rounds the trainer calls its
hook (the learner exports, signs and pushes a version; the guarded in-process variant validates one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from robot_wsrl.core.spec import CameraSpec
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.replay import MixedSampler, ReplayBuffer


def online_buffer(agent: Agent, capacity: int, cameras: tuple[CameraSpec, ...]) -> ReplayBuffer:
    """The online replay of `agent`, the same for both callers: a camera task's keeps each frame once and,
    while the encoder is frozen online, caches [state, features] as obs (the agent's featurize), so a UTD
    round costs what a state task's does."""
    featurize = agent.replay_featurize
    return ReplayBuffer(
        capacity,
        agent.obs_dim,
        agent.act_dim,
        agent.cfg.discount,
        cameras=cameras,
        featurize=featurize,
        feature_dim=None if featurize is None else agent.input_dim,
    )


# What `publish_every` counts from: the trainer's start (or restart) in rounds, or transition 0 (a publish
# after the round owed by every publish_every-th transition: the in-process loop's steps N, 2N, ...).
Anchor = Literal["updates", "transitions"]


class Trainer:
    """Decides when the agent updates and on what; holds the counters both callers report.

    `online` is the buffer the robot's transitions go into (its `total_added` is the transition count);
    `offline` with `offline_ratio` > 0 mixes the dataset into every minibatch (the retain-offline baseline,
    never WSRL). `updates` is the rounds already done (a resumed run), and becomes the agent's own count,
    so checkpoints count this run's rounds.
    """

    def __init__(
        self,
        agent: Agent,
        online: ReplayBuffer,
        rng: np.random.Generator,
        warmup_steps: int,
        *,
        offline: ReplayBuffer | None = None,
        offline_ratio: float = 0.0,
        updates: int = 0,
        publish_every: int = 0,
        on_publish: Callable[[], None] | None = None,
        anchor: Anchor = "updates",
    ) -> None:
        if on_publish is not None and publish_every < 1:
            raise ValueError(f"publishing needs publish_every >= 1 update, got {publish_every}")
        self.agent, self.online, self.rng = agent, online, rng
        self.sampler = MixedSampler(online, offline, offline_ratio)
        self.warmup_steps = warmup_steps
        self.start = max(warmup_steps, agent.cfg.batch_size, 1)  # the first transition owed a round
        self.updates = agent.updates = updates
        self.publish_every, self.on_publish = publish_every, on_publish
        self.published_at = updates  # the round of the last publish (or its place, before the first)
        if on_publish is not None and anchor == "transitions":
            self.published_at -= (self.start - 1 + updates) % publish_every
        self.last_info: dict[str, torch.Tensor] = {}  # the last round's metrics (tensors: read to report)

    @property
    def transitions(self) -> int:
        """Online transitions received so far (all of them, not only those the ring still holds)."""
        return self.online.total_added

    @property
    def warming_up(self) -> bool:
        return self.transitions < self.warmup_steps

    @property
    def rounds_due(self) -> int:
        """Rounds the data so far is owed in all: one per transition from the `start`-th on."""
        return max(0, self.transitions - self.start + 1)

    @property
    def owed(self) -> int:
        """Rounds owed and not yet done."""
        return max(0, self.rounds_due - self.updates)

    @property
    def effective_utd(self) -> float:
        """Critic steps per transition since the switch: `utd` when every owed round is done."""
        due = self.rounds_due
        return self.updates * self.agent.cfg.utd / due if due else 0.0

    def update(self) -> dict[str, torch.Tensor]:
        """One owed UTD round on utd x batch_size sampled transitions, then the hook if a publish is due."""
        if not self.owed:
            raise RuntimeError(f"no round owed ({self.transitions} transitions, {self.updates} rounds done)")
        cfg = self.agent.cfg
        batch = self.agent.to_batch(self.sampler.sample(cfg.utd, cfg.batch_size, self.rng))
        self.last_info = self.agent.update(batch)
        self.updates += 1
        if self.on_publish is not None and self.updates - self.published_at >= self.publish_every:
            self.published_at = self.updates
            self.on_publish()
        return self.last_info
