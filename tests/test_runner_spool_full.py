"""Resource exhaustion on the runner's disk and descriptors: the runner holds safe, keeps answering its
control channel, and resumes by itself when the resource comes back.

The disk test puts a live `link-runner`'s state on a small tmpfs (mounting needs root: skipped without)
and fills it; the fake learner of test_link_forward keeps it alive and acks on request. The descriptor
test exhausts a child process's open files around a spool. Every wait has a deadline.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Console, FakeLearner, Proc, free_port, signed_policy, wait_for

from robot_wsrl.core.durable import DurableRecord
from robot_wsrl.wire import keys
from robot_wsrl.wire.protocol import Ack

DISK_BYTES = 8 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses another byte."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def _link_runner(learner: str, keydir: Path, control: str, state: Path) -> list[str]:
    """A plain link-runner on the null driver, free-running (no lockstep), with its state in `state`."""
    args = ["link-runner", "--learner", learner, "--keys", str(keydir), "--plain", "--name", "robot1"]
    args += ["--driver", "null", "--steps", "100000000", "--state", str(state)]
    return [*args, "--control", control, "--no-lockstep"]


def test_a_full_spool_disk_holds_the_robot_and_recovers_by_itself(small_disk: Path, tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    keys.new_identity(keydir, "learner", "learner")
    learner_endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    learner = FakeLearner(learner_endpoint)
    learner.send(signed_policy(keydir, tmp_path / "out", 1, "run-a"))
    learner.acking.clear()
    console = Console(control)
    args = _link_runner(learner_endpoint, keydir, control, small_disk / "state")
    proc = Proc(args, tmp_path / "link.log")
    try:

        def status(**want: object) -> dict[str, object]:
            def check() -> dict[str, object] | None:
                assert proc.popen.poll() is None, proc.output()
                s = console.status(1.0)
                ok = s is not None and s.get("attached") and all(_get(s, k) == v for k, v in want.items())
                return s if ok else None

            return wait_for(check, what=f"status {want}")

        status(state="fine_tuning")
        filler = fill(small_disk)
        held = status(state="paused", link__holds=["spool_full"])  # safe, and still answering
        assert "disk full" in str(_get(held, "link__last_error"))
        learner.acking.set()  # acks need no new disk space: they free the acknowledged segments
        status(state="fine_tuning", link__holds=[])
        learner.acking.clear()
        fill(small_disk)
        status(state="paused", link__holds=["spool_full"])
        filler.unlink()  # space comes back: it goes on by itself, without acks
        status(state="fine_tuning", link__holds=[])
        fill(small_disk)
        status(state="paused", link__holds=["spool_full"])
        assert console.command("estop", reason="disk full").ok  # e-stop recorded on a full disk
        assert proc.signal(signal.SIGTERM) == 0, proc.output()
        assert "Traceback" not in proc.output()
        record = DurableRecord(small_disk / "state" / "latch.state").value
    finally:
        proc.stop()
        console.close()
        learner.close()
    assert record is not None and record["latched"] and record["detail"] == "e-stop from console: disk full"


def _get(status: dict[str, object], key: str) -> object:
    value: object = status
    for part in key.split("__"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


SPOOL_UNDER_EMFILE = r"""
import json, os, resource, sys
from robot_wsrl.wire.spool import SpoolFull, TransitionSpool
import numpy as np

def batch():
    return dict(obs=np.zeros((4, 3)), action=np.zeros((4, 1)), reward=np.zeros(4),
                next_obs=np.zeros((4, 3)), terminated=np.zeros(4, bool), truncated=np.zeros(4, bool),
                episode_id=np.zeros(4, np.int64), policy_version=np.zeros(4, np.int64))

def exhaust(held):
    # Take every free descriptor; returns how many it took.
    taken = 0
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
            taken += 1
    except OSError:
        return taken

spool = TransitionSpool(sys.argv[1], "robot1", segment_bytes=1)  # every append starts a new segment
spool.append_arrays(**batch())  # everything imported and warm before the descriptors run out
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
exhaust(held)
results, freed = [], []
for step in range(6):
    if step == 3:
        spool.ack(spool.next_seq - 1)  # acknowledged segments go; the tail's descriptor is freed
    try:
        spool.append_arrays(**batch())
        results.append("ok")
    except SpoolFull:
        results.append("full")
    freed.append(exhaust(held))  # descriptors the spool left free (re-taken at once)
pending = spool.pending()
for fd in held:
    os.close(fd)
print(json.dumps({"results": results, "freed": freed, "pending": pending, "held": len(held)}))
"""


def test_the_spool_needs_no_new_descriptor_to_go_on_when_descriptors_run_out(tmp_path: Path) -> None:
    """Every open file descriptor of the process is taken: the spool still appends across segment rolls
    (a new segment is the one opened ahead, or reuses the closed tail's descriptor) and acknowledges."""
    result = subprocess.run(
        [sys.executable, "-c", SPOOL_UNDER_EMFILE, str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["held"] > 0  # the descriptors really were exhausted
    assert out["results"] == ["ok"] * 6 and out["pending"] == 12
    assert sum(out["freed"]) <= 1  # at most the acknowledged tail's descriptor came free


def test_sigterm_while_the_link_is_in_error_ends_cleanly(tmp_path: Path) -> None:
    """An ack for data the spool never held (a learner that remembers another spool) puts the link in
    link_error; the runner is held safe, and SIGTERM then ends it with its summary, not a traceback."""
    keydir = tmp_path / "keys"
    keys.new_identity(keydir, "learner", "learner")
    learner_endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    learner = FakeLearner(learner_endpoint)
    learner.send(signed_policy(keydir, tmp_path / "out", 1, "run-a"))
    console = Console(control)
    args = _link_runner(learner_endpoint, keydir, control, tmp_path / "state")
    proc = Proc(args, tmp_path / "link.log")
    try:
        wait_for(lambda: (s := console.status(1.0)) and s.get("state") == "fine_tuning", what="running")
        learner.acking.clear()
        learner.send(Ack("learner", "robot1", 1 << 40))
        wait_for(
            lambda: (
                (s := console.status(1.0)) and s["state"] == "paused" and "link_error" in s["link"]["holds"]
            ),
            what="held in link_error",
        )
        assert proc.signal(signal.SIGTERM) == 0, proc.output()
        last = [line for line in proc.output().splitlines() if line.strip()][-1]
        assert last.startswith("robot1: "), proc.output()[-3000:]
    finally:
        proc.stop()
        console.close()
        learner.close()
