"""`robot-wsrl session` end to end on a tiny InvertedPendulum agent: the outputs, and no process left over
(at the end, and after a SIGINT)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_LEARNER, TINY_SESSION, tiny_policy_dir

from robot_wsrl.apps import session as session_module
from robot_wsrl.apps.session import (
    LEARNER_NICE,
    POLL_S,
    Progress,
    Session,
    exit_status,
    robot_state,
)
from robot_wsrl.apps.session_summary import gate_summary, promoted_versions, promotion_steps, robot_returns
from robot_wsrl.gate.registry import validation_state
from robot_wsrl.learn.plots import plot_episode_returns
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.wire import keys

STEPS = 200
WARMUP = 10  # below the tiny agent's batch size (16): the learner's first update is at step 16
BATCH = 16
TIMEOUT_S = 300.0  # generous: a shared 2-core machine (the session takes under a minute idle, plus up to
# VERDICT_WAIT_S for a validation under way at its end; beside other jobs it took over 150 s)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy_dir(tmp_path_factory.mktemp("policy"))


def _session(policy_dir: Path, out: Path, steps: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "robot_wsrl.apps.cli", "session", "--policy-dir", str(policy_dir)]
    command += [
        "--out",
        str(out),
        "--steps",
        str(steps),
        *TINY_SESSION,
        "--warmup",
        str(WARMUP),
        *TINY_LEARNER,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _assert_no_children_left(summary: dict) -> None:
    assert set(summary["pids"]) == {"robot", "learner", "runner"}
    for name, pid in summary["pids"].items():
        assert _gone(pid), f"{name} (pid {pid}) is still running"


def test_session_fine_tunes_exports_and_leaves_nothing_running(policy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "session"
    proc = _session(policy_dir, out, STEPS)
    output, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, output.decode()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"] is None and not summary["interrupted"]
    assert summary["steps"] == STEPS  # the budget exactly: the runner counts the transitions it hands over
    # lockstep: one UTD round per step after warmup, which is never under one batch: said everywhere
    assert summary["updates"] == STEPS - BATCH + 1
    assert summary["warmup_steps"] == BATCH and summary["warmup_steps_given"] == WARMUP
    assert f"warmup {BATCH} steps, not {WARMUP}: " in output.decode()
    assert summary["versions"] >= 3  # 141 updates, a version every 40
    assert summary["exit_codes"] == {"runner": 0, "learner": 0, "robot": 0}
    assert (out / "returns.png").stat().st_size > 0
    lines = (out / "returns.csv").read_text().splitlines()
    assert lines[0] == "step,runner,return,length,policy_version,success" and len(lines) > 1
    # Hopper has no success signal: no outcome in the CSV, no success rates in the summary.
    assert all(line.endswith(",") for line in lines[1:]) and "baseline_success_rate" not in summary
    # The emulated robot stands for hardware: it ran only versions the gate promoted, and the pre-trained
    # version 0, which passes by definition (on a fast host the session may end before the measurement
    # of version 0 that is only informational has finished, and then it has no verdict file).
    gate = summary["gate"]
    assert all(v["reasons"] for v in gate["held_back"] + gate["unfinished"])
    made = {int(path.parent.name[1:]) for path in (out / "learner" / "policies").glob("v*/policy.json")}
    listed = gate["promoted"] + [v["version"] for v in gate["held_back"] + gate["unfinished"]]
    assert sorted(listed) == sorted(made), gate  # every version the learner made, in exactly one list
    ran = {int(line.split(",")[4]) for line in lines[1:]}
    assert 0 in ran and ran - {0} <= set(gate["promoted"]), (ran, gate)
    _assert_promoted_policy(out, summary)
    _assert_robot_returns(summary, [line.split(",")[:5] for line in lines[1:]])
    # The robot's own state, last seen on its control channel: running, or idle once its budget was done.
    assert summary["robot"]["state"] in ("running", "idle"), summary["robot"]
    assert summary["robot"]["runner_state"] in ("warmup", "fine_tuning", "idle"), summary["robot"]
    _assert_private_keys(out)
    _assert_no_children_left(summary)


def _assert_promoted_policy(out: Path, summary: dict) -> None:
    """SESSION/policy is the last version the gate promoted (else the pre-trained v0), with its passed
    verdict on these very bytes; the learner's latest, if another, is apart and named as unvalidated."""
    promoted = summary["promoted_versions"]
    assert promoted == sorted(set(promoted)) and 0 not in promoted
    assert set(promoted) <= set(summary["gate"]["promoted"]) | {0}, summary["gate"]
    assert summary["policy_version"] == max(promoted, default=0), summary
    policy = OnnxPolicy.load(out / "policy" / "policy.onnx")
    assert policy.version == summary["policy_version"] and summary["policy"] == str(out / "policy")
    if policy.version > 0:
        assert validation_state(out / "policy", policy.sha256) == "passed"
    else:  # the pre-trained policy passes by definition; its informational measurement may be unfinished
        assert validation_state(out / "policy", policy.sha256) in ("passed", "-")
    latest, unvalidated = summary["versions"], out / "policy-latest-unvalidated"
    if latest == summary["policy_version"]:
        assert summary["latest_unvalidated_version"] is None and not unvalidated.exists()
    else:
        assert latest > summary["policy_version"] and summary["latest_unvalidated_version"] == latest
        assert OnnxPolicy.load(unvalidated / "policy.onnx").version == latest
        assert latest not in promoted
    assert "return_first5_mean" not in summary and "return_last5_mean" not in summary


