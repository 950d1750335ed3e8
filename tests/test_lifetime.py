"""Signal handling of the command apps: a stop request never deadlocks, however many signals arrive."""

from __future__ import annotations

import subprocess
import sys

# The main thread waits on the very event the signals set, and is signalled 200 times meanwhile: with a
# handler that called Event.set itself, a signal landing while the main thread held the event's lock
# deadlocked the process (a learner was left running an hour after its session was killed).
SCRIPT = """
import logging, os, signal, sys, threading
from robot_wsrl.core.lifetime import stop_on_signals
logging.basicConfig()
stop = threading.Event()
previous = stop_on_signals([stop])
assert set(previous) == {signal.SIGINT, signal.SIGTERM}
def storm():
    for _ in range(200):
        os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=storm).start()
for _ in range(2000):
    stop.wait(0.0001)
sys.exit(0 if stop.wait(10) else 1)
"""


def test_a_storm_of_signals_sets_the_stop_and_never_deadlocks() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("SIGTERM received: stopping") == 1  # the cause, named once in the log
