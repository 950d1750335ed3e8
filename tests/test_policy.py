"""OnnxPolicy: action semantics, seeded sampling, and every validation check a runner relies on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.checkpoint import build_actor
from robot_wsrl.learn.export import export_policy
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError, PolicyMetadata, sha256_bytes, spec_mismatches

SPEC = EnvSpec("arm", 6, 2, (-2.0, 0.0), (2.0, 1.0), 0.01)


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    actor = build_actor(SPEC, [32, 32])
    return export_policy(actor, tmp_path_factory.mktemp("policy"), spec=SPEC, version=2)


def _write_policy(tmp_path: Path, model: onnx.ModelProto, metadata: PolicyMetadata) -> Path:
    """A hand-made policy with valid metadata and hash, to reach the graph and probe checks."""
    meta = metadata.to_dict()
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    data = model.SerializeToString()
    path = tmp_path / "policy.onnx"
    path.write_bytes(data)
    (tmp_path / "policy.json").write_text(json.dumps({**meta, "sha256": sha256_bytes(data)}))
    return path


def _graph(input_name: str = "obs", act_dim: int = 2, fill: float = 0.1) -> onnx.ModelProto:
    """obs [batch, 6] -> mean = obs[:, :act_dim] * fill, log_std = same."""
    nodes = [
        helper.make_node("Slice", [input_name, "starts", "ends", "axes"], ["head"]),
        helper.make_node("Mul", ["head", "scale"], ["mean"]),
        helper.make_node("Mul", ["head", "scale"], ["log_std"]),
    ]
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [act_dim]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [fill]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 6])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", act_dim])
            for n in ("mean", "log_std")
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_deterministic_action_is_tanh_of_mean(policy_path: Path) -> None:
    policy = OnnxPolicy.load(policy_path, expected_spec=SPEC)
    obs = np.arange(6, dtype=np.float32)
    mean, _ = policy.forward(obs[None])
    np.testing.assert_allclose(policy.act(obs, deterministic=True), np.tanh(mean[0]), atol=1e-6)
    assert policy.version == 2 and policy.spec == SPEC and len(policy.sha256) == 64


def test_stochastic_action_is_seeded_and_squashed(policy_path: Path) -> None:
    obs = np.ones(6, dtype=np.float32)
    a = OnnxPolicy.load(policy_path, seed=3)
    b = OnnxPolicy.load(policy_path, seed=3)
    first = np.stack([a.act(obs, deterministic=False) for _ in range(200)])
    np.testing.assert_array_equal(first, np.stack([b.act(obs, deterministic=False) for _ in range(200)]))
    assert np.all(np.abs(first) <= 1.0) and first.std(axis=0).min() > 0
    a.reseed(3)
    np.testing.assert_array_equal(a.act(obs, deterministic=False), first[0])
    mean, log_std = a.forward(obs[None])
    noise = np.random.default_rng(3).standard_normal(2, dtype=np.float32)
    np.testing.assert_allclose(first[0], np.tanh(mean[0] + np.exp(log_std[0]) * noise), atol=1e-6)


def test_act_returns_a_fresh_array(policy_path: Path) -> None:
    policy = OnnxPolicy.load(policy_path)
    first = policy.act(np.zeros(6, dtype=np.float32), deterministic=True)
    kept = first.copy()
    policy.act(np.full(6, 5.0, dtype=np.float32), deterministic=True)
    np.testing.assert_array_equal(first, kept)


def test_missing_files_are_refused(policy_path: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.onnx: cannot read policy"):
        OnnxPolicy.load(tmp_path / "nope.onnx")
    (tmp_path / "policy.onnx").write_bytes(policy_path.read_bytes())
    with pytest.raises(PolicyError, match=r"policy\.json: sidecar not found"):
        OnnxPolicy.load(tmp_path / "policy.onnx")
    (tmp_path / "policy.json").write_text("{not json")
    with pytest.raises(PolicyError, match="unreadable sidecar"):
        OnnxPolicy.load(tmp_path / "policy.onnx")


def test_sidecar_disagreeing_with_embedded_metadata_is_refused(policy_path: Path, tmp_path: Path) -> None:
    (tmp_path / "policy.onnx").write_bytes(policy_path.read_bytes())
    side = json.loads(policy_path.with_suffix(".json").read_text())
    side["version"] = 99
    (tmp_path / "policy.json").write_text(json.dumps(side))
    with pytest.raises(PolicyError, match=r"disagrees with the ONNX metadata on \['version'\]"):
        OnnxPolicy.load(tmp_path / "policy.onnx")


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (EnvSpec("arm", 6, 2, (-2.0, 0.0), (2.0, 2.0), 0.01), "action_high"),
        (EnvSpec("arm", 6, 2, (-2.0, 0.0), (2.0, 1.0), 0.02), "control_period_s 0.01 != expected 0.02"),
        (EnvSpec("arm", 6, 3, (-1.0,) * 3, (1.0,) * 3, 0.01), "act_dim 2 != expected 3"),
    ],
)
def test_spec_mismatch_is_refused(policy_path: Path, other: EnvSpec, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        OnnxPolicy.load(policy_path, expected_spec=other)


def test_spec_name_is_only_a_label() -> None:
    renamed = EnvSpec("arm-hw", 6, 2, (-2.0, 0.0), (2.0, 1.0), 0.01)
    assert spec_mismatches(SPEC, renamed) == []


def test_wrong_input_name_is_refused(tmp_path: Path) -> None:
    path = _write_policy(tmp_path, _graph(input_name="observation"), PolicyMetadata(SPEC, 0, None, 0, ""))
    with pytest.raises(PolicyError, match=r"graph has inputs \['observation'\]"):
        OnnxPolicy.load(path)


def test_wrong_output_width_is_refused(tmp_path: Path) -> None:
    path = _write_policy(tmp_path, _graph(act_dim=1), PolicyMetadata(SPEC, 0, None, 0, ""))
    with pytest.raises(PolicyError, match=r"'mean' is tensor\(float\)\['batch', 1\]"):
        OnnxPolicy.load(path)


def test_non_finite_probe_outputs_are_refused(tmp_path: Path) -> None:
    path = _write_policy(tmp_path, _graph(fill=float("inf")), PolicyMetadata(SPEC, 0, None, 0, ""))
    with pytest.raises(PolicyError, match="not finite on probe observations"):
        OnnxPolicy.load(path)


def test_hand_made_valid_policy_loads(tmp_path: Path) -> None:
    policy = OnnxPolicy.load(_write_policy(tmp_path, _graph(), PolicyMetadata(SPEC, 5, 4, 10, "h")))
    np.testing.assert_allclose(
        policy.act(np.ones(6, dtype=np.float32), deterministic=True), np.tanh([0.1, 0.1])
    )


def test_run_id_comes_from_the_sidecar_and_must_be_a_name(policy_path: Path, tmp_path: Path) -> None:
    """The learner run that made a policy (signed with the sidecar): None for an export without one."""
    assert OnnxPolicy.load(policy_path).run_id is None
    onnx_path = tmp_path / "policy.onnx"
    onnx_path.write_bytes(policy_path.read_bytes())
    sidecar = json.loads(policy_path.with_suffix(".json").read_text())
    for run_id, error in (("run-7f3a", None), ("", "not a non-empty string"), (7, "not a non-empty string")):
        (tmp_path / "policy.json").write_text(json.dumps({**sidecar, "run_id": run_id}))
        if error is None:
            assert OnnxPolicy.load(onnx_path).run_id == run_id
        else:
            with pytest.raises(PolicyError, match=error):
                OnnxPolicy.load(onnx_path)
