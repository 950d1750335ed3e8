"""What a session's files say once it ends: the robot's episodes (from the learner's durable ingest log),
the gate's verdicts per version (none left out, an unfinished validation included) and the returns
against the pre-trained baseline, as summary.json, returns.csv and the returns plot read them. Apart from
session.py so that the process orchestration and the accounting can be read (and tested) on their own."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from robot_wsrl.core.artifacts import POLICY_SIDECAR, REPORT, VALIDATION_DIR, VERDICT


def episode_returns(log_path: Path) -> list[dict[str, Any]]:
    """Each finished episode (in arrival order at the learner): the step it ended at, return, length, the
    policy version that ended it and whether it succeeded (None for a task without a success signal)."""
    from robot_wsrl.learn.ingest_log import IngestLog

    rows: list[dict[str, Any]] = []
    running: dict[tuple[str, int], list[float]] = {}
    step = 0
    log = IngestLog(log_path)
    try:
        for batch in log.replay():
            outcomes = batch.successes()
            for i in range(batch.count):
                step += 1
                key = (batch.runner_id, int(batch.episode_id[i]))
                acc = running.setdefault(key, [0.0, 0])
                acc[0] += float(batch.reward[i])
                acc[1] += 1
                if batch.terminated[i] or batch.truncated[i]:
                    ret, length = running.pop(key)
                    rows.append(
                        {
                            "step": step,
                            "runner": batch.runner_id,
                            "return": ret,
                            "length": int(length),
                            "policy_version": int(batch.policy_version[i]),
                            "success": outcomes.get(i),
                        }
                    )
    finally:
        log.close()
    return rows


def gate_summary(policies: Path) -> dict[str, Any]:
    """Which versions the validation gate promoted to the robot, which it held back and why, and which it
    had not judged when the learner stopped (`unfinished_validation`: begun, or still waiting its turn):
    every version folder is in exactly one list."""
    promoted, held_back, unfinished = [], [], []
    for version_dir in sorted(p for p in policies.glob("v*") if (p / POLICY_SIDECAR).is_file()):
        folder = version_dir / VALIDATION_DIR
        if not (folder / VERDICT).is_file():
            unfinished.append(unfinished_validation(folder))
            continue
        verdict = json.loads((folder / VERDICT).read_text())
        if verdict["status"] == "passed":
            promoted.append(verdict["version"])
        else:
            held_back.append({k: verdict[k] for k in ("version", "status", "reasons")})
    return {"promoted": promoted, "held_back": held_back, "unfinished": unfinished}


def unfinished_validation(folder: Path) -> dict[str, Any]:
    """A validation the learner stopped before it recorded a verdict, or never began (the session's end came
    first): the version was never promoted (v0, the pre-trained policy, runs without one). Its report, if the
    validation finished just before, says what the gate measured (`report_passed`)."""
    version = int(folder.parent.name[1:])
    start = "the pre-trained v0 runs without a verdict; " if version == 0 else "never promoted; "
    entry: dict[str, Any] = {"version": version, "status": "unfinished", "report_passed": None}
    report = folder / REPORT
    if not folder.is_dir():
        why = "validation not started at shutdown (it waited for an earlier version's)"
    elif report.is_file():
        entry["report_passed"] = bool(json.loads(report.read_text())["passed"])
        measured = "passed" if entry["report_passed"] else "failed"
        why = f"validation finished at shutdown ({REPORT}: {measured}) but no verdict was recorded"
    else:
        why = "validation unfinished at shutdown"
    entry["reasons"] = [f"{why}: {start}see {folder if folder.is_dir() else folder.parent}"]
    return entry


def made_at_step(sidecar: Path, warmup: int, utd: int) -> int:
    """The environment step a learner's version was made at, from its sidecar's update count: in lockstep
    the learner owes `utd` updates per step from the last warmup step on (0 for the pre-trained v0)."""
    updates = int(json.loads(sidecar.read_text()).get("step") or 0)
    return warmup + -(-updates // utd) - 1 if updates else 0


def validation_results(policies: Path, warmup: int, utd: int) -> list[dict[str, Any]]:
    """Each version of the learner the gate judged (passed or failed, with its report): its status, the
    environment step it was made at, and per preset validated its mean return and success rate (None for a
    task without a success signal), as summary.json's gate.validated."""
    results = []
    for verdict_path in sorted(policies.glob(f"v*/{VALIDATION_DIR}/{VERDICT}")):
        verdict = json.loads(verdict_path.read_text())
        report_path = verdict_path.with_name(REPORT)
        if verdict["status"] not in ("passed", "failed") or not report_path.exists():
            continue
        variants = json.loads(report_path.read_text())["candidate"]["variants"]
        results.append(
            {
                "version": int(verdict["version"]),
                "status": verdict["status"],
                "made_at_step": made_at_step(verdict_path.parents[1] / POLICY_SIDECAR, warmup, utd),
                "variants": {
                    name: {"return_mean": v["return_mean"], "success_rate": v.get("success_rate")}
                    for name, v in variants.items()
                },
            }
        )
    return results


