"""`robot-wsrl keys new|list`: make a peer's CURVE key pair (and a learner's policy-signing key), or list a
key folder with each secret's state. Exit 0 done, 2 on a bad name, an existing key or a missing folder."""

from __future__ import annotations

import stat
from pathlib import Path

from robot_wsrl.apps.errors import report
from robot_wsrl.apps.options import CommandParser
from robot_wsrl.wire import signing
from robot_wsrl.wire.keys import (
    PUBLIC,
    SECRET,
    SIGN_PUB,
    KeyFileError,
    load_public_key,
    new_identity,
    read_role,
)
from robot_wsrl.wire.protocol import ROLES


def parser() -> CommandParser:
    p = CommandParser(prog="robot-wsrl keys", description="Make and list CURVE/signing keys.")
    sub = p.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="make a key pair for a peer (and a signing key for a learner)")
    new.add_argument("name", help="peer name, e.g. learner, robot1, console")
    new.add_argument("--dir", type=Path, required=True, help="key directory")
    new.add_argument("--role", choices=ROLES, default="runner", help="learner also gets a signing key")
    new.add_argument("--force", action="store_true", help="replace existing key files")
    listing = sub.add_parser("list", help="list the keys in a directory")
    listing.add_argument("--dir", type=Path, required=True, help="key directory")
    return p


def _list(keydir: Path) -> int:
    certificates = sorted(keydir.glob(f"*{PUBLIC}"))
    if not certificates:
        print(f"no keys in {keydir}")
        return 0
    print(f"{'name':<20} {'role':<8} {'curve public key':<40} {'secret':<12} signing key id")
    for path in certificates:
        name = path.name[: -len(PUBLIC)]
        secret = keydir / f"{name}{SECRET}"
        if not secret.exists():
            secret_state = "-"
        else:
            secret_state = "TOO OPEN" if stat.S_IMODE(secret.stat().st_mode) & 0o077 else "present"
        sign_pub = keydir / f"{name}{SIGN_PUB}"
        sign_id = signing.key_id(signing.load_public_key(sign_pub)) if sign_pub.exists() else "-"
        public = load_public_key(keydir, name).decode()
        print(f"{name:<20} {read_role(path) or '?':<8} {public:<40} {secret_state:<12} {sign_id}")
    return 0


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.action == "list":
            if not args.dir.is_dir():
                raise KeyFileError(f"{args.dir}: no such key directory")
            return _list(args.dir)
        for path in new_identity(args.dir, args.name, args.role, force=args.force):
            print(path)
    except (KeyFileError, signing.SignatureError, OSError) as exc:
        return report("keys", exc)
    return 0
