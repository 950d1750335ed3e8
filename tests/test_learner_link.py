"""Learner and runners as separate processes over the wire, end to end on loopback (CURVE, free ports).

The learner runs as `robot-wsrl learner` in a subprocess (so it can be killed -9); two runners with
their links run in threads of this process on InvertedPendulum (realtime off). Every wait has a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from helpers import (
    CREDIT,
    EPISODE_STEPS,
    LEARNER_WAIT_S,
    PASS_EVERY_VERSION,
    RUNNERS,
    TINY_WARMUP,
    LearnerProcess,
    RunnerThread,
    free_port,
    start_runner_thread,
)

from robot_wsrl.learn.ingest_log import IngestLog
from robot_wsrl.robot.link import LearnerLink, LinkOptions
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.protocol import PolicyMessage, decode, encode
from robot_wsrl.wire.spool import TransitionSpool


@pytest.fixture
def session(
    request: pytest.FixtureRequest, tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path
) -> Iterator[tuple[LearnerProcess, list[RunnerThread]]]:
    """The learner and both runners; `indirect` parametrisation maps runner names to on_learner_lost,
    "pacing" to the learner's pacing, "gate" to its validation args and "hardware" to the runner tagged so."""
    lost = dict(getattr(request, "param", {}))
    pacing, gate, hardware = lost.pop("pacing", "lockstep"), lost.pop("gate", ()), lost.pop("hardware", None)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    learner = LearnerProcess(endpoint, learner_keydir, learner_checkpoint, tmp_path / "learner", pacing, gate)
    runners: list[RunnerThread] = []
    try:
        for i, name in enumerate(RUNNERS):
            tag = "hardware" if name == hardware else "sim"
            state = tmp_path / name
            runners.append(
                start_runner_thread(name, i, endpoint, learner_keydir, state, lost.get(name, "hold"), tag)
            )
        yield learner, runners
    finally:
        for r in runners:
            r.close()
        learner.close()


def _finish(learner: LearnerProcess, runners: list[RunnerThread]) -> dict[str, Any]:
    """Stop the runners, let every transition be acknowledged, wait for the owed updates; final status."""
    for r in runners:
        r.stop.set()
        r.thread.join(30)
        assert not r.thread.is_alive()
    for r in runners:
        assert r.link.drain(LEARNER_WAIT_S), r.link.status()
    total = sum(r.spool.next_seq for r in runners)
    return learner.wait_status(
        "all transitions in, no update owed", lambda s: s["step"] == total and s["owed_updates"] == 0
    )


def _logged_seqs(out: Path) -> dict[str, list[int]]:
    log = IngestLog(out / "transitions.log")
    seqs: dict[str, list[int]] = {}
    for batch in log.replay():
        seqs.setdefault(batch.runner_id, []).extend(batch.seq.tolist())
    log.close()
    return seqs


def _episodes(out: Path) -> tuple[dict[str, list[tuple[int, bool]]], list[str]]:
    """Each runner's finished episodes in the learner's log, (length, terminated), and the runners of the
    episodes left open."""
    log = IngestLog(out / "transitions.log")
    lengths: dict[tuple[str, int], int] = {}
    done: dict[str, list[tuple[int, bool]]] = {}
    for batch in log.replay():
        for i in range(batch.count):
            key = (batch.runner_id, int(batch.episode_id[i]))
            lengths[key] = lengths.get(key, 0) + 1
            if batch.terminated[i] or batch.truncated[i]:
                done.setdefault(batch.runner_id, []).append((lengths.pop(key), bool(batch.terminated[i])))
    log.close()
    return done, sorted(name for name, _ in lengths)


def _assert_exactly_once(learner: LearnerProcess, runners: list[RunnerThread]) -> None:
    learner.stop()
    seqs = _logged_seqs(learner.out)
    for r in runners:
        got = seqs[r.spool.runner_id]
        assert len(got) == len(set(got)), "a transition was stored twice"
        assert sorted(got) == list(range(r.spool.next_seq)), "a transition sent was lost"


