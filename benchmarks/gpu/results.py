"""Gather what benchmarks/gpu/run.sh measured into one JSON file per step and OUT/results.json.

Usage: results.py OUT MODE [NAME RC START END]...  (one quadruple per step, times in epoch seconds)
Exits 1 when a step failed, so that the script's exit status says whether everything ran.
"""

from __future__ import annotations

import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _test_counts(path: Path) -> dict[str, int] | None:
    """Counts from pytest's JUnit XML (its root is <testsuites> holding one <testsuite>)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def _torch() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def _steps(fields: list[str]) -> dict[str, dict[str, Any]]:
    quads = [fields[i : i + 4] for i in range(0, len(fields), 4)]
    return {
        name: {"rc": int(rc), "seconds": round(float(end) - float(start), 2)}
        for name, rc, start, end in quads
    }


def main(argv: list[str]) -> int:
    out, mode = Path(argv[0]), argv[1]
    steps = _steps(argv[2:])
    details = {
        "bench_learner": _json(out / "bench_learner.json"),
        "pretrain": _json(out / "work" / "pretrain" / "summary.json"),
        "finetune": _json(out / "work" / "finetune" / "summary.json"),
        "cuda_tests": _test_counts(out / "cuda_tests.xml"),
    }
    for name, detail in details.items():
        if name in steps:
            steps[name]["result"] = detail
            if name in ("pretrain", "finetune") and detail is not None:
                updates = detail["steps" if name == "pretrain" else "updates"]
                steps[name]["updates_per_s_end_to_end"] = round(updates / steps[name]["seconds"], 2)
                (out / f"{name}.json").write_text(json.dumps(detail, indent=2) + "\n")
    if details["cuda_tests"] is not None:
        (out / "cuda_tests.json").write_text(json.dumps(details["cuda_tests"]) + "\n")
    results = {
        "mode": mode,
        "python": platform.python_version(),
        **_torch(),
        "ok": all(s["rc"] == 0 for s in steps.values()),
        "steps": steps,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
