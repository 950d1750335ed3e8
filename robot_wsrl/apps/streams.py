"""Output that outlives its reader. A long-running command piped into `head` or a closed terminal pager
gets a broken pipe at its next line; for a session that line may come while the robot is running, and the
exception would end it half-way (exit code 2, as if the user had erred). Wrapped, the stream sends what is
left to /dev/null and the command runs on to its own end, its files and exit code intact."""

from __future__ import annotations

import os
from typing import Any, TextIO


class ReaderMayLeave:
    """`stream` (a text stream with a file descriptor), whose writes survive the reader going away."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        """Point the stream's descriptor at /dev/null: its buffered rest and every later line go there."""
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self._stream.fileno())
        finally:
            os.close(null)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the wrapped stream's
        return getattr(self._stream, name)