def test_warmup_updates_publish_and_every_transition_once(session) -> None:
    learner, runners = session
    learner.wait_status("warmup over and policy version 2", lambda s: s["policy_version"] >= 2)
    deadline = time.monotonic() + LEARNER_WAIT_S
    while min(r.runner.policy.version for r in runners) < 2:
        assert time.monotonic() < deadline, [r.runner.status() for r in runners]
        time.sleep(0.1)
    status = _finish(learner, runners)
    start = max(TINY_WARMUP, 16)  # the first update needs K transitions and a batch
    assert status["phase"] == "fine_tuning"
    assert status["updates"] == status["step"] - start + 1  # lockstep: exactly one UTD round per step
    assert status["effective_utd"] == pytest.approx(2.0)  # SMALL_AGENT's utd
    assert status["buffer"] == status["step"]
    assert np.isfinite(status["mean_q"]) and status["losses"]
    assert set(status["runners"]) == set(RUNNERS)
    for r in runners:
        assert max(t.policy_version for t in r.runner.transitions) >= 2  # data from the new versions
        assert r.link.status()["rejected_policies"] == 0
        assert r.link.dropped == 0
    _assert_exactly_once(learner, runners)
    # Waiting for credit did not cut episodes short: each one fell or ran its full length.
    done, still_open = _episodes(learner.out)
    assert len(still_open) <= len(RUNNERS) and len(set(still_open)) == len(still_open)  # the last ones only
    for name, episodes in done.items():
        assert episodes and all(terminated or n == EPISODE_STEPS for n, terminated in episodes), name


@pytest.mark.parametrize("session", [{"pacing": "realtime"}], indirect=True)
def test_realtime_pacing_never_holds_the_robots_for_updates(session) -> None:
    """The runners run free: the updates owed grow past what lockstep credit allows (2 x CREDIT), and the
    learner reports the effective UTD ratio; once the data stops it catches up and every transition is in."""
    learner, runners = session
    ahead = learner.wait_status("runners ahead of the updates", lambda s: s["owed_updates"] > 3 * CREDIT)
    assert ahead["pacing"] == "realtime" and ahead["effective_utd"] < 2.0
    status = _finish(learner, runners)
    assert status["updates"] == status["step"] - max(TINY_WARMUP, 16) + 1
    assert status["effective_utd"] == pytest.approx(2.0)
    _assert_exactly_once(learner, runners)


@pytest.mark.parametrize("session", [{"robot2": "keep"}], indirect=True)
def test_learner_killed_and_restarted_loses_and_duplicates_nothing(session) -> None:
    """kill -9 mid-run; robot1 holds while the learner is gone, robot2 runs on into its spool (up to its
    credit): after the restart the learner's log gives back everything it acked, and the resent rest is
    taken exactly once."""
    learner, runners = session
    before = learner.wait_status("past warmup, version 1", lambda s: s["policy_version"] >= 1)
    learner.kill()
    time.sleep(0.5)  # acks already on their way are taken in
    acked = sum(r.spool.acked_seq + 1 for r in runners)
    learner.start()
    first = learner.wait_status("restarted", lambda s: True)
    assert first["step"] >= acked > 0  # everything it had acknowledged came back from its log
    learner.wait_status(
        "restarted and progressing",
        lambda s: s["step"] > before["step"] + 40 and s["policy_version"] > before["policy_version"],
    )
    status = _finish(learner, runners)
    assert status["updates"] == status["step"] - max(TINY_WARMUP, 16) + 1
    _assert_exactly_once(learner, runners)


