"""`robot-wsrl bench soak [KEY=VALUE ...] [--json]`: a session that must run for days, run for `seconds`.

A real `robot-wsrl session` (emulated robot, learner with its validations, linked runner, CURVE) runs at
accelerated pacing (lockstep, no real time) while operators use it the way the issue found it broken:
`robot-wsrl status --json` run over and over (short-lived connections), `robot-wsrl stop` then
`robot-wsrl release` in a cycle, and in the middle an e-stop, a restart of the runner (SIGKILL by default:
a crash) on the same state folder, a check that it came back still e-stopped, and a release. Every
operator command is a separate process with the session's own `console` key, as a script would be.

At the end the robot is e-stopped (no new transitions) and the spool drained, and the two sides count
independently: `transitions_produced` is the runner's spool sequence (`link.next_seq` in its control
status: every transition it ever sequenced, across the restart), `transitions_ingested` the learner's
(`step`: transitions in its replay buffer, de-duplicated). They must be equal: nothing lost, nothing
twice. Also reported: the learner's and the runner's RSS at the start and the end of the window, the
ingest log's size, e-stops sent and confirmed, and crashes (a child that exited with an error).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from robot_wsrl import bench
from robot_wsrl.apps import session
from robot_wsrl.bench.machine import cpu_description
from robot_wsrl.core.artifacts import INGEST_LOG
from robot_wsrl.core.paths import REPO_ROOT
from robot_wsrl.wire.endpoints import FILE_NAME, load_endpoints

BENCH_CONFIG = REPO_ROOT / "configs" / "bench" / "soak.yaml"
BUDGET = 10**12  # the session's step budget: the soak's clock ends it, never the budget
CLI_TIMEOUT_S = 120.0  # one operator command as a process, on a loaded 2-core host
STARTUP_TIMEOUT_S = 2 * session.START_TIMEOUT_S  # learner, runner and warmup, until fine-tuning


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """configs/bench/soak.yaml with command-line `KEY=VALUE` overrides of its keys."""
    return bench.load_config(BENCH_CONFIG, list(overrides or []))


def main(overrides: list[str]) -> dict[str, Any]:
    """The `robot-wsrl bench soak [KEY=VALUE ...]` entry point."""
    return run_soak_benchmark(load_config(overrides))


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def disk_bytes(directory: Path, prefix: str) -> int:
    """Bytes in every file or folder of `directory` whose name starts with `prefix` (the ingest log, its
    segments and checkpoints, whatever layout the learner uses)."""
    total = 0
    for path in directory.glob(f"{prefix}*"):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


@dataclass
class Counts:
    """What the operators' processes saw; updated from several threads under `lock`."""

    status_calls: int = 0
    status_unreachable: int = 0  # rc 3: a peer did not report (expected only while the runner restarts)
    status_errors: int = 0  # any other failure: a traceback, a timeout
    sent: Counter[str] = field(default_factory=Counter)  # "stop", "release"
    confirmed: Counter[str] = field(default_factory=Counter)  # ... that exited 0: the runner confirmed
    failures: list[str] = field(default_factory=list)  # the first few, with what the command said
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what: str, proc: subprocess.CompletedProcess[str] | None) -> None:
        with self.lock:
            if len(self.failures) < 10:
                said = "timed out" if proc is None else f"rc {proc.returncode}: {proc.stderr.strip()[-300:]}"
                self.failures.append(f"{time.strftime('%H:%M:%S')} {what}: {said}")


