"""The learner's checks at its boundary, unit by unit: the batch rules, the bounded de-duplication
bookkeeping, and (in-process, plain mode) roles, fixed connection names, bounded open episodes and
connections, the log replay that skips what it cannot take, and the run id its policies carry.
The same attacks against a live CURVE learner are in test_adversarial_learner.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from helpers import SMALL_AGENT
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.wire import transport
from robot_wsrl.wire.protocol import (
    BatchRules,
    Command,
    HeartbeatMessage,
    Message,
    PolicyMessage,
    PolicyRequest,
    ProtocolError,
    Transitions,
    encode,
)
from robot_wsrl.wire.spool import DedupLog

SPEC = EnvSpec("security", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.01)


def batch(
    runner: str, first_seq: int, n: int = 6, *, obs_dim: int = 4, act_dim: int = 2, **kw: Any
) -> Transitions:
    return Transitions.make(
        runner,
        first_seq,
        obs=np.zeros((n, obs_dim)),
        action=np.zeros((n, act_dim)),
        reward=np.ones(n),
        next_obs=np.zeros((n, obs_dim)),
        terminated=kw.get("ends", np.zeros(n, bool)),
        truncated=np.zeros(n, bool),
        episode_id=kw.get("episodes", np.zeros(n, np.int64)),
        policy_version=np.zeros(n, np.int64),
        sender=kw.get("sender"),
    )


# ----- BatchRules -----


RULES = BatchRules(4, 2)


def _reason(b: Transitions) -> str | None:
    try:
        RULES.check(b)
    except ProtocolError as exc:
        return exc.reason
    return None


def test_rules_take_what_a_runner_sends() -> None:
    episodes = np.repeat([3, 4, 5], [2, 3, 1])  # the end of one, a whole one, the start of the next
    ends = np.array([0, 1, 0, 0, 1, 0], bool)
    assert _reason(batch("r", 0, episodes=episodes, ends=ends)) is None
    assert _reason(batch("r", 0, 512, episodes=np.arange(512))) is None  # one-step episodes


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"obs_dim": 5}, "width"),
        ({"obs_dim": 1, "act_dim": 1}, "width"),  # a width-1 batch was broadcast into the buffer
        ({"act_dim": 3}, "width"),
        ({"n": 513}, "count"),
        ({"episodes": np.array([2, 1, 1, 1, 1, 1])}, "episodes"),
        ({"episodes": np.full(6, -1)}, "episodes"),
        ({"ends": np.array([0, 1, 0, 0, 0, 0], bool)}, "episodes"),  # goes on after its end
    ],
)
def test_rules_refuse_with_a_reason(kw: dict[str, Any], reason: str) -> None:
    assert _reason(batch("r", 0, **kw)) == reason


# ----- DedupLog -----


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40)), max_size=40))
def test_dedup_takes_each_seq_once_like_a_set(batches: list[tuple[int, int]]) -> None:
    dedup, seen = DedupLog(window=200, max_ranges=1000), set()
    for first, count in batches:
        mask = dedup.accept("r", first, count)
        mark = max((s for s in range(-1, 400) if all(x in seen for x in range(s + 1))), default=-1)
        want = [s not in seen and s <= mark + 200 for s in range(first, first + count)]
        assert mask.tolist() == want
        seen |= {s for s, new in zip(range(first, first + count), want, strict=True) if new}
        assert dedup.watermark("r") == max(s for s in range(-1, 400) if all(x in seen for x in range(s + 1)))
        recorded = dedup.state()["runners"].get("r", {"ranges": []})["ranges"]
        assert recorded == _ranges(seen, dedup.watermark("r"))


def _ranges(seen: set[int], mark: int) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sorted(x for x in seen if x > mark):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def test_dedup_refuses_a_batch_that_needs_more_ranges_and_records_nothing() -> None:
    dedup = DedupLog(max_ranges=3)
    for k in range(1, 4):
        assert dedup.accept("r", 10 * k, 2).all()
    assert not dedup.accept("r", 40, 2).any()  # a fourth gap: refused, not recorded
    assert dedup.accept("r", 22, 3).all()  # extends a range: taken
    assert dedup.accept("r", 0, 10).all() and dedup.watermark("r") == 11
    assert dedup.accept("r", 40, 2).all()  # room again
    assert len(dedup.state()["runners"]["r"]["ranges"]) == 3
    assert DedupLog.from_state(dedup.state()).state() == dedup.state()


# ----- a Learner in-process, plain mode -----


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from robot_wsrl.learn.agent import Agent
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.learner import Learner, LearnerOptions
    from robot_wsrl.learn.networks import build_networks
    from robot_wsrl.learn.training import save_training_checkpoint

    root = tmp_path_factory.mktemp("learner")
    cfg = compose_config("finetune", SMALL_AGENT)
    ckpt = save_training_checkpoint(
        root / "c.pt", Agent(build_networks(4, 2, cfg.agent), cfg.agent), SPEC, cfg, 0, {}
    )
    cfg = compose_config(
        "finetune",
        [*SMALL_AGENT, f"run.checkpoint={ckpt}", f"out_dir={root / 'out'}", "run.warmup_steps=1000000"],
    )
    ctx = zmq.Context()
    sock = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:0")
    server = Learner(cfg, sock, root / "out", Ed25519PrivateKey.generate(), LearnerOptions(), False)
    try:
        yield server
    finally:
        server.close()
        transport.shutdown(ctx)


def deliver(learner: Any, who: bytes, msg: Message) -> dict[str, int]:
    """Hand `msg` to the learner as connection `who`; the reject counts it added."""
    before = learner.rejects.as_dict()
    learner.handle([zmq.Frame(who), *(zmq.Frame(f) for f in encode(msg))])
    after = learner.rejects.as_dict()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_plain_mode_fixes_a_connections_name_and_role_at_its_first_message(learner: Any) -> None:
    assert deliver(learner, b"c1", HeartbeatMessage("p1", "runner", 0.0, "idle")) == {}
    assert deliver(learner, b"c1", HeartbeatMessage("p2", "runner", 0.0, "idle")) == {"identity": 1}
    assert deliver(learner, b"c1", Command("p1", "pause")) == {"role": 1}  # a runner does not command
    assert not learner.learning_paused
    assert deliver(learner, b"c2", HeartbeatMessage("ops", "console", 0.0, "idle")) == {}
    assert deliver(learner, b"c2", batch("ops", 0)) == {"role": 1}
    assert deliver(learner, b"c2", PolicyRequest("ops", None)) == {"role": 1}
    assert deliver(learner, b"c3", HeartbeatMessage("x", "learner", 0.0, "idle")) == {"role": 1}
    assert "ops" not in learner.returns and "x" not in {p.name for p in learner.peers.values()}


def test_a_runner_keeps_at_most_a_few_episodes_open(learner: Any) -> None:
    from robot_wsrl.learn.learner import MAX_OPEN_EPISODES

    for k in range(30):  # each batch opens 30 episodes none of which ever ends
        assert deliver(learner, b"e1", batch("ep", 60 * k, 60, episodes=30 * k + np.arange(60) // 2)) == {}
    assert len(learner.returns["ep"].running) == MAX_OPEN_EPISODES
    assert sum(key.startswith("ep/") for key in learner.buffer.open_episodes()) == MAX_OPEN_EPISODES


def test_a_batch_of_many_episodes_leaves_one_open_and_cuts_the_rest(learner: Any) -> None:
    first = learner.buffer.total_added
    assert deliver(learner, b"m1", batch("short", 0, 512, episodes=np.arange(512))) == {}
    assert [k for k in learner.buffer.open_episodes() if k.startswith("short/")] == ["short/511"]
    truncated = learner.buffer.truncated[first : first + 512]
    assert truncated[:-1].all() and not truncated[-1]  # left for the next one: cut short
    np.testing.assert_allclose(learner.buffer.mc_return[first : first + 511], 1.0)
    assert list(learner.returns["short"].recent) == []  # cut short: no episode return to report


def test_episode_returns_add_up_across_batches_and_cut_episodes_report_none(learner: Any) -> None:
    assert deliver(learner, b"sum", batch("sum", 0, 5, episodes=np.full(5, 4))) == {}
    ends = np.array([0, 1, 0, 0, 0, 0, 1, 0], bool)  # 4 ends, 5 is left (cut), 6 ends, 7 stays open
    assert deliver(learner, b"sum", batch("sum", 5, 8, episodes=[4, 4, 5, 5, 6, 6, 6, 7], ends=ends)) == {}
    returns = learner.returns["sum"]
    assert list(returns.recent) == [7.0, 3.0] and returns.running == {7: 1.0}
    assert deliver(learner, b"sum", batch("sum", 13, 2, episodes=[7, 7], ends=np.array([0, 1], bool))) == {}
    assert list(returns.recent) == [7.0, 3.0, 3.0] and returns.running == {}


def test_connections_per_name_are_bounded(learner: Any) -> None:
    from robot_wsrl.learn.learner import MAX_CONNECTIONS

    limit = MAX_CONNECTIONS["runner"]
    for i in range(limit):
        assert deliver(learner, b"n%d" % i, HeartbeatMessage("many", "runner", 0.0, "idle")) == {}
    assert deliver(learner, b"over", HeartbeatMessage("many", "runner", 0.0, "idle")) == {"connections": 1}
    assert deliver(learner, b"over", batch("many", 0)) == {"connections": 1}
    assert "many" not in learner.returns


def test_a_peer_gets_a_policy_again_only_after_a_backoff_and_a_few_times(learner: Any) -> None:
    from robot_wsrl.learn.learner import MAX_UNCONFIRMED

    sent: list[int] = []

    def send(identity: bytes, msg: Message) -> bool:
        if identity == b"pol" and isinstance(msg, PolicyMessage):
            sent.append(msg.version)
        return True

    learner._send = send
    try:
        deliver(learner, b"pol", HeartbeatMessage("pol", "runner", 0.0, "idle"))
        learner._push_policies()
        for _ in range(100):
            deliver(learner, b"pol", PolicyRequest("pol", None))
        assert len(sent) == 1  # the push; the requests right after it are not answered again
        peer = learner.peers[b"pol"]
        for _ in range(10):
            peer.sent_at -= 100.0  # as if long ago
            deliver(learner, b"pol", PolicyRequest("pol", None))
        assert len(sent) == MAX_UNCONFIRMED  # it never confirms: a few sends, then none
        deliver(learner, b"pol", HeartbeatMessage("pol", "runner", 0.0, "idle", policy_version=0))
        deliver(learner, b"pol", PolicyRequest("pol", 0))
        learner._push_policies()
        assert len(sent) == MAX_UNCONFIRMED  # it has it
    finally:
        del learner._send


def test_a_logged_batch_the_checks_refuse_is_skipped_and_counted(learner: Any) -> None:
    total = learner.transitions
    mask = learner._accepted(batch("old", 0, obs_dim=1, act_dim=1))
    learner._insert(batch("old", 0, obs_dim=1, act_dim=1), mask)
    assert not mask.any() and learner.transitions == total
    assert learner.rejects.as_dict().get("log_width") == 1
    assert learner.dedup.watermark("old") == -1


def test_policies_carry_the_runs_id(learner: Any) -> None:
    run_id = (learner.out / "run_id").read_text().strip()
    assert run_id == learner.run_id and len(run_id) == 32
    assert json.loads(learner.policy.sidecar)["run_id"] == run_id