def test_console_pauses_and_resumes_learning(session) -> None:
    """Pause stops the updates (lockstep runners then wait for credit); resume carries on where it was."""
    from robot_wsrl.wire.protocol import Command, Reply

    learner, _ = session
    learner.wait_status("fine-tuning", lambda s: s["updates"] > 0)

    def command(name: str, ref: int) -> Reply:
        assert transport.send_frames(learner.console, encode(Command("console", name, {}, ref)), 5.0)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            frames = transport.recv_frames(learner.console, deadline - time.monotonic())
            msg = None if frames is None else decode(frames)
            if isinstance(msg, Reply) and msg.ref == ref:
                return msg
        raise AssertionError(f"no reply to {name}")

    assert command("pause", 1).ok
    paused = learner.wait_status("paused", lambda s: s["phase"] == "paused")
    time.sleep(1.0)
    still = learner.wait_status("still paused", lambda s: True)
    assert still["updates"] == paused["updates"] and still["phase"] == "paused"
    assert still["step"] - paused["step"] <= 2 * CREDIT  # the runners ran out of credit
    reply = command("estop", 2)
    assert not reply.ok and "pause and resume" in (reply.error or "")
    assert command("resume", 3).ok
    learner.wait_status(
        "learning again", lambda s: s["updates"] > still["updates"] and s["phase"] != "paused"
    )


QUICK_VALIDATION = ("episodes=3", "variants=[nominal]", "max_episode_steps=30")


def _verdicts(out: Path) -> dict[int, dict[str, Any]]:
    """The gate's verdict on each version, from the files the validation worker writes."""
    return {
        int(path.parts[-3][1:]): json.loads(path.read_text())
        for path in (out / "policies").glob("v*/validation/verdict.json")
    }


@pytest.mark.parametrize(
    "session",
    [
        {"gate": (*QUICK_VALIDATION, *PASS_EVERY_VERSION), "hardware": "robot2"},
        {"gate": (*QUICK_VALIDATION, "thresholds.min_return={nominal: 1e9}"), "hardware": "robot2"},  # none
    ],
    indirect=True,
    ids=["versions-pass", "versions-fail"],
)
def test_hardware_runner_runs_only_versions_that_passed_validation(session) -> None:
    """The sim runner gets every version at once; the hardware runner only what the validation worker
    passed, and the learner's status says why the others were held back."""
    learner, runners = session
    sim, hardware = runners
    status = learner.wait_status(
        "a new version judged",
        lambda s: any(v["status"] in ("passed", "failed") and v["version"] for v in s["gate"]["verdicts"]),
    )
    judged = [v for v in status["gate"]["verdicts"] if v["status"] in ("passed", "failed") and v["version"]]
    if judged[0]["status"] == "failed":
        assert all(v["status"] == "failed" and v["reasons"] for v in judged), judged
        assert "min_return" in judged[0]["reasons"][0] or "below" in judged[0]["reasons"][0], judged
        assert status["gate"]["deployed_version"] == 0
    else:
        learner.wait_status("a version promoted", lambda s: s["gate"]["deployed_version"] >= 1)
        deadline = time.monotonic() + LEARNER_WAIT_S
        while hardware.runner.policy.version < 1:
            assert time.monotonic() < deadline, hardware.link.status()
            time.sleep(0.1)
    deadline = time.monotonic() + LEARNER_WAIT_S  # a verdict can come before the next version is out
    while max((t.policy_version for t in list(sim.runner.transitions)), default=0) < 2:
        assert time.monotonic() < deadline, sim.link.status()
        time.sleep(0.1)
    _finish(learner, runners)
    learner.stop()
    verdicts = _verdicts(learner.out)
    assert verdicts[0]["status"] == "passed"  # the pre-trained policy: measured, passes by definition
    assert max(t.policy_version for t in sim.runner.transitions) >= 2
    ran = {t.policy_version for t in hardware.runner.transitions} | {hardware.runner.policy.version}
    assert ran == {0} or judged[0]["status"] == "passed"
    for version in ran - {0}:  # every version the hardware runner ran passed validation
        assert verdicts[version]["status"] == "passed", version


