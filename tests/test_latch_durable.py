"""The durable e-stop latch in one process: the record's crash safety, the latch restored from it, the
order safe stop -> recorded -> reported (with no step after a trigger began), and stops taken by the
control channel before any runner exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from robot_wsrl.bench.estop import write_policy
from robot_wsrl.core.driver import StepResult
from robot_wsrl.core.durable import SLOT_BYTES, DurableRecord, RecordError
from robot_wsrl.robot.control import ControlServer, apply_command, open_latch
from robot_wsrl.robot.drivers.null import NullDriver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner
from robot_wsrl.robot.safety import EStopCause, EStopLatch, RunnerState
from robot_wsrl.wire import transport
from robot_wsrl.wire.protocol import Command

WAIT_S = 10.0


def test_a_record_survives_a_torn_write_and_never_grows(tmp_path: Path) -> None:
    path = tmp_path / "r.state"
    record = DurableRecord(path)
    assert record.value is None and path.stat().st_size == 2 * SLOT_BYTES
    for i in range(5):
        record.write({"n": i})
    record.close()
    assert path.stat().st_size == 2 * SLOT_BYTES
    assert DurableRecord(path).value == {"n": 4}
    data = bytearray(path.read_bytes())  # tear the newest slot (n=4 went to slot 0) mid-way
    data[40:60] = b"x" * 20
    path.write_bytes(bytes(data))
    assert DurableRecord(path).value == {"n": 3}  # the other slot is whole
    with pytest.raises(RecordError, match="does not fit"):
        DurableRecord(path).write({"big": "x" * SLOT_BYTES})
    with pytest.raises(ValueError):  # strict JSON only
        DurableRecord(path).write({"nan": float("nan")})


def test_a_latch_restored_from_its_record_is_latched_with_its_cause_and_history(tmp_path: Path) -> None:
    stops: list[float] = []
    latch = EStopLatch(lambda: stops.append(time.time()), store=DurableRecord(tmp_path / "latch.state"))
    assert latch.trigger(EStopCause.DRIVER_FAULT, "brake offline") and stops
    latch.close()
    restored = EStopLatch(store=DurableRecord(tmp_path / "latch.state"))
    assert restored.latched and restored.engaged and restored.state is RunnerState.FAULTED
    assert restored.cause is EStopCause.DRIVER_FAULT and restored.detail == "brake offline"
    assert [(e.kind, e.detail) for e in restored.events] == [("enter", "brake offline")]
    assert restored.release("alice")
    restored.close()
    again = EStopLatch(store=DurableRecord(tmp_path / "latch.state"))
    assert not again.latched and [e.kind for e in again.events] == ["enter", "release"]
    assert again.events[-1].operator == "alice"


def test_a_latch_record_keeps_the_newest_stops_when_details_are_long(tmp_path: Path) -> None:
    latch = EStopLatch(store=DurableRecord(tmp_path / "latch.state"))
    for i in range(100):
        latch.trigger(EStopCause.COMMAND, f"stop {i} " + "y" * 2000)
    latch.close()
    restored = EStopLatch(store=DurableRecord(tmp_path / "latch.state"))
    assert restored.latched and restored.detail.startswith("stop 0 ")
    assert restored.events[-1].detail.startswith("stop 99 ") and len(restored.events) <= 32


class BlockingStopDriver(NullDriver):
    """A null driver whose safe stop blocks until released, and which counts steps after it began."""

    def __init__(self) -> None:
        super().__init__(3, 1, control_period_s=0.002)
        self.stop_began = threading.Event()
        self.finish_stop = threading.Event()
        self.steps_during_stop = 0

    def step(self, action: np.ndarray) -> StepResult:
        if self.stop_began.is_set():
            self.steps_during_stop += 1
        return super().step(action)

    def safe_stop(self) -> None:
        self.stop_began.set()
        super().safe_stop()
        self.finish_stop.wait(WAIT_S)


def test_a_stop_is_reported_only_once_the_robot_is_safe_and_no_step_follows_its_start(tmp_path: Path) -> None:
    policy = OnnxPolicy.load(write_policy(tmp_path / "policy", NullDriver(3, 1, control_period_s=0.002).spec))
    driver = BlockingStopDriver()
    latch = EStopLatch(store=DurableRecord(tmp_path / "latch.state"))
    runner = Runner(driver, policy, latch=latch)
    stop = threading.Event()
    loop = threading.Thread(target=runner.run, kwargs={"stop_event": stop}, daemon=True)
    loop.start()
    trigger = threading.Thread(target=runner.estop, args=("console",), daemon=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while driver.total_steps < 50:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        trigger.start()
        assert driver.stop_began.wait(WAIT_S)
        time.sleep(0.1)  # the loop keeps ticking meanwhile
        assert latch.engaged and not latch.latched and runner.state is RunnerState.FINE_TUNING
        assert DurableRecord(tmp_path / "latch.state").value is None  # not yet recorded either
        driver.finish_stop.set()
        trigger.join(WAIT_S)
        assert runner.state is RunnerState.ESTOPPED
        assert DurableRecord(tmp_path / "latch.state").value["latched"]  # type: ignore[index]
        assert driver.steps_during_stop == 0
    finally:
        driver.finish_stop.set()
        stop.set()
        loop.join(WAIT_S)


def test_the_control_channel_takes_stops_before_a_runner_exists(tmp_path: Path) -> None:
    """apply_command on the server's latch; the runner built later starts e-stopped and holds its robot."""
    latch = open_latch(tmp_path)
    reply = apply_command(
        None, Command("console", "estop", {"reason": "early"}, 1), name="robot1", by="console", latch=latch
    )
    assert reply.ok and latch.latched
    refused = apply_command(
        None, Command("console", "pause", {}, 2), name="robot1", by="console", latch=latch
    )
    assert not refused.ok and refused.error == "no runner attached yet"
    ctx = zmq.Context()
    try:
        sock = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:*")
        server = ControlServer(sock, "robot1", secure=False, latch=latch)
        status = server.full_status()
        assert status["attached"] is False and status["state"] == "estopped"
        assert status["last_stop_detail"] == "e-stop from console: early"
        assert json.loads(json.dumps(status, allow_nan=False)) == status  # strict JSON
        driver = NullDriver(3, 1, control_period_s=0.01)
        policy = OnnxPolicy.load(write_policy(tmp_path / "policy", driver.spec))
        with pytest.raises(ValueError, match="latch"):
            server.attach(Runner(NullDriver(3, 1, control_period_s=0.01), policy))
        runner = Runner(driver, policy, latch=latch)
        server.attach(runner)
        status = server.full_status()
        assert status["state"] == "estopped" and status["jitter_p99_us"] is None  # no tick yet: null, not NaN
        assert json.loads(json.dumps(status, allow_nan=False)) == status
        runner.run(max_steps=5)
        assert driver.total_steps == 0 and driver.safe_stop_count == 1  # held once, at the start
    finally:
        transport.shutdown(ctx)


def test_a_state_folder_belongs_to_one_runner(tmp_path: Path) -> None:
    """Two runners on one latch record would release each other's stops: the second is refused, from
    another process as from this one, until the holder ends."""
    state = tmp_path / "state"
    open_latch(state)
    with pytest.raises(RecordError, match="in use by another runner"):
        open_latch(state)
    code = f"import pathlib, robot_wsrl.robot.control as c; c.open_latch(pathlib.Path({str(state)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and f"(pid {os.getpid()})" in other.stderr
