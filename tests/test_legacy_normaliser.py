"""The observation normaliser is gone (the official WSRL code feeds raw observations, and nothing ever fitted
ours): checkpoints written with its identity buffers still load and export to a graph with the same inputs,
outputs and numbers as before; a checkpoint whose normaliser was fitted is refused, not silently changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from robot_wsrl.core.artifacts import CHECKPOINT, POLICY_ONNX
from robot_wsrl.learn.checkpoint import CheckpointError, load_actor, load_checkpoint, save_checkpoint
from robot_wsrl.learn.export import export_policy
from robot_wsrl.robot.policy import OnnxPolicy

# The policy shipped with identity normaliser buffers (policies/hopper until 2026-11-29, the same bytes)
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-hopper"
LEGACY_KEYS = ("normalizer.mean", "normalizer.std")


def _io(path: Path) -> list[tuple[str, list[int | str]]]:
    """The graph's inputs and outputs: names and shapes (a named dimension for the batch)."""
    graph = onnx.load(path).graph
    return [
        (v.name, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
        for v in (*graph.input, *graph.output)
    ]


def _initializers(path: Path) -> list[str]:
    return [init.name for init in onnx.load(path).graph.initializer]


def _reads_obs(path: Path) -> list[str]:
    """The operations that take the observation input directly."""
    return [node.op_type for node in onnx.load(path).graph.node if "obs" in node.input]


def test_the_shipped_checkpoint_holds_identity_normaliser_buffers_and_loads_without_them() -> None:
    raw = torch.load(LEGACY / CHECKPOINT, weights_only=True)
    for state in (raw["actor"], raw["agent"]["actor"], raw["agent"]["critic"], raw["agent"]["target_critic"]):
        assert torch.equal(state["normalizer.mean"], torch.zeros_like(state["normalizer.mean"]))
        assert torch.equal(state["normalizer.std"], torch.ones_like(state["normalizer.std"]))
    payload = load_checkpoint(LEGACY / CHECKPOINT)
    for state in (payload["actor"], *(payload["agent"][k] for k in ("actor", "critic", "target_critic"))):
        assert not set(LEGACY_KEYS) & set(state)
    actor, _, _ = load_actor(LEGACY / CHECKPOINT)
    assert not list(actor.buffers())


def test_a_fresh_export_of_the_shipped_checkpoint_matches_the_shipped_graph(tmp_path: Path) -> None:
    """Same inputs and outputs (names, shapes), no normaliser constants or ops, the same numbers."""
    fresh = export_policy(LEGACY / CHECKPOINT, tmp_path / "policy")
    shipped = LEGACY / POLICY_ONNX
    assert _io(fresh) == _io(shipped)
    assert [n for n in _initializers(shipped) if n.startswith("normalizer.")] == list(LEGACY_KEYS)
    assert not [n for n in _initializers(fresh) if n.startswith("normalizer.")]
    assert _reads_obs(shipped) == ["Sub"] and _reads_obs(fresh) == ["Gemm"]  # (obs - mean) / std is gone
    spec = OnnxPolicy.load(shipped).spec
    obs = (3.0 * np.random.default_rng(0).standard_normal((512, spec.obs_dim))).astype(np.float32)
    for got, want in zip(
        OnnxPolicy.load(fresh).forward(obs), OnnxPolicy.load(shipped).forward(obs), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_a_fitted_normaliser_is_refused(tmp_path: Path) -> None:
    raw = torch.load(LEGACY / CHECKPOINT, weights_only=True)
    raw["actor"]["normalizer.mean"] = torch.full_like(raw["actor"]["normalizer.mean"], 0.5)
    path = save_checkpoint(tmp_path / CHECKPOINT, {k: v for k, v in raw.items() if k != "format"})
    with pytest.raises(CheckpointError, match="fitted observation normaliser"):
        load_checkpoint(path)