def _assert_robot_returns(summary: dict, rows: list[list[str]]) -> None:
    """Per version what the robot ran and returned, its baseline on v0 and its last third, from the CSV."""
    by_version: dict[int, list[float]] = {}
    for _, _, ret, _, version in rows:
        by_version.setdefault(int(version), []).append(float(ret))
    ran = summary["versions_ran"]
    assert [r["version"] for r in ran] == sorted(by_version)
    for r in ran:
        assert r["episodes"] == len(by_version[r["version"]])
        assert r["return_mean"] == pytest.approx(sum(by_version[r["version"]]) / r["episodes"])
    assert sum(r["episodes"] for r in ran) == summary["episodes"] == len(rows)
    assert summary["baseline_return"] == pytest.approx(sum(by_version[0]) / len(by_version[0]))
    last = [float(ret) for step, _, ret, _, _ in rows if int(step) > STEPS * 2 / 3]
    if last:
        assert summary["robot_return_last_third"] == pytest.approx(sum(last) / len(last))
        assert summary["last_third_over_baseline"] == pytest.approx(
            summary["robot_return_last_third"] / summary["baseline_return"]
        )
    else:
        assert summary["robot_return_last_third"] is None


def test_robot_returns_per_version_baseline_and_last_third() -> None:
    rows = [
        {"step": 50, "return": 10.0, "policy_version": 0},
        {"step": 100, "return": 20.0, "policy_version": 0},
        {"step": 200, "return": 30.0, "policy_version": 2},
        {"step": 280, "return": 50.0, "policy_version": 2},
        {"step": 300, "return": 40.0, "policy_version": 3},
    ]
    got = robot_returns(rows, 300)
    assert got["versions_ran"] == [
        {"version": 0, "episodes": 2, "return_mean": 15.0},
        {"version": 2, "episodes": 2, "return_mean": 40.0},
        {"version": 3, "episodes": 1, "return_mean": 40.0},
    ]
    assert got["baseline_return"] == 15.0 and got["baseline_episodes"] == 2
    assert got["robot_return_last_third"] == 45.0 and got["robot_episodes_last_third"] == 2  # after step 200
    assert got["last_third_over_baseline"] == 3.0
    none = robot_returns([{"step": 10, "return": 5.0, "policy_version": 1}], 10)
    assert none["baseline_return"] is None and none["last_third_over_baseline"] is None
    assert robot_returns([], 0)["robot_return_last_third"] is None
    assert got["last_third_minus_baseline"] == 30.0 and got["last_third_over_baseline_note"] is None
    assert "no baseline" in none["last_third_over_baseline_note"]


