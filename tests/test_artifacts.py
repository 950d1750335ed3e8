"""The artifact file names: what is on disk (shipped policies, produced runs, a runner's state) keeps being
found under them, so they change only with a migration."""

from __future__ import annotations

from pathlib import Path

from robot_wsrl.core import artifacts
from robot_wsrl.core.artifacts import (
    CHECKPOINT,
    MANIFEST,
    POLICY_ONNX,
    POLICY_SIDECAR,
    POLICY_SIGNATURE,
    actor_snapshot,
    kept_checkpoint,
    sidecar_path,
    signature_path,
    version_dir,
)
from robot_wsrl.robot.policy import OnnxPolicy

SHIPPED = Path(__file__).resolve().parents[1] / "policies" / "hopper"


def test_the_names_on_disk_are_unchanged() -> None:
    names = {name: value for name, value in vars(artifacts).items() if name.isupper()}
    assert names == {
        "POLICY_ONNX": "policy.onnx",
        "SIDECAR_SUFFIX": ".json",
        "SIGNATURE_SUFFIX": ".sig",
        "POLICY_SIDECAR": "policy.json",
        "POLICY_SIGNATURE": "policy.sig",
        "CHECKPOINT": "checkpoint.pt",
        "MANIFEST": "manifest.json",
        "EXPORT_RECORD": "export.json",
        "VALIDATION_DIR": "validation",
        "REPORT": "report.json",
        "REPORT_PLOT": "report.png",
        "VERDICT": "verdict.json",
        "VALIDATE_LOG": "validate.log",
        "RUN_CONFIG": "config.yaml",
        "CONFIG_HASH": "config_hash.txt",
        "SUMMARY": "summary.json",
        "SNAPSHOT_DIR": "snapshots",
        "CALIBRATION_LOG": "calibration.csv",
        "KEPT_CHECKPOINT_DIR": "checkpoints",
        "LEARNER_STATE": "learner.pt",
        "INGEST_LOG": "transitions.log",
        "RUN_ID": "run_id",
        "POLICY_DIR": "policies",
        "LATCH_STATE": "latch.state",
        "RUNNER_LOCK": "runner.lock",
        "POLICY_RECORD": "policy.state",
        "SPOOL_DIR": "spool",
    }


def test_paths_derived_from_a_policy_file_and_a_version() -> None:
    onnx = Path("run/policies/v000007") / POLICY_ONNX
    assert sidecar_path(onnx) == onnx.parent / POLICY_SIDECAR
    assert signature_path(onnx) == onnx.parent / POLICY_SIGNATURE
    assert sidecar_path("any/name.onnx") == Path("any/name.json")
    assert version_dir("run/policies", 7) == onnx.parent
    assert actor_snapshot("run", 1200) == Path("run/snapshots/actor-000001200.pt")
    assert kept_checkpoint("run", 1200) == Path("run/checkpoints/checkpoint-000001200.pt")


def test_the_shipped_policy_folder_is_found_under_these_names() -> None:
    assert (SHIPPED / CHECKPOINT).is_file() and (SHIPPED / MANIFEST).is_file()
    policy = OnnxPolicy.load(SHIPPED / POLICY_ONNX)  # checks the sidecar found beside it
    assert policy.sha256 and sidecar_path(SHIPPED / POLICY_ONNX).is_file()
