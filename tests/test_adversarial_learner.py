"""Attacks on a LIVE `robot-wsrl learner` (issue 12): a subprocess on loopback, CURVE keys made by
`robot-wsrl keys new`, peers written here as an attacker would write them, each holding a valid key.

Each attack must leave the learner up and serving, change nothing it must not, and be counted by reason
in its status. Every wait has a deadline; nothing here asserts on speed. The worst-case handling time per
message is measured by `measure()`, JSON out:
    python -c 'import json, sys; sys.path.append("tests"); from test_adversarial_learner import measure;
               print(json.dumps(measure(), indent=2))'
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from helpers import SMALL_AGENT, random_batch

from robot_wsrl.apps.cli import main
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.protocol import (
    Ack,
    Command,
    Credit,
    HeartbeatMessage,
    Message,
    PolicyMessage,
    PolicyRequest,
    Reply,
    Status,
    StatusRequest,
    Transitions,
    decode,
    encode,
)

START_S = 180.0  # torch import and a policy export on a loaded 2-core machine
WAIT_S = 20.0
SPEC = EnvSpec("adversary", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.01)
# A ~1 MB policy: a learner that queued one per unread request would grow by gigabytes.
BIG_ACTOR = "agent.actor_hidden=[512,512]"
KEYS = {"learner": "learner", "console": "console"} | {f"robot{i}": "runner" for i in range(1, 6)}


def batch(
    runner: str,
    first_seq: int,
    n: int = 10,
    *,
    sender: str | None = None,
    obs_dim: int = SPEC.obs_dim,
    act_dim: int = SPEC.act_dim,
    episodes: Any = 0,
    ends: Any = False,
) -> Transitions:
    return random_batch(
        runner,
        first_seq,
        n,
        obs_dim,
        act_dim,
        sender=sender,
        terminated=np.broadcast_to(ends, n),
        episode_id=np.broadcast_to(episodes, n),
    )


class Client:
    """A DEALER holding one key (and, if an attacker wants, a routing id of its choosing); keeps
    everything it receives."""

    def __init__(
        self, ctx: zmq.Context, endpoint: str, keydir: Path, name: str, routing_id: bytes | None = None
    ) -> None:
        self.name = name
        own = keys.load_curve_keys(keydir, name)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.curve_serverkey = keys.load_public_key(keydir, "learner")
        self.sock.curve_publickey, self.sock.curve_secretkey = own.public, own.secret
        if routing_id is not None:
            self.sock.routing_id = routing_id
        self.sock.connect(endpoint)
        self.received: list[Message] = []

    def send(self, msg: Message) -> None:
        assert transport.send_frames(self.sock, encode(msg), WAIT_S), f"{self.name}: send failed"

    def drain(self, seconds: float) -> list[Message]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            frames = transport.recv_frames(self.sock, left)
            if frames is not None:
                self.received.append(decode(frames))
        return self.received

    def wait(self, match: Callable[[Message], bool], what: str, timeout_s: float = WAIT_S) -> Message:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            frames = transport.recv_frames(self.sock, left)
            if frames is not None:
                msg = decode(frames)
                self.received.append(msg)
                if match(msg):
                    return msg
        raise AssertionError(f"{self.name}: no {what} within {timeout_s} s")


class LiveLearner:
    """`robot-wsrl learner` in a subprocess (CURVE, port 0, a ready file) and a console beside it."""

    def __init__(self, root: Path, keydir: Path, checkpoint: Path) -> None:
        self.root, self.keydir, self.out = root, keydir, root / "out"
        self.ctx = zmq.Context()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        ready = self.root / f"ready{self.starts}.json"
        self.log_path = self.root / f"learner{self.starts}.log"
        command = [sys.executable, "-m", "robot_wsrl.apps.cli", "learner", "service.bind=tcp://127.0.0.1:0"]
        command += [f"service.ready_file={ready}", f"service.keys={self.keydir}", "service.gate=false"]
        command += [*SMALL_AGENT, BIG_ACTOR, f"run.checkpoint={self.root / 'checkpoint.pt'}"]
        command += [f"out_dir={self.out}", "run.warmup_steps=1000000", "device=cpu", "threads=1"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_S
        while not ready.exists():
            assert self.proc.poll() is None, f"the learner exited: {self.log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the learner did not start"
            time.sleep(0.1)
        self.endpoint = json.loads(ready.read_text())["endpoint"]
        self.console = self.client("console")

    def client(self, name: str, routing_id: bytes | None = None) -> Client:
        return Client(self.ctx, self.endpoint, self.keydir, name, routing_id)

    def status(self) -> dict[str, Any]:
        """The learner's status (it must answer: a learner that stopped serving fails the test here)."""
        self.console.send(StatusRequest("console"))
        msg = self.console.wait(lambda m: isinstance(m, Status), "status")
        assert isinstance(msg, Status)
        return msg.status

    def rejected(self, reason: str) -> int:
        return self.status()["rejected"].get(reason, 0)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("the learner did not stop on SIGTERM") from None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        transport.shutdown(self.ctx)


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLearner]:
    from robot_wsrl.learn.agent import Agent
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.networks import build_networks
    from robot_wsrl.learn.training import save_training_checkpoint

    root = tmp_path_factory.mktemp("adversarial")
    keydir = root / "keys"
    for name, role in KEYS.items():
        assert main(["keys", "new", name, "--dir", str(keydir), "--role", role]) == 0
    cfg = compose_config("finetune", [*SMALL_AGENT, BIG_ACTOR])
    save_training_checkpoint(
        root / "checkpoint.pt", Agent(build_networks(4, 2, cfg.agent), cfg.agent), SPEC, cfg, 0, {}
    )
    live = LiveLearner(root, keydir, root / "checkpoint.pt")
    try:
        live.start()
        yield live
    finally:
        live.close()


