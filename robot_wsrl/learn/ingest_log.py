"""The learner's durable log of accepted transitions, in segments compacted to the replay capacity
(numpy + msgpack only).

The learner writes every batch it accepts here and fsyncs before it acknowledges it (one fsync for all
the batches of one receive round), so an ack never covers data a crash could lose: the runner forgets
what was acked, and a restarted learner rebuilds its replay buffer and de-duplication state by replaying
the log. Records hold the batch's exact wire frames (decoded again on replay with the same checks as
anything from a socket).

Layout: the log is a folder (`transitions.log/`) of numbered segments. A segment other than the first
ever begins with a *boundary* file, written (fsync + rename) before the segment's first record: the
number of transitions before it and the learner's state at that point (its de-dup state), so replay may
start at any segment that has one. Once every transition before a segment's boundary has been overwritten
in the replay ring, the segments before it are dead: `compact` deletes them, oldest first, each segment's
records before its boundary. Replay starts at the oldest segment left, so a crash at any point of a
compaction (or of a rotation, or mid-append) leaves a valid starting point with everything after it: no
transition is lost or replayed twice. Disk use and restart time are bounded by the replay capacity plus
a segment or two (a segment is sealed at the first commit past its size), not by the run's length. A
single-file log of an older version becomes segment 0.

    segment  seg-NNNNNNNNNNNN.log  = records;  boundary  seg-NNNNNNNNNNNN.json (not for segment 0)
    record = magic "RWL1" | crc32 of body (u32) | body length (u32) | body
    body   = frame count (u32) | each frame's length (u32) | frames

A torn record at the end of the newest segment (a crash mid-append, never acked) is truncated away on
open. A damaged record elsewhere is skipped up to the next record that checks out, and a checksummed
record that does not decode to transitions is skipped too: both are counted (`skipped`) and logged, never
fatal, so a restart always resumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot_wsrl.wire.protocol import ProtocolError, Transitions, decode, encode

log = logging.getLogger(__name__)

MAGIC = b"RWL1"
FORMAT = "robot-wsrl-ingest-boundary/1"
_HEADER = struct.Struct("<4sII")
_U32 = struct.Struct("<I")
_SEGMENT = re.compile(r"seg-(\d{12})\.log")
_LEGACY_SUFFIX = ".legacy"  # an old single-file log while it moves into the folder


def _pack(frames: list[bytes]) -> bytes:
    body = b"".join([_U32.pack(len(frames)), *(_U32.pack(len(f)) for f in frames), *frames])
    return _HEADER.pack(MAGIC, zlib.crc32(body), len(body)) + body


def _unpack(body: memoryview) -> list[memoryview]:
    (n,) = _U32.unpack_from(body, 0)
    offset, frames = 4 + 4 * n, []
    for i in range(n):
        (length,) = _U32.unpack_from(body, 4 + 4 * i)
        frames.append(body[offset : offset + length])
        offset += length
    if offset != len(body):
        raise ProtocolError(f"record body of {len(body)} bytes holds {offset} bytes of frames")
    return frames


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a created, renamed or deleted file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Boundary:
    """Where a segment begins: the transitions logged before it, and the learner's state at that point."""

    transitions: int
    state: dict[str, Any]


@dataclass(frozen=True)
class _Scan:
    """A segment's valid records (their bodies), the end of the last one, and the damaged bytes skipped."""

    bodies: list[memoryview]
    end: int
    skipped_bytes: int


def _scan(data: bytes) -> _Scan:
    view, offset, bodies, end, skipped = memoryview(data), 0, [], 0, 0
    while offset + _HEADER.size <= len(data):
        magic, crc, length = _HEADER.unpack_from(view, offset)
        stop = offset + _HEADER.size + length
        if magic == MAGIC and stop <= len(data) and zlib.crc32(view[offset + _HEADER.size : stop]) == crc:
            bodies.append(view[offset + _HEADER.size : stop])
            skipped += offset - end
            offset = end = stop
            continue
        found = data.find(MAGIC, offset + 1)  # damaged: resynchronise on the next record that checks out
        offset = found if found >= 0 else len(data)
    return _Scan(bodies, end, skipped)


