"""Ed25519 signatures on policies: a runner loads only a policy that a learner it trusts signed.

The signed payload binds both files of a policy: a domain tag, the sha256 of the exact ONNX bytes and the
canonical form of the JSON sidecar (sorted keys, compact separators), so re-serialising the sidecar does
not break a signature while any change to a value does. A signature names its key by fingerprint
(`key_id`), so a runner can say "unknown key" rather than just "invalid". Keys are PEM files (PKCS#8
secret, SubjectPublicKeyInfo public), readable by openssl.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from robot_wsrl.core.artifacts import sidecar_path, signature_path
from robot_wsrl.core.files import write_atomic
from robot_wsrl.wire.protocol import PolicyMessage

DOMAIN = b"robot-wsrl policy signature v1\n"


class SignatureError(ValueError):
    """A policy is unsigned, signed by a key this end does not trust, or altered after signing."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a verification key: 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def secret_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_secret_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not an unencrypted PEM secret key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 secret key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except ValueError as exc:
        raise SignatureError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def canonical_json(sidecar: Mapping[str, Any]) -> bytes:
    return json.dumps(
        sidecar, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _payload(onnx: bytes, sidecar: Mapping[str, Any]) -> bytes:
    return DOMAIN + hashlib.sha256(onnx).hexdigest().encode() + b"\n" + canonical_json(sidecar)


def sign_policy(key: Ed25519PrivateKey, onnx: bytes, sidecar: Mapping[str, Any]) -> tuple[str, bytes]:
    """(signer key id, signature) over the ONNX bytes and the sidecar."""
    return key_id(key.public_key()), key.sign(_payload(onnx, sidecar))


def verify_policy(
    trusted: Mapping[str, Ed25519PublicKey],
    onnx: bytes,
    sidecar: Mapping[str, Any],
    signer: str,
    signature: bytes,
) -> None:
    """Raise SignatureError unless `signature` by trusted key `signer` covers exactly these bytes.

    `trusted` maps key ids to keys (see `robot_wsrl.wire.keys.load_verify_keys`).
    """
    if not signature:
        raise SignatureError("policy is unsigned: refused (only policies signed by a trusted learner load)")
    key = trusted.get(signer)
    if key is None:
        raise SignatureError(f"policy signed by unknown key {signer!r}: refused (trusted: {sorted(trusted)})")
    digest = hashlib.sha256(onnx).hexdigest()
    if sidecar.get("sha256") != digest:
        raise SignatureError(
            f"policy ONNX bytes (sha256 {digest}) do not match the sidecar's sha256 "
            f"{sidecar.get('sha256')!r}: tampered or corrupted, refused"
        )
    try:
        key.verify(signature, _payload(onnx, sidecar))
    except InvalidSignature:
        raise SignatureError(
            f"policy signature by {signer!r} does not verify: ONNX or sidecar altered after signing, refused"
        ) from None


def signed_policy_message(
    sender: str, key: Ed25519PrivateKey, onnx: bytes, sidecar_json: str
) -> PolicyMessage:
    """The learner's broadcast for an exported policy (its `policy.onnx` bytes and `policy.json` text)."""
    sidecar = json.loads(sidecar_json)
    signer, signature = sign_policy(key, onnx, sidecar)
    return PolicyMessage(
        sender=sender,
        version=int(sidecar["version"]),
        parent=None if sidecar.get("parent_version") is None else int(sidecar["parent_version"]),
        sha256=str(sidecar["sha256"]),
        signer=signer,
        signature=signature,
        sidecar=sidecar_json,
        onnx=onnx,
    )


def verify_policy_message(msg: PolicyMessage, trusted: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """Verify a received policy (signature, and header fields agreeing with the signed sidecar) and return
    its sidecar; the runner then writes both files and loads them with `OnnxPolicy.load`."""
    sidecar = msg.sidecar_dict()
    verify_policy(trusted, msg.onnx, sidecar, msg.signer, msg.signature)
    claimed = {"version": msg.version, "parent_version": msg.parent, "sha256": msg.sha256}
    differing = [name for name, value in claimed.items() if sidecar.get(name) != value]
    if differing:
        raise SignatureError(
            f"policy message header disagrees with its signed sidecar on {differing}: refused"
        )
    return sidecar


# ----- detached signature files: policy.sig beside policy.onnx and policy.json -----

SIGNATURE_FORMAT = "robot-wsrl-policy-signature/1"


def _policy_files(onnx_path: Path) -> tuple[bytes, dict[str, Any]]:
    sidecar = sidecar_path(onnx_path)
    try:
        return onnx_path.read_bytes(), json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise SignatureError(
            f"{onnx_path}: cannot read the policy files ({type(exc).__name__}: {exc})"
        ) from exc


def write_signature(onnx_path: str | Path, key: Ed25519PrivateKey) -> Path:
    """Sign a policy's files on disk into `policy.sig`: the same payload the wire signs, so a folder copied
    anywhere (export, deployment) stays verifiable. Ed25519 is deterministic: re-signing rewrites the
    same bytes."""
    path = Path(onnx_path)
    signer, signature = sign_policy(key, *_policy_files(path))
    record = {"format": SIGNATURE_FORMAT, "signer": signer, "signature": signature.hex()}
    out = signature_path(path)
    write_atomic(out, (json.dumps(record, indent=2) + "\n").encode())
    return out


def read_signature(onnx_path: str | Path) -> tuple[str, bytes] | None:
    """(signer key id, signature) from `policy.sig`, or None when the policy is unsigned."""
    path = signature_path(onnx_path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: unreadable signature file ({type(exc).__name__}: {exc})") from exc
    try:
        if record["format"] != SIGNATURE_FORMAT:
            raise ValueError(f"format {record['format']!r} is not {SIGNATURE_FORMAT!r}")
        return str(record["signer"]), bytes.fromhex(record["signature"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"{path}: malformed signature file ({type(exc).__name__}: {exc})") from exc


def verify_signature_file(onnx_path: str | Path, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """Verify `policy.sig` against the files as they are now; returns the signer's key id.

    Raises SignatureError when the policy is unsigned, signed by an untrusted key, or changed since."""
    path = Path(onnx_path)
    found = read_signature(path)
    if found is None:
        raise SignatureError(f"{path}: unsigned (no {signature_path(path).name}): refused")
    signer, signature = found
    try:
        verify_policy(trusted, *_policy_files(path), signer, signature)
    except SignatureError as exc:
        raise SignatureError(f"{path}: {exc}") from None
    return signer
