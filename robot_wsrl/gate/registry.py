"""The policy registry: every shipped and produced policy version, its provenance, integrity, signature and
validation verdict, read from the folders themselves (no database to drift from the files). No torch.

Where policies live:
  policies/NAME/              shipped: manifest.json, policy.onnx, policy.json (+ policy.sig when signed)
  RUN/policies/vNNNNNN/       produced by a learner run: policy.onnx, policy.json, policy.sig
  .../validation/             beside either: report.json + report.png (`robot-wsrl validate`) and
                              verdict.json (the gate's decision, which may differ: version 0 passes by
                              definition, a version overtaken before its turn is "superseded")
Integrity is the sha256 of the ONNX bytes against the sidecar; a mismatch is TAMPERED and refused by every
command that would deploy it, as is an unsigned policy unless the user explicitly allows it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from robot_wsrl.core.artifacts import (
    CONFIG_HASH,
    EXPORT_RECORD,
    MANIFEST,
    POLICY_DIR,
    POLICY_ONNX,
    REPORT,
    RUN_CONFIG,
    VALIDATION_DIR,
    VERDICT,
    sidecar_path,
    signature_path,
    version_dir,
)
from robot_wsrl.core.files import write_atomic
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError
from robot_wsrl.wire import keys
from robot_wsrl.wire.signing import SignatureError, read_signature, verify_signature_file

UNSIGNED_HINT = "pass --allow-unsigned to accept an unsigned policy anyway"


class RegistryError(ValueError):
    """A policy folder, run or version that does not exist or cannot be deployed."""


def policy_file(path: str | Path) -> Path:
    """`DIR` or `DIR/policy.onnx` -> `DIR/policy.onnx`."""
    p = Path(path)
    onnx = p / POLICY_ONNX if p.is_dir() else p
    if not onnx.is_file():
        raise RegistryError(f"{path}: no policy here (expected a folder holding {POLICY_ONNX}, or the file)")
    return onnx


# ----- trust: integrity and signature -----


def integrity(onnx: Path) -> str:
    """ "ok", or why the ONNX bytes cannot be trusted ("TAMPERED: ..." when the sha256 disagrees)."""
    try:
        claimed = json.loads(sidecar_path(onnx).read_text()).get("sha256")
        actual = hashlib.sha256(onnx.read_bytes()).hexdigest()
    except (OSError, ValueError, AttributeError) as exc:
        return f"UNREADABLE: {type(exc).__name__}: {exc}"
    if actual != claimed:
        return f"TAMPERED: sha256 of {onnx.name} is {actual[:12]}..., its sidecar says {str(claimed)[:12]}..."
    return "ok"


@dataclass(frozen=True)
class Trust:
    """A policy's signature state: valid, unsigned, unverified (signed, but no keys given) or INVALID."""

    state: str
    signer: str | None
    detail: str


def signature_state(onnx: Path, trusted: Mapping[str, Ed25519PublicKey] | None) -> Trust:
    """Check `policy.sig` against `trusted` keys (None: no keys given, so a signature cannot be verified)."""
    try:
        found = read_signature(onnx)
    except SignatureError as exc:
        return Trust("INVALID", None, str(exc))
    if found is None:
        return Trust("unsigned", None, f"{onnx}: unsigned (no {signature_path(onnx).name})")
    signer = found[0]
    if trusted is None:
        return Trust("unverified", signer, f"{onnx}: signed by {signer}, but no --keys to verify it against")
    try:
        verify_signature_file(onnx, trusted)
    except SignatureError as exc:
        return Trust("INVALID", signer, str(exc))
    return Trust("valid", signer, f"{onnx}: signature by {signer} verified")


def require_trusted(
    onnx: Path, trusted: Mapping[str, Ed25519PublicKey] | None, allow_unsigned: bool
) -> Trust:
    """The trust check before a policy is validated for deployment or exported: raises SignatureError with
    the reason unless its bytes are intact and it is signed by a trusted key (or unsigned and allowed)."""
    state = integrity(onnx)
    if state != "ok":
        raise SignatureError(f"{onnx}: {state}: refused")
    trust = signature_state(onnx, trusted)
    if trust.state == "valid" or (trust.state == "unsigned" and allow_unsigned):
        return trust
    if trust.state == "unsigned":
        raise SignatureError(f"{trust.detail}: refused ({UNSIGNED_HINT}, or sign it)")
    if trust.state == "unverified":
        raise SignatureError(f"{trust.detail}: refused (pass --keys KEYDIR holding the signer's .sign.pub)")
    raise SignatureError(f"signature check failed, refused: {trust.detail}")


