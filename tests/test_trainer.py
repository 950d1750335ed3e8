"""The WSRL trainer's contract: the phase switch at K, the rounds owed, the publishing hook, and that the
in-process loop and the networked learner run this one schedule (same updates at the same transitions,
on the same sampled batches)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import SMALL_AGENT

from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.finetune import finetune
from robot_wsrl.learn.learner import Learner, LearnerOptions
from robot_wsrl.learn.replay import ReplayBuffer
from robot_wsrl.learn.trainer import Trainer
from robot_wsrl.wire import transport
from robot_wsrl.wire.protocol import Transitions, encode

OBS, ACT = 3, 2


class CountingAgent:
    """What the trainer asks of an agent, recording each round's batch (the schedule, not the networks,
    is under test in the unit tests)."""

    def __init__(self, batch_size: int, utd: int) -> None:
        self.cfg = SimpleNamespace(batch_size=batch_size, utd=utd)
        self.updates = -1
        self.batches: list[dict[str, np.ndarray]] = []

    def to_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return arrays

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        assert len(batch["reward"]) == self.cfg.utd * self.cfg.batch_size
        self.batches.append(batch)
        self.updates += 1
        return {"critic_loss": torch.tensor(float(self.updates))}


def _add(buffer: ReplayBuffer, n: int, reward: float = 1.0) -> None:
    buffer.add_batch(
        obs=np.zeros((n, OBS)),
        action=np.zeros((n, ACT)),
        reward=np.full(n, reward),
        next_obs=np.zeros((n, OBS)),
        terminated=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
    )


def _trainer(warmup: int, batch_size: int = 4, utd: int = 2, **kw: Any) -> Trainer:
    buffer = ReplayBuffer(1000, OBS, ACT)
    return Trainer(CountingAgent(batch_size, utd), buffer, np.random.default_rng(0), warmup, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("warmup", "batch_size"), [(10, 4), (3, 8), (0, 4), (1, 1)])
def test_warmup_ends_at_k_and_the_first_round_is_owed_by_transition_max_k_batch(
    warmup: int, batch_size: int
) -> None:
    trainer = _trainer(warmup, batch_size)
    start = max(warmup, batch_size)
    assert trainer.warming_up == (warmup > 0) and trainer.owed == 0
    for t in range(1, 31):
        _add(trainer.online, 1)
        assert trainer.warming_up == (t < warmup), t
        assert trainer.owed == (1 if t >= start else 0), t
        while trainer.owed:
            trainer.update()
        assert trainer.updates == trainer.agent.updates == max(0, t - start + 1), t
    assert trainer.effective_utd == 2.0


def test_owed_rounds_accumulate_until_done_and_none_is_done_unowed() -> None:
    trainer = _trainer(10, utd=4)
    _add(trainer.online, 9)
    assert trainer.warming_up and trainer.owed == 0 and trainer.effective_utd == 0.0
    with pytest.raises(RuntimeError, match="no round owed"):
        trainer.update()
    _add(trainer.online, 21)  # transitions 10..30: one round each
    assert not trainer.warming_up and trainer.rounds_due == 21 and trainer.owed == 21
    for _ in range(7):  # real time: fewer rounds than owed
        trainer.update()
    assert trainer.owed == 14 and trainer.effective_utd == pytest.approx(7 * 4 / 21)
    while trainer.owed:
        trainer.update()
    assert trainer.updates == 21 and trainer.effective_utd == 4.0
    assert float(trainer.last_info["critic_loss"]) == 21.0  # the last round's metrics (its count)
    with pytest.raises(RuntimeError):
        trainer.update()


def test_a_restart_continues_from_the_rounds_done_and_tells_the_agent() -> None:
    trainer = _trainer(10, updates=5)
    assert trainer.agent.updates == 5
    _add(trainer.online, 20)  # 11 rounds due, 5 of them done before the restart
    assert trainer.owed == 6


def test_wsrl_samples_online_data_only_and_retain_mixes_the_dataset() -> None:
    wsrl = _trainer(0)
    _add(wsrl.online, 8, reward=1.0)
    wsrl.update()
    assert (wsrl.agent.batches[-1]["reward"] == 1.0).all()
    offline = ReplayBuffer(100, OBS, ACT)
    _add(offline, 50, reward=-1.0)
    retain = _trainer(0, offline=offline, offline_ratio=0.5)
    _add(retain.online, 8, reward=1.0)
    retain.update()
    rewards = retain.agent.batches[-1]["reward"].reshape(2, 4)  # utd minibatches: 2 online, 2 offline each
    assert (rewards[:, :2] == 1.0).all() and (rewards[:, 2:] == -1.0).all()


def _published(trainer: Trainer, transitions: int) -> list[tuple[int, int]]:
    """Feed transitions one at a time, doing every round owed; (transition, round) at each publish."""
    seen: list[tuple[int, int]] = []
    trainer.on_publish = lambda: seen.append((trainer.transitions, trainer.updates))
    for _ in range(transitions):
        _add(trainer.online, 1)
        while trainer.owed:
            trainer.update()
    return seen


def test_publishing_every_n_rounds_counts_from_the_start_or_the_restart() -> None:
    hook = lambda: None  # noqa: E731
    fresh = _trainer(10, publish_every=3, on_publish=hook)
    assert _published(fresh, 20) == [(12, 3), (15, 6), (18, 9)]
    restarted = _trainer(10, updates=5, publish_every=3, on_publish=hook)
    _add(restarted.online, 14)  # the rounds of transitions 10..14 were done before the restart
    assert _published(restarted, 6) == [(17, 8), (20, 11)]
    with pytest.raises(ValueError, match="publish_every"):
        _trainer(10, publish_every=0, on_publish=hook)


@pytest.mark.parametrize(("warmup", "updates", "done"), [(20, 0, 0), (25, 0, 0), (0, 0, 0), (20, 14, 33)])
def test_publishing_anchored_on_transitions_follows_the_round_of_every_nth_step(
    warmup: int, updates: int, done: int
) -> None:
    trainer = _trainer(
        warmup, publish_every=10, on_publish=lambda: None, anchor="transitions", updates=updates
    )
    _add(trainer.online, done)  # a resumed run: transitions and rounds as they were at its checkpoint
    start = max(warmup, 4)
    expected = [t for t in range(max(start, done + 1), 61) if t % 10 == 0]
    assert [t for t, _ in _published(trainer, 60 - done)] == expected


# ----- one schedule: the in-process loop and the networked learner, fed the same transitions -----


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_finetune_and_the_learner_update_at_the_same_transitions_on_the_same_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["env=inverted_pendulum", *SMALL_AGENT, "run.eval_every=0", "device=cpu", "threads=1"]
    scratch = finetune(compose_config("finetune", [*base, "run.steps=1", f"out_dir={tmp_path / 'pre'}"]))
    tuned = [*base, f"run.checkpoint={scratch['checkpoint']}", "run.warmup_steps=25"]

    seen: list[tuple[float, ...]] = []  # each round's batch, summed per field
    real_update = Agent.update

    def recording_update(self: Agent, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(tuple(float(batch[k].sum()) for k in ("obs", "action", "reward", "next_obs")))
        return real_update(self, batch)

    monkeypatch.setattr(Agent, "update", recording_update)
    steps = 60
    summary = finetune(
        compose_config(
            "finetune", [*tuned, f"run.steps={steps}", "run.log_every=1", f"out_dir={tmp_path / 'ft'}"]
        )
    )
    in_process = [int(r["updates"]) for r in _rows(tmp_path / "ft" / "train.csv")]
    phases = [r["phase"] for r in _rows(tmp_path / "ft" / "train.csv")]
    batches, seen[:] = list(seen), []
    replay = ReplayBuffer.load(next((tmp_path / "ft").glob("replay-*.npz")))
    ends = replay.terminated[:steps].astype(bool) | replay.truncated[:steps].astype(bool)
    episode = np.r_[0, np.cumsum(ends)[:-1]]

    cfg = compose_config("finetune", [*tuned, f"out_dir={tmp_path / 'learner'}"])
    ctx = zmq.Context()
    sock = transport.plain_server(ctx, zmq.ROUTER, "inproc://trainer-test")
    learner = Learner(cfg, sock, tmp_path / "learner", Ed25519PrivateKey.generate(), LearnerOptions(), False)
    networked, states = [], []
    try:
        for t in range(steps):  # one transition a message, every owed round done (lockstep)
            msg = Transitions.make(
                "robot",
                t,
                obs=replay.obs[t : t + 1],
                action=replay.action[t : t + 1],
                reward=replay.reward[t : t + 1],
                next_obs=replay.next_obs[t : t + 1],
                terminated=replay.terminated[t : t + 1],
                truncated=replay.truncated[t : t + 1],
                episode_id=episode[t : t + 1],
                policy_version=np.zeros(1, np.int64),
            )
            learner.handle([zmq.Frame(b"r"), *(zmq.Frame(f) for f in encode(msg))])
            while learner.owed_updates():
                learner.update_once()
            status = learner.status()
            networked.append(status["updates"])
            states.append(status["phase"])
    finally:
        learner.close()
        transport.shutdown(ctx)

    assert in_process == networked == [max(0, t - 24) for t in range(1, steps + 1)]
    assert summary["updates"] == status["updates"] == steps - 24 and status["effective_utd"] == 2.0
    assert (
        [p == "warmup" for p in phases] == [s == "warmup" for s in states] == [t < 25 for t in range(1, 61)]
    )
    assert batches == seen and len(seen) == steps - 24  # same seed, same data: the same sampled batches