class IngestLog:
    """Segmented, fsynced transition log; `replay()` yields what it holds from `base` on, oldest first.

    `segment_transitions`: a segment is sealed (`rotation_due`) once it holds this many transitions; a
    quarter of the replay capacity keeps the dead data on disk under a quarter of the live data.
    """

    def __init__(self, path: str | Path, segment_transitions: int = 1 << 16) -> None:
        if segment_transitions <= 0:
            raise ValueError(f"segment_transitions must be positive, got {segment_transitions}")
        self.path = Path(path)
        self.segment_transitions = segment_transitions
        self._migrate_single_file()
        self.path.mkdir(parents=True, exist_ok=True)
        self._boundaries: dict[int, Boundary] = {}
        segments = self._segments()
        self._first = segments[0] if segments else 0
        self._drop_dead_files(self._first)
        for index in segments[1:] if segments else []:
            self._boundaries[index] = self._read_boundary(index)
        self.base = self._read_boundary(self._first) if self._first else None
        self._current = segments[-1] if segments else 0
        self.recovered_bytes = self._truncate_torn_tail()
        self.records = 0  # in the live segments: counted by replay() and append()
        self.skipped = 0  # records replay() could not use
        self._in_segment = 0  # transitions appended to the current segment by this process
        self._file = open(self._segment(self._current), "ab")  # noqa: SIM115 - held open for appends
        if not segments:
            _fsync_dir(self.path)

    # ----- files -----

    def _segment(self, index: int) -> Path:
        return self.path / f"seg-{index:012d}.log"

    def _boundary_file(self, index: int) -> Path:
        return self.path / f"seg-{index:012d}.json"

    def _segments(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.path.iterdir() if (m := _SEGMENT.fullmatch(p.name)))

    def _migrate_single_file(self) -> None:
        """An older version's single-file log at `path` becomes segment 0 of the folder (crash-safe: the
        file is renamed aside first, and a restart finishes a move it finds half done)."""
        legacy = self.path.with_name(self.path.name + _LEGACY_SUFFIX)
        if self.path.is_file():
            os.replace(self.path, legacy)
            _fsync_dir(self.path.parent)
        if legacy.is_file():
            self.path.mkdir(exist_ok=True)
            os.replace(legacy, self._segment(0))
            _fsync_dir(self.path)
            _fsync_dir(self.path.parent)
            log.info("%s: moved the single-file log into segment 0", self.path)

    def _read_boundary(self, index: int) -> Boundary:
        data = json.loads(self._boundary_file(index).read_text())
        if data.get("format") != FORMAT or int(data["segment"]) != index:
            raise ValueError(f"{self._boundary_file(index)}: not the boundary of segment {index}")
        return Boundary(int(data["transitions"]), data["state"])

    def _drop_dead_files(self, first: int) -> None:
        """Boundary files left below the first segment by a compaction that a crash cut short, and
        boundaries a crash left half written (never renamed into place)."""
        for path in self.path.glob("seg-*.json"):
            if int(path.stem.removeprefix("seg-")) < first:
                path.unlink()
        for path in self.path.glob("seg-*.json.tmp"):
            path.unlink()

    def _truncate_torn_tail(self) -> int:
        path = self._segment(self._current)
        if not path.exists():
            return 0
        size = path.stat().st_size
        end = _scan(path.read_bytes()).end
        if end < size:
            log.warning("%s: truncating %d bytes of a torn record", path, size - end)
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        return size - end

    # ----- writing -----

    def append(self, batch: Transitions) -> None:
        """Write `batch` (to the page cache): it may be acknowledged only after the next `sync()`."""
        self._file.write(_pack(encode(batch)))
        self.records += 1
        self._in_segment += batch.count

    def sync(self) -> None:
        """Make every append so far durable (one fsync for all of them: a group commit)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def rotation_due(self) -> bool:
        return self._in_segment >= self.segment_transitions

    def rotate(self, transitions: int, state: dict[str, Any]) -> None:
        """Seal the current segment and start the next. Call it right after `sync()`, where `transitions`
        (all logged so far) and `state` (plain data) describe exactly the records logged so far."""
        self.sync()
        index = self._current + 1
        boundary = {"format": FORMAT, "segment": index, "transitions": transitions, "state": state}
        tmp = self._boundary_file(index).with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(boundary, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._boundary_file(index))  # the boundary exists before the segment does
        self._file.close()
        self._file = open(self._segment(index), "ab")  # noqa: SIM115 - held open for appends
        _fsync_dir(self.path)
        self._boundaries[index] = Boundary(transitions, state)
        self._current, self._in_segment = index, 0

    def compact(self, live_from: int) -> int:
        """Delete the segments whose every transition is older than `live_from` (the oldest transition
        still in the replay ring): those before the newest boundary at or below it. Returns how many."""
        dead = [i for i, b in self._boundaries.items() if b.transitions <= live_from]
        if not dead:
            return 0
        first = max(dead)
        gone = [i for i in self._segments() if i < first]
        for index in gone:  # oldest first: whatever a crash leaves starts at a boundary with all after it
            self._segment(index).unlink()
            self._boundary_file(index).unlink(missing_ok=True)
        _fsync_dir(self.path)
        for index in [i for i in self._boundaries if i <= first]:
            del self._boundaries[index]
        self._first = first
        return len(gone)

    # ----- reading -----

    def replay(self) -> Iterator[Transitions]:
        """Every usable record from the first segment on; damaged or undecodable ones are skipped and
        counted in `skipped` (and logged), never raised."""
        for index in self._segments():
            scan = _scan(self._segment(index).read_bytes())
            if scan.skipped_bytes:
                self.skipped += 1
                log.warning("%s: skipped %d damaged bytes", self._segment(index), scan.skipped_bytes)
            for body in scan.bodies:
                batch = self._decode(body, index)
                if batch is not None:
                    self.records += 1
                    self._in_segment += batch.count if index == self._current else 0
                    yield batch

    def _decode(self, body: memoryview, index: int) -> Transitions | None:
        try:
            batch = decode(_unpack(body))
        except (ProtocolError, struct.error) as exc:
            reason = f"does not decode: {exc}"
        else:
            if isinstance(batch, Transitions):
                return batch
            reason = f"holds a {batch.TYPE}, not transitions"
        self.skipped += 1
        log.warning("%s: skipped a record that %s", self._segment(index), reason)
        return None

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def segments(self) -> int:
        return len(self._segments())

    def close(self) -> None:
        self._file.close()
