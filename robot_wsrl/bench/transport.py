"""Transport benchmark: transition ingest rate and policy publish → swap latency (DESIGN §6 targets).

Both halves run the real learner (`Learner`, serving in a thread of this process) on loopback, once with
CURVE and once plain, and the runners in their own processes (spawned, so they never import torch and
do not share this process's interpreter lock).

Ingest: each runner process fills a `TransitionSpool` with Hopper-sized transitions (obs 11, act 3) in
batches of `LinkOptions.batch_size`, then sends the spool's unacknowledged batches over a DEALER as
`LearnerLink` resends them after a reconnect (the same frames, encoded before the clock starts so that
the runners' re-encoding does not take the learner's share of a small machine), and applies the acks to
the spool. The link itself is not used because its producer is the control loop: one transition per
control tick, so it would time the robot's clock rather than the wire. The learner is the real one,
with warmup set so high that no update runs: decode, de-duplicate, append to the fsynced log, ack after
the sync, insert into the buffer. A warm-up round (joins, CURVE handshakes, the first policy push) is
sent and acknowledged before the clock starts; the clock stops when every runner holds the ack of its
last transition. After each run the learner's log is replayed to check that every transition sent is
there exactly once.

Image ingest: the same, for a camera task's transitions (the Hopper-sized state and one RGB camera, 84x84
and 128x128, from 1 and 8 runners, each frame raw and under the other codecs measured): synthetic frames
like a rendered arm task's (a fixed smooth background and a moving disc, no sensor noise; 50-step
episodes like Reacher's), coded while the spool is filled (before the clock), in the link's batch size
for that frame size (`batch_rows`: fewer rows where the frames would pass the message limit). The learner
is the real one with the camera in its batch rules: decode (every blob decoded and checked), log the
frames durably, ack, insert the state (its replay is the state-only checkpoint's: storing the frames in
a camera task's replay is not in these figures). `mb_per_s` counts the wire bytes of the timed messages.
`image_codecs` times each codec alone on the same frames, in this process.

Swap latency: one runner process runs the real `LearnerLink` and `Runner` on the null driver at 1 kHz
with `swap_mode="immediate"` ("between_episodes" would measure the episode length instead). The learner
publishes pre-exported versions on a timer (exporting with torch takes longer than the wire and is
reported apart as `publish_export_ms_p50`); the clock starts when `publish()` is called (read + sign +
send) and stops at the runner's first transition acted on by the new version. `swap_accepted_*` stops
it instead when `Runner.offer_policy` accepted the verified, written, loaded policy. As in training,
`publish()` snapshots the learner's state right after the push (a CPU copy, in the loop) and a background
thread writes `learner.pt`, so on one small machine that write competes with the runner's work but never
holds the learner's loop; `publish_held_*` is how long each `publish()` call held the loop. There is no
sim-first gate here (it would add a MuJoCo validation run, not the wire).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from robot_wsrl.bench.machine import cpu_description
from robot_wsrl.core.artifacts import CHECKPOINT, INGEST_LOG
from robot_wsrl.core.spec import STATE, CameraSpec
from robot_wsrl.robot.link import LinkOptions, batch_rows
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.codecs import Codec
from robot_wsrl.wire.protocol import Ack, RejectCounter, Transition, encode, try_decode
from robot_wsrl.wire.spool import TransitionSpool

OBS_DIM, ACT_DIM = 11, 3  # Hopper
CONTROL_PERIOD_S = 1e-3  # the swap runner's null driver: a swap lands at the next tick
EPISODE_STEPS = 1000  # Hopper's time limit: the synthetic transitions truncate every 1,000 steps
LEARNER = "learner"
WAIT_S = 120.0  # every wait's deadline: generous for a shared 2-core machine
POLL_S = 0.005
TARGETS = {"ingest_per_s": 100_000.0, "swap_latency_p99_ms": 20.0}
CAMERA = "top"
IMAGE_EPISODE_STEPS = 50  # Reacher-v5's time limit: an episode's last next frame is sent apart


@dataclass(frozen=True)
class ImageMode:
    """One camera of `side` x `side` RGB, coded by `codec` (picklable: runner processes get it)."""

    side: int
    codec: str

    @property
    def camera(self) -> CameraSpec:
        return CameraSpec(CAMERA, self.side, self.side)

    @property
    def batch_size(self) -> int:
        """The link's batch for such transitions (fewer than its batch size at large frames)."""
        frame = np.zeros(self.camera.shape, np.uint8)
        obs = {STATE: np.zeros(OBS_DIM, np.float32), CAMERA: frame}
        return batch_rows(LinkOptions(), Transition(obs, np.zeros(ACT_DIM), 0.0, obs, False, False, 0, 0, 0))


