"""Small state records a full disk or a crash cannot lose (robot side: standard library only).

The runner must record an e-stop, and the spool its acknowledged watermark, even when the disk is full
and whatever way the process ends. A `DurableRecord` is one JSON object in a file of two fixed-size
slots whose blocks are allocated when the file is made: each write overwrites, in place, the slot the last
write did not use, then fdatasyncs, so it needs no new disk block (a full disk cannot refuse it) and no
new file descriptor (the file stays open), and a crash mid-write leaves the other slot whole. Reading
takes the intact slot (crc) with the higher sequence number.

Slot layout (text, so `cat` shows it): `CRC32HEX SEQ JSON` padded with spaces, ending in a newline.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import zlib
from pathlib import Path
from typing import Any

SLOT_BYTES = 16384
_HEAD = 8 + 1 + 20 + 1  # crc hex, space, seq, space


class RecordError(ValueError):
    """The record's file cannot be made, or a value does not fit a slot."""


def _slot(seq: int, value: dict[str, Any], size: int) -> bytes:
    body = f"{seq:020d} ".encode() + json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    data = f"{zlib.crc32(body):08x} ".encode() + body
    if len(data) + 1 > size:
        raise RecordError(f"record of {len(data)} bytes does not fit a slot of {size}")
    return data + b" " * (size - len(data) - 1) + b"\n"


def _parse(data: bytes) -> tuple[int, dict[str, Any]] | None:
    """(seq, value) of one slot, or None when it is blank or torn."""
    body = data[9:].rstrip()
    try:
        if int(data[:8], 16) != zlib.crc32(body):
            return None
        value = json.loads(body[21:])
        return (int(body[:20]), value) if isinstance(value, dict) else None
    except ValueError:
        return None


class DurableRecord:
    """One JSON object at `path`, rewritten in place durably; see the module docstring. Thread-safe."""

    def __init__(self, path: str | Path, slot_bytes: int = SLOT_BYTES) -> None:
        self.path = Path(path)
        self.slot_bytes = slot_bytes
        self._lock = threading.Lock()
        self._fd = self._open()
        slots = [_parse(os.pread(self._fd, slot_bytes, i * slot_bytes)) for i in range(2)]
        best = max((s for s in slots if s is not None), default=None, key=lambda s: s[0])
        self._seq, self._value = (-1, None) if best is None else best

    def _open(self) -> int:
        """Open the file, making and allocating it (both slots written blank and synced) when new."""
        size = 2 * self.slot_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.pwrite(fd, b" " * (size - 1) + b"\n", 0)
                os.fsync(fd)
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            os.close(fd)
            raise RecordError(f"{self.path}: cannot allocate the record ({exc})") from exc
        return fd

    @property
    def value(self) -> dict[str, Any] | None:
        """The last value written (or read at opening); None for a new record."""
        return self._value

    def write(self, value: dict[str, Any]) -> None:
        """Replace the value durably; RecordError if it cannot fit, OSError if the disk fails."""
        with self._lock:
            seq = self._seq + 1
            data = _slot(seq, value, self.slot_bytes)
            os.pwrite(self._fd, data, (seq % 2) * self.slot_bytes)
            os.fdatasync(self._fd)
            self._seq, self._value = seq, value

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
