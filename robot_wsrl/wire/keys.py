"""CURVE key pairs for every peer and the learner's policy-signing key (no torch).

A key directory holds, per peer NAME:

    NAME.key         CURVE public certificate (ZPL, as zmq.auth.load_certificate reads it; role in metadata)
    NAME.key_secret  CURVE secret certificate, mode 0600
    NAME.sign        learner only: Ed25519 policy-signing secret key (PEM), mode 0600
    NAME.sign.pub    learner only: its verification key (PEM); runners load only policies it signed

Copy the public files everywhere and each secret only to the machine of its peer. Loading refuses a secret
file that group or others can read, as ssh does: a leaked secret lets anyone pose as that peer.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from robot_wsrl.wire import signing
from robot_wsrl.wire.protocol import ROLES

PUBLIC, SECRET, SIGN, SIGN_PUB = ".key", ".key_secret", ".sign", ".sign.pub"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_ROLE_LINE = re.compile(r'^\s*role\s*=\s*"?([A-Za-z]+)"?\s*$')


class KeyFileError(ValueError):
    """A key file is missing, malformed or readable by others."""


@dataclass(frozen=True)
class CurveKeys:
    """A peer's CURVE key pair, z85-encoded as pyzmq's socket options take them."""

    public: bytes
    secret: bytes


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise KeyFileError(f"key name {name!r} must be 1-64 characters of [A-Za-z0-9_-]")


def _certificate(public: bytes, secret: bytes | None, role: str) -> str:
    kind = "**Secret**" if secret else "Public"
    now = datetime.datetime.now().isoformat(timespec="seconds")
    lines = [
        f"#   ****  Generated on {now} by robot-wsrl keys  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
        "",
        "metadata",
        f'    role = "{role}"',
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, data: bytes, secret: bool) -> None:
    """Create `path` (replacing it) with mode 0600 for secrets from the first byte, 0644 otherwise."""
    mode = 0o600 if secret else 0o644
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def new_identity(keydir: str | Path, name: str, role: str, force: bool = False) -> list[Path]:
    """Write NAME's CURVE pair (and, for a learner, its signing pair) into `keydir`; returns the files."""
    _check_name(name)
    if role not in ROLES:
        raise KeyFileError(f"role {role!r} must be one of {list(ROLES)}")
    keydir = Path(keydir)
    keydir.mkdir(mode=0o700, parents=True, exist_ok=True)
    suffixes = [PUBLIC, SECRET] + ([SIGN, SIGN_PUB] if role == "learner" else [])
    paths = [keydir / f"{name}{suffix}" for suffix in suffixes]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise KeyFileError(f"{existing} already exist (pass --force to replace them)")
    public, secret = zmq.curve_keypair()
    _write(paths[0], _certificate(public, None, role).encode(), secret=False)
    _write(paths[1], _certificate(public, secret, role).encode(), secret=True)
    if role == "learner":
        key = Ed25519PrivateKey.generate()
        _write(paths[2], signing.secret_pem(key), secret=True)
        _write(paths[3], signing.public_pem(key.public_key()), secret=False)
    return paths


def _check_private(path: Path) -> None:
    if not path.exists():
        raise KeyFileError(f"{path}: secret key file not found")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise KeyFileError(f"{path}: readable by group or others (chmod 600 {path})")


def load_curve_keys(keydir: str | Path, name: str) -> CurveKeys:
    """NAME's own CURVE pair, from NAME.key_secret."""
    _check_name(name)
    path = Path(keydir) / f"{name}{SECRET}"
    _check_private(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    if not secret:
        raise KeyFileError(f"{path}: holds no secret-key")
    return CurveKeys(public, secret)


def load_public_key(keydir: str | Path, name: str) -> bytes:
    """NAME's z85 CURVE public key, from NAME.key (what a client needs to know about its server)."""
    _check_name(name)
    path = Path(keydir) / f"{name}{PUBLIC}"
    if not path.is_file():
        raise KeyFileError(f"{path}: not found: copy {name}'s public key ({name}{PUBLIC}) into {keydir}")
    try:
        return zmq.auth.load_certificate(path)[0]
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def read_role(path: str | Path) -> str | None:
    """The role recorded in a certificate's metadata, or None."""
    for line in Path(path).read_text().splitlines():
        match = _ROLE_LINE.match(line)
        if match:
            return match.group(1)
    return None


def load_public_keys(keydir: str | Path, roles: tuple[str, ...] = ROLES) -> dict[str, bytes]:
    """{name: z85 public key} of every certificate in `keydir` whose role is in `roles` (a server's allow
    list: e.g. a learner admits runners and consoles)."""
    return {
        path.name[: -len(PUBLIC)]: load_public_key(keydir, path.name[: -len(PUBLIC)])
        for path in sorted(Path(keydir).glob(f"*{PUBLIC}"))
        if read_role(path) in roles
    }


def load_key_roles(keydir: str | Path, roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    """{name: role} of every certificate in `keydir` whose role is in `roles`: a server binds what each
    authenticated key may do to the role written in its certificate, not to anything a message says."""
    return {
        path.name[: -len(PUBLIC)]: role
        for path in sorted(Path(keydir).glob(f"*{PUBLIC}"))
        if (role := read_role(path)) in roles
    }


def load_signing_key(keydir: str | Path, name: str) -> Ed25519PrivateKey:
    """The learner's policy-signing key, from NAME.sign."""
    _check_name(name)
    path = Path(keydir) / f"{name}{SIGN}"
    _check_private(path)
    return signing.load_secret_key(path)


def load_verify_keys(keydir: str | Path) -> dict[str, Ed25519PublicKey]:
    """{key id: key} of every `*.sign.pub` in `keydir`: the learners whose policies a runner accepts."""
    keys = [signing.load_public_key(path) for path in sorted(Path(keydir).glob(f"*{SIGN_PUB}"))]
    return {signing.key_id(key): key for key in keys}
