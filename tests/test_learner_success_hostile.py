"""A LIVE `robot-wsrl learner` fed malformed episode outcomes (a Transitions header's optional `success`
list, issue 16) by a hostile runner that holds a valid key: each batch is refused and counted by reason,
the learner stays up, takes the next valid batch, and its status's `recent_success` holds exactly the
outcomes of the episodes it took (none from a refused, a resent or an overlapping batch twice).

tests/test_episode_success.py checks the same forms at decode; this one checks the learner behind it.
Every wait has a deadline; nothing asserts on speed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from helpers import LEARNER_WAIT_S, LearnerProcess, free_port, random_batch

from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.protocol import MAX_LIST, Ack, Transitions, decode, encode

OBS_DIM, ACT_DIM = 4, 1  # InvertedPendulum-v5, the task of LearnerProcess
RUNNER = "robot1"


def batch(first_seq: int, episodes: list[int], outcomes: dict[int, bool]) -> Transitions:
    """Rows numbered from `first_seq` in `episodes` (one entry per row), each episode's last row truncated,
    the last episode included; `outcomes`: row -> its episode's success."""
    ids = np.asarray(episodes)
    ends = np.r_[ids[1:] != ids[:-1], True]
    success = [outcomes.get(row) for row in range(len(ids))]
    return random_batch(
        RUNNER, first_seq, len(ids), OBS_DIM, ACT_DIM, truncated=ends, episode_id=ids, success=success
    )


VALID = batch(0, [0, 0, 0, 1, 1, 1], {2: True, 5: False})  # two episodes end: success [True, False]


def tampered(success: Any) -> list[bytes]:
    """VALID as sent, its header's `success` replaced by what a hostile runner writes there."""
    frames = encode(VALID)
    header = msgpack.unpackb(frames[0], raw=False)
    header["body"]["success"] = success
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


# (the header's success, the reason the learner counts its refusal under)
HOSTILE = [
    ("yes", "field"),  # not a list
    ({"0": True}, "field"),
    (1, "field"),
    (None, "field"),  # present but nil
    ([1, 0], "field"),  # ints are not bools
    (["true", "false"], "field"),
    ([1.0, 0.0], "field"),
    ([[True], False], "field"),
    ([None, None], "field"),  # present: at least one outcome known
    ([], "field"),
    ([True], "value"),  # the batch has two ending rows
    ([True, False, True], "value"),
    ([True] * (MAX_LIST + 1), "field"),  # longer than any list field may be
]


class Hostile:
    """A DEALER holding robot1's valid runner key, speaking as robot1."""

    def __init__(self, learner: LearnerProcess, keydir: Path) -> None:
        self.sock = transport.secure_client(
            learner.ctx,
            zmq.DEALER,
            learner.endpoint,
            keys.load_curve_keys(keydir, RUNNER),
            keys.load_public_key(keydir, "learner"),
        )

    def send(self, frames: list[bytes]) -> None:
        assert transport.send_frames(self.sock, frames, LEARNER_WAIT_S), "send failed"

    def wait_ack(self, seq: int) -> None:
        """Until the learner acks `seq`: it handled every message sent before on this connection."""
        deadline = time.monotonic() + LEARNER_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            frames = transport.recv_frames(self.sock, left)
            if frames is not None:
                msg = decode(frames)
                if isinstance(msg, Ack) and msg.runner_id == RUNNER and msg.acked_seq >= seq:
                    return
        raise AssertionError(f"no ack of seq {seq} within {LEARNER_WAIT_S} s")

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, learner_keydir: Path, learner_checkpoint: Path
) -> Iterator[tuple[LearnerProcess, Hostile]]:
    out = tmp_path_factory.mktemp("success-hostile") / "learner"
    learner = LearnerProcess(f"tcp://127.0.0.1:{free_port()}", learner_keydir, learner_checkpoint, out)
    hostile = None
    try:
        learner.wait_status("the learner serving", lambda s: "rejected" in s)
        hostile = Hostile(learner, learner_keydir)
        yield learner, hostile
        assert learner.proc is not None and learner.proc.poll() is None, learner.output()
    finally:
        if hostile is not None:
            hostile.close()
        learner.close()


def _robot(status: dict[str, Any]) -> dict[str, Any]:
    return status["runners"].get(RUNNER, {})


def test_malformed_outcomes_are_refused_counted_and_a_valid_batch_is_taken_after(
    live: tuple[LearnerProcess, Hostile],
) -> None:
    learner, hostile = live
    before = learner.wait_status("a status", lambda s: True)
    assert _robot(before).get("recent_success", []) == [] and before["step"] == 0
    for success, _ in HOSTILE:
        hostile.send(tampered(success))
    hostile.send(encode(VALID))
    hostile.wait_ack(VALID.last_seq)  # one connection, handled in order: every hostile batch came first
    status = learner.wait_status("the valid batch in", lambda s: s["step"] == VALID.count)
    for reason in ("field", "value"):
        sent = sum(r == reason for _, r in HOSTILE)
        assert status["rejected"].get(reason, 0) == before["rejected"].get(reason, 0) + sent, status
    assert _robot(status)["acked_seq"] == VALID.last_seq
    assert _robot(status)["recent_success"] == [True, False]  # the valid batch's, nothing of the others


def test_a_resent_or_overlapping_batch_records_each_outcome_once(
    live: tuple[LearnerProcess, Hostile],
) -> None:
    """After the valid batch: the same rows again with the outcomes flipped (a replay), then a batch that
    repeats its last episode and ends a new one: only the new episode's outcome is added."""
    learner, hostile = live
    first = learner.wait_status("the valid batch in", lambda s: s["step"] >= VALID.count)
    assert _robot(first)["recent_success"] == [True, False]
    hostile.send(encode(batch(0, [0, 0, 0, 1, 1, 1], {2: False, 5: True})))
    overlap = batch(3, [1, 1, 1, 2, 2, 2], {2: True, 5: True})  # rows 3..5 repeat episode 1 (seq 3..5)
    hostile.send(encode(overlap))
    hostile.wait_ack(overlap.last_seq)
    status = learner.wait_status("the overlapping batch in", lambda s: s["step"] == overlap.last_seq + 1)
    assert _robot(status)["recent_success"] == [True, False, True]
    assert learner.proc is not None and learner.proc.poll() is None, learner.output()
