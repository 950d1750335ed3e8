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
import os
import signal
from collections.abc import Callable

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