def test_a_session_whose_robot_ran_only_v0_says_its_gain_is_not_learning() -> None:
    rows = [
        {"step": 50, "return": 100.0, "policy_version": 0},
        {"step": 290, "return": 150.0, "policy_version": 0},
    ]
    got = robot_returns(rows, 300)
    assert got["last_third_over_baseline"] == 150.0 / 125.0  # measured as ever, for the tools that read it
    assert "the robot ran only the pre-trained v0" in got["last_third_over_baseline_note"]


def test_a_negative_baseline_has_a_difference_and_says_why_it_has_no_ratio() -> None:
    """A camera task's returns are negative: their ratio means nothing, their difference does."""
    rows = [
        {"step": 50, "return": -20.0, "policy_version": 0},
        {"step": 290, "return": -5.0, "policy_version": 1},
    ]
    got = robot_returns(rows, 300)
    assert got["baseline_return"] == -20.0 and got["robot_return_last_third"] == -5.0
    assert got["last_third_over_baseline"] is None and got["last_third_minus_baseline"] == 15.0
    assert "not positive" in got["last_third_over_baseline_note"]


def test_a_validation_the_learner_stopped_is_listed_not_lost(tmp_path: Path) -> None:
    """A validation that finished (report.json) or ran as the learner stopped, with no verdict.json, and a
    version still waiting its turn (no validation folder yet, as after a Ctrl-C)."""
    policies = _fake_learner_policies(tmp_path, {0: "passed", 1: "failed"})
    waiting = policies / "v000004"
    shutil.copytree(policies / "v000003", waiting)
    for version, report in ((2, {"passed": True, "reasons": []}), (3, None)):
        folder = policies / f"v{version:06d}" / "validation"
        folder.mkdir()
        if report is not None:
            (folder / "report.json").write_text(json.dumps(report))
    gate = gate_summary(policies)
    assert gate["promoted"] == [0] and [v["version"] for v in gate["held_back"]] == [1]
    finished, running, queued = gate["unfinished"]
    assert queued["version"] == 4 and "validation not started at shutdown" in queued["reasons"][0]
    assert str(waiting) in queued["reasons"][0]
    assert (finished["version"], finished["status"], finished["report_passed"]) == (2, "unfinished", True)
    assert "finished at shutdown (report.json: passed) but no verdict" in finished["reasons"][0]
    assert (running["version"], running["report_passed"]) == (3, None)
    assert "validation unfinished at shutdown: never promoted" in running["reasons"][0]


class _Learner:
    """A status client whose learner validates for `busy` polls, then is idle."""

    def __init__(self, busy: int) -> None:
        self.busy, self.polls = busy, 0

    def status(self, name: str) -> dict:
        self.polls += 1
        return {"gate": {"validating": self.polls <= self.busy}}


def test_the_end_waits_for_a_validation_under_way_and_no_longer_than_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = Session(argparse.Namespace(out=tmp_path), stream=io.StringIO())
    session.children = {"runner": _Exited(0)}  # its budget done; a learner gone would end the wait too
    learner = _Learner(busy=2)
    session._await_verdict(learner)  # type: ignore[arg-type]
    assert learner.polls == 3 and session.last_status == {"gate": {"validating": False}}
    monkeypatch.setattr(session_module, "VERDICT_WAIT_S", 1.5)
    started = time.monotonic()
    session._await_verdict(_Learner(busy=1_000_000))  # type: ignore[arg-type]
    assert 1.5 <= time.monotonic() - started < 30.0
    session.stop.set()  # a stop (Ctrl-C) does not wait
    stopped = _Learner(busy=1_000_000)
    session._await_verdict(stopped)  # type: ignore[arg-type]
    assert stopped.polls == 0
    session.stop.clear()
    session.children["learner"] = _Exited(1)
    with pytest.raises(session_module.ChildFailed, match="learner exited with code 1"):
        session._await_verdict(_Learner(busy=1_000_000))  # type: ignore[arg-type]


