"""`robot-wsrl validate POLICY [key=value ...]`: the sim-first gate (robot_wsrl.gate.validate) on one
policy, against thresholds and the deployed reference. Exit 0 on pass, 1 on fail, 2 on bad input.

The options are read before the gate (omegaconf, the simulator) is imported, so `--help` works without it.
Validating is read-only for the policy: the report goes under runs/ (git-ignored) unless --out says where.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from robot_wsrl.apps.cli import missing_extra
from robot_wsrl.apps.errors import reports_errors
from robot_wsrl.apps.options import CommandParser
from robot_wsrl.core.artifacts import REPORT, REPORT_PLOT
from robot_wsrl.core.driver import DriverFault
from robot_wsrl.gate.registry import policy_file
from robot_wsrl.robot.policy import SpecMismatch

REPORTS = Path("runs/validate")  # the default report folders' parent, relative to the working directory


def parser() -> CommandParser:
    p = CommandParser(
        prog="robot-wsrl validate",
        description="Validate a policy in simulation before it may reach hardware: the onboard runner on "
        "nominal and shifted MuJoCo, against thresholds and the deployed reference (configs/validate.yaml). "
        "Exit 0 on pass, 1 on fail, 2 on bad input.",
    )
    p.add_argument("policy", type=Path, help="DIR/policy.onnx or DIR (with its policy.json)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides key=value, e.g. episodes=20 preset=real_mild (default: the policy's own task, "
        "cameras and robot presets; env=NAME, driver=NAME choose others)",
    )
    p.add_argument("--reference", type=Path, default=None, help="the deployed policy to compare with")
    p.add_argument("--config", type=Path, default=None, help="YAML merged over configs/validate.yaml")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"report folder (default: {REPORTS}/NAME-UTCTIME, NAME: the policy's)",
    )
    p.add_argument("--keys", type=Path, default=None, help="key dir whose *.sign.pub verify signatures")
    p.add_argument("--allow-unsigned", action="store_true", help="accept policies without policy.sig")
    return p


def _print_summary(report: dict[str, Any], out: Path) -> None:
    ref = report["reference"]
    width = max(10, *map(len, report["candidate"]["variants"]))
    for variant, c in report["candidate"]["variants"].items():
        line = f"  {variant:<{width}} candidate {c['return_mean']:9.2f} ± {c['return_std']:7.2f}"
        r = None if ref is None else ref["variants"].get(variant)
        if r is not None:
            line += f" | reference {r['return_mean']:9.2f} ± {r['return_std']:7.2f}"
        if c["success_rate"] is not None:
            line += f" | success {c['success_rate']:.0%}"
        lat = c["step_latency_us"]
        line += f" | faults {c['faults']} | policy step p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} us"
        print(line)
    for reason in report["reasons"]:
        print(f"  FAILED {reason}")
    print(f"{'PASS' if report['passed'] else 'FAIL'}: {out / REPORT}, {out / REPORT_PLOT}")


def default_out(policy: Path) -> Path:
    """runs/validate/NAME-UTCTIME: nothing is written beside the policy (for a shipped one, into the
    repository's policies/); the learner's gate, which records verdicts beside its versions, passes --out."""
    name = policy_file(policy).resolve().parent.name
    return REPORTS / f"{name}-{time.strftime('%Y%m%d-%H%M%SZ', time.gmtime())}"


def check_paths(policies: list[Path], out: Path | None) -> None:
    """Mistakes in the paths, refused before any episode runs: the sidecar given for the policy (its sha256
    would be checked against itself and read as tampering), a file where the report folder goes."""
    for policy in policies:
        if policy.suffix == ".json":
            raise ValueError(f"{policy} is a policy's JSON sidecar: give the policy.onnx or its folder")
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: give a folder for the report")


@reports_errors("validate")
def cli(argv: list[str]) -> int:
    args = parser().parse_intermixed_args(argv)
    check_paths([p for p in (args.policy, args.reference) if p is not None], args.out)
    from robot_wsrl.gate.validate import load_config, validate  # omegaconf and the simulator from here on

    cfg = load_config(args.config, args.overrides)
    out = args.out or default_out(args.policy)
    try:
        report = validate(
            args.policy, args.reference, cfg, out, keydir=args.keys, allow_unsigned=args.allow_unsigned
        )
    except SpecMismatch as exc:  # the candidate on a driver it was not made for (env=, driver=)
        raise ValueError(
            f"{exc}: validate it with driver={exc.driver}, or leave env= and driver= out"
        ) from exc
    except (ImportError, DriverFault) as exc:  # the simulator the policy needs is missing or cannot run
        raise ValueError(missing_extra(exc) or str(exc)) from exc
    _print_summary(report, out)
    return 0 if report["passed"] else 1
