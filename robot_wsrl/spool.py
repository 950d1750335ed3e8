"""The runner's on-disk transition spool and the learner's de-duplication log (numpy + msgpack only).

`TransitionSpool` keeps every transition batch until the learner acknowledges it, so a learner crash or
a network cut loses nothing: batches are numbered with a contiguous per-runner sequence, written as
records of their exact wire frames into segment files, and replayed in order after a reconnect. It is
bounded: when an append would exceed `max_bytes` it raises `SpoolFull` and writes nothing; the runner
must then pause exploration and hold the robot safe until acks free space. It never drops a batch.

On disk, in `directory`:

    spool.json              runner id and the acknowledged watermark (atomic write-and-rename)
    <first seq:020d>.seg    records: header (magic, crc32, body length, first seq, count) + frames

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
"""

from __future__ import annotations

import contextlib
import errno
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

from robot_wsrl.protocol import ProtocolError, StepLike, Transitions, decode, encode

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "segment", "never"]
FORMAT = "robot-wsrl-spool/1"
STATE_FILE = "spool.json"
SEGMENT_SUFFIX = ".seg"
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self.directory.mkdir(parents=True, exist_ok=True)
        self._acked = self._load_state()
        self._recover()

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
        path = self.directory / STATE_FILE
        if not path.exists():
            self._write_state(-1)
            return -1
        try:
            state = json.loads(path.read_text())
            fmt, runner_id, acked = state["format"], state["runner_id"], int(state["acked"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{path}: unreadable spool state ({type(exc).__name__}: {exc})") from exc
        if fmt != FORMAT:
            raise SpoolError(f"{path}: format {fmt!r} is not {FORMAT!r}")
        if runner_id != self.runner_id:
            raise SpoolError(f"{path}: this spool belongs to runner {runner_id!r}, not {self.runner_id!r}")
        return acked

    def _write_state(self, acked: int) -> None:
        """Atomically and durably record the acknowledged watermark."""
        path, tmp = self.directory / STATE_FILE, self.directory / f"{STATE_FILE}.tmp"
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, "runner_id": self.runner_id, "acked": acked}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)

    def _recover(self) -> None:
        """Index the segments, truncate torn tails, drop acknowledged leftovers, continue the sequence."""
        last = self._acked
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
            self._file = open(self._segments[-1].path, "ab")  # noqa: SIM115 - held open for appends

    # ----- runner side -----

    def append(self, steps: Sequence[StepLike]) -> Transitions:
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
            self._roll(batch.first_seq)
        segment = self._segments[-1]
        try:
            self._file.write(record)
            self._file.flush()
            if self.fsync == "always":
                os.fsync(self._file.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):  # leave no torn record behind a failed write
                self._file.truncate(segment.size)
            if exc.errno == errno.ENOSPC:
                raise SpoolFull(f"spool {self.directory}: disk full ({exc})") from exc
            raise
        segment.size += len(record)
        segment.last_seq = batch.last_seq

    def _roll(self, first_seq: int) -> None:
        """Close the tail segment (synced unless fsync="never") and start a new one at `first_seq`."""
        if self._file is not None:
            if self.fsync != "never":
                os.fsync(self._file.fileno())
            self._file.close()
        path = self.directory / f"{first_seq:020d}{SEGMENT_SUFFIX}"
        self._file = open(path, "ab")  # noqa: SIM115 - held open for appends
        if self.fsync != "never":
            _fsync_dir(self.directory)  # the new file's name must survive a crash too
        self._segments.append(_Segment(path, first_seq, first_seq - 1, 0))

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
                    self._file.close()
                    self._file = None
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
            if self._file is not None:
                if self.fsync != "never":
                    os.fsync(self._file.fileno())
                self._file.close()
                self._file = None

    def __enter__(self) -> TransitionSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DedupLog:
    """Learner side: which (runner, seq) were already taken, so batches resent after a reconnect or a
    learner restart are not added twice.

    Per runner: a cumulative watermark (every seq up to it taken) plus the ranges taken above it out of
    order, which may reach at most `window` past the watermark; sequences beyond that are refused
    unrecorded (not acknowledged either, so the runner sends them again). Checkpoint `state()` with the
    replay buffer it describes and restore with `from_state`.
    """

    def __init__(self, window: int = 1 << 20) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self._watermark: dict[str, int] = {}
        self._ranges: dict[str, list[tuple[int, int]]] = {}  # sorted, disjoint, inclusive, above watermark

    def watermark(self, runner_id: str) -> int:
        """Every seq of `runner_id` up to this was taken (-1: none)."""
        return self._watermark.get(runner_id, -1)

    def accept(self, runner_id: str, first_seq: int, count: int) -> np.ndarray:
        """Mask over seqs first_seq .. first_seq + count - 1: True where not seen before (now recorded)."""
        mark = self.watermark(runner_id)
        ranges = self._ranges.get(runner_id, [])
        seqs = np.arange(first_seq, first_seq + count, dtype=np.int64)
        mask = (seqs > mark) & (seqs <= mark + self.window)
        for lo, hi in ranges:
            mask &= (seqs < lo) | (seqs > hi)
        if mask.any():
            idx = np.flatnonzero(mask)
            breaks = np.flatnonzero(np.diff(idx) > 1)
            starts = np.concatenate([[idx[0]], idx[breaks + 1]])
            ends = np.concatenate([idx[breaks], [idx[-1]]])
            merged = sorted(
                ranges + [(int(seqs[s]), int(seqs[e])) for s, e in zip(starts, ends, strict=True)]
            )
            ranges = []
            for lo, hi in merged:
                if ranges and lo <= ranges[-1][1] + 1:
                    ranges[-1] = (ranges[-1][0], max(ranges[-1][1], hi))
                else:
                    ranges.append((lo, hi))
            if ranges[0][0] == mark + 1:
                mark = ranges.pop(0)[1]
            self._watermark[runner_id] = mark
            self._ranges[runner_id] = ranges
        return mask

    def state(self) -> dict[str, Any]:
        """Plain data (JSON/msgpack-ready) for a checkpoint."""
        return {
            "window": self.window,
            "runners": {
                r: {"watermark": self.watermark(r), "ranges": [list(x) for x in self._ranges.get(r, [])]}
                for r in self._watermark
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DedupLog:
        log_ = cls(int(state["window"]))
        for runner_id, entry in state["runners"].items():
            log_._watermark[runner_id] = int(entry["watermark"])
            log_._ranges[runner_id] = [(int(lo), int(hi)) for lo, hi in entry["ranges"]]
        return log_