def is_ack(runner: str, seq: int | None = None) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Ack) and m.runner_id == runner and (seq is None or m.acked_seq == seq)


def test_a_wrong_width_batch_is_refused_and_the_learner_stays_up(learner: LiveLearner) -> None:
    robot = learner.client("robot1")
    robot.send(batch("robot1", 0))
    robot.wait(is_ack("robot1", 9), "ack of the valid batch")
    robot.send(batch("robot1", 10, obs_dim=SPEC.obs_dim + 1))  # killed the learner before issue 12
    robot.send(batch("robot1", 10, obs_dim=1, act_dim=1))  # was broadcast across the buffer's columns
    robot.send(batch("robot1", 10, act_dim=SPEC.act_dim + 3))
    robot.send(batch("robot1", 10))
    robot.wait(is_ack("robot1", 19), "ack of the next valid batch")
    status = learner.status()
    assert status["rejected"].get("width") == 3
    assert status["step"] == 20 and status["runners"]["robot1"]["acked_seq"] == 19
    assert not any(isinstance(m, Ack) and m.acked_seq > 19 for m in robot.received)


def test_a_runner_key_under_another_runners_name_gets_nothing_of_it(learner: LiveLearner) -> None:
    """robot2's key speaking as robot1 (routing id, sender, runner id, heartbeat, policy request):
    refused; the acks and credit of robot1 go to robot1's own connection only."""
    impostor = learner.client("robot2", routing_id=b"robot1")
    owner = learner.client("robot1")
    before = learner.rejected("identity")
    impostor.send(batch("robot1", 20, sender="robot1"))
    impostor.send(batch("robot1", 20, sender="robot2"))
    impostor.send(HeartbeatMessage("robot1", "runner", time.time(), "fine_tuning"))
    impostor.send(PolicyRequest("robot1", None))
    impostor.send(HeartbeatMessage("robot2", "runner", time.time(), "idle"))  # legitimately robot2
    owner.send(HeartbeatMessage("robot1", "runner", time.time(), "idle"))
    ack = owner.wait(is_ack("robot1"), "robot1's watermark on its own connection")
    owner.wait(lambda m: isinstance(m, Credit) and m.runner_id == "robot1", "robot1's credit")
    impostor.wait(lambda m: isinstance(m, Credit) and m.runner_id == "robot2", "robot2's own credit")
    impostor.drain(1.0)
    assert learner.rejected("identity") == before + 4
    assert not [m for m in impostor.received if isinstance(m, (Ack, Credit)) and m.runner_id != "robot2"]
    assert (
        isinstance(ack, Ack)
        and learner.status()["runners"].get("robot1", {}).get("acked_seq", -1) == ack.acked_seq
    )


