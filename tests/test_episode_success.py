"""The robot's episode outcomes end to end (issue 16): a driver's `info["success"]` at an episode's last
step rides on that step's transition, over the wire (an optional header field, one entry per ending row),
into the learner's log and status, and into the session's returns.csv and summary.json. A task without a
success signal, or a runner from before the field, sends batches exactly as before; a bad entry is a
ProtocolError like any other field's."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import helpers
import msgpack
import numpy as np
import pytest
from helpers import LEARNER_WAIT_S, NULL_SPEC, LearnerProcess, free_port, start_runner_thread

from robot_wsrl.apps.session import Progress
from robot_wsrl.apps.session_summary import episode_returns, robot_returns
from robot_wsrl.core.driver import Driver, StepResult
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner
from robot_wsrl.wire.protocol import ProtocolError, Transition, Transitions, decode, encode

# ----- a driver with a success signal -----


class Outcomes:
    """Reports `info["success"]` at every step as a simulator does (a numpy bool; `value(episode, step)`),
    around any driver."""

    def __init__(self, inner: Driver, value: Any = None) -> None:
        self.inner, self.spec = inner, inner.spec
        self.value = value or (lambda episode, step: np.bool_(episode % 2 == 0))  # even episodes succeed
        self.episode, self.step_count = -1, 0

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        self.episode, self.step_count = self.episode + 1, 0
        return self.inner.reset(seed=seed)

    def step(self, action: np.ndarray) -> StepResult:
        result = self.inner.step(action)
        self.step_count += 1
        return dataclasses.replace(
            result, info={**result.info, "success": self.value(self.episode, self.step_count)}
        )

    def __getattr__(self, name: str) -> Any:  # safe_stop, close, ...
        return getattr(self.inner, name)


# ----- the wire -----


def steps(outcomes: list[bool | None], length: int = 3, open_steps: int = 2) -> list[Transition]:
    """Episodes of `length` steps, the i-th ending with outcomes[i] (truncated), then one left open."""
    made = []
    for episode, ok in enumerate([*outcomes, None]):
        n = open_steps if episode == len(outcomes) else length
        for t in range(n):
            end = t == length - 1
            made.append(
                Transition(
                    np.full(3, t, np.float32),
                    np.zeros(2, np.float32),
                    float(t),
                    np.full(3, t + 1, np.float32),
                    False,
                    end,
                    episode,
                    t,
                    1,
                    success=ok if end else None,
                )
            )
    return made


def _header(frames: list[bytes]) -> dict[str, Any]:
    return msgpack.unpackb(frames[0], raw=False)


def _with_body(frames: list[bytes], **changes: Any) -> list[bytes]:
    header = _header(frames)
    header["body"].update(changes)
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def test_the_outcome_of_each_episode_ending_in_a_batch_round_trips() -> None:
    batch = Transitions.from_steps("robot1", 5, steps([True, False, None, True]))
    assert batch.success == (True, False, None, True)
    assert batch.successes() == {2: True, 5: False, 11: True}  # the ending rows that report one
    frames = encode(batch)
    assert _header(frames)["body"]["success"] == [True, False, None, True]
    again = decode(frames)
    assert isinstance(again, Transitions) and again.success == batch.success
    assert again.successes() == batch.successes()


def test_a_batch_without_outcomes_is_encoded_as_before_and_an_older_runners_is_accepted() -> None:
    """No signal (a state task) or no ending row: no `success` field, the bytes of a batch from before it."""
    for outcomes in ([None, None], []):
        batch = Transitions.from_steps("robot1", 0, steps(outcomes))
        assert batch.success is None and batch.successes() == {}
        frames = encode(batch)
        assert "success" not in _header(frames)["body"]
        arrays = {name: getattr(batch, name) for name, _, _ in Transitions.ARRAYS}
        before = Transitions(batch.sender, batch.runner_id, **arrays)  # made as before the field existed
        assert encode(before) == frames
        assert decode(frames).successes() == {}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("yes", "field"),  # not a list
        ([1, 0], "field"),  # ints are not bools
        (["true", False], "field"),
        ([None, None], "field"),  # present, so at least one known outcome
        ([], "field"),
        ([True], "value"),  # the batch has two ending rows
        ([True, False, True], "value"),
        ([True] * 5000, "field"),  # longer than any list field may be
    ],
)
def test_bad_success_entries_are_refused_as_protocol_errors(value: Any, reason: str) -> None:
    frames = encode(Transitions.from_steps("robot1", 0, steps([True, False])))
    with pytest.raises(ProtocolError) as caught:
        decode(_with_body(frames, success=value))
    assert caught.value.reason == reason, caught.value


def test_a_runner_can_only_report_an_outcome_as_a_bool_on_an_ending_row() -> None:
    made = steps([True])
    arrays = Transitions.step_arrays(made)
    with pytest.raises(ProtocolError, match="row 0: success on a row that neither"):
        Transitions.make("robot1", 0, **(arrays | {"success": [True, *arrays["success"][1:]]}))
    with pytest.raises(ProtocolError, match="row 2: success 1 is not a bool"):
        Transitions.make("robot1", 0, **(arrays | {"success": [None, None, 1, None, None]}))
    numpy_bool = arrays | {"success": [None, None, np.bool_(False), None, None]}
    assert Transitions.make("robot1", 0, **numpy_bool).success == (False,)


def test_a_part_of_a_batch_keeps_the_outcomes_of_its_own_ending_rows() -> None:
    """The learner logs runs of new rows as batches of their own (`rows`): their outcomes go with them."""
    batch = Transitions.from_steps("robot1", 0, steps([True, None, False]))  # ends at rows 2, 5, 8
    assert batch.rows(3, 9).success == (None, False) and batch.rows(3, 9).successes() == {5: False}
    assert batch.rows(0, 3).success == (True,)
    assert batch.rows(3, 6).success is None  # its one episode has no outcome
    assert batch.rows(9, 11).success is None  # no ending row
    part = decode(encode(batch.rows(1, 8)))
    assert part.successes() == {1: True}


# ----- the runner -----


def _run(driver: Driver, null_policy: Path, steps_: int = 20) -> Runner:
    runner = Runner(driver, OnnxPolicy.load(null_policy), realtime=False)
    runner.run(max_steps=steps_)
    return runner


def test_the_runner_records_each_episodes_outcome_on_its_last_transition(null_policy: Path) -> None:
    null = NullDriver(3, 1, control_period_s=NULL_SPEC.control_period_s, max_episode_steps=4)
    runner = _run(Outcomes(null), null_policy)  # 5 episodes: 0, 2, 4 succeed
    ends = [t for t in runner.transitions if t.truncated]
    assert [(t.episode, t.success) for t in ends] == [(e, e % 2 == 0) for e in range(5)]
    assert all(t.success is None for t in runner.transitions if not t.truncated)
    assert all(type(t.success) is bool for t in ends)  # the driver's numpy bools, as bools
    status = runner.status()
    assert status["last_episode_success"] is True and status["success_rate"] == pytest.approx(3 / 5)
    batch = Transitions.from_steps("robot1", 0, runner.transitions)
    assert list(batch.successes().values()) == [True, False, True, False, True]


@pytest.mark.parametrize("value", [None, "yes", 1.0])
def test_without_a_bool_signal_the_outcome_stays_unknown_never_false(null_policy: Path, value: Any) -> None:
    """A task without a success signal (no key, or None), or a value that is not a truth value."""
    null = NullDriver(3, 1, control_period_s=NULL_SPEC.control_period_s, max_episode_steps=4)
    runner = _run(Outcomes(null, lambda episode, step: value) if value else null, null_policy)
    assert runner.status()["episodes_done"] == 5
    assert all(t.success is None for t in runner.transitions)
    assert runner.status()["last_episode_success"] is None and runner.status()["success_rate"] is None
    assert "success" not in Transitions.from_steps("robot1", 0, runner.transitions).body()


# ----- the session's summary -----


def _row(step: int, version: int, success: bool | None) -> dict[str, Any]:
    return {
        "step": step,
        "runner": "robot1",
        "return": 1.0,
        "length": 5,
        "policy_version": version,
        "success": success,
    }


def test_the_summary_has_the_robots_success_rates_beside_its_returns() -> None:
    rows = [_row(10, 0, False), _row(20, 0, True), _row(40, 0, False), _row(80, 2, True), _row(90, 2, True)]
    summary = robot_returns(rows, total_steps=90)
    assert summary["versions_ran"] == [
        {"version": 0, "episodes": 3, "return_mean": 1.0, "success_rate": pytest.approx(1 / 3)},
        {"version": 2, "episodes": 2, "return_mean": 1.0, "success_rate": 1.0},
    ]
    assert summary["baseline_success_rate"] == pytest.approx(1 / 3)
    assert summary["robot_success_rate_last_third"] == 1.0  # the episodes ending after step 60
    without = robot_returns([{**r, "success": None} for r in rows], total_steps=90)
    assert "baseline_success_rate" not in without and "robot_success_rate_last_third" not in without
    assert all("success_rate" not in v for v in without["versions_ran"])


def test_the_progress_line_shows_the_robots_recent_success_rate_when_there_is_one() -> None:
    learner = {"phase": "fine_tuning", "step": 900, "updates": 800, "policy_version": 3}
    learner |= {"gate": {"deployed_version": 2}}
    lines = []
    for recent in ({"recent_success": [True, False, False, False]}, {"recent_success": []}, {}):
        stream = io.StringIO()
        runners = {"runners": {"robot1": {"recent_returns": [10.0, 20.0], **recent}}}
        Progress(stream).show(12.0, 6000, learner | runners, {"state": "running"})
        lines.append(stream.getvalue())
    assert "recent return     15.0 success  25%" in lines[0], lines[0]
    assert all("success" not in line for line in lines[1:]), lines


# ----- live: a linked runner and the learner over loopback -----


def test_a_linked_runners_outcomes_reach_the_learners_log_and_status(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """InvertedPendulum with a success signal (even episodes succeed), a runner linked to `robot-wsrl
    learner` (CURVE, lockstep): the learner's status and durable log hold each finished episode's outcome,
    as the runner recorded it, and the session reads them back from the log."""
    make_driver = helpers.make_driver
    monkeypatch.setattr(
        helpers, "make_driver", lambda *args, **kwargs: Outcomes(make_driver(*args, **kwargs))
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    learner = LearnerProcess(endpoint, learner_keydir, learner_checkpoint, tmp_path / "learner")
    runner = None
    try:
        runner = start_runner_thread("robot1", 0, endpoint, learner_keydir, tmp_path / "robot1", "hold")
        status = learner.wait_status(
            "four episodes with outcomes",
            lambda s: len(s["runners"].get("robot1", {}).get("recent_success", [])) >= 4,
        )
        runner.stop.set()
        runner.thread.join(30)
        assert runner.link.drain(LEARNER_WAIT_S), runner.link.status()
        total = runner.spool.next_seq
        status = learner.wait_status("every transition in", lambda s: s["step"] == total)
        learner.stop()
        ran = [t.success for t in runner.runner.transitions if t.terminated or t.truncated]
    finally:
        if runner is not None:
            runner.close()
        learner.close()
    assert len(ran) >= 4 and set(ran) == {True, False}
    assert status["runners"]["robot1"]["recent_success"] == ran[-10:]
    rows = episode_returns(tmp_path / "learner" / "transitions.log")
    assert [row["success"] for row in rows] == ran  # one runner: the log has its episodes in order
    ran_v0 = [row["success"] for row in rows if row["policy_version"] == 0]
    assert robot_returns(rows, total)["baseline_success_rate"] == pytest.approx(np.mean(ran_v0))
