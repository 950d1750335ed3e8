"""A session's output outlives its reader: `robot-wsrl session | head -2` must not end the session."""

from __future__ import annotations

import io
import os

from robot_wsrl.apps.streams import ReaderMayLeave


def test_a_write_after_the_reader_left_goes_to_devnull_and_the_writer_runs_on() -> None:
    read_end, write_end = os.pipe()
    stream = ReaderMayLeave(io.TextIOWrapper(io.FileIO(write_end, "w"), line_buffering=True))
    stream.write("first line\n")
    assert os.read(read_end, 100) == b"first line\n"
    os.close(read_end)  # the reader has gone (`head` exited)
    for _ in range(3):  # each would raise BrokenPipeError unwrapped
        assert stream.write("more\n") == len("more\n")
        stream.flush()
    assert not stream.isatty() and stream.fileno() == write_end  # the rest is the wrapped stream's
    stream.close()