def load_trusted(keydir: Path | None) -> dict[str, Ed25519PublicKey] | None:
    """The verification keys (`*.sign.pub`) of `keydir`, or None when no key dir was given."""
    if keydir is None:
        return None
    if not keydir.is_dir():
        raise RegistryError(f"{keydir}: no such key directory")
    trusted = keys.load_verify_keys(keydir)
    if not trusted:
        raise RegistryError(f"{keydir}: holds no policy verification key (*.sign.pub)")
    return trusted


# ----- validation verdicts -----


def validation_state(directory: Path, sha256: str) -> str:
    """passed / failed / superseded / error from the gate's verdict, else from a validate report; "stale"
    when the report is of other bytes; "-" when never validated."""
    folder = directory / VALIDATION_DIR
    for name in (VERDICT, REPORT):
        try:
            record = json.loads((folder / name).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return f"unreadable {name}"
        if not isinstance(record, dict):
            return f"unreadable {name}"
        if record.get("sha256", record.get("candidate", {}).get("sha256")) != sha256:
            return "stale"
        if name == VERDICT:
            return str(record["status"])
        return "passed" if record.get("passed") else "failed"
    return "-"


# ----- listing -----


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    kind: str  # shipped | produced
    version: int
    parent: int | None
    step: int
    directory: Path
    sha256: str
    integrity: str
    signature: Trust
    validation: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "directory": str(self.directory), "signature": asdict(self.signature)}


