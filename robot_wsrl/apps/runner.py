"""`robot-wsrl runner`: an ONNX policy on a driver behind the safety envelope, with its own control channel
(no torch). Exit 0 when the run ended normally, 1 when it ended e-stopped or faulted, 2 on bad input.

The live status goes to stderr (redrawn in place on a terminal, a whole line every few seconds in a log);
the summary goes to stdout, as lines, or with --json as one JSON line, the last line of stdout."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import zmq

from robot_wsrl.apps.cli import missing_extra
from robot_wsrl.apps.errors import report
from robot_wsrl.apps.options import (
    CommandParser,
    DriverOptions,
    Identity,
    StateDir,
    add_control,
    check_control,
    serve_control,
)
from robot_wsrl.core.driver import Driver, DriverFault
from robot_wsrl.core.lifetime import stop_on_signals
from robot_wsrl.robot import control
from robot_wsrl.robot.policy import OnnxPolicy, SpecMismatch, policy_signer
from robot_wsrl.robot.runner import Runner
from robot_wsrl.robot.safety import EStopLatch, RunnerState, SafetyConfig

IDENTITY = Identity(
    "runner",
    "this runner's key name (its runner id)",
    "key dir: NAME.key_secret, console keys, and the learner's NAME.sign.pub: the policy must be signed",
)
DRIVER = DriverOptions(timeout_periods=5)  # a driver behind a link: each reply due within 5 control periods
STATE = StateDir("runs/runner", "the e-stop latch's record")
STATUS_PERIOD_S = 0.25  # how often the status line is redrawn on a terminal
LOG_STATUS_PERIOD_S = 5.0  # how often it is written as a new line where stderr is not a terminal
SUMMARY_KEYS = (
    "state",
    "steps",
    "episodes_done",
    "last_episode_return",
    "mean_episode_return",
    "success_rate",  # None for a task without a success signal (info["success"])
    "loop_rate_hz",
    "jitter_p50_us",
    "jitter_p99_us",
    "policy_step_p50_us",
    "policy_step_p99_us",
    "overruns",
    "sched_fifo",
    "last_stop_cause",
    "last_fault",
    "safety",
    "dropped_transitions",
)


def parser() -> CommandParser:
    p = CommandParser(prog="robot-wsrl runner", description="Run an ONNX policy on a driver.")
    p.add_argument(
        "--policy", type=Path, required=True, help="DIR or DIR/policy.onnx (its policy.json beside it)"
    )
    DRIVER.add(p)
    p.add_argument("--deterministic", action="store_true", help="tanh(mean) instead of sampling")
    p.add_argument(
        "--json",
        action="store_true",
        help="no live status; the summary as one JSON line on stdout (its last line): the final status "
        "(policy_step_p99_us, steps, episodes_done, mean_episode_return, ...) with policy and driver",
    )
    p.add_argument("--max-delta", type=float, default=None, help="rate limit, robot units per step")
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="run a policy without a policy.sig verified by a learner's *.sign.pub in --keys (with --keys, "
        "a policy must be signed; a signed one needs --keys to be checked; a bad signature is refused)",
    )
    STATE.add(p)
    add_control(p)
    IDENTITY.add(p)
    return p


def _num(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))


def status_line(s: dict[str, Any]) -> str:
    """One line of a runner's status, redrawn in place while it runs."""
    faults = s["safety"]["nonfinite_obs"] + s["safety"]["nonfinite_action"] + s["safety"]["limit_violations"]
    return (
        f"{s['state']:<11} v{s['policy_version']} | ep {s['episode']} step {s['episode_step']} "
        f"return {_num(s['episode_return'], '9.2f')} | {s['loop_rate_hz']:7.1f} Hz | "
        f"jitter p50 {_num(s['jitter_p50_us'], '6.1f')} p99 {_num(s['jitter_p99_us'], '6.1f')} us | "
        f"policy p99 {_num(s['policy_step_p99_us'], '6.1f')} us | overruns {s['overruns']} | "
        f"clip {s['safety']['clipped']} rate {s['safety']['rate_limited']} faults {faults}"
    )


