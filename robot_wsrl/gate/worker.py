"""The validation worker beside the learner: every new policy version is validated in simulation, in a child
process, before a hardware runner may receive it.

Each validation is `robot-wsrl validate` in its own process, so it never blocks the learner's updates and
never shares the learner's interpreter (torch, threads). The reference is the last version that passed;
at first the pre-trained version 0, which passes by definition but is still measured once, so its report
(and its measured episodes, reused by later comparisons) exists like any other. At most one validation
runs and one waits: a version that arrives while another waits replaces it, and the replaced one gets a
"superseded" verdict, so no version is ever skipped silently. Every verdict is also written to
`VERSION_DIR/validation/verdict.json`, where the registry reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from robot_wsrl.core.artifacts import POLICY_ONNX, REPORT, VALIDATE_LOG, VALIDATION_DIR, VERDICT, sidecar_path
from robot_wsrl.core.files import write_atomic
from robot_wsrl.core.lifetime import die_with_parent
from robot_wsrl.gate.registry import validation_state

DEFAULT_TIMEOUT_S = 1800.0
KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on one version; `reasons` says why it was held back (or notes, when passed)."""

    version: int
    status: str  # passed | failed | superseded | error
    reasons: list[str]
    report: Path | None
    reference_version: int | None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class _Job:
    version: int
    directory: Path
    reference: tuple[int, Path] | None = None
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started: float = field(default=0.0)

    @property
    def out(self) -> Path:
        return self.directory / VALIDATION_DIR