class _Exited:
    """A child process that has exited with `code`."""

    def __init__(self, code: int) -> None:
        self.code = code

    def poll(self) -> int:
        return self.code


def test_exit_status_is_the_same_for_every_child() -> None:
    """2: bad input, whoever refused it; 1: any other failure of any child (or of the session); 130: stop."""
    ok = {"error": None, "failed_child": None, "interrupted": False}
    assert exit_status(ok) == 0 and exit_status(ok | {"interrupted": True}) == 130
    for name in ("emulated robot", "learner", "runner"):
        for code, expected in ((2, 2), (1, 1), (-9, 1), (None, 1)):
            failed = {"error": "x", "failed_child": {"name": name, "exit_code": code}, "interrupted": False}
            assert exit_status(failed) == expected, (name, code)
    assert exit_status({"error": "no progress for 60 s", "failed_child": None, "interrupted": False}) == 1


def _fake_learner_policies(root: Path, verdicts: dict[int, str]) -> Path:
    """A learner's policies/ folder: versions 0..3, each with a verdict of `verdicts` (none if absent)."""
    policies = root / "learner" / "policies"
    for version in range(4):
        folder = policies / f"v{version:06d}"
        folder.mkdir(parents=True)
        (folder / "policy.onnx").write_text(f"onnx v{version}")
        (folder / "policy.json").write_text(json.dumps({"version": version, "step": 40 * version}))
        if version in verdicts:
            (folder / "validation").mkdir()
            verdict = {"version": version, "status": verdicts[version], "reasons": []}
            (folder / "validation" / "verdict.json").write_text(json.dumps(verdict))
    return policies


def test_export_copies_the_last_promoted_version_and_names_the_latest_unvalidated(tmp_path: Path) -> None:
    _fake_learner_policies(tmp_path, {0: "passed", 1: "passed", 2: "passed", 3: "failed"})
    session = Session(argparse.Namespace(out=tmp_path))
    found = session._export([1, 2])
    assert found == {
        "versions": 3,
        "policy_version": 2,
        "policy": str(tmp_path / "policy"),
        "latest_unvalidated_version": 3,
        "latest_unvalidated_policy": str(tmp_path / "policy-latest-unvalidated"),
    }
    assert (tmp_path / "policy" / "policy.onnx").read_text() == "onnx v2"
    assert json.loads((tmp_path / "policy" / "validation" / "verdict.json").read_text())["status"] == "passed"
    assert (tmp_path / "policy-latest-unvalidated" / "policy.onnx").read_text() == "onnx v3"


def test_export_without_a_promotion_keeps_the_pretrained_policy(tmp_path: Path) -> None:
    _fake_learner_policies(tmp_path, {1: "failed"})
    found = Session(argparse.Namespace(out=tmp_path))._export([])
    assert found["policy_version"] == 0 and found["latest_unvalidated_version"] == 3
    assert (tmp_path / "policy" / "policy.onnx").read_text() == "onnx v0"


def test_export_of_a_promoted_latest_has_nothing_unvalidated(tmp_path: Path) -> None:
    _fake_learner_policies(tmp_path, {3: "passed"})
    found = Session(argparse.Namespace(out=tmp_path))._export([3])
    assert found["policy_version"] == 3 and found["latest_unvalidated_version"] is None
    assert not (tmp_path / "policy-latest-unvalidated").exists()