def test_a_console_key_may_not_feed_data_and_a_runner_key_may_not_command(learner: LiveLearner) -> None:
    console, robot = learner.client("console"), learner.client("robot1")
    before, step = learner.rejected("role"), learner.status()["step"]
    console.send(batch("console", 0))
    console.send(HeartbeatMessage("console", "runner", time.time(), "idle"))
    console.send(PolicyRequest("console", None))
    robot.send(HeartbeatMessage("robot1", "console", time.time(), "idle"))
    robot.send(Command("robot1", "pause", ref=7))
    reply = robot.wait(lambda m: isinstance(m, Reply) and m.ref == 7, "the refusal of a runner's command")
    assert isinstance(reply, Reply) and not reply.ok and "only a console commands" in (reply.error or "")
    console.drain(1.0)
    assert not [m for m in console.received if isinstance(m, (Ack, Credit, PolicyMessage))]
    status = learner.status()
    assert status["rejected"].get("role") == before + 5
    assert status["step"] == step and status["phase"] != "paused" and "console" not in status["runners"]
    console.send(Command("console", "pause", ref=8))
    assert console.wait(lambda m: isinstance(m, Reply) and m.ref == 8, "pause reply").ok  # type: ignore[attr-defined]
    assert learner.status()["phase"] == "paused"
    console.send(Command("console", "resume", ref=9))
    assert console.wait(lambda m: isinstance(m, Reply) and m.ref == 9, "resume reply").ok  # type: ignore[attr-defined]
    assert learner.status()["phase"] != "paused"
    assert "learning paused by console" in learner.log_path.read_text()  # the audit line names the key


def test_many_episode_ids_in_one_batch_are_bounded_and_malformed_ones_refused(learner: LiveLearner) -> None:
    """A batch of one-step episodes that never end (it held the loop for minutes and grew the learner
    before issue 12) is taken in O(rows) and leaves one episode open; out-of-order episode ids, an
    episode going on after its end and an oversized batch are refused."""
    robot = learner.client("robot3")
    before = learner.status()
    robot.send(batch("robot3", 0, 1500))  # more transitions than a batch may hold
    robot.send(batch("robot3", 0, 10, episodes=np.arange(10)[::-1]))
    robot.send(batch("robot3", 0, 10, ends=np.arange(10) == 3))
    for k in range(20):
        robot.send(batch("robot3", 512 * k, 512, episodes=512 * k + np.arange(512)))
    robot.wait(is_ack("robot3", 20 * 512 - 1), "the acks of the batches of many episodes")
    status = learner.status()
    assert status["rejected"].get("episodes", 0) == before["rejected"].get("episodes", 0) + 2
    assert status["rejected"].get("count", 0) == before["rejected"].get("count", 0) + 1
    assert status["step"] == before["step"] + 20 * 512


def test_unread_policy_requests_do_not_pile_up_in_the_learner(learner: LiveLearner) -> None:
    """Four connections of one runner key (the most it may hold) flood policy requests and never read:
    each gets a ~1 MB policy at most a few times, and the learner's memory does not follow the flood."""
    rss = learner.rss_mb()
    floods = [learner.client("robot4") for _ in range(5)]
    before = learner.rejected("connections")
    for sock in floods:
        sock.send(HeartbeatMessage("robot4", "runner", time.time(), "idle"))
    deadline = time.monotonic() + 4.0  # the backoff's sends: 0, 0.5, 1.5, 3.5 s
    while time.monotonic() < deadline:
        for sock in floods:
            for _ in range(25):
                sock.send(PolicyRequest("robot4", None))
        time.sleep(0.05)
    grown = learner.rss_mb() - rss
    assert grown < 100, f"the learner grew by {grown:.0f} MB"
    received = sorted(sum(isinstance(m, PolicyMessage) for m in sock.drain(2.0)) for sock in floods)
    assert received[0] == 0 and all(1 <= n <= 4 for n in received[1:]), received  # four got a few
    assert learner.rejected("connections") > before  # the fifth connection is not taken