class _Scene:
    """Synthetic frames like a rendered arm task's: a fixed smooth background and a disc moving along a
    circle, from another angle each episode (no sensor noise)."""

    def __init__(self, side: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:side, 0:side] / side
        shading = np.stack([x, y, x * y], axis=-1) * 60.0
        self.background = np.clip(rng.uniform(40, 160, 3) + shading, 0, 255).astype(np.uint8)
        self.yy, self.xx = np.mgrid[0:side, 0:side]
        self.side = side

    def frames(self, episodes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """uint8 [len(steps), side, side, 3]: the frame of each (episode, step)."""
        s, angle = self.side, 0.1 * steps + episodes
        cy, cx = s / 2 + s / 4 * np.sin(angle), s / 2 + s / 4 * np.cos(angle)
        dy, dx = self.yy[None] - cy[:, None, None], self.xx[None] - cx[:, None, None]
        out = np.repeat(self.background[None], len(steps), axis=0)
        out[dy**2 + dx**2 < (s / 10) ** 2] = (230, 40, 40)
        return out


@dataclass(frozen=True)
class Endpoint:
    """How a runner process reaches the learner (picklable: it crosses the process boundary)."""

    address: str
    keydir: str
    secure: bool


def _connect(ctx: zmq.Context, endpoint: Endpoint, name: str) -> zmq.Socket:
    if not endpoint.secure:
        return transport.plain_client(ctx, zmq.DEALER, endpoint.address)
    return transport.secure_client(
        ctx,
        zmq.DEALER,
        endpoint.address,
        keys.load_curve_keys(endpoint.keydir, name),
        keys.load_public_key(endpoint.keydir, LEARNER),
    )


def _fill_spool(
    spool: TransitionSpool, count: int, batch_size: int, seed: int, image: ImageMode | None = None
) -> None:
    """`count` synthetic Hopper-sized transitions, appended in the link's batch size; with `image`, each
    with its camera frames (episodes of IMAGE_EPISODE_STEPS)."""
    rng = np.random.default_rng(seed)
    scene = None if image is None else _Scene(image.side, seed)
    steps = EPISODE_STEPS if image is None else IMAGE_EPISODE_STEPS
    for first in range(0, count, batch_size):
        n = min(batch_size, count - first)
        seq = np.arange(first, first + n)
        frames: dict[str, Any] = {}
        if image is not None and scene is not None:
            episode, step = seq // steps, seq % steps
            frames = {
                "camera_obs": {CAMERA: scene.frames(episode, step)},
                "camera_next": {CAMERA: scene.frames(episode, step + 1)},
                "codecs": {CAMERA: image.codec},
            }
        spool.append_arrays(
            obs=rng.standard_normal((n, OBS_DIM)),
            action=rng.uniform(-1.0, 1.0, (n, ACT_DIM)),
            reward=rng.standard_normal(n),
            next_obs=rng.standard_normal((n, OBS_DIM)),
            terminated=np.zeros(n, bool),
            truncated=seq % steps == steps - 1,
            episode_id=seq // steps,
            policy_version=np.zeros(n, np.int64),
            **frames,
        )


class _Sender:
    """A runner's DEALER sending spooled batches as `LearnerLink` does, and applying the learner's acks."""

    def __init__(self, sock: zmq.Socket, spool: TransitionSpool) -> None:
        self.sock, self.spool, self.rejects = sock, spool, RejectCounter()

    def _take_replies(self, timeout_s: float) -> None:
        """Drain what arrived and apply the newest ack once: each `spool.ack` fsyncs the watermark."""
        newest = self.spool.acked_seq
        frames = transport.recv_frames(self.sock, timeout_s)
        while frames is not None:
            msg = try_decode(frames, self.rejects)
            if isinstance(msg, Ack) and msg.runner_id == self.spool.runner_id:
                newest = max(newest, msg.acked_seq)
            frames = transport.recv_frames(self.sock, 0.0)
        if newest > self.spool.acked_seq:
            self.spool.ack(newest)

    def send_until_acked(self, batches: list[list[bytes]], last_seq: int, deadline: float) -> None:
        """Send the encoded `batches`, then wait for the ack of `last_seq` (their last transition)."""
        for frames in batches:
            while not transport.send_frames(self.sock, frames, 0.0):  # full queue: take acks
                self._take_replies(POLL_S)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.spool.runner_id}: the learner stopped taking batches")
            self._take_replies(0.0)
        while self.spool.acked_seq < last_seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.spool.runner_id}: no ack of seq {last_seq}")
            self._take_replies(POLL_S)


