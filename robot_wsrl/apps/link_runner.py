"""`robot-wsrl link-runner`: a runner fed and updated by a learner over ZeroMQ (no torch).

Up first: the e-stop latch (in the state folder) and the control channel that stops it, so a console can
stop the runner while it still waits for the learner's first policy; then the link, the policy, the
driver and the runner. A signal stops it between ticks and drains briefly: the spool keeps the rest.
Exit 0 when it ran (or was stopped while waiting), 2 on bad input or a set-up that failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from robot_wsrl.apps.errors import report
from robot_wsrl.apps.options import (
    CommandParser,
    DriverOptions,
    Identity,
    ReadyFile,
    StateDir,
    add_control,
    check_control,
    client_socket,
    endpoint,
    positive_int,
    serve_control,
    write_ready_file,
)
from robot_wsrl.apps.runner import setup_error
from robot_wsrl.core.artifacts import POLICY_DIR, POLICY_RECORD, SPOOL_DIR
from robot_wsrl.core.driver import DriverFault
from robot_wsrl.core.durable import DurableRecord
from robot_wsrl.core.lifetime import stop_on_signals
from robot_wsrl.robot import control
from robot_wsrl.robot.link import LearnerLink, LinkOptions
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError
from robot_wsrl.robot.runner import Runner
from robot_wsrl.robot.safety import EStopLatch
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.codecs import Codec, FrameError
from robot_wsrl.wire.protocol import RUNNER_TAGS, Transition
from robot_wsrl.wire.spool import TransitionSpool

log = logging.getLogger(__name__)

IDENTITY = Identity(
    None,
    "this runner's key name (its runner id)",
    "key dir: NAME.key_secret, learner files",
    keys_required=True,
)
DRIVER = DriverOptions(retries=True)
STATE = StateDir("runs/link", "spool, policies and the e-stop latch's record")
READY = ReadyFile("once up, write {pid, control} (the bound control endpoint) here as JSON, for a supervisor")
HARDWARE_DRIVERS = ("emulated:",)  # drivers that stand for a real robot (the sim-first gate applies)
DRAIN_S, DRAIN_ON_SIGNAL_S = 30.0, 3.0  # waiting for the last acks at the end of a run, or when told to stop


def camera_codec(text: str) -> tuple[str, str]:
    """`CAMERA=CODEC` (argparse type): the codec checked now, its library included, before the robot moves."""
    camera, eq, codec = text.partition("=")
    if not (eq and camera and codec):
        raise argparse.ArgumentTypeError(f"{text!r}: give CAMERA=CODEC, e.g. top=jpeg:90")
    try:
        Codec.parse(codec).check_available()
    except FrameError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.detail}") from None
    return camera, codec


def parser() -> CommandParser:
    p = CommandParser(
        prog="robot-wsrl link-runner",
        description="Run a robot for a learner: its policies in, the transitions out (no torch).",
    )
    p.add_argument(
        "--learner", type=endpoint, required=True, help="the learner's endpoint, e.g. tcp://HOST:5555"
    )
    IDENTITY.add(p)
    p.add_argument("--learner-name", default="learner", help="the learner's key name")
    DRIVER.add(p)
    p.add_argument(
        "--tag",
        choices=RUNNER_TAGS,
        default=None,
        help="hardware: receive only validated policy versions (default: hardware for emulated:*, else sim)",
    )
    STATE.add(p)
    p.add_argument(
        "--transitions",
        type=positive_int,
        default=None,
        help="stop after handing N transitions to the learner",
    )
    p.add_argument(
        "--codec",
        type=camera_codec,
        action="append",
        default=[],
        metavar="CAMERA=CODEC",
        help="how a camera's frames cross the wire: raw (default), zlib[:LEVEL], png[:LEVEL] (lossless) or "
        "jpeg[:QUALITY] (lossy; png and jpeg need the camera extra); repeat per camera, e.g. top=jpeg:90",
    )
    p.add_argument("--on-learner-lost", choices=("hold", "keep"), default="hold")
    p.add_argument("--no-lockstep", action="store_true", help="do not wait for the learner's credit")
    p.add_argument("--wait-policy", type=float, default=60.0, help="seconds to wait for the first policy")
    add_control(p)
    READY.add(p)
    return p


class LinkRunner:
    """What one link-runner process holds, built in order by `start` and torn down by `close`."""

    def __init__(self, args: argparse.Namespace, stop: threading.Event) -> None:
        self.args, self.stop = args, stop
        self.ctx = zmq.Context()
        self.latch: EStopLatch | None = None
        self.server: control.ControlServer | None = None
        self.link: LearnerLink | None = None
        self.spool: TransitionSpool | None = None
        self.driver: Any = None
        self.handed = 0

    def on_transition(self, transition: Transition) -> None:
        """Ticks held for credit produce nothing, so a data budget is counted here, exactly."""
        assert self.link is not None
        self.link.on_transition(transition)
        self.handed += 1
        if self.args.transitions is not None and self.handed >= self.args.transitions:
            self.stop.set()

    def start(self) -> Path | None:
        """Latch, control channel, link; then the learner's first policy (None: stopped while waiting)."""
        args, state = self.args, STATE.path(self.args)
        # First the latch and the channel that stops it: a stop is taken (and kept) from the first moment.
        self.latch = control.open_latch(state)
        if args.control is not None:  # up before the first policy: a console sees the runner waiting
            self.server = serve_control(
                args,
                self.latch,
                hold=lambda on: self.link is not None and self.link.operator_hold(on),
                extra_status=lambda: {} if self.link is None else {"link": self.link.status()},
            )
        sock = client_socket(self.ctx, zmq.DEALER, args.learner, args, args.learner_name)
        tag = args.tag or ("hardware" if args.driver.startswith(HARDWARE_DRIVERS) else "sim")
        options = LinkOptions(
            on_learner_lost=args.on_learner_lost,
            lockstep=not args.no_lockstep,
            tag=tag,
            codecs=dict(args.codec),
        )
        self.spool = TransitionSpool(state / SPOOL_DIR, args.name)
        self.link = LearnerLink(
            sock,
            self.spool,
            keys.load_verify_keys(args.keys),
            state / POLICY_DIR,
            options,
            record=DurableRecord(state / POLICY_RECORD),
        )
        self.link.start()
        endpoint = None if self.server is None else transport.bound_endpoint(self.server.sock)
        write_ready_file(args.ready_file, {"control": endpoint})
        deadline, path = time.monotonic() + args.wait_policy, None
        while path is None and not self.stop.is_set() and time.monotonic() < deadline:
            path = self.link.wait_for_policy(0.2)  # a stop request is honoured while waiting too
        if path is None and not self.stop.is_set():
            raise ValueError(f"no valid policy from {args.learner} within {args.wait_policy} s")
        return path

    def runner(self, path: Path) -> Runner:
        """The driver and the runner on the first policy, attached to the link and the control channel."""
        assert self.link is not None and self.latch is not None
        policy = OnnxPolicy.load(path)
        self.driver = DRIVER.open(self.args, policy.spec)
        runner = Runner(
            self.driver,
            policy,
            seed=self.args.seed,
            realtime=self.args.realtime,
            rt_priority=self.args.rt_priority,
            on_transition=self.on_transition,
            latch=self.latch,
        )
        self.link.attach(runner)
        if self.server is not None:
            self.server.attach(runner)
        return runner

    def close(self) -> None:
        """Tear down whatever was set up, each part whatever state the others are in (a full disk, a dead
        robot): a stop never ends in a traceback."""
        if self.server is not None:
            self.server.close()
        if self.link is not None:
            self.link.close()
        parts = (("driver", self.driver), ("spool", self.spool))
        closers = [(name, part.close) for name, part in parts if part is not None]
        if self.latch is not None:
            latch = self.latch
            closers.append(("latch", lambda: control.close_latch(latch)))
        for name, close in closers:
            try:
                close()
            except Exception as exc:  # reported, and the rest is still closed
                log.error("closing the %s: %s: %s", name, type(exc).__name__, exc)
        transport.shutdown(self.ctx)


