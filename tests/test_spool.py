"""The runner's spool (ordered, bounded, crash-safe) and the learner's de-duplication log."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import transition_steps

from robot_wsrl.wire.protocol import Transitions
from robot_wsrl.wire.spool import DedupLog, SpoolError, SpoolFull, TransitionSpool


def ranges(batches: list[Transitions]) -> list[tuple[int, int]]:
    return [(b.first_seq, b.last_seq) for b in batches]


def rewards(batches: list[Transitions]) -> list[float]:
    return [float(r) for b in batches for r in b.reward]


def test_append_numbers_batches_and_ack_forgets_them(tmp_path: Path) -> None:
    with TransitionSpool(tmp_path, "robot1") as spool:
        sent = [spool.append(transition_steps(5, 5 * k)) for k in range(3)]
        assert ranges(sent) == [(0, 4), (5, 9), (10, 14)]
        assert all(b.runner_id == "robot1" for b in sent)
        assert ranges(list(spool.unacked())) == [(0, 4), (5, 9), (10, 14)]
        assert rewards(list(spool.unacked())) == [float(i) for i in range(15)]
        assert spool.pending() == 15 and spool.next_seq == 15
        spool.ack(7)  # mid-batch: that batch is resent whole; the learner drops the overlap
        assert ranges(list(spool.unacked())) == [(5, 9), (10, 14)]
        assert ranges(list(spool.unacked(start_seq=10))) == [(10, 14)]
        spool.ack(3)  # stale: no-op
        assert spool.acked_seq == 7 and spool.pending() == 7
        spool.ack(14)
        assert list(spool.unacked()) == [] and spool.pending() == 0 and spool.used_bytes == 0
        assert ranges([spool.append(transition_steps(2))]) == [(15, 16)]


def test_append_arrays(tmp_path: Path) -> None:
    with TransitionSpool(tmp_path, "robot1") as spool:
        spool.append(transition_steps(2))
        batch = spool.append_arrays(
            obs=np.zeros((3, 4)),
            action=np.zeros((3, 1)),
            reward=np.arange(3.0),
            next_obs=np.ones((3, 4)),
            terminated=np.zeros(3, bool),
            truncated=np.array([0, 0, 1], bool),
            episode_id=np.full(3, 5),
            policy_version=np.zeros(3, np.int64),
        )
        assert (batch.first_seq, batch.last_seq, batch.obs.dtype) == (2, 4, np.float32)
        assert ranges(list(spool.unacked())) == [(0, 1), (2, 4)]


def test_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    with TransitionSpool(tmp_path, "robot1", segment_bytes=1) as spool:  # one batch per segment
        for k in range(4):
            spool.append(transition_steps(3, 3 * k))
        assert len(list(tmp_path.glob("*.seg"))) == 4
        used = spool.used_bytes
        spool.ack(5)
        assert len(list(tmp_path.glob("*.seg"))) == 2 and spool.used_bytes == used // 2


def test_restart_continues_the_sequence_without_loss_or_duplicates(tmp_path: Path) -> None:
    spool = TransitionSpool(tmp_path, "robot1", segment_bytes=2000)
    for k in range(6):
        spool.append(transition_steps(4, 4 * k))
    spool.ack(9)
    del spool  # no close(): as after a crash (fsync="always" already made every append durable)

    spool = TransitionSpool(tmp_path, "robot1", segment_bytes=2000)
    assert spool.acked_seq == 9 and spool.next_seq == 24 and spool.recovered == []
    assert ranges(list(spool.unacked())) == [(8, 11), (12, 15), (16, 19), (20, 23)]
    assert ranges([spool.append(transition_steps(4, 24))]) == [(24, 27)]
    assert rewards(list(spool.unacked(start_seq=10))) == [float(i) for i in range(8, 28)]
    spool.ack(27)
    spool.close()

    # everything acknowledged, no segment left: the sequence still continues above the watermark
    spool = TransitionSpool(tmp_path, "robot1")
    assert list(tmp_path.glob("*.seg")) == [] and spool.next_seq == 28
    spool.close()


def test_killed_process_loses_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import transition_steps
        from robot_wsrl.wire.spool import TransitionSpool
        spool = TransitionSpool({str(tmp_path)!r}, "robot1", segment_bytes=3000)
        for k in range(10):
            spool.append(transition_steps(3, 3 * k))
        spool.ack(5)
        os._exit(3)  # no close, no flush at exit (3: an exception would exit 1)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    with TransitionSpool(tmp_path, "robot1", segment_bytes=3000) as spool:
        assert spool.acked_seq == 5 and spool.next_seq == 30
        assert rewards(list(spool.unacked())) == [float(i) for i in range(6, 30)]


@pytest.mark.parametrize("tail", ["torn", "out_of_sequence"])
def test_half_written_tail_is_truncated_and_ignored(tmp_path: Path, tail: str) -> None:
    with TransitionSpool(tmp_path, "robot1") as spool:
        spool.append(transition_steps(4))
        spool.append(transition_steps(4, 4))
    segment = next(tmp_path.glob("*.seg"))
    whole = segment.read_bytes()
    half = len(whole) // 2  # both records have the same size
    with open(segment, "ab") as f:
        if tail == "torn":  # a crash in the middle of writing a third record
            f.write(whole[half : half + 100])
        else:  # a complete record that does not follow (a stale copy), then garbage
            f.write(whole[: half + 7])
    with TransitionSpool(tmp_path, "robot1") as spool:
        assert len(spool.recovered) == 1 and "torn" in spool.recovered[0]
        assert segment.stat().st_size == len(whole)
        assert ranges(list(spool.unacked())) == [(0, 3), (4, 7)]
        assert ranges([spool.append(transition_steps(2, 8))]) == [(8, 9)]
        assert rewards(list(spool.unacked())) == [float(i) for i in range(10)]


def test_corrupted_record_is_cut_there(tmp_path: Path) -> None:
    with TransitionSpool(tmp_path, "robot1") as spool:
        spool.append(transition_steps(4))
        size = spool.used_bytes
        spool.append(transition_steps(4, 4))
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[size + 40] ^= 0xFF  # a bit flip inside the second record: its crc no longer matches
    segment.write_bytes(bytes(data))
    with TransitionSpool(tmp_path, "robot1") as spool:
        assert spool.recovered and ranges(list(spool.unacked())) == [(0, 3)] and spool.next_seq == 4


def test_full_spool_refuses_and_stores_nothing(tmp_path: Path) -> None:
    with TransitionSpool(tmp_path, "robot1", max_bytes=4000, segment_bytes=1000) as spool:
        appended = 0
        with pytest.raises(SpoolFull, match="pause and hold safe"):
            for k in range(100):
                spool.append(transition_steps(4, 4 * k))
                appended += 1
        assert 0 < appended < 100
        used, next_seq = spool.used_bytes, spool.next_seq
        with pytest.raises(SpoolFull):
            spool.append(transition_steps(4))
        assert (spool.used_bytes, spool.next_seq) == (used, next_seq) == (used, 4 * appended)
        assert ranges(list(spool.unacked()))[-1] == (4 * appended - 4, 4 * appended - 1)
        spool.ack(next_seq - 1)
        assert spool.append(transition_steps(4)).first_seq == next_seq
        with pytest.raises(ValueError, match="can never fit"):
            spool.append(transition_steps(200))


def test_inconsistent_acks_and_directories_are_refused(tmp_path: Path) -> None:
    with TransitionSpool(tmp_path, "robot1") as spool:
        spool.append(transition_steps(3))
        with pytest.raises(SpoolError, match="only wrote up to 2"):
            spool.ack(50)
        assert spool.acked_seq == -1 and len(list(spool.unacked())) == 1
    with pytest.raises(SpoolError, match="belongs to runner 'robot1'"):
        TransitionSpool(tmp_path, "robot2")
    with pytest.raises(ValueError, match="fsync"):
        TransitionSpool(tmp_path / "other", "robot1", fsync="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("fsync", ["segment", "never"])
def test_other_fsync_policies_behave_the_same(tmp_path: Path, fsync: str) -> None:
    with TransitionSpool(tmp_path, "robot1", segment_bytes=500, fsync=fsync) as spool:  # type: ignore[arg-type]
        for k in range(5):
            spool.append(transition_steps(2, 2 * k))
    with TransitionSpool(tmp_path, "robot1", fsync=fsync) as spool:  # type: ignore[arg-type]
        assert rewards(list(spool.unacked())) == [float(i) for i in range(10)]


def test_unacked_while_acking_skips_deleted_segments(tmp_path: Path) -> None:
    with TransitionSpool(tmp_path, "robot1", segment_bytes=1) as spool:
        for k in range(4):
            spool.append(transition_steps(2, 2 * k))
        it = spool.unacked()
        assert next(it).first_seq == 0
        spool.ack(5)  # deletes the segments the iterator has not reached yet
        assert ranges(list(it)) == [(6, 7)]


# ----- learner side -----


def test_dedup_accepts_each_sequence_once() -> None:
    dedup = DedupLog()
    assert dedup.watermark("robot1") == -1
    assert dedup.accept("robot1", 0, 5).all()
    assert not dedup.accept("robot1", 0, 5).any()  # resent after a reconnect
    assert dedup.accept("robot1", 3, 4).tolist() == [False, False, True, True]  # overlap
    assert dedup.watermark("robot1") == 6
    assert dedup.accept("robot2", 0, 2).all()  # runners are independent
    assert dedup.watermark("robot2") == 1


def test_dedup_out_of_order_and_window() -> None:
    dedup = DedupLog(window=100)
    assert dedup.accept("r", 10, 5).all()  # a gap 0..9: accepted, the watermark waits
    assert dedup.watermark("r") == -1
    assert not dedup.accept("r", 12, 2).any()
    assert dedup.accept("r", 0, 12).tolist() == [True] * 10 + [False] * 2
    assert dedup.watermark("r") == 14
    assert dedup.accept("r", 110, 10).tolist() == [True] * 5 + [False] * 5  # beyond 14 + 100: refused
    assert dedup.accept("r", 15, 95).all() and dedup.watermark("r") == 114
    assert dedup.accept("r", 110, 10).tolist() == [False] * 5 + [True] * 5  # refused were not recorded
    assert dedup.watermark("r") == 119


def test_dedup_state_round_trips() -> None:
    dedup = DedupLog(window=50)
    dedup.accept("a", 0, 3)
    dedup.accept("a", 5, 2)
    dedup.accept("b", 0, 1)
    restored = DedupLog.from_state(dedup.state())
    assert restored.state() == dedup.state()
    assert restored.accept("a", 0, 8).tolist() == [False] * 3 + [True] * 2 + [False] * 2 + [True]
    assert restored.watermark("a") == 7