class ValidationWorker:
    """Validates policy versions in child processes; see the module docstring. Not thread-safe: the learner
    calls `submit` and `poll` from its own loop.

    `overrides`, `config`, `keydir` and `allow_unsigned` are passed to every `robot-wsrl validate`;
    `timeout_s` bounds one validation (a hung one becomes an "error" verdict).
    """

    def __init__(
        self,
        initial: Path,
        *,
        initial_version: int = 0,
        overrides: list[str] | None = None,
        config: Path | None = None,
        keydir: Path | None = None,
        allow_unsigned: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._args: list[str] = [*(overrides or [])]
        if config is not None:
            self._args += ["--config", str(config)]
        if keydir is not None:
            self._args += ["--keys", str(keydir)]
        if allow_unsigned:
            self._args.append("--allow-unsigned")
        if not (Path(initial) / POLICY_ONNX).is_file():
            raise ValueError(f"{initial}: no {POLICY_ONNX} to validate")
        self.timeout_s = timeout_s
        self._initial_version = initial_version
        self._reference = (initial_version, Path(initial))
        self._latest = initial_version
        self._running: _Job | None = None
        self._pending: _Job | None = None
        self._verdicts: list[Verdict] = []
        initial_job = _Job(initial_version, Path(initial))
        if not _already_measured(initial_job):  # a restart keeps the deployed version's report
            self._start(initial_job)

    @property
    def reference(self) -> tuple[int, Path]:
        """(version, folder) of the last version that passed: what the next one is compared with."""
        return self._reference

    @property
    def busy(self) -> bool:
        return self._running is not None or self._pending is not None

    def submit(self, version: int, directory: Path) -> None:
        """Queue `directory` (holding policy.onnx) for validation; versions must increase."""
        if version <= self._latest:
            raise ValueError(
                f"version {version} submitted after version {self._latest}: versions must increase"
            )
        if not (Path(directory) / POLICY_ONNX).is_file():
            raise ValueError(f"{directory}: no {POLICY_ONNX} to validate")
        self._latest = version
        if self._pending is not None:
            skipped = self._pending
            self._finish(
                skipped, "superseded", [f"superseded by version {version} before its validation started"]
            )
        self._pending = _Job(version, Path(directory))
        self._advance()

    def poll(self) -> list[Verdict]:
        """The verdicts reached since the last poll (oldest first); starts the waiting validation if free."""
        self._advance()
        verdicts, self._verdicts = self._verdicts, []
        return verdicts

    def wait(self, timeout_s: float, period_s: float = 0.05) -> list[Verdict]:
        """Poll until nothing runs or waits, or `timeout_s` passes; returns the verdicts reached."""
        deadline = time.monotonic() + timeout_s
        verdicts = self.poll()
        while self.busy and time.monotonic() < deadline:
            time.sleep(period_s)
            verdicts += self.poll()
        return verdicts

    def close(self) -> None:
        """Kill a running validation (its process group) and drop the waiting one."""
        job, self._running, self._pending = self._running, None, None
        if job is not None:
            self._kill(job)

    def __enter__(self) -> ValidationWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- internals -----

    def _advance(self) -> None:
        job = self._running
        if job is not None and job.process is not None:
            code = job.process.poll()
            if code is None and time.monotonic() - job.started > self.timeout_s:
                self._kill(job)
                self._running = None
                self._finish(job, "error", [f"validation timed out after {self.timeout_s:.0f} s"])
            elif code is not None:
                self._close_log(job)
                self._running = None
                self._conclude(job, code)
        if self._running is None and self._pending is not None:
            job, self._pending = self._pending, None
            job.reference = self._reference
            self._start(job)

    def _start(self, job: _Job) -> None:
        cmd = [sys.executable, "-m", "robot_wsrl.apps.cli", "validate", str(job.directory / POLICY_ONNX)]
        cmd += ["--out", str(job.out), *self._args]
        if job.reference is not None:
            cmd += ["--reference", str(job.reference[1] / POLICY_ONNX)]
        job.out.mkdir(parents=True, exist_ok=True)
        for stale in (REPORT, VERDICT):  # an earlier run's must not count, nor point to a report now gone
            (job.out / stale).unlink(missing_ok=True)
        job.log = (job.out / VALIDATE_LOG).open("wb")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            job.process = subprocess.Popen(
                cmd,
                stdout=job.log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # a killed learner leaves no validation behind
            )
        except OSError as exc:  # the learner keeps running; the version is held back and says why
            self._close_log(job)
            self._finish(job, "error", [f"cannot start robot-wsrl validate: {exc}"])
            return
        job.started = time.monotonic()
        self._running = job

    def _conclude(self, job: _Job, code: int) -> None:
        report_path = job.out / REPORT
        if code not in (0, 1) or not report_path.is_file():
            self._finish(job, "error", [f"robot-wsrl validate exited {code}: {self._log_tail(job)}"])
            return
        try:
            report = json.loads(report_path.read_text())
            failures = [str(reason) for reason in report["reasons"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._finish(job, "error", [f"{report_path}: unreadable report ({type(exc).__name__}: {exc})"])
            return
        if job.version == self._initial_version:
            notes = [f"measured (informational): {reason}" for reason in failures]
            reasons = [f"version {job.version} is the pre-trained policy: passes by definition", *notes]
            self._finish(job, "passed", reasons, report_path)
        elif report["passed"]:
            self._reference = (job.version, job.directory)
            self._finish(job, "passed", [], report_path)
        else:
            self._finish(job, "failed", failures, report_path)

    def _finish(self, job: _Job, status: str, reasons: list[str], report: Path | None = None) -> None:
        reference = None if job.reference is None else job.reference[0]
        verdict = Verdict(job.version, status, reasons, report, reference)
        self._verdicts.append(verdict)
        record = {
            "version": job.version,
            "sha256": _sha256(job.directory),
            "status": status,
            "reasons": reasons,
            "report": None if report is None else str(report),
            "reference_version": reference,
            "decided": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        job.out.mkdir(parents=True, exist_ok=True)
        write_atomic(job.out / VERDICT, (json.dumps(record, indent=2) + "\n").encode())

    def _kill(self, job: _Job) -> None:
        if job.process is not None and job.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it exited between poll and kill
                os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait(KILL_WAIT_S)
        self._close_log(job)

    @staticmethod
    def _close_log(job: _Job) -> None:
        if job.log is not None:
            job.log.close()
            job.log = None

    @staticmethod
    def _log_tail(job: _Job) -> str:
        try:
            lines = (job.out / VALIDATE_LOG).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"


def _sha256(directory: Path) -> str | None:
    """The policy's sha256 as its sidecar states it (None if unreadable)."""
    try:
        return json.loads(sidecar_path(directory / POLICY_ONNX).read_text()).get("sha256")
    except (OSError, ValueError):
        return None


def _already_measured(job: _Job) -> bool:
    """Its passed verdict and report, on these very bytes, are on disk (a learner restarted): measuring the
    deployed version again would only cost the episodes a candidate reuses from its report."""
    sha256 = _sha256(job.directory)
    passed = sha256 is not None and validation_state(job.directory, sha256) == "passed"
    return passed and (job.out / REPORT).is_file()
