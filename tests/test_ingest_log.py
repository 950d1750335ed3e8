"""The learner's ingest log: segments, compaction to the replay capacity, and a crash at every step of
them (each file operation in turn fails as a kill would leave it) loses and duplicates nothing."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from robot_wsrl.learn import ingest_log
from robot_wsrl.learn.ingest_log import IngestLog
from robot_wsrl.wire.protocol import StatusRequest, Transitions, encode
from robot_wsrl.wire.spool import DedupLog

CAPACITY = 20  # the replay ring
SEGMENT = 5  # transitions per segment
BATCH = 3
SIZES = [BATCH] * 12 + [2 * CAPACITY] + [BATCH] * 12 + [CAPACITY + 1] + [BATCH] * 6  # big ones kill many
FIRSTS = np.cumsum([0, *SIZES[:-1]]).tolist()
SENT = sum(SIZES)


def _batch(first_seq: int, n: int = BATCH) -> Transitions:
    rows = np.arange(first_seq, first_seq + n, dtype=np.float32)
    return Transitions.make(
        "robot1",
        first_seq,
        obs=np.repeat(rows[:, None], 2, axis=1),
        action=rows[:, None],
        reward=rows,
        next_obs=np.repeat(rows[:, None] + 1, 2, axis=1),
        terminated=np.zeros(n),
        truncated=np.zeros(n),
        episode_id=np.zeros(n),
        policy_version=np.zeros(n),
    )


class Model:
    """What the learner does with its log: dedup, append, group commit, rotate and compact, replay."""

    def __init__(self, path: Path) -> None:
        self.log = IngestLog(path, SEGMENT)
        base = self.log.base
        self.dedup = DedupLog.from_state(base.state["dedup"]) if base is not None else DedupLog()
        self.total = base.transitions if base is not None else 0
        self.replayed: list[int] = []
        for batch in self.log.replay():
            mask = self.dedup.accept(batch.runner_id, batch.first_seq, batch.count)
            self.total += int(mask.sum())
            self.replayed.extend(batch.seq[mask].tolist())

    def ingest(self, batch: Transitions) -> None:
        mask = self.dedup.accept(batch.runner_id, batch.first_seq, batch.count)
        if mask.all():
            self.log.append(batch)
            self.total += batch.count
        else:
            assert not mask.any()  # the runner resends whole batches

    def commit(self) -> int:
        """The watermark the learner may now acknowledge."""
        self.log.sync()
        if self.log.rotation_due():
            self.log.rotate(self.total, {"dedup": self.dedup.state()})
            self.log.compact(self.total - CAPACITY)
        return self.dedup.watermark("robot1")


def _run(path: Path, acked: int = -1) -> int:
    """A runner sends every batch after `acked`, the learner commits each; returns the last ack."""
    model = Model(path)
    try:
        for first, n in zip(FIRSTS, SIZES, strict=True):
            if first > acked:
                model.ingest(_batch(first, n))
                acked = model.commit()
    finally:
        model.log.close()
    return acked


class Crash(Exception):
    """A kill at this step: the operation does not happen, nor does anything after it."""


def _steps(monkeypatch: pytest.MonkeyPatch, crash_at: int | None) -> list[str]:
    """Count every file operation a rotation or compaction makes (renames, deletes, folder syncs), and
    fail the `crash_at`-th."""
    seen: list[str] = []

    def step(name: str, real):
        def wrapper(*args, **kwargs):
            if len(seen) == crash_at:
                raise Crash(name)
            seen.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ingest_log.os, "replace", step("replace", ingest_log.os.replace))
    monkeypatch.setattr(ingest_log, "_fsync_dir", step("fsync_dir", ingest_log._fsync_dir))
    monkeypatch.setattr(Path, "unlink", step("unlink", Path.unlink))
    return seen


def _check_restart(path: Path, acked: int) -> None:
    """After a crash: everything acked is back, the replayed tail is whole and refills the ring, and the
    runner's resend of the rest makes every transition counted exactly once."""
    model = Model(path)
    mark = model.dedup.watermark("robot1")
    assert acked <= mark < SENT
    assert model.total == mark + 1  # every transition before the mark counted once
    assert model.replayed == list(range(mark + 1 - len(model.replayed), mark + 1))  # a whole, unique tail
    assert len(model.replayed) >= min(CAPACITY, mark + 1)  # the replay ring is refilled
    model.log.close()
    assert _run(path, acked) == SENT - 1
    final = Model(path)
    assert final.total == SENT
    final.log.close()