def test_sparse_sequence_numbers_are_bounded_bookkeeping(learner: LiveLearner) -> None:
    """Each batch far above the last opens a gap; past 64 gaps they are refused (not acked, so the
    runner resends them in order), so neither the bookkeeping nor a batch's cost grows."""
    robot = learner.client("robot5")
    step = learner.status()["step"]
    for k in range(1, 201):
        robot.send(batch("robot5", 1000 * k, 2))
    robot.send(batch("robot5", 0, 2))
    robot.wait(is_ack("robot5", 1), "the ack of the batch at the watermark")
    assert learner.status()["step"] == step + 2 * 64 + 2


def test_a_restart_resumes_and_skips_a_logged_entry_it_cannot_take(learner: LiveLearner) -> None:
    """The same out_dir after the attacks: the learner comes back with what it had; an entry in the
    ingest log that fails the checks (a log from before them) is skipped and counted, never fatal."""
    from robot_wsrl.learn.ingest_log import IngestLog

    status = learner.status()
    assert learner.stop() == 0
    log = IngestLog(learner.out / "transitions.log")
    log.append(batch("robot1", 20, obs_dim=1, act_dim=1))  # what a learner before issue 12 logged
    log.sync()
    log.close()
    learner.start()
    again = learner.status()
    assert again["step"] == status["step"] and again["rejected"].get("log_width") == 1
    assert again["runners"]["robot1"]["acked_seq"] == 19
    robot = learner.client("robot1")
    robot.send(batch("robot1", 20))
    robot.wait(is_ack("robot1", 29), "an ack after the restart")
    run_id = (learner.out / "run_id").read_text().strip()
    sidecar = json.loads((learner.out / "policies" / "v000000" / "policy.json").read_text())
    assert sidecar["run_id"] == run_id and len(run_id) == 32


# ----- the worst-case handling time per message (a measurement, run as a script; not a test) -----


