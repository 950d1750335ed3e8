"""The policy registry: listing, detached signatures, export for deployment and the rollback target; tampered
and unsigned policies are refused with a clear error."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import zmq
from helpers import BALANCES, FAST, free_port, write_linear_policy

from robot_wsrl.apps.export import cli as export_cli
from robot_wsrl.apps.options import bind_control
from robot_wsrl.apps.policies import cli as policies_cli
from robot_wsrl.apps.rollback import cli as rollback_cli
from robot_wsrl.core.artifacts import signature_path
from robot_wsrl.gate.registry import previous_validated, shipped
from robot_wsrl.gate.validate import load_config, validate
from robot_wsrl.robot.control import ControlServer
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.robot.runner import Runner
from robot_wsrl.wire import keys, transport
from robot_wsrl.wire.signing import (
    SignatureError,
    key_id,
    read_signature,
    verify_signature_file,
    write_signature,
)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    keys.new_identity(tmp_path / "keys", "learner", "learner")
    return tmp_path / "keys"


@pytest.fixture
def run(tmp_path: Path, keydir: Path) -> Path:
    """A learner run: versions 0-2, signed as the learner signs them, and its saved config."""
    run = tmp_path / "runs" / "session1"
    key = keys.load_signing_key(keydir, "learner")
    for version in range(3):
        onnx = write_linear_policy(
            run / "policies" / f"v{version:06d}",
            BALANCES,
            version,
            version - 1 if version else None,
            100 * version,
        )
        write_signature(onnx, key)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "config_hash.txt").write_text("abc\n")
    return run


@pytest.fixture
def shipped_root(tmp_path: Path) -> Path:
    root = tmp_path / "policies"
    write_linear_policy(root / "pendulum", BALANCES)
    (root / "pendulum" / "manifest.json").write_text(json.dumps({"name": "pendulum"}))
    return root


def _listing(capsys, *args: str) -> list[dict]:
    assert policies_cli([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _verdict(directory: Path, status: str, sha256: str | None = None) -> None:
    """A gate verdict as robot_wsrl.gate.worker writes it (the fields the registry reads)."""
    sha = sha256 or json.loads((directory / "policy.json").read_text())["sha256"]
    (directory / "validation").mkdir(exist_ok=True)
    (directory / "validation" / "verdict.json").write_text(json.dumps({"sha256": sha, "status": status}))


def test_listing_shows_provenance_integrity_signature_and_validation(
    run: Path, shipped_root: Path, keydir: Path, capsys
) -> None:
    signer = key_id(keys.load_signing_key(keydir, "learner").public_key())
    entries = _listing(
        capsys, "--shipped", str(shipped_root), "--runs", str(run.parent), "--keys", str(keydir)
    )
    assert [(e["name"], e["kind"], e["version"], e["parent"], e["step"]) for e in entries] == [
        ("pendulum", "shipped", 0, None, 0),
        ("session1", "produced", 0, None, 0),
        ("session1", "produced", 1, 0, 100),
        ("session1", "produced", 2, 1, 200),
    ]
    assert [e["signature"]["state"] for e in entries] == ["unsigned", "valid", "valid", "valid"]
    assert entries[1]["signature"]["signer"] == signer
    assert {e["integrity"] for e in entries} == {"ok"} and {e["validation"] for e in entries} == {"-"}
    assert all(len(e["sha256"]) == 64 for e in entries)

    _verdict(run / "policies/v000001", "passed")
    _flip_last_byte(run / "policies/v000002/policy.onnx")
    entries = _listing(capsys, "--shipped", str(shipped_root), "--runs", str(run))
    assert entries[2]["validation"] == "passed" and entries[2]["signature"]["state"] == "unverified"
    assert entries[3]["integrity"].startswith("TAMPERED")
    assert policies_cli(["--shipped", str(shipped_root), "--runs", str(run), "--keys", str(keydir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["name", "kind", "version", "parent"]
    assert "TAMPERED" in table[4] and "INVALID" in table[4] and "valid (" in table[2]


def test_listing_refuses_bad_arguments(tmp_path: Path, capsys) -> None:
    assert policies_cli(["--runs", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("robot-wsrl policies: ")
    (tmp_path / "nokeys").mkdir()
    assert policies_cli(["--keys", str(tmp_path / "nokeys")]) == 2
    assert "no policy verification key" in capsys.readouterr().err


def test_detached_signature_round_trip_and_refusals(run: Path, keydir: Path, tmp_path: Path) -> None:
    onnx = run / "policies/v000001/policy.onnx"
    trusted = keys.load_verify_keys(keydir)
    before = signature_path(onnx).read_bytes()
    write_signature(onnx, keys.load_signing_key(keydir, "learner"))
    assert signature_path(onnx).read_bytes() == before  # deterministic: re-signing changes nothing
    assert verify_signature_file(onnx, trusted) == read_signature(onnx)[0]
    keys.new_identity(tmp_path / "other", "other", "learner")
    with pytest.raises(SignatureError, match="unknown key"):
        verify_signature_file(onnx, keys.load_verify_keys(tmp_path / "other"))
    side = json.loads((onnx.parent / "policy.json").read_text())
    (onnx.parent / "policy.json").write_text(json.dumps({**side, "step": 999_999}))  # sha256 still matches
    with pytest.raises(SignatureError, match="altered after signing"):
        verify_signature_file(onnx, trusted)
    signature_path(onnx).write_text("{not json")
    with pytest.raises(SignatureError, match="unreadable signature file"):
        verify_signature_file(onnx, trusted)
    signature_path(onnx).unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        verify_signature_file(onnx, trusted)


def test_export_copies_a_verified_validated_version(run: Path, keydir: Path, tmp_path: Path, capsys) -> None:
    version = run / "policies/v000001"
    report = validate(version, None, load_config(overrides=FAST), keydir=keydir)  # signed: no flag needed
    assert report["passed"] and report["candidate"]["signature"] == "valid"
    to = tmp_path / "deploy"
    assert export_cli(["--policy", str(run), "--version", "1", "--to", str(to), "--keys", str(keydir)]) == 0
    assert "exported version 1" in capsys.readouterr().out
    names = {p.name for p in to.iterdir()}
    assert names == {"policy.onnx", "policy.json", "policy.sig", "config.yaml", "config_hash.txt"} | {
        "validation",
        "export.json",
    }
    assert (to / "validation" / "report.json").read_bytes() == (
        version / "validation" / "report.json"
    ).read_bytes()
    assert OnnxPolicy.load(to / "policy.onnx").version == 1
    verify_signature_file(to / "policy.onnx", keys.load_verify_keys(keydir))
    record = json.loads((to / "export.json").read_text())
    assert (record["version"], record["validation"], record["signature"]["state"]) == (1, "passed", "valid")
    assert record["sha256"] == json.loads((version / "policy.json").read_text())["sha256"]


def test_export_refuses_tampered_unsigned_unverifiable_and_unvalidated(
    run: Path, shipped_root: Path, keydir: Path, tmp_path: Path, capsys
) -> None:
    to = str(tmp_path / "deploy")

    def refused(*args: str) -> str:
        assert export_cli([*args, "--to", to]) == 2
        err = capsys.readouterr().err
        assert err.startswith("robot-wsrl export: ")
        return err

    for version in (0, 1):
        _verdict(run / f"policies/v{version:06d}", "passed")
    _flip_last_byte(run / "policies/v000000/policy.onnx")
    assert "TAMPERED" in refused("--policy", str(run), "--version", "0", "--keys", str(keydir))
    side = run / "policies/v000001/policy.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "step": 5}))
    assert "altered after signing" in refused("--policy", str(run), "--version", "1", "--keys", str(keydir))
    assert "pass --keys" in refused("--policy", str(run), "--version", "2")
    keys.new_identity(tmp_path / "other", "other", "learner")
    assert "unknown key" in refused("--policy", str(run), "--version", "2", "--keys", str(tmp_path / "other"))
    assert "not 'passed'" in refused("--policy", str(run), "--version", "2", "--keys", str(keydir))
    assert "no version 7" in refused("--policy", str(run), "--version", "7", "--keys", str(keydir))
    pendulum = str(shipped_root / "pendulum")
    assert "--allow-unsigned" in refused("--policy", pendulum)
    assert "--allow-unvalidated" in refused("--policy", pendulum, "--allow-unsigned")
    assert not Path(to).exists()  # nothing was copied by any refused export
    assert export_cli(["--policy", pendulum, "--allow-unsigned", "--allow-unvalidated", "--to", to]) == 0
    assert json.loads((Path(to) / "export.json").read_text())["signature"]["state"] == "unsigned"


def test_previous_validated_is_the_rollback_target(run: Path) -> None:
    write_linear_policy(run / "policies/v000003", BALANCES, 3, 2)
    for version, status in ((0, "passed"), (1, "passed"), (2, "failed"), (3, "passed")):
        _verdict(run / f"policies/v{version:06d}", status)
    target = previous_validated(run, 3)
    assert target is not None and target.version == 1 and target.directory == run / "policies/v000001"
    assert previous_validated(run, 2).version == 1
    assert previous_validated(run, 1).version == 0
    assert previous_validated(run, 0) is None
    _verdict(run / "policies/v000001", "passed", sha256="0" * 64)  # a verdict on other bytes: stale
    assert previous_validated(run, 3).version == 0
    shutil.rmtree(run / "policies/v000000/validation")
    assert previous_validated(run, 3) is None


def test_ship_signs_when_given_keys(small_overrides, pendulum_dataset, keydir: Path, tmp_path: Path) -> None:
    from robot_wsrl.learn.config import compose_config
    from robot_wsrl.learn.pretrain import pretrain
    from robot_wsrl.learn.ship import ship

    overrides = ["env=inverted_pendulum", *small_overrides, f"run.dataset={pendulum_dataset}", "run.steps=2"]
    pretrain(compose_config("pretrain", [*overrides, "run.eval_every=0"]))
    out = tmp_path / "shipped" / "pendulum"
    ship(tmp_path / "run" / "checkpoint.pt", out, {}, 1, 0, keys.load_signing_key(keydir, "learner"))
    (entry,) = shipped(out.parent, keys.load_verify_keys(keydir))
    assert (entry.name, entry.signature.state, entry.integrity) == ("pendulum", "valid", "ok")
    ship(tmp_path / "run" / "checkpoint.pt", out, {}, 1, 0, force=True)  # again without keys: unsigned
    assert shipped(out.parent, None)[0].signature.state == "unsigned"


def test_rollback_cli_checks_the_registry_then_the_runner_swaps_back(run: Path, capsys) -> None:
    """A runner on loopback that swapped v0 -> v1; the CLI rolls it back to v0 only once v0 is validated."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    v0, v1 = (OnnxPolicy.load(run / f"policies/v{v:06d}/policy.onnx") for v in (0, 1))
    driver = make_driver("gym:InvertedPendulum-v5", max_episode_steps=3)
    runner = Runner(driver, v0)
    assert runner.offer_policy(v1).accepted
    ctx = zmq.Context()
    server = ControlServer(bind_control(ctx, endpoint, "robot1", None, plain=True), "robot1", secure=False)
    server.attach(runner)
    server.start()
    stop = threading.Event()
    loop = threading.Thread(target=runner.run, kwargs={"stop_event": stop})
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while runner.policy.version != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.status()["previous_policy_version"] == 0
        args = ["--runner", f"robot1={endpoint}", "--plain", "--run", str(run), "--timeout", "5"]
        _verdict(run / "policies/v000000", "failed")
        assert rollback_cli(args) == 1
        assert "no validated version before v1" in capsys.readouterr().err
        _verdict(run / "policies/v000000", "passed")
        assert rollback_cli(args) == 0
        assert "robot1: rollback queued" in capsys.readouterr().out
        while runner.policy.version != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.policy.version == 0
    finally:
        stop.set()
        loop.join(10)
        server.close()
        transport.shutdown(ctx)
        driver.close()
    assert rollback_cli(["--run", str(run)]) == 2
    assert "robot-wsrl rollback: " in capsys.readouterr().err