def _ingest_runner(
    name: str,
    endpoint: Endpoint,
    state: str,
    warmup: int,
    transitions: int,
    batch_size: int,
    seed: int,
    go: Any,
    results: Any,
    image: ImageMode | None = None,
) -> None:
    """Runner process of the ingest half: warm-up round, "ready" (with the timed round's wire bytes), wait
    for go, timed round, "done"."""
    ctx = zmq.Context()
    spool = TransitionSpool(Path(state) / name, name, fsync="segment")
    try:
        _fill_spool(spool, warmup + transitions, batch_size, seed, image)
        batches = list(spool.unacked())  # the link's resend path, encoded before any clock runs
        warm = [encode(b) for b in batches if b.first_seq < warmup]
        timed = [encode(b) for b in batches if b.first_seq >= warmup]
        sender = _Sender(_connect(ctx, endpoint, name), spool)
        sender.send_until_acked(warm, warmup - 1, time.monotonic() + WAIT_S)
        results.put(("ready", name, sum(len(frame) for frames in timed for frame in frames)))
        if not go.wait(WAIT_S):
            raise TimeoutError(f"{name}: no go signal")
        sender.send_until_acked(timed, warmup + transitions - 1, time.monotonic() + WAIT_S)
        results.put(("done", name, time.monotonic()))
    except Exception as exc:  # reported to the parent, which fails the benchmark with it
        results.put(("error", name, f"{type(exc).__name__}: {exc}"))
    finally:
        spool.close()
        transport.shutdown(ctx)


def _swap_runner(endpoint: Endpoint, state: str, stop: Any, results: Any) -> None:
    """Runner process of the swap half: the real link and runner; reports when each version was accepted
    by `offer_policy` and first acted on."""
    from robot_wsrl.robot.control import reserve_process_resources
    from robot_wsrl.robot.drivers.null import NullDriver
    from robot_wsrl.robot.link import LearnerLink
    from robot_wsrl.robot.policy import OnnxPolicy
    from robot_wsrl.robot.runner import OfferResult, Runner

    reserve_process_resources()  # as `link-runner` does: short GIL hand-offs beside the spinning loop
    accepted: dict[str, float] = {}  # policy file -> when offer_policy accepted it
    swapped: dict[int, float] = {}  # version -> its first transition

    class TimedRunner(Runner):
        def offer_policy(self, candidate: Any) -> OfferResult:
            result = super().offer_policy(candidate)
            if result.accepted:
                accepted.setdefault(str(candidate), time.monotonic())
            return result

    ctx = zmq.Context()
    name = "swap0"
    spool = TransitionSpool(Path(state) / name, name, fsync="segment")
    link = None
    try:
        options = LinkOptions(lockstep=False, on_learner_lost="keep")
        link = LearnerLink(
            _connect(ctx, endpoint, name), spool, keys.load_verify_keys(endpoint.keydir), Path(state), options
        )

        def on_transition(transition: Transition) -> None:
            swapped.setdefault(transition.policy_version, time.monotonic())
            link.on_transition(transition)

        link.start()
        path = link.wait_for_policy(WAIT_S)
        if path is None:
            raise TimeoutError("no policy from the learner")
        driver = NullDriver(OBS_DIM, ACT_DIM, CONTROL_PERIOD_S)
        runner = TimedRunner(
            driver, OnnxPolicy.load(path), swap_mode="immediate", on_transition=on_transition
        )
        link.attach(runner)
        loop = threading.Thread(target=runner.run, kwargs={"stop_event": stop}, daemon=True)
        loop.start()
        results.put(("ready", name, None))
        loop.join(WAIT_S)
        link.close()  # nothing offers or swaps any more: the records are complete
        by_version = {OnnxPolicy.load(path).version: t for path, t in accepted.items()}
        results.put(("done", name, {"accepted": by_version, "swapped": swapped, "link": link.status()}))
    except Exception as exc:
        results.put(("error", name, f"{type(exc).__name__}: {exc}"))
    finally:
        if link is not None:
            link.close()
        spool.close()
        transport.shutdown(ctx)


