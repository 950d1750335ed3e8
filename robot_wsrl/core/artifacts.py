"""The names of the files and folders the project writes and reads, in one place, so that every writer and
every reader agrees on them (standard library only: the robot side imports this).

A policy folder (shipped: `policies/NAME/`; produced: `RUN/policies/vNNNNNN/`; received by a runner:
`STATE/policies/vNNNNNN/`):

    policy.onnx        the actor graph
    policy.json        its sidecar: metadata and the ONNX file's sha256 (beside any NAME.onnx: NAME.json)
    policy.sig         the learner's detached signature (beside any NAME.onnx: NAME.sig)
    checkpoint.pt      the training checkpoint it was exported from (shipped folders)
    manifest.json      provenance: dataset, configuration, results (shipped folders)
    export.json        where an exported copy came from (`robot-wsrl export --policy`)
    validation/        report.json + report.png (`robot-wsrl validate`), verdict.json + validate.log (gate)

A training run (`out_dir`): config.yaml, config_hash.txt, summary.json, checkpoint.pt, snapshots/; a
pre-training run adds calibration.csv and checkpoints/ (kept copies, for `ship --select`); a
learner's run adds learner.pt (its state), transitions.log/ (the ingest log), run_id and policies/.
A runner's state folder: latch.state, runner.lock, policy.state, spool/, policies/.
"""

from __future__ import annotations

from pathlib import Path

# ----- a policy folder -----
POLICY_ONNX = "policy.onnx"
SIDECAR_SUFFIX = ".json"
SIGNATURE_SUFFIX = ".sig"


def sidecar_path(onnx_path: str | Path) -> Path:
    """`DIR/NAME.onnx` -> `DIR/NAME.json`."""
    return Path(onnx_path).with_suffix(SIDECAR_SUFFIX)


def signature_path(onnx_path: str | Path) -> Path:
    """`DIR/NAME.onnx` -> `DIR/NAME.sig`."""
    return Path(onnx_path).with_suffix(SIGNATURE_SUFFIX)


POLICY_SIDECAR = sidecar_path(POLICY_ONNX).name
POLICY_SIGNATURE = signature_path(POLICY_ONNX).name
CHECKPOINT = "checkpoint.pt"
MANIFEST = "manifest.json"
EXPORT_RECORD = "export.json"

# ----- a policy's validation, beside it -----
VALIDATION_DIR = "validation"
REPORT = "report.json"
REPORT_PLOT = "report.png"
VERDICT = "verdict.json"
VALIDATE_LOG = "validate.log"

# ----- a training run -----
RUN_CONFIG = "config.yaml"
CONFIG_HASH = "config_hash.txt"
SUMMARY = "summary.json"
SNAPSHOT_DIR = "snapshots"


def actor_snapshot(run_dir: str | Path, step: int) -> Path:
    """The actor snapshot a run saved at `step`."""
    return Path(run_dir) / SNAPSHOT_DIR / f"actor-{step:09d}.pt"


# ----- a pre-training run -----
CALIBRATION_LOG = "calibration.csv"  # step, q_data_mean, mc_return_mean, q_calibration (learn.calibration)
KEPT_CHECKPOINT_DIR = "checkpoints"  # run.keep_checkpoints: every checkpoint, not only the resume point


def kept_checkpoint(run_dir: str | Path, step: int) -> Path:
    """The copy of checkpoint.pt a pre-training run kept at `step` (what `ship --select` chooses among)."""
    return Path(run_dir) / KEPT_CHECKPOINT_DIR / f"checkpoint-{step:09d}.pt"


# ----- a learner's run -----
LEARNER_STATE = "learner.pt"
INGEST_LOG = "transitions.log"  # a folder of segments (see learn.ingest_log)
RUN_ID = "run_id"  # this run's identity, carried (signed) by every policy it exports
POLICY_DIR = "policies"  # one version folder per policy, in a learner's run and in a runner's state folder


def version_dir(policy_dir: str | Path, version: int) -> Path:
    """The folder of policy `version` in a `policies/` folder."""
    return Path(policy_dir) / f"v{version:06d}"


# ----- a runner's state folder -----
LATCH_STATE = "latch.state"
RUNNER_LOCK = "runner.lock"  # held (flock) by the one runner using the folder
POLICY_RECORD = "policy.state"  # the (run_id, version) the runner's link took last
SPOOL_DIR = "spool"