class Operators:
    """The operator's tools against one session folder, each command its own process."""

    def __init__(self, session_dir: Path, cfg: DictConfig) -> None:
        self.dir, self.cfg = session_dir, cfg
        self.counts = Counts()
        self.quit = threading.Event()
        self.cycle_lock = threading.Lock()  # the mid-run restart and the cycler take turns

    def _cli(self, *argv: str) -> subprocess.CompletedProcess[str] | None:
        command = [sys.executable, "-m", "robot_wsrl.apps.cli", argv[0], "--session", str(self.dir)]
        command += argv[1:]
        command += ["--timeout", str(self.cfg.command_timeout_s)]
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False, cwd=REPO_ROOT
            )
        except subprocess.TimeoutExpired:
            return None

    def _counted(self, command: str, *args: str) -> bool:
        """Run `robot-wsrl COMMAND`; counted as sent, and as confirmed when it exits 0."""
        with self.counts.lock:
            self.counts.sent[command] += 1
        proc = self._cli(command, *args)
        ok = proc is not None and proc.returncode == 0
        with self.counts.lock:
            self.counts.confirmed[command] += ok
        if not ok:
            self.counts.note(f"{command} {' '.join(args)}", proc)
        return ok

    def estop(self, reason: str) -> bool:
        return self._counted("stop", "--reason", reason)

    def release(self) -> bool:
        return self._counted("release", "--runner", session.RUNNER, "--yes")

    def poll_status(self) -> None:
        """`robot-wsrl status --json` every `status_every_s` (start to start; back to back when a run
        takes longer) until told to quit."""
        started = time.monotonic()
        while not self.quit.wait(max(0.0, started + float(self.cfg.status_every_s) - time.monotonic())):
            started = time.monotonic()
            proc = self._cli("status", "--json")
            code = None if proc is None else proc.returncode
            with self.counts.lock:
                self.counts.status_calls += 1
                self.counts.status_unreachable += code == 3
                self.counts.status_errors += code not in (0, 1, 3)
            if code not in (0, 1):
                self.counts.note("status", proc)

    def cycle_stops(self) -> None:
        """E-stop, hold, release; again every `cycle_every_s` until told to quit."""
        while not self.quit.wait(float(self.cfg.cycle_every_s)):
            with self.cycle_lock:
                if self.quit.is_set():
                    return
                stopped = self.estop("soak cycle")
                time.sleep(float(self.cfg.hold_s))
                if stopped:
                    self.release()


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _pid(session_dir: Path, name: str) -> int:
    return int(json.loads((session_dir / "logs" / f"{name}.ready.json").read_text())["pid"])


