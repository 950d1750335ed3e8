"""The learner's durable, append-only log of accepted transitions (numpy + msgpack only).

The learner writes every batch it accepts here and fsyncs before it acknowledges it (one fsync for all
the batches of one receive round), so an ack never covers data a crash could lose: the runner forgets
what was acked, and a restarted learner rebuilds its replay buffer and de-duplication state by replaying
this file. Records hold the batch's exact wire
frames (decoded again on replay with the same checks as anything from a socket); a torn record at the end
(a crash mid-append, never acked) is truncated away on open.

    record = magic "RWL1" | crc32 of body (u32) | body length (u32) | body
    body   = frame count (u32) | each frame's length (u32) | frames
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from robot_wsrl.protocol import ProtocolError, Transitions, decode, encode

log = logging.getLogger(__name__)

MAGIC = b"RWL1"
_HEADER = struct.Struct("<4sII")
_U32 = struct.Struct("<I")


class IngestLogError(ValueError):
    """A record passed its checksum but is not a transitions batch: a bug, not a torn write."""


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
    return frames


class IngestLog:
    """Append-only, fsynced transition log; `replay()` yields what it holds, oldest first."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.recovered_bytes = self._truncate_torn_tail()
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for appends
        self.records = sum(1 for _ in self._records())

    def _records(self) -> Iterator[memoryview]:
        data = self.path.read_bytes() if self.path.exists() else b""
        view, offset = memoryview(data), 0
        while offset + _HEADER.size <= len(data):
            magic, crc, length = _HEADER.unpack_from(view, offset)
            end = offset + _HEADER.size + length
            if magic != MAGIC or end > len(data) or zlib.crc32(view[offset + _HEADER.size : end]) != crc:
                return
            yield view[offset + _HEADER.size : end]
            offset = end

    def _truncate_torn_tail(self) -> int:
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        valid = sum(_HEADER.size + len(body) for body in self._records())
        if valid < size:
            log.warning("%s: truncating %d bytes of a torn record", self.path, size - valid)
            with open(self.path, "r+b") as f:
                f.truncate(valid)
                os.fsync(f.fileno())
        return size - valid

    def append(self, batch: Transitions) -> None:
        """Write `batch` (to the page cache): it may be acknowledged only after the next `sync()`."""
        self._file.write(_pack(encode(batch)))
        self.records += 1

    def sync(self) -> None:
        """Make every append so far durable (one fsync for all of them: a group commit)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def replay(self) -> Iterator[Transitions]:
        for body in self._records():
            try:
                batch = decode(_unpack(body))
            except (ProtocolError, struct.error) as exc:
                raise IngestLogError(f"{self.path}: a checksummed record does not decode: {exc}") from exc
            if not isinstance(batch, Transitions):
                raise IngestLogError(f"{self.path}: a record holds a {batch.TYPE}, not transitions")
            yield batch

    def close(self) -> None:
        self._file.close()
