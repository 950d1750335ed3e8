"""Background checkpoint writes: never block the caller, newest wins, the final state lands on close, and
a learner whose last write was lost to a kill never reuses a version number."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import torch
import zmq
from helpers import SMALL_AGENT

from robot_wsrl.core.artifacts import LEARNER_STATE, POLICY_SIDECAR
from robot_wsrl.learn import checkpoint as checkpoint_module
from robot_wsrl.learn.checkpoint import CheckpointWriter
from robot_wsrl.learn.config import compose_config, prepare_out_dir
from robot_wsrl.learn.learner import Learner, LearnerOptions
from robot_wsrl.wire import keys, transport

WAIT_S = 30.0


def test_a_newer_snapshot_replaces_one_waiting_and_close_writes_the_last(tmp_path: Path, monkeypatch) -> None:
    """While one write is stuck (a slow disk), saves return at once; of those waiting only the newest is
    written; close() writes the state as it is then, and waits for it."""
    state = {"n": 0}
    started, release = threading.Event(), threading.Event()
    written: list[int] = []
    real_save = checkpoint_module.save_checkpoint

    def slow_save(path: Path, payload: dict) -> Path:
        started.set()
        assert release.wait(WAIT_S)
        written.append(payload["n"])
        return real_save(path, payload)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow_save)
    (tmp_path / ".state.pt.x1y2.tmp").write_bytes(b"half")  # a write killed mid-way, before the rename
    writer = CheckpointWriter(tmp_path / "state.pt", lambda: dict(state))
    assert not list(tmp_path.glob("*.tmp"))
    writer.save()  # n=0: in flight
    assert started.wait(WAIT_S)
    for n in (1, 2, 3):  # each replaces the one waiting
        state["n"] = n
        writer.save()
    release.set()
    deadline = time.monotonic() + WAIT_S
    while writer.written < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written == [0, 3]
    state["n"] = 4
    writer.close()
    assert written == [0, 3, 4] and writer.written == 3 and writer.failed == 0
    assert torch.load(tmp_path / "state.pt", weights_only=True)["n"] == 4


def test_a_failed_write_is_counted_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    writer = CheckpointWriter(tmp_path / "a_file" / "state.pt", lambda: {"n": 1})  # no folder to write in
    writer.save()
    writer.close()
    assert writer.failed >= 1 and writer.written == 0


def _learner(out: Path, keydir: Path, checkpoint: Path, ctx: zmq.Context) -> Learner:
    cfg = compose_config(
        "finetune",
        [
            "env=inverted_pendulum",
            *SMALL_AGENT,
            f"run.checkpoint={checkpoint}",
            f"out_dir={out}",
            "device=cpu",
        ],
    )
    sock = transport.plain_server(ctx, zmq.ROUTER, "inproc://learner")
    signing = keys.load_signing_key(keydir, "learner")
    return Learner(cfg, sock, prepare_out_dir(cfg), signing, LearnerOptions(), secure=False)


def test_versions_never_go_backwards_when_the_last_state_write_was_lost(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path
) -> None:
    out = tmp_path / "learner"
    ctx = zmq.Context()
    try:
        learner = _learner(out, learner_keydir, learner_checkpoint, ctx)
        learner.publish()
        learner.publish()
        learner.close()
        learner.sock.close()
        assert torch.load(out / LEARNER_STATE, weights_only=True)["extra"]["policy_version"] == 2
        sha = json.loads((out / "policies" / "v000002" / POLICY_SIDECAR).read_text())["sha256"]
        (out / LEARNER_STATE).unlink()  # killed after publishing v2, before its state was written
        again = _learner(out, learner_keydir, learner_checkpoint, ctx)
        assert again.version == 2 and again.policy.version == 2
        assert json.loads((out / "policies" / "v000002" / POLICY_SIDECAR).read_text())["sha256"] == sha
        again.publish()
        assert again.version == 3
        again.close()
    finally:
        transport.shutdown(ctx)