def _entry(
    name: str, kind: str, directory: Path, trusted: Mapping[str, Ed25519PublicKey] | None
) -> PolicyEntry:
    onnx = directory / POLICY_ONNX
    try:
        side = json.loads(sidecar_path(onnx).read_text())
        version, parent, step, sha = (
            int(side["version"]),
            side["parent_version"],
            int(side["step"]),
            side["sha256"],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(
            f"{sidecar_path(onnx)}: unreadable sidecar ({type(exc).__name__}: {exc})"
        ) from exc
    return PolicyEntry(
        name, kind, version, parent, step, directory, str(sha), integrity(onnx),
        signature_state(onnx, trusted), validation_state(directory, str(sha)),
    )  # fmt: skip


def shipped(root: Path, trusted: Mapping[str, Ed25519PublicKey] | None = None) -> list[PolicyEntry]:
    """policies/NAME/ folders with a manifest, an ONNX policy and its sidecar. Not hidden ones: `ship`
    builds a folder in .NAME.*.shipping, and moves the one it replaces into .NAME.*.replaced."""
    folders = sorted(p.parent for p in root.glob(f"*/{MANIFEST}") if not p.parent.name.startswith("."))
    return [
        _entry(d.name, "shipped", d, trusted)
        for d in folders
        if (d / POLICY_ONNX).is_file() and sidecar_path(d / POLICY_ONNX).is_file()
    ]


def run_versions(run: Path) -> list[Path]:
    """A learner run's version folders, oldest first."""
    return sorted(p.parent for p in (run / POLICY_DIR).glob(f"v[0-9]*/{POLICY_ONNX}"))


def produced(root: Path, trusted: Mapping[str, Ed25519PublicKey] | None = None) -> list[PolicyEntry]:
    """Every learner run at or below `root` (a run folder, a session folder, or a folder of runs)."""
    runs = sorted({p.parent for p in root.glob(f"**/{POLICY_DIR}") if run_versions(p.parent)})
    return [_entry(run.name, "produced", d, trusted) for run in runs for d in run_versions(run)]


def previous_validated(run: Path, current_version: int) -> PolicyEntry | None:
    """The newest version of `run` older than `current_version` that passed validation with its bytes
    intact: what a rollback makes current again. None when there is none."""
    entries = [_entry(run.name, "produced", d, None) for d in run_versions(run)]
    older = [
        e for e in entries if e.version < current_version and e.validation == "passed" and e.integrity == "ok"
    ]
    return max(older, key=lambda e: e.version, default=None)


# ----- export for deployment -----


def resolve_version(source: Path, version: int | None) -> Path:
    """A policy folder as is, or version N (default: the newest) of a learner run."""
    if (source / POLICY_ONNX).is_file():
        if version is not None:
            found = json.loads(sidecar_path(source / POLICY_ONNX).read_text()).get("version")
            if found != version:
                raise RegistryError(f"{source} holds version {found}, not {version}")
        return source
    versions = run_versions(source)
    if not versions:
        raise RegistryError(f"{source}: neither a policy folder nor a learner run with {POLICY_DIR}/v*/")
    if version is None:
        return versions[-1]
    chosen = version_dir(source / POLICY_DIR, version)
    if chosen not in versions:
        raise RegistryError(f"{source}: no version {version} (has {[int(v.name[1:]) for v in versions]})")
    return chosen


def export_version(
    directory: Path,
    to: Path,
    trusted: Mapping[str, Ed25519PublicKey] | None,
    *,
    allow_unsigned: bool = False,
    allow_unvalidated: bool = False,
) -> dict[str, Any]:
    """Copy a verified policy version (ONNX, sidecar, signature, manifest or run config, validation report)
    into `to` for deployment, and check the copies again; returns the export record (also `to/export.json`).

    Refused: tampered bytes, a policy onnxruntime rejects, a bad or unverifiable signature, an unsigned one
    unless `allow_unsigned`, and one whose validation failed or never ran unless `allow_unvalidated`."""
    onnx = directory / POLICY_ONNX
    trust = require_trusted(onnx, trusted, allow_unsigned)
    policy = OnnxPolicy.load(onnx)
    validation = validation_state(directory, policy.sha256)
    if validation != "passed" and not allow_unvalidated:
        raise RegistryError(
            f"{directory}: validation is {validation!r}, not 'passed': refused "
            "(run `robot-wsrl validate` on it, or pass --allow-unvalidated)"
        )
    files = [onnx, sidecar_path(onnx), signature_path(onnx), directory / MANIFEST]
    run = directory.parent.parent
    if directory.parent.name == POLICY_DIR:  # provenance of a produced version: its run's settings
        files += [run / RUN_CONFIG, run / CONFIG_HASH]
    to.mkdir(parents=True, exist_ok=True)
    copied = [shutil.copy2(f, to / f.name) for f in files if f.is_file()]
    report = directory / VALIDATION_DIR
    if report.is_dir():
        copied.append(shutil.copytree(report, to / VALIDATION_DIR, dirs_exist_ok=True))
    if integrity(to / POLICY_ONNX) != "ok":
        raise RegistryError(f"{to}: the copied policy does not match its sha256")
    record = {
        "source": str(directory.resolve()),
        "version": policy.version,
        "parent_version": policy.metadata.parent_version,
        "step": policy.metadata.step,
        "sha256": policy.sha256,
        "signature": asdict(trust),
        "validation": validation,
        "files": sorted(Path(p).name + ("/" if Path(p).is_dir() else "") for p in copied),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_atomic(to / EXPORT_RECORD, (json.dumps(record, indent=2) + "\n").encode())
    return record


def export_cli(argv: list[str]) -> int:
    """`robot-wsrl export --policy RUN_OR_POLICY_DIR [--version N] --to DIR` (the registry form)."""
    parser = argparse.ArgumentParser(
        prog="robot-wsrl export --policy",
        description="Copy a verified, validated policy version with its metadata and validation report to "
        "a folder for deployment.",
    )
    parser.add_argument("--policy", type=Path, required=True, help="a learner run folder, or a policy folder")
    parser.add_argument("--version", type=int, default=None, help="version of a run (default: the newest)")
    parser.add_argument("--to", type=Path, required=True, help="target folder")
    parser.add_argument(
        "--keys", type=Path, default=None, help="key dir whose *.sign.pub verify the signature"
    )
    parser.add_argument("--allow-unsigned", action="store_true", help="accept a policy without policy.sig")
    parser.add_argument(
        "--allow-unvalidated", action="store_true", help="accept one that did not pass validation"
    )
    args = parser.parse_args(argv)
    try:
        directory = resolve_version(args.policy, args.version)
        record = export_version(
            directory,
            args.to,
            load_trusted(args.keys),
            allow_unsigned=args.allow_unsigned,
            allow_unvalidated=args.allow_unvalidated,
        )
    except (RegistryError, SignatureError, PolicyError, keys.KeyFileError, OSError) as exc:
        print(f"robot-wsrl export: {exc}", file=sys.stderr)
        return 2
    print(
        f"exported version {record['version']} (sha256 {record['sha256'][:12]}, signature "
        f"{record['signature']['state']}, validation {record['validation']}) to {args.to}: "
        f"{', '.join(record['files'])}"
    )
    return 0