def validated_versions(
    results: list[dict[str, Any]], preset: str
) -> list[tuple[int, float, str, float | None]]:
    """The learner's side of the plot, from `validation_results`: each judged version as (environment step
    it was made at, its validation return on the robot's preset, or the mean over the presets validated,
    what the gate made of it: `pre-trained` (v0, the starting policy: never promoted, it passes by
    definition), `promoted` or `held back`, its success rate likewise, or None for a task without one)."""
    points = []
    for result in results:
        variants = result["variants"]
        chosen = [variants[preset]] if preset in variants else list(variants.values())
        rates = [v["success_rate"] for v in chosen]
        success = None if None in rates else sum(rates) / len(rates)
        mean_return = sum(v["return_mean"] for v in chosen) / len(chosen)
        if result["version"] == 0:
            role = "pre-trained"
        else:
            role = "promoted" if result["status"] == "passed" else "held back"
        points.append((result["made_at_step"], mean_return, role, success))
    return points


def promoted_versions(gate: dict[str, Any], learner_status: dict[str, Any] | None) -> list[int]:
    """The learned versions (1 and up) the gate promoted to the robot: its passed verdicts on disk
    (`gate_summary`) and those in the learner's last gate status, with the version it last deployed.
    Version 0, the pre-trained policy, passes by definition and is not counted."""
    found = set(gate["promoted"])
    status = (learner_status or {}).get("gate") or {}
    found |= {int(v["version"]) for v in status.get("verdicts", []) if v.get("status") == "passed"}
    if status.get("enabled") and status.get("deployed_version") is not None:
        found.add(int(status["deployed_version"]))
    return sorted(v for v in found if v > 0)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _success_rate(rows: list[dict[str, Any]]) -> float | None:
    """The share of `rows` that succeeded, of those reporting an outcome (None if none does)."""
    return _mean([float(r["success"]) for r in rows if r.get("success") is not None])


def robot_returns(rows: list[dict[str, Any]], total_steps: int) -> dict[str, Any]:
    """What the robot ran and returned (`episode_returns` rows): per policy version; the baseline, its
    mean return on version 0 (the frozen pre-trained policy, warmup included: the same preset, the same
    sampling); its mean over the episodes that ended in the last third of the session's `total_steps`
    environment steps, and that minus the baseline (defined whenever both are) and over it: a ratio only of
    a positive baseline (a ratio of negative returns, as a camera task's, says nothing), its null explained
    in `last_third_over_baseline_note`. For a task with a success signal (an episode reported an outcome),
    the success rates beside the returns: per version, `baseline_success_rate` and
    `robot_success_rate_last_third`; absent for a task without one."""
    by_version: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_version.setdefault(int(row["policy_version"]), []).append(row)
    has_success = any(row.get("success") is not None for row in rows)
    returns = {v: [float(r["return"]) for r in ran] for v, ran in by_version.items()}
    baseline = _mean(returns.get(0, []))
    last_rows = [r for r in rows if r["step"] > total_steps * 2 / 3]
    last_mean = _mean([float(r["return"]) for r in last_rows])
    ratio = None if last_mean is None or baseline is None or baseline <= 0 else last_mean / baseline
    if baseline is None:
        note = "no baseline: the robot finished no episode on the pre-trained v0"
    elif last_mean is None:
        note = "no episode ended in the session's last third"
    elif ratio is None:
        note = f"no ratio: the baseline return {baseline:.1f} is not positive; see last_third_minus_baseline"
    elif set(by_version) == {0}:
        note = "the robot ran only the pre-trained v0: the last third and the baseline are the same policy"
    else:
        note = None
    versions = []
    for v, ran in sorted(by_version.items()):
        versions.append({"version": v, "episodes": len(ran), "return_mean": _mean(returns[v])})
        if has_success:
            versions[-1]["success_rate"] = _success_rate(ran)
    summary: dict[str, Any] = {
        "versions_ran": versions,
        "baseline_return": baseline,
        "baseline_episodes": len(returns.get(0, [])),
        "robot_return_last_third": last_mean,
        "robot_episodes_last_third": len(last_rows),
        "last_third_minus_baseline": None if last_mean is None or baseline is None else last_mean - baseline,
        "last_third_over_baseline": ratio,
        "last_third_over_baseline_note": note,
    }
    if has_success:
        summary["baseline_success_rate"] = _success_rate(by_version.get(0, []))
        summary["robot_success_rate_last_third"] = _success_rate(last_rows)
    return summary


def promotion_steps(
    rows: list[dict[str, Any]], promoted: list[int], policies: Path, warmup: int, utd: int
) -> list[tuple[int, int]]:
    """Where each promoted version shows on the returns plot, as (version, step): the end of the first
    episode the robot finished on it; for one it never finished an episode on, the step it was made at."""
    first: dict[int, int] = {}
    for row in rows:
        first.setdefault(int(row["policy_version"]), int(row["step"]))
    made = {int(path.parent.name[1:]): path for path in policies.glob(f"v*/{POLICY_SIDECAR}")}
    points = []
    for version in promoted:
        if version in first:
            points.append((version, first[version]))
        elif version in made:
            with contextlib.suppress(OSError, ValueError):
                points.append((version, made_at_step(made[version], warmup, utd)))
    return points
