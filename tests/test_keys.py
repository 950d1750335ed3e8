"""`robot-wsrl keys`: files, permissions, listing, and the loaders the transport uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq.auth

from robot_wsrl.apps.cli import main
from robot_wsrl.apps.keys import cli as keys_cli
from robot_wsrl.wire import keys, signing


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_learner_writes_curve_and_signing_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    keydir = tmp_path / "keys"
    assert main(["keys", "new", "learner", "--dir", str(keydir), "--role", "learner"]) == 0
    names = sorted(p.name for p in keydir.iterdir())
    assert names == ["learner.key", "learner.key_secret", "learner.sign", "learner.sign.pub"]
    assert _mode(keydir / "learner.key_secret") == 0o600
    assert _mode(keydir / "learner.sign") == 0o600
    assert _mode(keydir / "learner.key") & 0o077 == 0o044  # public: readable by all
    assert _mode(keydir) == 0o700
    public, secret = zmq.auth.load_certificate(keydir / "learner.key_secret")
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(keydir / "learner.key") == (public, None)
    assert keys.load_curve_keys(keydir, "learner") == keys.CurveKeys(public, secret)
    assert keys.read_role(keydir / "learner.key") == "learner"
    key = keys.load_signing_key(keydir, "learner")
    assert list(keys.load_verify_keys(keydir)) == [signing.key_id(key.public_key())]
    assert str(keydir / "learner.sign") in capsys.readouterr().out


def test_runner_gets_no_signing_key_and_list_shows_all(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name, role in (("learner", "learner"), ("robot1", "runner"), ("console", "console")):
        assert keys_cli(["new", name, "--dir", str(tmp_path), "--role", role]) == 0
    assert not (tmp_path / "robot1.sign").exists()
    capsys.readouterr()
    assert keys_cli(["list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name, role in (("learner", "learner"), ("robot1", "runner"), ("console", "console")):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert role in line and keys.load_public_key(tmp_path, name).decode() in line and "present" in line
    learner_line = next(line for line in out.splitlines() if line.startswith("learner "))
    assert signing.key_id(next(iter(keys.load_verify_keys(tmp_path).values()))) in learner_line
    assert set(keys.load_public_keys(tmp_path, roles=("runner", "console"))) == {"robot1", "console"}


def test_existing_keys_are_not_overwritten_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert keys_cli(["new", "robot1", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "robot1.key_secret").read_bytes()
    assert keys_cli(["new", "robot1", "--dir", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (tmp_path / "robot1.key_secret").read_bytes() == before
    assert keys_cli(["new", "robot1", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "robot1.key_secret").read_bytes() != before
    assert _mode(tmp_path / "robot1.key_secret") == 0o600


def test_secret_readable_by_others_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    keys.new_identity(tmp_path, "robot1", "runner")
    os.chmod(tmp_path / "robot1.key_secret", 0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load_curve_keys(tmp_path, "robot1")
    assert keys_cli(["list", "--dir", str(tmp_path)]) == 0
    assert "TOO OPEN" in capsys.readouterr().out


def test_bad_names_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert keys_cli(["new", "../evil", "--dir", str(tmp_path)]) == 2
    assert "key name" in capsys.readouterr().err
    with pytest.raises(keys.KeyFileError, match="not found"):
        keys.load_curve_keys(tmp_path, "nobody")
    with pytest.raises(keys.KeyFileError):
        keys.load_public_key(tmp_path, "nobody")
    assert keys_cli(["list", "--dir", str(tmp_path / "missing")]) == 2
    assert keys_cli(["list", "--dir", str(tmp_path)]) == 0
    assert "no keys" in capsys.readouterr().out


def test_key_roles_come_from_the_certificates(tmp_path: Path) -> None:
    pairs = (("learner", "learner"), ("robot1", "runner"), ("robot2", "runner"), ("ops", "console"))
    for name, role in pairs:
        keys.new_identity(tmp_path, name, role)
    assert keys.load_key_roles(tmp_path, ("runner", "console")) == {
        "ops": "console",
        "robot1": "runner",
        "robot2": "runner",
    }
    assert keys.load_key_roles(tmp_path, ("console",)) == {"ops": "console"}