# ----- the learner side (this process; torch is imported here only) -----


def _collect(results: Any, kind: str, names: list[str], serving: _Serving) -> dict[str, Any]:
    """Wait for `kind` from every process named, or raise with the first error (theirs or the learner's)."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + WAIT_S
    while len(got) < len(names):
        serving.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"runners {sorted(set(names) - set(got))} never reported {kind!r}")
        try:
            what, name, value = results.get(timeout=POLL_S * 100)
        except queue.Empty:
            continue
        if what == "error":
            raise RuntimeError(f"runner {name}: {value}")
        if what == kind:
            got[name] = value
    return got


class _Bench:
    """Keys, a tiny checkpoint with the 2x256 actor, and starting a learner for each measurement."""

    def __init__(self, root: Path) -> None:
        from robot_wsrl.core.spec import EnvSpec
        from robot_wsrl.learn.agent import Agent
        from robot_wsrl.learn.config import compose_config
        from robot_wsrl.learn.networks import build_networks
        from robot_wsrl.learn.training import save_training_checkpoint

        self.root = root
        self.keydir = root / "keys"
        keys.new_identity(self.keydir, LEARNER, "learner")
        for i in range(8):
            keys.new_identity(self.keydir, f"bench{i}", "runner")
        keys.new_identity(self.keydir, "swap0", "runner")
        spec = EnvSpec("null", OBS_DIM, ACT_DIM, (-1.0,) * ACT_DIM, (1.0,) * ACT_DIM, CONTROL_PERIOD_S)
        self.base = ["env=hopper", "device=cpu", "threads=1", "progress=false", "tensorboard=false"]
        cfg = compose_config("finetune", self.base)
        agent = Agent(build_networks(OBS_DIM, ACT_DIM, cfg.agent, "cpu"), cfg.agent)
        self.checkpoint = save_training_checkpoint(root / CHECKPOINT, agent, spec, cfg, 0, {})
        self.runs = 0

    def learner(self, secure: bool, capacity: int, learner_class: type | None = None) -> _Serving:
        from robot_wsrl.learn.config import compose_config
        from robot_wsrl.learn.learner import Learner, LearnerOptions

        self.runs += 1
        out = self.root / f"learner{self.runs}"
        cfg = compose_config(
            "finetune",
            [
                *self.base,
                f"run.checkpoint={self.checkpoint}",
                "run.warmup_steps=1000000000",  # no update: the ingest path alone
                f"run.buffer_capacity={capacity}",
                f"out_dir={out}",
            ],
        )
        ctx = zmq.Context()
        address = "tcp://127.0.0.1:*"
        if secure:
            runners = keys.load_public_keys(self.keydir, roles=("runner",))
            sock = transport.secure_server(
                ctx, zmq.ROUTER, address, keys.load_curve_keys(self.keydir, LEARNER), runners
            )
        else:
            sock = transport.plain_server(ctx, zmq.ROUTER, address)
        endpoint = Endpoint(sock.getsockopt_string(zmq.LAST_ENDPOINT), str(self.keydir), secure)
        cls = learner_class or Learner
        # No sim-first gate: every version goes straight to the runner (a gate adds a MuJoCo validation
        # run before a hardware runner gets it, which is not the wire).
        options = LearnerOptions(LEARNER)
        roles = keys.load_key_roles(self.keydir, ("runner",)) if secure else None  # what each key may do
        signing = keys.load_signing_key(self.keydir, LEARNER)
        learner = cls(cfg, sock, out, signing, options, secure=secure, roles=roles)
        return _Serving(learner, ctx, endpoint)


class _Serving:
    """A learner serving in a thread; `stop` joins it and closes its log and context."""

    def __init__(self, learner: Any, ctx: zmq.Context, endpoint: Endpoint) -> None:
        self.learner, self.ctx, self.endpoint = learner, ctx, endpoint
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.learner.serve(self._stop)
        except BaseException as exc:  # re-raised in the benchmark's thread by `check`
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the learner stopped serving: {self.error!r}") from self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        self.learner.close()
        transport.shutdown(self.ctx)


def _logged_seqs(log_path: Path) -> dict[str, np.ndarray]:
    from robot_wsrl.learn.ingest_log import IngestLog

    log = IngestLog(log_path)
    try:
        parts: dict[str, list[np.ndarray]] = {}
        for batch in log.replay():
            parts.setdefault(batch.runner_id, []).append(batch.seq)
    finally:
        log.close()
    return {name: np.concatenate(seqs) for name, seqs in parts.items()}


def _camera_learner(camera: CameraSpec) -> type:
    """The real learner taking batches with `camera`'s frames: decoded, checked and logged durably as any
    camera task's; its replay (the bench's state-only checkpoint's) takes the state, not the frames."""
    from robot_wsrl.learn.learner import Learner
    from robot_wsrl.wire.protocol import BatchRules, Transitions

    class CameraLearner(Learner):
        @property
        def rules(self) -> BatchRules:
            return BatchRules(OBS_DIM, ACT_DIM, cameras=(camera,))

        def _insert(self, batch: Transitions, mask: np.ndarray) -> None:
            arrays = (getattr(batch, name) for name, _, _ in Transitions.ARRAYS)
            super()._insert(Transitions(batch.sender, batch.runner_id, *arrays), mask)

    return CameraLearner