def test_compaction_bounds_disk_and_replay_by_the_capacity(tmp_path: Path) -> None:
    assert _run(tmp_path / "log") == SENT - 1
    model = Model(tmp_path / "log")
    assert model.total == SENT and model.log.skipped == 0
    assert len(model.replayed) <= CAPACITY + SEGMENT + max(SIZES)  # what the ring holds, and a segment
    assert model.log.segments() <= CAPACITY // SEGMENT + 3
    assert model.log.base is not None and model.log.base.transitions == model.total - len(model.replayed)
    model.log.close()


def test_a_crash_at_any_step_of_rotation_or_compaction_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        seen = _steps(m, None)
        _run(tmp_path / "count")
    assert {"replace", "unlink", "fsync_dir"} <= set(seen) and len(seen) > 50  # rotations, compactions
    for crash_at in range(len(seen)):
        path, acked, model = tmp_path / f"crash{crash_at}", -1, None
        with monkeypatch.context() as m:
            _steps(m, crash_at)
            try:
                model = Model(path)
                for first, n in zip(FIRSTS, SIZES, strict=True):
                    model.ingest(_batch(first, n))
                    acked = model.commit()
            except Crash:
                pass
            else:
                raise AssertionError(f"no crash at step {crash_at}")
            finally:
                if model is not None:
                    model.log.close()
        _check_restart(path, acked)


def test_a_torn_append_is_truncated_and_the_synced_records_stay(tmp_path: Path) -> None:
    path = tmp_path / "log"
    model = Model(path)
    for first in range(0, 4 * BATCH, BATCH):
        model.ingest(_batch(first))
    acked = model.commit()
    model.ingest(_batch(4 * BATCH))
    model.log.sync()
    model.log.close()
    segment = max(path.glob("seg-*.log"))
    segment.write_bytes(segment.read_bytes()[:-7])  # the last append cut short by a kill
    reopened = Model(path)
    assert reopened.log.recovered_bytes > 0
    assert reopened.dedup.watermark("robot1") == acked and reopened.log.skipped == 0
    reopened.log.close()


def _record(frames: list[bytes]) -> bytes:
    return ingest_log._pack(frames)


def test_damaged_and_undecodable_records_are_skipped_and_counted_never_fatal(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.mkdir()
    good = [_record(encode(_batch(first))) for first in range(0, 4 * BATCH, BATCH)]
    damaged = bytearray(good[1])
    damaged[30] ^= 0xFF  # fails its checksum
    body = b"not a message"
    framed = struct.pack("<I", 1) + struct.pack("<I", len(body)) + body
    undecodable = struct.pack("<4sII", ingest_log.MAGIC, zlib.crc32(framed), len(framed)) + framed
    not_transitions = _record(encode(StatusRequest(sender="robot1")))
    (path / "seg-000000000000.log").write_bytes(
        good[0] + bytes(damaged) + undecodable + good[2] + not_transitions + good[3]
    )
    log = IngestLog(path, SEGMENT)
    seqs = [int(s) for batch in log.replay() for s in batch.seq]
    assert seqs == [*range(0, BATCH), *range(2 * BATCH, 4 * BATCH)]
    assert log.skipped == 3 and log.records == 3
    log.close()


def test_a_single_file_log_of_an_older_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "transitions.log"
    path.write_bytes(b"".join(_record(encode(_batch(first))) for first in range(0, 3 * BATCH, BATCH)))
    log = IngestLog(path, SEGMENT)
    assert path.is_dir() and log.base is None
    assert [int(s) for b in log.replay() for s in b.seq] == list(range(3 * BATCH))
    log.close()


def test_a_migration_cut_short_by_a_crash_is_finished(tmp_path: Path) -> None:
    path = tmp_path / "transitions.log"
    half_done = path.with_name("transitions.log.legacy")  # renamed aside, the folder not made yet
    half_done.write_bytes(_record(encode(_batch(0))))
    log = IngestLog(path, SEGMENT)
    assert not half_done.exists()
    assert [int(s) for b in log.replay() for s in b.seq] == list(range(BATCH))
    log.close()