def test_returns_plot_marks_promotions_and_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policies = _fake_learner_policies(tmp_path, {})
    rows = [
        {"step": 50 * i, "runner": "robot1", "return": float(i), "length": 50, "policy_version": v}
        for i, v in enumerate([0, 0, 0, 2, 2, 3], start=1)
    ]
    promotions = promotion_steps(rows, [2, 3, 1], policies, warmup=60, utd=4)
    assert promotions == [(2, 200), (3, 300), (1, 69)]  # v1 never ran: made after 40 updates at UTD 4
    csv_path = tmp_path / "returns.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    versions = [(0, 1.0, "pre-trained", None), (69, 2.0, "promoted", None), (99, 0.5, "held back", None)]
    png = plot_episode_returns(csv_path, tmp_path / "returns.png", 60, "t", versions, promotions, 2.0)
    assert png.stat().st_size > 0
    labels = _legend(monkeypatch, csv_path, tmp_path, versions)
    assert "pre-trained policy (v0, the starting version), validation return" in labels
    assert "learner version: promoted, validation return" in labels  # v1 only: v0 was never promoted
    assert not any(label.startswith("mean of the last") for label in labels)  # 6 episodes: no window
    many = [{**rows[0], "step": 10 * i} for i in range(1, 31)]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(many)
    assert "mean of the last 3 episodes" in _legend(monkeypatch, csv_path, tmp_path, versions)


def _legend(monkeypatch: pytest.MonkeyPatch, csv_path: Path, tmp_path: Path, versions: list) -> list[str]:
    """The returns plot's legend labels (its figure caught as it is saved)."""
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k)))
    plot_episode_returns(csv_path, tmp_path / "legend.png", 60, "t", versions, [], None)
    monkeypatch.undo()
    return saved[0].axes[0].get_legend_handles_labels()[1]


def test_promoted_versions_are_the_gates_learned_promotions() -> None:
    gate = {"promoted": [0, 2], "held_back": [{"version": 1, "status": "failed", "reasons": ["worse"]}]}
    status = {
        "gate": {
            "enabled": True,
            "deployed_version": 4,
            "verdicts": [{"version": 3, "status": "failed"}, {"version": 4, "status": "passed"}],
        }
    }
    assert promoted_versions(gate, status) == [2, 4]  # v0 passes by definition: not a promotion
    assert promoted_versions({"promoted": [0], "held_back": []}, None) == []


def _assert_private_keys(out: Path) -> None:
    """CURVE by default, with keys only this user can read."""
    endpoints = json.loads((out / "endpoints.json").read_text())
    assert endpoints["plain"] is False and endpoints["keys"] == "keys"
    keydir = out / "keys"
    assert keydir.stat().st_mode & 0o777 == 0o700
    names = {path.name for path in keydir.iterdir()}
    assert {"learner.key_secret", "robot1.key_secret", "console.key_secret", "session.key_secret"} <= names
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in keydir.iterdir())


def test_sigint_stops_everything(policy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "session"
    proc = _session(policy_dir, out, 1_000_000)
    deadline = time.monotonic() + TIMEOUT_S
    while not list((out / "learner" / "policies").glob("v000001/policy.json")):  # fine-tuning under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()[-4000:]
        time.sleep(0.2)
    # The robot comes first on the CPU: the learner (and its validations) niced, the runner not.
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, _ready_pid(out, "learner")) == min(own + LEARNER_NICE, 19)
    assert os.getpriority(os.PRIO_PROCESS, _ready_pid(out, "runner")) <= own
    # The operator's tools find the session by its folder: status, then a stop every runner confirms.
    status = _operator("status", out)
    assert status.returncode == 0 and "robot1" in status.stdout, status.stdout + status.stderr
    # Another local user, without the session's keys, reaches nothing: plain, or with a console key of
    # their own (and the peers' public keys, which are no secret).
    assert _operator("stop", out, "--plain", "--timeout", "1").returncode != 0
    assert (
        _operator("stop", out, "--keys", str(_foreign_keys(out, tmp_path)), "--timeout", "1").returncode != 0
    )
    assert _operator("status", out).returncode == 0  # still running
    stop = _operator("stop", out)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _operator("status", out).returncode == 1  # a runner e-stopped
    time.sleep(2 * POLL_S)  # the session's own status poll sees it too
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60.0)
    assert proc.returncode == 130, output.decode()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["versions"] >= 1
    # The robot's real state, not the learner's phase: e-stopped, by the operator's console key.
    assert summary["robot"]["state"] == "estopped", summary["robot"]
    assert "console" in summary["robot"]["last_stop_detail"]
    assert (out / "policy" / "policy.onnx").exists()
    assert summary["policy_version"] == max(summary["promoted_versions"], default=0)
    _assert_no_children_left(summary)


