"""Child processes that never outlive their parent (robot side: no torch).

`subprocess.Popen(..., preexec_fn=die_with_parent())`: the kernel sends the child SIGTERM when the process
that started it dies, even by SIGKILL, so a killed session or learner leaves no learner, runner or
validation running behind it. Linux only (prctl); elsewhere a killed parent leaves its children.

`die_with_parent(nice=N)` also changes the child's CPU priority before it runs: on a shared host the
robot's runner and its e-stop path come first, so a supervisor starts the learner (and through it every
validation worker, which inherits it) at a positive nice, and a runner at a negative one where the
system allows it (CAP_SYS_NICE); where it does not, the runner keeps the normal priority.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(nice: int = 0) -> Callable[[], None]:
    """A `preexec_fn` for Popen, bound to the calling process as the parent; `nice` is added to the
    child's niceness (a raise that is not permitted leaves it as it is)."""
    parent = os.getpid()

    def arrange() -> None:  # runs in the child, before exec
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os.kill(os.getpid(), signal.SIGTERM)
        if nice:
            with contextlib.suppress(OSError):  # PermissionError: a negative nice needs CAP_SYS_NICE
                os.nice(nice)

    return arrange


def stop_on_signals(
    events: Sequence[threading.Event], signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
) -> dict[int, Any]:
    """Set `events` when one of `signals` arrives; returns the handlers it replaced.

    The handler never calls `Event.set` itself: a handler runs between two bytecodes of the main thread,
    which may be inside that very event's lock (a second SIGTERM during the first `set`, or a `wait`
    returning), and the process would deadlock there for good (seen: a learner left running an hour after
    its session was killed). The handler only writes a byte to a pipe; a thread sets the events.
    """
    read_fd, write_fd = os.pipe()

    def relay() -> None:
        named: set[int] = set()
        while received := os.read(read_fd, 64):
            for signum in set(received) - named:  # in the log once each: a `docker stop` shows as the cause
                log.warning("%s received: stopping", signal.Signals(signum).name)
                named.add(signum)
            for event in events:
                event.set()

    threading.Thread(target=relay, name="signal-stop", daemon=True).start()

    def handler(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):  # a full pipe already holds a request
            os.write(write_fd, bytes([signum]))

    return {sig: signal.signal(sig, handler) for sig in signals}