def check_keys(p: CommandParser, args: argparse.Namespace) -> None:
    """A --keys that is no folder, said as that (not as a key file missing in it), with how one is made."""
    secret = args.keys / f"{args.name}{keys.SECRET}"  # --plain: no CURVE, the folder holds only what verifies
    if not args.keys.is_dir() or not (args.plain or secret.is_file()):
        if args.keys.is_dir():
            what = f"holds no {secret.name}"
        else:
            what = "is a file, not a folder" if args.keys.exists() else "no such folder"
        p.error(
            f"--keys {args.keys}: {what}: make this runner's keys with `robot-wsrl keys new {args.name} "
            f"--dir {args.keys} --role runner`, then copy the learner's {args.learner_name}.key and "
            f"{args.learner_name}.sign.pub into it"
        )


def cli(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    DRIVER.check(p, args, "transitions")
    check_control(p, args)
    check_keys(p, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop, signalled = threading.Event(), threading.Event()
    stop_on_signals([signalled, stop])  # stop between ticks, then drain briefly: the spool keeps the rest
    control.reserve_process_resources()
    process = LinkRunner(args, stop)
    try:
        path = process.start()
        if path is None:
            process.close()
            print("robot-wsrl link-runner: stopped while waiting for the first policy", file=sys.stderr)
            return 0
        runner = process.runner(path)
    except (
        keys.KeyFileError,
        transport.TransportError,
        PolicyError,
        DriverFault,
        ValueError,
        OSError,
        zmq.ZMQError,
    ) as exc:
        process.close()
        return report("link-runner", exc, setup_error(exc))
    link = process.link
    assert link is not None
    try:
        summary = runner.run(max_steps=args.steps, max_episodes=args.episodes, stop_event=stop)
        # Drain only to a learner that is there: the spool keeps the rest durably for the next start.
        drain_s = DRAIN_ON_SIGNAL_S if signalled.is_set() else DRAIN_S
        if not (link.learner.alive() and link.drain(timeout_s=drain_s)) and link.spool.pending():
            print("robot-wsrl link-runner: unacknowledged transitions stay in the spool", file=sys.stderr)
    finally:
        process.close()
    print(
        f"{args.name}: {summary['steps']} steps, {summary['episodes_done']} episodes, "
        f"policy version {summary['policy_version']}, link {link.status()}"
    )
    return 0
