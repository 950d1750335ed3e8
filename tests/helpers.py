"""Helpers shared by test modules (imported as `helpers`; tests/ is on the path): free ports, waits."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A loopback TCP port free at the moment (for a child that must be told its port in advance)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str = "condition", poll_s: float = 0.02
) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `timeout_s` ends (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