def _measure_ingest(
    bench: _Bench,
    secure: bool,
    runners: int,
    transitions: int,
    warmup: int,
    batch_size: int,
    image: ImageMode | None = None,
) -> dict[str, Any]:
    """Ingest rate of `runners` runner processes sending `transitions` in all (after `warmup` in all)."""
    per_runner, warm_per_runner = transitions // runners, max(batch_size, warmup // runners)
    sent = per_runner + warm_per_runner
    learner_class = None if image is None else _camera_learner(image.camera)
    serving = bench.learner(secure, capacity=runners * sent, learner_class=learner_class)
    names = [f"bench{i}" for i in range(runners)]
    spawn = mp.get_context("spawn")
    go, results = spawn.Event(), spawn.Queue()
    state = tempfile.mkdtemp(dir=bench.root, prefix="runners")
    procs = [
        spawn.Process(
            target=_ingest_runner,
            args=(
                name,
                serving.endpoint,
                state,
                warm_per_runner,
                per_runner,
                batch_size,
                i,
                go,
                results,
                image,
            ),
            daemon=True,
        )
        for i, name in enumerate(names)
    ]
    try:
        for proc in procs:
            proc.start()
        wire_bytes = sum(_collect(results, "ready", names, serving).values())
        started = time.monotonic()
        go.set()
        finished = _collect(results, "done", names, serving)
        elapsed = max(finished.values()) - started
    finally:
        for proc in procs:
            proc.join(WAIT_S)
            if proc.is_alive():
                proc.kill()
        serving.stop()
    status = serving.learner.status()
    logged = _logged_seqs(serving.learner.out / INGEST_LOG)
    shutil.rmtree(state, ignore_errors=True)
    unique = sum(len(np.unique(seqs)) for seqs in logged.values())
    complete = all(
        np.array_equal(np.unique(logged.get(name, [])), np.arange(sent))
        and status["runners"][name]["acked_seq"] == sent - 1
        for name in names
    )
    return {
        "per_s": per_runner * runners / elapsed,
        "mb_per_s": wire_bytes / elapsed / 1e6,
        "wire_bytes": wire_bytes,
        "timed": per_runner * runners,
        "sent": runners * sent,
        "logged": sum(len(seqs) for seqs in logged.values()),
        "duplicates": sum(len(seqs) for seqs in logged.values()) - unique,
        "buffered": status["step"],
        "exactly_once": complete and unique == status["step"] == runners * sent,
        "rejected": sum(status["rejected"].values()),
    }


