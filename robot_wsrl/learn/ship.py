"""Package a pre-trained checkpoint as a shipped policy under `policies/NAME/` (`robot-wsrl ship`).

The folder holds what the learner starts from (`checkpoint.pt`, the full agent state), what robots run
(`policy.onnx` + `policy.json`) and `manifest.json`: how it was made and its measured return on the
nominal simulator and on every shift preset that describes its robot (the sim-to-real gap a fine-tuning
session closes).

A runner runs whatever policy.onnx a folder holds, so a folder exists only once shipped whole: it is built
in a hidden sibling folder and renamed into place after its manifest is written. A failure (a simulator
that cannot render, a bad checkpoint) leaves nothing behind, and an existing folder is replaced only when
asked to (`force`), once the new one is complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from robot_wsrl.core.artifacts import CHECKPOINT, MANIFEST
from robot_wsrl.learn.checkpoint import load_checkpoint
from robot_wsrl.learn.envs import evaluate
from robot_wsrl.learn.export import export_policy
from robot_wsrl.robot.drivers import make_driver, probe_driver
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


def check_out(out: Path, force: bool) -> None:
    """Refuse to ship into a folder that holds something, unless `force`: a shipped policy is what runners
    and sessions start from, never overwritten by a slip of `--out`."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder, e.g. policies/NAME")
    if out.exists() and Path.cwd().resolve().is_relative_to(out.resolve()):
        raise ValueError(
            f"--out {out} is the current folder or holds it: give a new folder, e.g. policies/NAME"
        )
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():  # --force replaces a shipped policy, never other files
            raise ValueError(
                f"--out {out} holds files but no shipped policy (manifest.json): give another --out"
            )
        if not force:
            raise ValueError(
                f"{out} already holds a shipped policy: give --force to replace it, or another --out"
            )


def ship(
    checkpoint: Path,
    out: Path,
    recipe: dict[str, Any],
    episodes: int,
    seed: int,
    signing_key: Ed25519PrivateKey | None = None,
    dataset: dict[str, str] | None = None,
    selection: dict[str, Any] | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Copy `checkpoint` into `out`, export and measure it; `selection` records how it was chosen among a
    run's kept checkpoints (learn/selection.py), when it was. All or nothing (module docstring); `force`
    replaces a folder `out` that holds something."""
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(out, "shipping")
    try:
        manifest = _build(
            checkpoint, staging, out.name, recipe, episodes, seed, signing_key, dataset, selection
        )
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build(
    checkpoint: Path,
    folder: Path,
    name: str,
    recipe: dict[str, Any],
    episodes: int,
    seed: int,
    signing_key: Ed25519PrivateKey | None,
    dataset: dict[str, str] | None,
    selection: dict[str, Any] | None,
) -> dict[str, Any]:
    """The shipped folder's files, written into `folder` (empty); the manifest last."""
    payload = load_checkpoint(checkpoint)  # first: its errors name the user's file, not the staging copy
    env = payload["config"]["env"]  # a simulator that cannot run here fails now, before the export
    probe_driver(env["driver"], seed=seed, max_episode_steps=env["max_episode_steps"])
    target = folder / CHECKPOINT
    shutil.copyfile(checkpoint, target)
    onnx_path = export_policy(target, folder, version=0)
    if signing_key is not None:
        write_signature(onnx_path, signing_key)
    manifest = {
        "name": name,
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
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _hidden_sibling(out: Path, role: str) -> Path:
    """A new empty folder `.NAME.RANDOM.ROLE` beside `out` (hidden: registry.shipped lists no such folder),
    on the same file system so that a rename moves it."""
    folder = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.{role}"
    folder.mkdir()
    return folder


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the complete `staging` folder to `out`. A folder already there is first moved aside (two
    renames: POSIX has no portable directory exchange) and removed once the new one is in place; if the
    second rename fails it is moved back."""
    if not out.exists():
        staging.rename(out)
        return
    aside = _hidden_sibling(out, "replaced")
    old = aside / out.name
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        aside.rmdir()
        raise
    shutil.rmtree(aside)