class StatusLine:
    """The live status on `stream`: redrawn in place on a terminal; elsewhere (a log, a pipe) a whole line
    every LOG_STATUS_PERIOD_S, since carriage-return redraws would pile up into one unterminated line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = -math.inf

    def show(self, status: dict[str, Any]) -> None:
        if self._tty:
            print(f"\r{status_line(status)}\033[K", end="", file=self._stream, flush=True)
        elif time.monotonic() - self._last >= LOG_STATUS_PERIOD_S:
            self._last = time.monotonic()
            print(status_line(status), file=self._stream, flush=True)

    def end(self, status: dict[str, Any]) -> None:
        """The final status, always, as a finished line."""
        print(
            f"\r{status_line(status)}\033[K" if self._tty else status_line(status),
            file=self._stream,
            flush=True,
        )


def _supervise(
    runner: Runner, stop: threading.Event, done: threading.Event, releasable: bool, line: StatusLine | None
) -> None:
    """Show the live status (unless `line` is None); end the run once the e-stop latches unless a console
    can release it (the latch has already stopped the robot, so waiting out --steps/--episodes would only
    hang)."""
    while not done.wait(STATUS_PERIOD_S):
        if runner.latch.latched and not releasable:
            stop.set()
        if line is not None:
            line.show(runner.status())


def setup_error(exc: BaseException) -> str | None:
    """The line for a set-up that failed, where it can say the fix: a policy made for another robot names
    the --driver that runs it, a missing simulator the extra that installs it (None: `exc`'s own message)."""
    if isinstance(exc, SpecMismatch):
        return f"{exc}: run it with --driver {exc.driver}"
    return missing_extra(exc)


def _close_all(
    server: control.ControlServer | None, driver: Driver | None, latch: EStopLatch, handlers: dict[int, Any]
) -> None:
    """Tear down what `cli` set up, in reverse order."""
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    if server is not None:
        server.close()
    if driver is not None:
        driver.close()
    control.close_latch(latch)


def _build(
    args: argparse.Namespace, latch: EStopLatch
) -> tuple[control.ControlServer | None, Driver | None, Runner | None, BaseException | None]:
    """The control channel, the driver and the runner, in that order; on failure what was built and why."""
    server = driver = None
    try:
        if args.control is not None:
            server = serve_control(args, latch)
        policy = OnnxPolicy.load(args.policy)
        policy_signer(args.policy, args.keys, args.allow_unsigned)  # before it may move anything
        driver = DRIVER.open(args, policy.spec)
        runner = Runner(
            driver,
            policy,
            deterministic=args.deterministic,
            seed=args.seed,
            safety=SafetyConfig(max_delta_per_step=args.max_delta),
            phase=None,  # no learner: its status says state running, phase None
            realtime=args.realtime,
            rt_priority=args.rt_priority,
            latch=latch,
        )
        if server is not None:
            server.attach(runner)
    # KeyFileError, TransportError and PolicyError are ValueErrors
    except (ValueError, ImportError, DriverFault, OSError, zmq.ZMQError) as exc:
        return server, driver, None, exc
    return server, driver, runner, None


def cli(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    DRIVER.check(p, args)
    check_control(p, args)
    line = None if args.json else StatusLine(sys.stderr)
    # on a terminal a log record first ends the status line being redrawn
    breaks = "\n" if line is not None and sys.stderr.isatty() else ""
    logging.basicConfig(
        level=logging.WARNING, format=f"{breaks}%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    control.reserve_process_resources()
    try:  # the latch, and the channel that stops it, before the driver: a stop is taken from the start
        latch = control.open_latch(STATE.path(args))
    except (ValueError, OSError) as exc:
        return report("runner", exc)
    stop, done = threading.Event(), threading.Event()
    handlers = stop_on_signals([stop])
    server, driver, runner, failure = _build(args, latch)
    if runner is None:
        _close_all(server, driver, latch, handlers)
        assert failure is not None
        return report("runner", failure, setup_error(failure))
    printer = threading.Thread(
        target=_supervise, args=(runner, stop, done, server is not None, line), daemon=True
    )
    printer.start()
    try:
        summary = runner.run(max_steps=args.steps, max_episodes=args.episodes, stop_event=stop)
    finally:
        done.set()
        printer.join()
        _close_all(server, driver, latch, handlers)
    if line is None:
        print(json.dumps({"policy": str(args.policy), "driver": args.driver, **summary}, allow_nan=False))
    else:
        line.end(summary)
        print(f"policy {args.policy} version {summary['policy_version']} on {args.driver}")
        for key in SUMMARY_KEYS:
            print(f"  {key:<20} {summary[key]}")
    return 1 if summary["state"] in (RunnerState.FAULTED.value, RunnerState.ESTOPPED.value) else 0