def _publishing_learner(versions: int, interval_s: float) -> type:
    """The real learner, publishing `versions` already-exported versions one every `interval_s` once
    `go` is set, instead of after SGD updates; `published[v]` is when `publish()` began for version v, and
    `held` how long each call held the learner's loop."""
    from robot_wsrl.learn.learner import Learner

    class PublishingLearner(Learner):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.go = threading.Event()
            self.done = threading.Event()
            self.published: dict[int, float] = {}
            self.held: list[float] = []
            self.export_s: list[float] = []
            for version in range(1, versions + 1):  # what publish() would export, done before the clock
                self.version = version
                started = time.perf_counter()
                self._make_policy()
                self.export_s.append(time.perf_counter() - started)
            self.version = 0

        def owed_updates(self) -> int:
            last = self.published.get(self.version, 0.0)
            due = self.go.is_set() and self.version < versions and time.monotonic() - last >= interval_s
            return int(due)

        def update_once(self) -> None:
            self.published[self.version + 1] = started = time.monotonic()
            self.publish()
            self.held.append(time.monotonic() - started)
            if self.version == versions:
                self.done.set()

    return PublishingLearner


def _measure_swap(bench: _Bench, secure: bool, publishes: int, interval_s: float) -> dict[str, Any]:
    serving = bench.learner(
        secure, capacity=100_000, learner_class=_publishing_learner(publishes, interval_s)
    )
    spawn = mp.get_context("spawn")
    stop, results = spawn.Event(), spawn.Queue()
    state = tempfile.mkdtemp(dir=bench.root, prefix="swap")
    proc = spawn.Process(target=_swap_runner, args=(serving.endpoint, state, stop, results), daemon=True)
    learner = serving.learner
    try:
        proc.start()
        _collect(results, "ready", ["swap0"], serving)
        learner.go.set()
        deadline = time.monotonic() + WAIT_S + publishes * interval_s
        while not learner.done.wait(POLL_S * 100):
            serving.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the learner published {learner.version} of {publishes} versions")
        time.sleep(max(0.5, 4 * interval_s))  # let the last version land
        stop.set()
        report = _collect(results, "done", ["swap0"], serving)["swap0"]
    finally:
        stop.set()
        proc.join(WAIT_S)
        if proc.is_alive():
            proc.kill()
        serving.stop()
    shutil.rmtree(state, ignore_errors=True)
    versions = range(1, publishes + 1)
    landed = [v for v in versions if v in report["swapped"]]  # a version superseded before its tick never ran
    swapped = [report["swapped"][v] - learner.published[v] for v in landed]
    accepted = [report["accepted"][v] - learner.published[v] for v in landed]
    if not swapped:
        raise RuntimeError(f"the runner swapped in none of {publishes} versions: {report['link']}")
    return {
        "swap": np.percentile(np.array(swapped) * 1e3, [50, 99]),
        "accepted": np.percentile(np.array(accepted) * 1e3, [50, 99]),
        "held": np.percentile(np.array(learner.held) * 1e3, [50, 99]),
        "missed": publishes - len(swapped),
        "export_ms": float(np.median(learner.export_s) * 1e3),
        "policy_bytes": len(learner.policy.onnx),
    }


def _image_entry(image: ImageMode, runners: int, ingest: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": "x".join(map(str, image.camera.shape)),
        "codec": image.codec,
        "runners": runners,
        "curve": True,
        "transitions_per_s": ingest["per_s"],
        "mb_per_s": ingest["mb_per_s"],
        "wire_bytes_per_transition": ingest["wire_bytes"] / ingest["timed"],
        "transitions": ingest["timed"],
        "batch_size": image.batch_size,
        "exactly_once": ingest["exactly_once"],
        "rejected": ingest["rejected"],
    }