def test_a_killed_session_takes_its_learner_and_runner_with_it(policy_dir: Path, tmp_path: Path) -> None:
    """kill -9 of the session itself (it cannot clean up): the kernel stops its children for it."""
    out = tmp_path / "session"
    proc = _session(policy_dir, out, 1_000_000)
    ready = out / "logs" / "learner.ready.json"
    deadline = time.monotonic() + TIMEOUT_S
    while not (ready.exists() and (out / "runner" / "policies").exists()):  # learner up, runner started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()[-4000:]
        time.sleep(0.2)
    learner_pid = json.loads(ready.read_text())["pid"]
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    pids = {int(pid) for pid in children} | {learner_pid}
    assert len(pids) >= 3  # learner, runner and the emulated robot
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 60.0
    while not all(_gone(pid) or _zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, {pid: _cmdline(pid) for pid in pids if not _gone(pid)}
        time.sleep(0.2)


def _cmdline(pid: int) -> str:
    """What a process that outlived its session is, for the failure message."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return "?"


def _zombie(pid: int) -> bool:
    """Exited but not reaped (its parent, this test's session, was killed: init reaps it soon)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _ready_pid(session: Path, name: str) -> int:
    return int(json.loads((session / "logs" / f"{name}.ready.json").read_text())["pid"])


def _foreign_keys(session: Path, tmp_path: Path) -> Path:
    """A key dir with a console key the session never saw, and the session's public keys."""
    keydir = tmp_path / "foreign"
    keys.new_identity(keydir, "console", "console")
    for name in ("learner", "robot1"):
        shutil.copy(session / "keys" / f"{name}.key", keydir / f"{name}.key")
    return keydir


def _operator(command: str, session: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", command, "--session", str(session), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_robot_state_is_the_runners_own() -> None:
    """What the progress line and summary.json call the robot's state, from its control status."""
    running = {"state": "fine_tuning", "link": {"holds": []}}
    assert robot_state(running) == "running" == robot_state({"state": "warmup"})
    assert robot_state(running | {"link": {"holds": ["credit"]}}) == "running"  # lockstep's wait
    assert robot_state({"state": "estopped", "link": {"holds": ["learner_lost"]}}) == "estopped"
    assert robot_state({"state": "faulted"}) == "faulted"
    assert robot_state({"state": "paused", "link": {"holds": ["learner_lost", "credit"]}}) == (
        "holding (learner_lost)"
    )
    assert robot_state({"state": "paused", "link": {"holds": ["operator"]}}) == "paused"
    assert robot_state({"runner_id": "robot1", "attached": False}) == "starting"
    assert robot_state(None) == "unknown"


def test_progress_line_leads_with_the_robots_state() -> None:
    learner = {
        "phase": "fine_tuning",
        "step": 900,
        "updates": 800,
        "policy_version": 3,
        "gate": {"deployed_version": 2},
        "runners": {"robot1": {"recent_returns": [10.0, 20.0]}},
    }
    robot = {"state": "estopped", "last_stop_cause": "operator", "last_stop_detail": "e-stop from console"}
    stream = io.StringIO()
    Progress(stream).show(12.0, 6000, learner, robot)
    line = stream.getvalue()
    assert "robot ESTOPPED (e-stop from console)" in line and "learner fine_tuning" in line, line
    assert "recent return     15.0" in line