def test_unsigned_or_altered_policy_is_refused(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path
) -> None:
    """The test plays the learner: only the genuine, signed policy reaches disk and the runner."""
    from robot_wsrl.learn.export import export_policy
    from robot_wsrl.wire.signing import signed_policy_message

    onnx_path = export_policy(learner_checkpoint, tmp_path / "export")
    onnx, sidecar = onnx_path.read_bytes(), onnx_path.with_suffix(".json").read_text()
    genuine = signed_policy_message(
        "learner", keys.load_signing_key(learner_keydir, "learner"), onnx, sidecar
    )
    keys.new_identity(tmp_path / "rogue", "rogue", "learner")
    rogue = signed_policy_message(
        "learner", keys.load_signing_key(tmp_path / "rogue", "rogue"), onnx, sidecar
    )
    unsigned = PolicyMessage(**{**genuine.__dict__, "signature": b""})
    altered = PolicyMessage(**{**genuine.__dict__, "onnx": onnx[:-1] + bytes([onnx[-1] ^ 1])})

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    server = transport.plain_server(ctx, zmq.ROUTER, endpoint)
    sock = transport.plain_client(ctx, zmq.DEALER, endpoint)
    spool = TransitionSpool(tmp_path / "spool", "robot1", fsync="never")
    link = LearnerLink(
        sock, spool, keys.load_verify_keys(learner_keydir), tmp_path / "policies", LinkOptions()
    )
    link.start()
    try:
        frames = transport.recv_frames(server, 10.0)  # the link's first heartbeat names its peer
        assert frames is not None
        identity = frames[0].bytes
        for bad in (unsigned, altered, rogue):
            assert transport.send_frames(server, [identity, *encode(bad)], 5.0)
        deadline = time.monotonic() + 10.0
        while link.rejected_policies < 3:
            assert time.monotonic() < deadline, link.status()
            time.sleep(0.02)
        assert link.wait_for_policy(0.0) is None
        assert transport.send_frames(server, [identity, *encode(genuine)], 5.0)
        path = link.wait_for_policy(10.0)
        assert path is not None and path.read_bytes() == onnx
        assert link.rejected_policies == 3
    finally:
        link.close()
        spool.close()
        transport.shutdown(ctx)


COMPACT_CAPACITY = 64  # a replay ring small enough that the ingest log rotates and compacts often


def test_learner_killed_around_log_compaction_loses_and_duplicates_nothing(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path
) -> None:
    """kill -9 three times while the ingest log rotates and compacts every couple of commits: each restart
    comes back with everything acked, every transition is taken exactly once, and the log holds about the
    replay capacity, not the run."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    learner = LearnerProcess(endpoint, learner_keydir, learner_checkpoint, tmp_path / "learner")
    learner.kill()  # started with the fixture's settings: restart it with a small replay ring
    learner.command.append(f"run.buffer_capacity={COMPACT_CAPACITY}")
    learner.start()
    runners: list[RunnerThread] = []
    try:
        for i, name in enumerate(RUNNERS):
            runners.append(start_runner_thread(name, i, endpoint, learner_keydir, tmp_path / name, "hold"))
        for kill in range(1, 4):
            learner.wait_status("logs compacted", lambda s, k=kill: s["step"] >= 3 * k * COMPACT_CAPACITY)
            learner.kill()
            acked = sum(r.spool.acked_seq + 1 for r in runners)
            learner.start()
            first = learner.wait_status("restarted", lambda s: True)
            assert first["step"] >= acked and first["log_skipped"] == 0
            assert first["log_segments"] <= COMPACT_CAPACITY // 16 + 3
        status = _finish(learner, runners)  # every transition sent, counted once (step == total sent)
        assert status["updates"] == status["step"] - max(TINY_WARMUP, 16) + 1
        assert status["buffer"] == COMPACT_CAPACITY and status["log_segments"] <= COMPACT_CAPACITY // 16 + 3
        learner.stop()
        for name, seqs in _logged_seqs(learner.out).items():  # what is left: a whole, unique tail
            runner = next(r for r in runners if r.spool.runner_id == name)
            assert sorted(seqs) == list(range(runner.spool.next_seq - len(seqs), runner.spool.next_seq))
        assert sum(len(s) for s in _logged_seqs(learner.out).values()) < status["step"] // 2
    finally:
        for r in runners:
            r.close()
        learner.close()