def _time_codec(image: ImageMode, frames: int = 64) -> dict[str, Any]:
    """One codec alone on `frames` of the synthetic scene: microseconds per frame each way, bytes per frame,
    and the largest pixel error (0 for a lossless codec)."""
    pixels = _Scene(image.side, 0).frames(np.zeros(frames, np.int64), np.arange(frames))
    codec, shape = Codec.parse(image.codec), image.camera.shape
    started = time.perf_counter()
    blobs = [memoryview(pixels).tobytes()] if codec.name == "raw" else codec.encode(pixels)
    encoded = time.perf_counter()
    back = pixels if codec.name == "raw" else np.stack([codec.decode(blob, shape) for blob in blobs])
    decoded = time.perf_counter()
    return {
        "image": "x".join(map(str, shape)),
        "codec": image.codec,
        "encode_us_per_frame": (encoded - started) / frames * 1e6,
        "decode_us_per_frame": (decoded - encoded) / frames * 1e6,
        "bytes_per_frame": sum(map(len, blobs)) / frames,
        "max_abs_error": int(np.abs(back.astype(np.int16) - pixels).max()),
    }


def run_transport_benchmark(
    transitions: int = 200_000,
    warmup: int = 16_384,
    publishes: int = 100,
    publish_interval_s: float = 0.05,
    runner_counts: tuple[int, ...] = (1, 8),
    image_transitions: int = 4096,
    image_warmup: int = 1024,
    image_sides: tuple[int, ...] = (84, 128),
    image_codecs: tuple[str, ...] = ("raw", "zlib", "jpeg"),
) -> dict[str, Any]:
    """Ingest rate from each number of runners and publish → swap latency, CURVE on then off; then image
    ingest (CURVE) per frame size, codec and number of runners, and each codec's cost per frame."""
    batch_size = LinkOptions().batch_size
    result: dict[str, Any] = {}
    counts = {"sent": 0, "logged": 0, "duplicates": 0, "buffered": 0, "rejected": 0}
    exactly_once = True
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        bench = _Bench(Path(tmp))
        for secure, suffix in ((True, ""), (False, "_plain")):
            for runners in runner_counts:
                ingest = _measure_ingest(bench, secure, runners, transitions, warmup, batch_size)
                result[f"ingest_per_s_{runners}{suffix}"] = ingest["per_s"]
                result[f"ingest_transitions_{runners}{suffix}"] = ingest["timed"]
                exactly_once &= ingest["exactly_once"]
                for key in counts:
                    counts[key] += ingest[key]
            swap = _measure_swap(bench, secure, publishes, publish_interval_s)
            result[f"swap_latency_p50_ms{suffix}"], result[f"swap_latency_p99_ms{suffix}"] = swap["swap"]
            result[f"swap_accepted_p50_ms{suffix}"], result[f"swap_accepted_p99_ms{suffix}"] = swap[
                "accepted"
            ]
            result[f"publish_held_p50_ms{suffix}"], result[f"publish_held_p99_ms{suffix}"] = swap["held"]
            result[f"swap_missed{suffix}"] = swap["missed"]
            result["publish_export_ms_p50"] = swap["export_ms"]
            result["policy_bytes"] = swap["policy_bytes"]
        images = [ImageMode(side, codec) for side in image_sides for codec in image_codecs]
        result["image_ingest"] = [
            _image_entry(
                image,
                runners,
                _measure_ingest(
                    bench, True, runners, image_transitions, image_warmup, image.batch_size, image
                ),
            )
            for image in images
            for runners in runner_counts
        ]
        result["image_codecs"] = [_time_codec(image) for image in images]
    result = {k: float(v) if isinstance(v, np.floating) else v for k, v in result.items()}
    result["targets_met"] = {
        **{key: result[key] >= TARGETS["ingest_per_s"] for key in result if key.startswith("ingest_per_s_")},
        **{
            key: result[key] <= TARGETS["swap_latency_p99_ms"]
            for key in result
            if key.startswith("swap_latency_p99_ms")
        },
    }
    result.update(
        ingest_counted_exactly_once=exactly_once,
        **{f"ingest_{key}_total": value for key, value in counts.items()},
        ingest_warmup_transitions=warmup,
        batch_size=batch_size,
        publishes=publishes,
        publish_interval_s=publish_interval_s,
        swap_control_period_s=CONTROL_PERIOD_S,
        obs_dim=OBS_DIM,
        act_dim=ACT_DIM,
        cpu=cpu_description(),
        cpu_count=os.cpu_count(),
        load_average_1min=os.getloadavg()[0],
    )
    return result
