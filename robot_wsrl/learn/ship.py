"""Package a pre-trained checkpoint as a shipped policy under `policies/NAME/` (`robot-wsrl ship`).

The folder holds what the learner starts from (`checkpoint.pt`, the full agent state), what robots run
(`policy.onnx` + `policy.json`) and `manifest.json`: how it was made and its measured return on the
nominal simulator and on every dynamics-shift preset (the sim-to-real gap a fine-tuning session closes).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from robot_wsrl.core.artifacts import CHECKPOINT, MANIFEST, signature_path
from robot_wsrl.learn.checkpoint import load_checkpoint
from robot_wsrl.learn.envs import evaluate
from robot_wsrl.learn.export import export_policy
from robot_wsrl.robot.drivers import make_driver
from robot_wsrl.robot.policy import OnnxPolicy
from robot_wsrl.sim.shift import preset_names
from robot_wsrl.wire.signing import write_signature


def measure_returns(
    policy_file: Path, env: dict[str, Any], episodes: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Deterministic returns (and success rate, for a task that has one) of the exported policy, run as
    the robot runs it (onnxruntime), on its env with each shift preset that describes that robot."""
    policy = OnnxPolicy.load(policy_file)
    results = {}
    for preset in preset_names(env["driver"]):
        driver = make_driver(
            env["driver"], seed=seed, max_episode_steps=env["max_episode_steps"], shift_preset=preset
        )
        try:
            measured = evaluate(lambda obs: policy.act(obs, deterministic=True), driver, episodes, seed)
        finally:
            driver.close()
        row = measured.summary()
        results[preset] = {
            "return_mean": row["return_mean"],
            "return_std": row["return_std"],
            **({"success_rate": row["success_rate"]} if "success_rate" in row else {}),
            "episodes": episodes,
        }
    return results


def ship(
    checkpoint: Path,
    out: Path,
    recipe: dict[str, Any],
    episodes: int,
    seed: int,
    signing_key: Ed25519PrivateKey | None = None,
    dataset: dict[str, str] | None = None,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy `checkpoint` into `out`, export and measure it; `selection` records how it was chosen among a
    run's kept checkpoints (learn/selection.py), when it was."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / CHECKPOINT
    if checkpoint.resolve() != target.resolve():
        shutil.copyfile(checkpoint, target)
    payload = load_checkpoint(target)
    onnx_path = export_policy(target, out, version=0)
    signature_path(onnx_path).unlink(missing_ok=True)  # a signature of an earlier export would not verify
    if signing_key is not None:
        write_signature(onnx_path, signing_key)
    manifest = {
        "name": out.name,
        "env": payload["config"]["env"],
        "agent": payload["agent_config"],
        "pretrain_steps": int(payload["step"]),
        "config_hash": payload["config_hash"],
        "recipe": recipe,
        **({"dataset": dataset} if dataset else {}),  # path, sha256, command: `collect --fetch` rebuilds it
        **({"selection": selection} if selection else {}),
        "driver": payload["config"]["env"]["driver"],  # what the policy runs on (cameras: its spec's)
        "returns": measure_returns(onnx_path, payload["config"]["env"], episodes, seed),
        "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (target, onnx_path)},
        "shipped": time.strftime("%Y-%m-%d"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
