"""The runner's on-disk transition spool and the learner's de-duplication log (numpy + msgpack only).

`TransitionSpool` keeps every transition batch until the learner acknowledges it, so a learner crash or
a network cut loses nothing: batches are numbered with a contiguous per-runner sequence, written as
records of their exact wire frames into segment files, and replayed in order after a reconnect. It is
bounded: when an append would exceed `max_bytes` it raises `SpoolFull` and writes nothing; the runner
must then pause exploration and hold the robot safe until acks free space. It never drops a batch.

On disk, in `directory`:

    spool.state             runner id and the acknowledged watermark: a DurableRecord, rewritten in place,
                            so acknowledging needs no new disk space (a full disk recovers by acks alone)
    <first seq:020d>.seg    records: header (magic, crc32, body length, first seq, count) + frames
    next.spare              the next segment, made and opened ahead, so a roll needs no new descriptor

Durability (`fsync`): "always" (default) fsyncs every append before it returns, so anything that was sent
survives a power loss; "segment" fsyncs when a segment is closed, surviving a process crash (every append
reaches the page cache before it returns) but not a power loss; "never" leaves it to the OS. The
acknowledged watermark is always written durably before acknowledged segments are deleted, so after any
crash the sequence continues above everything the learner ever acknowledged. With "always" no sequence
number is ever reused for different data; with the weaker policies a power loss may lose the unsynced
tail and reuse its numbers, and the learner then drops those new transitions as duplicates (a loss, never
a duplicate), which is why "always" is the default on a robot.

Re-opening scans every segment: a torn record at a segment's end (a crash mid-append; that append never
returned, so its batch was never sent) is truncated away and reported in `recovered`.

Resource failures are not errors: a full disk (ENOSPC) or no file descriptor left (EMFILE, ENFILE) makes
`append` raise SpoolFull, having stored nothing, and the next append after the resource came back works.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import io
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robot_wsrl.core.durable import DurableRecord
from robot_wsrl.wire.protocol import ProtocolError, Transition, Transitions, decode, encode

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "segment", "never"]
FORMAT = "robot-wsrl-spool/1"
STATE_FILE = "spool.state"
LEGACY_STATE_FILE = "spool.json"  # the watermark as older versions wrote it (read once, then replaced)
SEGMENT_SUFFIX = ".seg"
SPARE_SEGMENT = "next.spare"
RESOURCE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE})
MAGIC = b"RWS1"
_HEADER = struct.Struct("<4sIIqq")  # magic, crc32 of the rest, body length, first seq, count
_U32 = struct.Struct("<I")


class SpoolFull(Exception):
    """The spool has no room for this batch: pause exploration and hold safe until acks free space."""


class SpoolError(ValueError):
    """The spool directory or an ack is inconsistent with what this spool wrote."""


@dataclass
class _Segment:
    path: Path
    first_seq: int
    last_seq: int
    size: int


def _record(first_seq: int, count: int, frames: Sequence[bytes]) -> bytes:
    body = b"".join([_U32.pack(len(frames)), *(_U32.pack(len(f)) for f in frames), *frames])
    tail = struct.pack("<Iqq", len(body), first_seq, count)
    return _HEADER.pack(MAGIC, zlib.crc32(body, zlib.crc32(tail)), len(body), first_seq, count) + body


def _frames(body: memoryview) -> list[memoryview]:
    (n,) = _U32.unpack_from(body, 0)
    lengths = [_U32.unpack_from(body, 4 + 4 * i)[0] for i in range(n)]
    offset, frames = 4 + 4 * n, []
    for length in lengths:
        frames.append(body[offset : offset + length])
        offset += length
    return frames


def _scan(data: bytes) -> tuple[list[tuple[int, int, memoryview]], int]:
    """Valid, consecutively numbered records (first seq, count, body) from the start of `data`, and the
    length they cover."""
    view, offset, records = memoryview(data), 0, []
    while offset + _HEADER.size <= len(data):
        magic, crc, length, first, count = _HEADER.unpack_from(view, offset)
        end = offset + _HEADER.size + length
        if magic != MAGIC or end > len(data) or count <= 0:
            break
        if records and first != records[-1][0] + records[-1][1]:
            break
        body = view[offset + _HEADER.size : end]
        if zlib.crc32(body, zlib.crc32(struct.pack("<Iqq", length, first, count))) != crc:
            break
        records.append((first, count, body))
        offset = end
    return records, offset


def _open_append(path: Path) -> io.FileIO:
    """Unbuffered: a write that fails (a full disk) leaves nothing behind in a buffer to fail again later."""
    return io.FileIO(path, "ab")


class TransitionSpool:
    """A bounded, crash-safe, ordered store of one runner's unacknowledged transition batches.

    `append` may be called from one thread while another calls `ack` and iterates `unacked`. Appends do
    disk I/O (and fsync by default), so a control loop hands transitions to a thread that calls this.
    """

    def __init__(
        self,
        directory: str | Path,
        runner_id: str,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 8 << 20,
        fsync: FsyncPolicy = "always",
    ) -> None:
        if fsync not in ("always", "segment", "never"):
            raise ValueError(f"fsync must be 'always', 'segment' or 'never', got {fsync!r}")
        if not 0 < segment_bytes <= max_bytes:
            raise ValueError(f"need 0 < segment_bytes <= max_bytes, got {segment_bytes}, {max_bytes}")
        self.directory = Path(directory)
        self.runner_id = runner_id
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.recovered: list[str] = []  # what re-opening had to repair, for the status report
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._file: Any = None  # the open tail segment, appended to
        self._spare: Any = None  # the next segment, opened ahead (see the module docstring)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY)  # held: syncing a new segment's name needs it
        self._state = DurableRecord(self.directory / STATE_FILE)
        self._acked = self._load_state()
        self._recover()
        self._open_spare()

    # ----- state -----

    @property
    def acked_seq(self) -> int:
        """Everything up to this sequence number is acknowledged (-1: nothing yet)."""
        return self._acked

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended transition gets."""
        return self._next

    @property
    def used_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def pending(self) -> int:
        """Transitions written and not yet acknowledged."""
        return self._next - 1 - self._acked

    def _load_state(self) -> int:
        state = self._state.value
        legacy = self.directory / LEGACY_STATE_FILE
        if state is None and legacy.exists():
            try:
                state = json.loads(legacy.read_text())
            except (OSError, ValueError) as exc:
                raise SpoolError(f"{legacy}: unreadable spool state ({type(exc).__name__}: {exc})") from exc
        if state is None:
            self._write_state(-1)
            return -1
        try:
            fmt, runner_id, acked = state["format"], state["runner_id"], int(state["acked"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(
                f"{self._state.path}: unreadable spool state ({type(exc).__name__}: {exc})"
            ) from exc
        if fmt != FORMAT:
            raise SpoolError(f"{self._state.path}: format {fmt!r} is not {FORMAT!r}")
        if runner_id != self.runner_id:
            raise SpoolError(
                f"{self._state.path}: this spool belongs to runner {runner_id!r}, not {self.runner_id!r}"
            )
        if legacy.exists():
            self._write_state(acked)
            legacy.unlink()
        return acked

    def _write_state(self, acked: int) -> None:
        """Durably record the acknowledged watermark, in place (no new disk space, no new descriptor)."""
        self._state.write({"format": FORMAT, "runner_id": self.runner_id, "acked": acked})

    def _recover(self) -> None:
        """Index the segments, truncate torn tails, drop acknowledged leftovers, continue the sequence."""
        last = self._acked
        (self.directory / SPARE_SEGMENT).unlink(missing_ok=True)  # a spare left by a crash holds nothing
        for path in sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}")):
            data = path.read_bytes()
            records, valid = _scan(data)
            if valid < len(data):
                self.recovered.append(f"{path.name}: truncated {len(data) - valid} bytes of a torn record")
                log.warning("spool %s: %s", self.directory, self.recovered[-1])
                with open(path, "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            if not records or records[-1][0] + records[-1][1] - 1 <= self._acked:
                path.unlink()
                continue
            first = records[0][0]
            if first > last + 1:
                self.recovered.append(f"{path.name}: sequence gap {last + 1}..{first - 1} (lost before sync)")
                log.error("spool %s: %s", self.directory, self.recovered[-1])
            last = records[-1][0] + records[-1][1] - 1
            self._segments.append(_Segment(path, first, last, valid))
        self._next = last + 1
        if self._segments:
            self._file = _open_append(self._segments[-1].path)

    # ----- runner side -----

    def append(self, steps: Sequence[Transition]) -> Transitions:
        """Number and store a batch of the runner's steps durably (per `fsync`), then return it for sending.

        Raises SpoolFull (and stores nothing) when the batch does not fit; ValueError when it never could;
        ProtocolError for an empty or non-finite batch.
        """
        return self._append(lambda seq: Transitions.from_steps(self.runner_id, seq, steps))

    def append_arrays(self, **arrays: Any) -> Transitions:
        """`append` for a batch already in arrays (the keyword arguments of `Transitions.make`)."""
        return self._append(lambda seq: Transitions.make(self.runner_id, seq, **arrays))

    def _append(self, make: Callable[[int], Transitions]) -> Transitions:
        with self._lock:
            batch = make(self._next)
            record = _record(batch.first_seq, batch.count, encode(batch))
            if len(record) > self.max_bytes:
                raise ValueError(f"a batch of {len(record)} bytes can never fit a spool of {self.max_bytes}")
            if self.used_bytes + len(record) > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.directory} holds {self.used_bytes} of {self.max_bytes} bytes "
                    f"unacknowledged ({self.pending()} transitions): pause and hold safe until the "
                    "learner acknowledges"
                )
            self._write(batch, record)
            self._next = batch.last_seq + 1
            return batch

    def _write(self, batch: Transitions, record: bytes) -> None:
        if self._file is None or self._segments[-1].size >= self.segment_bytes:
            try:
                self._roll(batch.first_seq)
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    raise SpoolFull(f"spool {self.directory}: cannot start a segment ({exc})") from exc
                raise
        segment = self._segments[-1]
        try:
            view = memoryview(record)
            while view:
                view = view[self._file.write(view) :]
            if self.fsync == "always":
                os.fsync(self._file.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):  # leave no torn record behind a failed write
                self._file.truncate(segment.size)
            if exc.errno in RESOURCE_ERRORS:
                raise SpoolFull(f"spool {self.directory}: disk full ({exc})") from exc
            raise
        segment.size += len(record)
        segment.last_seq = batch.last_seq

    def _roll(self, first_seq: int) -> None:
        """Close the tail segment (synced unless fsync="never") and start a new one at `first_seq`, on the
        segment opened ahead when there is one (no new descriptor needed)."""
        if self._file is not None:
            if self.fsync != "never":
                os.fsync(self._file.fileno())
            file, self._file = self._file, None
            file.close()
        path = self.directory / f"{first_seq:020d}{SEGMENT_SUFFIX}"
        if self._spare is None:
            self._open_spare()
        if self._spare is None:  # still no descriptor or inode: a resource error, retried by the caller
            self._file = _open_append(path)
        else:
            os.rename(self.directory / SPARE_SEGMENT, path)
            self._file, self._spare = self._spare, None
        self._segments.append(_Segment(path, first_seq, first_seq - 1, 0))
        if self.fsync != "never":
            os.fsync(self._dir_fd)  # the new file's name must survive a crash too
        self._open_spare()

    def _open_spare(self) -> None:
        """Make and open the next segment ahead; without a descriptor or inode now, try at the next roll."""
        try:
            self._spare = _open_append(self.directory / SPARE_SEGMENT)
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRORS:
                raise
            log.warning("spool %s: no spare segment yet (%s)", self.directory, exc)

    def ack(self, cumulative_seq: int) -> None:
        """The learner holds everything up to `cumulative_seq` durably: forget it (stale acks are no-ops)."""
        with self._lock:
            if cumulative_seq <= self._acked:
                return
            if cumulative_seq >= self._next:
                raise SpoolError(
                    f"ack of seq {cumulative_seq} but runner {self.runner_id!r} only wrote up to "
                    f"{self._next - 1}: the learner remembers data this spool never held (spool directory "
                    "reset?); use a new runner id or reset the learner's record of this runner"
                )
            self._write_state(cumulative_seq)
            self._acked = cumulative_seq
            while self._segments and self._segments[0].last_seq <= cumulative_seq:
                segment = self._segments.pop(0)
                if not self._segments:  # the tail itself is fully acknowledged: the next append rolls
                    file, self._file = self._file, None
                    file.close()
                segment.path.unlink(missing_ok=True)

    def unacked(self, start_seq: int | None = None) -> Iterator[Transitions]:
        """Batches not yet acknowledged (and ending at or after `start_seq`), in order, from disk.

        After a reconnect, resend all of them; the learner drops what it already had. Safe to iterate
        while another thread appends or acks (a segment acknowledged meanwhile is skipped).
        """
        with self._lock:
            snapshot = [(s.path, s.size) for s in self._segments]
        for path, size in snapshot:
            try:
                with open(path, "rb") as f:
                    data = f.read(size)
            except FileNotFoundError:
                continue
            for first, count, body in _scan(data)[0]:
                threshold = max(self._acked + 1, start_seq or 0)
                if first + count - 1 < threshold:
                    continue
                try:
                    batch = decode(_frames(body))
                except ProtocolError as exc:  # the crc matched, so this is a bug, not a torn write
                    raise SpoolError(f"{path}: record at seq {first} does not decode: {exc}") from exc
                if not isinstance(batch, Transitions) or batch.first_seq != first:
                    raise SpoolError(f"{path}: record at seq {first} is not that transitions batch")
                yield batch

    def close(self) -> None:
        with self._lock:
            if self._spare is not None:
                self._spare.close()
                self._spare = None
                (self.directory / SPARE_SEGMENT).unlink(missing_ok=True)
            if self._file is not None:
                try:
                    if self.fsync != "never":
                        os.fsync(self._file.fileno())
                finally:
                    self._file.close()
                    self._file = None
            self._state.close()
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1

    def __enter__(self) -> TransitionSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DedupLog:
    """Learner side: which (runner, seq) were already taken, so batches resent after a reconnect or a
    learner restart are not added twice.

    Per runner: a cumulative watermark (every seq up to it taken) plus at most `max_ranges` ranges taken
    above it out of order, reaching at most `window` past the watermark. A batch beyond the window, or
    one that would need more ranges, is refused unrecorded (not acknowledged either, so the runner sends it
    again, in order, once the gaps below it are filled): sparse sequence numbers cannot make the
    bookkeeping, or the cost of a batch, grow. Checkpoint `state()` with the replay buffer it describes and
    restore with `from_state`.
    """

    def __init__(self, window: int = 1 << 20, max_ranges: int = 64) -> None:
        if window <= 0 or max_ranges <= 0:
            raise ValueError(f"window and max_ranges must be positive, got {window}, {max_ranges}")
        self.window, self.max_ranges = window, max_ranges
        self._watermark: dict[str, int] = {}
        self._ranges: dict[str, list[tuple[int, int]]] = {}  # sorted, disjoint, inclusive, above watermark

    def watermark(self, runner_id: str) -> int:
        """Every seq of `runner_id` up to this was taken (-1: none)."""
        return self._watermark.get(runner_id, -1)

    def accept(self, runner_id: str, first_seq: int, count: int) -> np.ndarray:
        """Mask over seqs first_seq .. first_seq + count - 1: True where not seen before (now recorded).

        Costs O(count + log ranges): only the ranges that overlap the batch are looked at."""
        mark = self.watermark(runner_id)
        ranges = self._ranges.get(runner_id, [])
        last = first_seq + count - 1
        lo_i = bisect.bisect_left(ranges, (first_seq + 1,)) - 1  # the range that may hold first_seq
        lo_i = max(lo_i, 0)
        hi_i = bisect.bisect_right(ranges, (last + 1,))  # ranges starting after `last` are untouched
        seqs = np.arange(first_seq, first_seq + count, dtype=np.int64)
        mask = (seqs > mark) & (seqs <= mark + self.window)
        for lo, hi in ranges[lo_i:hi_i]:
            start, stop = max(lo, first_seq) - first_seq, min(hi, last) - first_seq + 1
            if stop > start:
                mask[start:stop] = False
        if not mask.any():
            return mask
        idx = np.flatnonzero(mask)
        breaks = np.flatnonzero(np.diff(idx) > 1)
        starts = seqs[np.concatenate([[idx[0]], idx[breaks + 1]])]
        ends = seqs[np.concatenate([idx[breaks], [idx[-1]]])]
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges[lo_i:hi_i] + list(zip(starts.tolist(), ends.tolist(), strict=True))):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        before, after = ranges[:lo_i], ranges[hi_i:]
        if before and merged[0][0] <= before[-1][1] + 1:  # touches the range just below
            merged[0] = (before.pop()[0], merged[0][1])
        if after and after[0][0] <= merged[-1][1] + 1:  # ... or the one just above
            merged[-1] = (merged[-1][0], after.pop(0)[1])
        ranges = before + merged + after
        if ranges[0][0] == mark + 1:
            mark = ranges.pop(0)[1]
        if len(ranges) > self.max_ranges:
            return np.zeros(count, bool)  # too sparse: refused, nothing recorded
        self._watermark[runner_id] = mark
        self._ranges[runner_id] = ranges
        return mask

    def state(self) -> dict[str, Any]:
        """Plain data (JSON/msgpack-ready) for a checkpoint."""
        return {
            "window": self.window,
            "max_ranges": self.max_ranges,
            "runners": {
                r: {"watermark": self.watermark(r), "ranges": [list(x) for x in self._ranges.get(r, [])]}
                for r in self._watermark
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DedupLog:
        log_ = cls(int(state["window"]), int(state.get("max_ranges", 64)))
        for runner_id, entry in state["runners"].items():
            log_._watermark[runner_id] = int(entry["watermark"])
            log_._ranges[runner_id] = [(int(lo), int(hi)) for lo, hi in entry["ranges"]]
        return log_
