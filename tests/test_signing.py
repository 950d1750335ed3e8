"""Policy signatures: only what a trusted learner signed, unaltered, is accepted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from robot_wsrl.wire.protocol import PolicyMessage, decode, encode
from robot_wsrl.wire.signing import (
    SignatureError,
    canonical_json,
    key_id,
    load_public_key,
    load_secret_key,
    public_pem,
    secret_pem,
    sign_policy,
    signed_policy_message,
    verify_policy,
    verify_policy_message,
)

ONNX = b"\x08\x08pretend this is an onnx model" * 4


def sidecar(onnx: bytes = ONNX, **extra: object) -> dict:
    return {
        "version": 4,
        "parent_version": 3,
        "step": 1000,
        "sha256": hashlib.sha256(onnx).hexdigest(),
        **extra,
    }


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def trusted(key: Ed25519PrivateKey) -> dict:
    return {key_id(key.public_key()): key.public_key()}


def test_sign_and_verify(key: Ed25519PrivateKey, trusted: dict) -> None:
    signer, signature = sign_policy(key, ONNX, sidecar())
    assert signer == key_id(key.public_key()) and len(signature) == 64
    verify_policy(trusted, ONNX, sidecar(), signer, signature)


def test_signature_survives_reserialising_the_sidecar(key: Ed25519PrivateKey, trusted: dict) -> None:
    signer, signature = sign_policy(key, ONNX, sidecar())
    reordered = json.loads(json.dumps(dict(reversed(list(sidecar().items()))), indent=2))
    verify_policy(trusted, ONNX, reordered, signer, signature)
    assert canonical_json(reordered) == canonical_json(sidecar())


def test_tampered_onnx_is_refused(key: Ed25519PrivateKey, trusted: dict) -> None:
    signer, signature = sign_policy(key, ONNX, sidecar())
    tampered = ONNX[:-1] + b"X"
    with pytest.raises(SignatureError, match="do not match the sidecar's sha256"):
        verify_policy(trusted, tampered, sidecar(), signer, signature)
    # ... and with the sidecar's hash updated to match, the signature no longer does
    with pytest.raises(SignatureError, match="does not verify"):
        verify_policy(trusted, tampered, sidecar(tampered), signer, signature)


def test_tampered_sidecar_is_refused(key: Ed25519PrivateKey, trusted: dict) -> None:
    signer, signature = sign_policy(key, ONNX, sidecar())
    with pytest.raises(SignatureError, match="does not verify"):
        verify_policy(trusted, ONNX, sidecar(step=999_999), signer, signature)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_policy(trusted, ONNX, sidecar(), signer, signature[:-1] + bytes([signature[-1] ^ 1]))


def test_unsigned_is_refused(trusted: dict) -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        verify_policy(trusted, ONNX, sidecar(), "", b"")


def test_unknown_key_is_refused(trusted: dict) -> None:
    other = Ed25519PrivateKey.generate()
    signer, signature = sign_policy(other, ONNX, sidecar())
    with pytest.raises(SignatureError, match="unknown key"):
        verify_policy(trusted, ONNX, sidecar(), signer, signature)
    # claiming the trusted key's id does not help
    with pytest.raises(SignatureError, match="does not verify"):
        verify_policy(trusted, ONNX, sidecar(), next(iter(trusted)), signature)


def test_policy_message_round_trip(key: Ed25519PrivateKey, trusted: dict) -> None:
    text = json.dumps(sidecar())
    msg = signed_policy_message("learner", key, ONNX, text)
    assert (msg.version, msg.parent, msg.sha256) == (4, 3, sidecar()["sha256"])
    back = decode(encode(msg))
    assert isinstance(back, PolicyMessage)
    assert verify_policy_message(back, trusted) == sidecar()


def test_policy_message_header_must_match_signed_sidecar(key: Ed25519PrivateKey, trusted: dict) -> None:
    msg = signed_policy_message("learner", key, ONNX, json.dumps(sidecar()))
    lying = PolicyMessage(**{**msg.__dict__, "version": 99})
    with pytest.raises(SignatureError, match=r"disagrees .* \['version'\]"):
        verify_policy_message(lying, trusted)
    unsigned = PolicyMessage(**{**msg.__dict__, "signature": b"", "signer": ""})
    with pytest.raises(SignatureError, match="unsigned"):
        verify_policy_message(unsigned, trusted)


def test_pem_files_round_trip(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    (tmp_path / "k.sign").write_bytes(secret_pem(key))
    (tmp_path / "k.sign.pub").write_bytes(public_pem(key.public_key()))
    assert key_id(load_secret_key(tmp_path / "k.sign").public_key()) == key_id(key.public_key())
    assert key_id(load_public_key(tmp_path / "k.sign.pub")) == key_id(key.public_key())
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(tmp_path / "bad.pub")


def test_signed_policy_loads_on_the_runner_side(
    key: Ed25519PrivateKey, trusted: dict, tmp_path: Path
) -> None:
    """Learner: exported files -> signed message. Runner: decode, verify, write, OnnxPolicy.load."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from robot_wsrl.core.spec import EnvSpec
    from robot_wsrl.robot.policy import OnnxPolicy, PolicyMetadata, sha256_bytes

    spec = EnvSpec("toy", 2, 2, (-1.0, -1.0), (1.0, 1.0), 0.01)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["obs"], ["mean"]), helper.make_node("Neg", ["obs"], ["log_std"])],
        "g",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("mean", "log_std")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = PolicyMetadata(spec, 4, 3, 1000, "cfg").to_dict()
    for name, value in meta.items():
        model.metadata_props.add(key=name, value=json.dumps(value))
    data = model.SerializeToString()
    frames = encode(
        signed_policy_message("learner", key, data, json.dumps({**meta, "sha256": sha256_bytes(data)}))
    )

    received = decode(frames)
    assert isinstance(received, PolicyMessage)
    side = verify_policy_message(received, trusted)
    (tmp_path / "policy.onnx").write_bytes(received.onnx)
    (tmp_path / "policy.json").write_text(received.sidecar)
    policy = OnnxPolicy.load(tmp_path / "policy.onnx", expected_spec=spec)
    assert policy.version == side["version"] == 4
