"""Export: torch/onnxruntime parity, metadata in both places, and refusal of damaged or mismatched files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from robot_wsrl.apps.export import cli
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.checkpoint import build_actor, save_checkpoint
from robot_wsrl.learn.export import IR_VERSION, OPSET, export_policy
from robot_wsrl.learn.networks import TanhGaussianActor
from robot_wsrl.robot.policy import METADATA_KEYS, OnnxPolicy, PolicyError

SPEC = EnvSpec("hopper-test", 11, 3, (-1.0, -2.0, -0.5), (1.0, 2.0, 1.5), 0.008)


def _actor(spec: EnvSpec = SPEC, hidden: tuple[int, ...] = (256, 256)) -> TanhGaussianActor:
    torch.manual_seed(0)
    actor = build_actor(spec, list(hidden))
    return actor.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[TanhGaussianActor, Path]:
    actor = _actor()
    out = tmp_path_factory.mktemp("policy")
    return actor, export_policy(
        actor, out, spec=SPEC, version=7, parent_version=6, step=1234, config_hash="abc"
    )


def _copy(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir()
    for name in ("policy.onnx", "policy.json"):
        (dst_dir / name).write_bytes((src.parent / name).read_bytes())
    return dst_dir / "policy.onnx"


def test_parity_with_torch_on_1000_observations(exported: tuple[TanhGaussianActor, Path]) -> None:
    actor, path = exported
    obs = (3.0 * np.random.default_rng(1).standard_normal((1000, SPEC.obs_dim))).astype(np.float32)
    with torch.no_grad():
        want_mean, want_log_std = (t.numpy() for t in actor(torch.from_numpy(obs)))
    mean, log_std = OnnxPolicy.load(path).forward(obs)
    assert np.max(np.abs(mean - want_mean)) <= 1e-5
    assert np.max(np.abs(log_std - want_log_std)) <= 1e-5


def test_single_observation_act_matches_torch(exported: tuple[TanhGaussianActor, Path]) -> None:
    actor, path = exported
    policy = OnnxPolicy.load(path)
    obs = np.linspace(-2, 2, SPEC.obs_dim, dtype=np.float32)
    with torch.no_grad():
        want = actor.deterministic(torch.from_numpy(obs)[None])[0].numpy()
    np.testing.assert_allclose(policy.act(obs, deterministic=True), want, atol=1e-5)


def test_sidecar_and_onnx_metadata(exported: tuple[TanhGaussianActor, Path]) -> None:
    _, path = exported
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["size_bytes"] == path.stat().st_size
    assert side["file"] == "policy.onnx"
    assert side["version"] == 7 and side["parent_version"] == 6 and side["step"] == 1234
    assert side["config_hash"] == "abc"
    assert side["spec"] == SPEC.to_dict() and side["control_period_s"] == SPEC.control_period_s
    assert side["input_names"] == ["obs"] and side["output_names"] == ["mean", "log_std"]

    model = onnx.load(str(path))
    embedded = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert set(embedded) == set(METADATA_KEYS)
    assert all(embedded[key] == side[key] for key in METADATA_KEYS)
    assert model.ir_version == IR_VERSION
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert [i.name for i in model.graph.input] == ["obs"]
    assert [o.name for o in model.graph.output] == ["mean", "log_std"]
    obs_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert obs_dims[0].dim_param and obs_dims[1].dim_value == SPEC.obs_dim
    assert all(o.type.tensor_type.shape.dim[1].dim_value == SPEC.act_dim for o in model.graph.output)


def test_export_is_deterministic(exported: tuple[TanhGaussianActor, Path], tmp_path: Path) -> None:
    actor, path = exported
    again = export_policy(
        actor, tmp_path, spec=SPEC, version=7, parent_version=6, step=1234, config_hash="abc"
    )
    assert again.read_bytes() == path.read_bytes()


def test_export_from_checkpoint_and_cli(tmp_path: Path) -> None:
    spec = EnvSpec("small", 5, 2, (-1.0, -1.0), (1.0, 1.0), 0.02)
    actor = _actor(spec, (16, 16))
    payload = {
        "spec": spec.to_dict(),
        "agent_config": {"actor_hidden": [16, 16]},
        "actor": actor.state_dict(),
        "step": 42,
        "config_hash": "deadbeef",
        "config": {},
    }
    ckpt = save_checkpoint(tmp_path / "ckpt.pt", payload)
    assert cli([str(ckpt), "--out", str(tmp_path / "out"), "--version", "3", "--parent-version", "2"]) == 0
    policy = OnnxPolicy.load(tmp_path / "out" / "policy.onnx", expected_spec=spec)
    assert (policy.version, policy.metadata.parent_version, policy.metadata.step) == (3, 2, 42)
    assert policy.metadata.config_hash == "deadbeef"
    assert cli([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2


def test_flipped_bytes_are_refused(exported: tuple[TanhGaussianActor, Path], tmp_path: Path) -> None:
    path = _copy(exported[1], tmp_path / "p")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(
        b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8]
    )
    path.write_bytes(bytes(data))
    with pytest.raises(PolicyError, match=r"policy\.onnx.*sha256 mismatch"):
        OnnxPolicy.load(path)


def test_truncated_file_is_refused_even_with_a_matching_hash(
    exported: tuple[TanhGaussianActor, Path], tmp_path: Path
) -> None:
    path = _copy(exported[1], tmp_path / "p")
    data = path.read_bytes()[:1000]
    path.write_bytes(data)
    with pytest.raises(PolicyError, match="sha256 mismatch"):
        OnnxPolicy.load(path)
    side = json.loads(path.with_suffix(".json").read_text())
    side["sha256"] = hashlib.sha256(data).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(PolicyError, match=r"policy\.onnx: onnxruntime cannot load it"):
        OnnxPolicy.load(path)


def test_sha_mismatch_in_sidecar_is_refused(exported: tuple[TanhGaussianActor, Path], tmp_path: Path) -> None:
    path = _copy(exported[1], tmp_path / "p")
    side = json.loads(path.with_suffix(".json").read_text())
    side["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(PolicyError, match=r"sidecar policy\.json says 0000"):
        OnnxPolicy.load(path)


def test_obs_dim_mismatch_is_refused(exported: tuple[TanhGaussianActor, Path]) -> None:
    other = EnvSpec("bigger", 12, 3, SPEC.action_low, SPEC.action_high, SPEC.control_period_s)
    with pytest.raises(
        PolicyError, match=r"policy\.onnx: policy does not fit 'bigger': obs_dim 11 != expected 12"
    ):
        OnnxPolicy.load(exported[1], expected_spec=other)


def test_export_refuses_a_policy_with_non_finite_outputs(tmp_path: Path) -> None:
    actor = _actor(SPEC, (16, 16))
    with torch.no_grad():
        actor.net[-1].bias.fill_(float("nan"))
    with pytest.raises(PolicyError, match="not finite on probe observations"):
        export_policy(actor, tmp_path, spec=SPEC)
    assert not (tmp_path / "policy.onnx").exists() and not (tmp_path / "policy.json").exists()


def test_export_needs_a_matching_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs its EnvSpec"):
        export_policy(_actor(SPEC, (8,)), tmp_path)
    small = EnvSpec("small", 5, 2, (-1.0, -1.0), (1.0, 1.0), 0.02)
    with pytest.raises(ValueError, match="actor is 11->3"):
        export_policy(_actor(SPEC, (8,)), tmp_path, spec=small)


def test_run_id_goes_into_the_signed_sidecar(
    exported: tuple[TanhGaussianActor, Path], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from robot_wsrl.wire import signing

    actor, plain = exported
    assert "run_id" not in json.loads(plain.with_suffix(".json").read_text())
    path = export_policy(actor, tmp_path, spec=SPEC, version=8, run_id="0123abcd")
    sidecar = path.with_suffix(".json")
    assert json.loads(sidecar.read_text())["run_id"] == "0123abcd"
    OnnxPolicy.load(path, expected_spec=SPEC)  # an extra sidecar key is not a mismatch
    key = Ed25519PrivateKey.generate()
    trusted = {signing.key_id(key.public_key()): key.public_key()}
    signing.write_signature(path, key)
    signing.verify_signature_file(path, trusted)
    sidecar.write_text(sidecar.read_text().replace("0123abcd", "ffffffff"))  # another run's id: tampered
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify_signature_file(path, trusted)