def measure(repeats: int = 20) -> dict[str, Any]:
    """Time `Learner.handle` in-process (plain mode, the default agent, a 1M-transition buffer) for each
    attack above and for ordinary traffic: {case: {max_ms, p50_ms, n}}. The group commit's fsync, once
    per receive round, is not part of a message's handling and is not included."""
    import tempfile

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from robot_wsrl.learn.agent import Agent
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.learner import Learner, LearnerOptions
    from robot_wsrl.learn.networks import build_networks
    from robot_wsrl.learn.training import save_training_checkpoint

    spec = EnvSpec("measure", 17, 6, (-1.0,) * 6, (1.0,) * 6, 0.01)
    root = Path(tempfile.mkdtemp(prefix="handle-"))
    cfg = compose_config("finetune", ["device=cpu", "threads=1"])
    checkpoint = save_training_checkpoint(
        root / "c.pt",
        Agent(build_networks(spec.obs_dim, spec.act_dim, cfg.agent), cfg.agent),
        spec,
        cfg,
        0,
        {},
    )
    overrides = [f"run.checkpoint={checkpoint}", f"out_dir={root / 'out'}", "run.warmup_steps=100000000"]
    cfg = compose_config("finetune", ["device=cpu", "threads=1", *overrides])
    ctx = zmq.Context()
    sock = transport.plain_server(ctx, zmq.ROUTER, "tcp://127.0.0.1:0")
    learner = Learner(cfg, sock, root / "out", Ed25519PrivateKey.generate(), LearnerOptions(), False)
    seqs: dict[str, int] = {}

    def wide(runner: str, n: int, **kw: Any) -> Transitions:
        first = seqs.get(runner, 0)
        seqs[runner] = first + n
        return batch(runner, first, n, obs_dim=spec.obs_dim, act_dim=spec.act_dim, **kw)

    def frames(msg: Message | list[bytes], who: bytes) -> list[zmq.Frame]:
        return [zmq.Frame(who), *(zmq.Frame(f) for f in (msg if isinstance(msg, list) else encode(msg)))]

    results: dict[str, Any] = {}

    def timed(case: str, make: Callable[[], Message | list[bytes]], who: bytes, times: int = repeats) -> None:
        wall, cpu = [], []  # cpu: the thread's own time, what a loaded machine's scheduler adds left out
        for _ in range(times):
            f = frames(make(), who)
            start, start_cpu = time.perf_counter(), time.thread_time()
            learner.handle(f)
            wall.append(1000 * (time.perf_counter() - start))
            cpu.append(1000 * (time.thread_time() - start_cpu))
            learner._acks.clear()  # the commit (its fsync) is per receive round, not per message
        results[case] = {
            "max_ms": round(max(wall), 3),
            "p50_ms": round(float(np.median(wall)), 3),
            "cpu_max_ms": round(max(cpu), 3),
            "cpu_p50_ms": round(float(np.median(cpu)), 3),
            "n": times,
        }

    try:
        timed("heartbeat", lambda: HeartbeatMessage("r0", "runner", time.time(), "idle"), b"a")
        timed("batch_256_valid", lambda: wide("r0", 256), b"a")
        timed("batch_512_valid", lambda: wide("r0", 512), b"a")
        timed("batch_4096_too_many", lambda: batch("r0", 0, 4096, obs_dim=17, act_dim=6), b"a")
        timed("batch_512_wrong_width", lambda: batch("r0", 0, 512, obs_dim=5), b"a")
        timed("batch_width_1", lambda: batch("r0", 0, 256, obs_dim=1, act_dim=1), b"a")
        timed(
            "batch_512_episodes",
            lambda: wide("r1", 512, episodes=seqs.get("r1", 0) + np.arange(512)),
            b"b",
        )
        timed(
            "batch_60_episodes",
            lambda: wide("r1", 120, episodes=seqs.get("r1", 0) + np.arange(120) // 2),
            b"b",
        )
        big = 16 * 2**20 // (4 * (2 * spec.obs_dim + spec.act_dim + 1)) + 10
        timed(
            "oversized_16MiB", lambda: encode(batch("r0", 0, big, obs_dim=spec.obs_dim, act_dim=6)), b"a", 5
        )
        sparse = iter(range(1, 10**6))

        def sparse_batch() -> Transitions:
            return batch("r2", 1000 * next(sparse), 2, obs_dim=17, act_dim=6)

        timed("batch_sparse_seq_first_64", sparse_batch, b"c", 64)  # each opens a gap
        timed("batch_sparse_seq_next_200", sparse_batch, b"c", 200)  # past the bound on gaps: refused
        timed("policy_request_repeat", lambda: PolicyRequest("r0", None), b"a", 200)
        timed("status_request", lambda: StatusRequest("console"), b"d")
        timed("command_from_runner", lambda: Command("r0", "pause"), b"a")
        timed("transitions_from_console", lambda: batch("console", 0, 256, obs_dim=17, act_dim=6), b"d")
        # one episode as long as the ring (1M transitions), then its end: returns-to-go over all of it
        while learner.buffer.total_added < learner.buffer.capacity - 512:
            learner.handle(frames(wide("r3", 512, episodes=0), b"e"))
        learner._acks.clear()
        timed(
            "batch_ending_a_1M_step_episode",
            lambda: wide("r3", 512, episodes=0, ends=np.arange(512) == 511),
            b"e",
            1,
        )
    finally:
        learner.close()
        transport.shutdown(ctx)
    worst = max(results.items(), key=lambda kv: kv[1]["max_ms"])
    worst_cpu = max(results.items(), key=lambda kv: kv[1]["cpu_max_ms"])
    return {
        "worst_case": worst[0],
        "worst_ms": worst[1]["max_ms"],
        "worst_cpu_case": worst_cpu[0],
        "worst_cpu_ms": worst_cpu[1]["cpu_max_ms"],
        "cases": results,
    }