class Soak:
    """One soak run: the session in this (the main) thread, as from its command line; the operators and
    the measurements in threads of their own."""

    def __init__(self, cfg: DictConfig, out: Path, log: TextIO) -> None:
        self.cfg, self.out, self.log = cfg, out, log
        self.dir = out / "session"
        argv = [*(str(a) for a in cfg.session), *(str(o) for o in cfg.learner)]
        argv += ["--policy-dir", str(cfg.policy_dir), "--out", str(self.dir), "--steps", str(BUDGET)]
        self.session = session.Session(session.parse_args(argv), stream=log)
        self.summary: dict[str, Any] = {}
        self.ended = threading.Event()  # the session returned
        self.operators = Operators(self.dir, cfg)
        self.client: session.StatusClient | None = None

    def _say(self, text: str) -> None:
        print(f"soak {time.strftime('%H:%M:%S')}: {text}", file=self.log, flush=True)

    def status(self, name: str) -> dict[str, Any] | None:
        assert self.client is not None
        return self.client.status(name, timeout_s=2.0)

    def _check_session(self, deadline: float = float("inf"), what: str = "") -> None:
        if self.ended.is_set():
            raise RuntimeError(f"the session ended: {self.summary.get('error')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {STARTUP_TIMEOUT_S:.0f} s")

    def wait_fine_tuning(self) -> None:
        """Until the session serves and the learner updates (the soak's window starts there)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (self.dir / FILE_NAME).exists():
            self._check_session(deadline, "the session did not start")
            time.sleep(0.5)
        endpoints = load_endpoints(self.dir)
        assert endpoints.learner is not None
        peers = {"learner": endpoints.learner[1], **endpoints.runners}
        self.client = session.StatusClient(
            peers, self.dir / "keys", endpoints.plain, own=session.OPERATOR_KEY
        )
        while ((self.status("learner") or {}).get("updates") or 0) == 0:
            self._check_session(deadline, "the learner did not start fine-tuning")
            time.sleep(0.5)

    def restart_runner(self) -> dict[str, Any]:
        """An e-stop, the runner killed and started again on its state, its latch checked, a release."""
        sig = signal.Signals[f"SIG{self.cfg.restart_signal}"]
        with self.operators.cycle_lock:
            stopped = self.operators.estop("before the runner restart")
            started = time.monotonic()
            pid = self.session.restart_runner(sig)
            state = None
            deadline = time.monotonic() + session.START_TIMEOUT_S
            while state is None and time.monotonic() < deadline:
                state = (self.status(session.RUNNER) or {}).get("state")
            down_s = time.monotonic() - started
            self._say(f"runner restarted after {sig.name} (pid {pid}) in {down_s:.1f} s: {state}")
            if stopped:
                self.operators.release()
        return {"signal": sig.name, "down_s": round(down_s, 2), "state_after": state}

    def drain(self) -> dict[str, Any]:
        """E-stop (no new transitions), then wait until the learner acknowledged all the runner sequenced:
        each side's own count."""
        self.operators.estop("soak end")
        deadline = time.monotonic() + float(self.cfg.drain_timeout_s)
        produced = ingested = None
        while time.monotonic() < deadline:
            runner, learner = self.status(session.RUNNER), self.status("learner")
            if runner is not None and learner is not None and "link" in runner:
                produced, ingested = int(runner["link"]["next_seq"]), int(learner["step"])
                watermark = learner["runners"].get(session.RUNNER, {}).get("acked_seq")
                if runner["link"]["acked_seq"] == produced - 1 == watermark and ingested >= produced:
                    break
            time.sleep(0.5)
        return {"transitions_produced": produced, "transitions_ingested": ingested}

    def window(self) -> dict[str, Any]:
        """Fine-tuning for `seconds` under the operators, the restart in the middle; then the counts."""
        pids = {"learner": _pid(self.dir, "learner"), "runner": _pid(self.dir, "runner")}
        result = {f"{name}_rss_mb_start": rss_mb(pid) for name, pid in pids.items()}
        self._say(f"fine-tuning; the {self.cfg.seconds} s window starts")
        started = time.monotonic()
        workers = [_in_thread(self.operators.poll_status), _in_thread(self.operators.cycle_stops)]
        restart_at: float | None = started + float(self.cfg.seconds) / 2
        while time.monotonic() < started + float(self.cfg.seconds):
            self._check_session()
            if restart_at is not None and time.monotonic() >= restart_at:
                result["restart"], restart_at = self.restart_runner(), None
            time.sleep(0.5)
        self.operators.quit.set()
        for worker in workers:
            worker.join(CLI_TIMEOUT_S + float(self.cfg.hold_s))
        self._check_session()
        result["window_s"] = round(time.monotonic() - started, 1)
        result |= self.drain()
        pids["runner"] = _pid(self.dir, "runner")  # the restarted one
        result |= {f"{name}_rss_mb_end": rss_mb(pid) for name, pid in pids.items()}
        result["ingest_log_bytes"] = disk_bytes(self.dir / "learner", INGEST_LOG)
        learner = self.status("learner") or {}
        return result | {"updates": learner.get("updates"), "policy_version": learner.get("policy_version")}

    def _conduct(self, result: dict[str, Any]) -> None:
        """Start-up, the window, the counts; then the session is told to stop."""
        started = time.monotonic()
        try:
            self.wait_fine_tuning()
            result["startup_s"] = round(time.monotonic() - started, 1)
            result |= self.window()
        except Exception as exc:  # reported in the JSON; the session is stopped either way
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.operators.quit.set()
            self.session.stop.set()

    def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {"error": None}
        conductor = _in_thread(lambda: self._conduct(result))
        try:
            self.summary = self.session.run()
        finally:
            self.ended.set()
            self.operators.quit.set()
            conductor.join(CLI_TIMEOUT_S + session.START_TIMEOUT_S)
            if self.client is not None:
                self.client.close()
        return result | self._outcome(result["error"])

    def _outcome(self, error: str | None) -> dict[str, Any]:
        """The operators' counts; crashes: children that exited with an error (the killed runner was
        replaced and is not one of them)."""
        codes = self.summary.get("exit_codes", {})
        counts = self.operators.counts
        return {
            "crashes": sum(code != 0 for code in codes.values()),
            "exit_codes": codes,
            "error": error or self.summary.get("error"),
            "estops_sent": counts.sent["stop"],
            "estops_confirmed": counts.confirmed["stop"],
            "releases_sent": counts.sent["release"],
            "releases_confirmed": counts.confirmed["release"],
            "status_calls": counts.status_calls,
            "status_unreachable": counts.status_unreachable,
            "status_errors": counts.status_errors,
            "failures": counts.failures,
        }


def _check(cfg: DictConfig) -> None:
    """Bad settings fail here, before a session starts."""
    for key in (
        "seconds",
        "status_every_s",
        "cycle_every_s",
        "hold_s",
        "command_timeout_s",
        "drain_timeout_s",
    ):
        try:
            if float(cfg[key]) <= 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"bench soak: {key}={cfg[key]!r} must be a positive number") from None
    if f"SIG{cfg.restart_signal}" not in signal.Signals.__members__:
        raise ValueError(f"bench soak: restart_signal={cfg.restart_signal!r}: KILL or TERM")


def run_soak_benchmark(cfg: DictConfig) -> dict[str, Any]:
    """One soak run in a fresh folder under `cfg.out`; one dict of measurements (see the module doc)."""
    _check(cfg)
    out = Path(cfg.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "soak.log").open("w") as log:
        result = Soak(cfg, out, log).run()
    result |= {
        "seconds": float(cfg.seconds),
        "equal_transitions": result.get("transitions_produced") is not None
        and result.get("transitions_produced") == result.get("transitions_ingested"),
        "equal_estops": result["estops_sent"] == result["estops_confirmed"],
        "out": str(out),
        "cpu": cpu_description(),
        "load_average_1min": os.getloadavg()[0],
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
