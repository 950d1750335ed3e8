"""Exporting a camera policy: one ONNX graph from `obs` and each camera's raw uint8 frames, named after
the camera, to (mean, log_std), with the preprocessing inside, at parity with torch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import SMALL_AGENT

from robot_wsrl.core.spec import CameraSpec, EnvSpec
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.checkpoint import build_actor
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.export import export_policy
from robot_wsrl.learn.networks import CameraActor, build_networks
from robot_wsrl.learn.training import save_training_checkpoint
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError

CAMERAS = (CameraSpec("top", 32, 32), CameraSpec("wrist", 24, 28, 1))
SPEC = EnvSpec("cam-export", 6, 2, (-2.0, -1.0), (2.0, 1.0), 0.02, CAMERAS)
OVERRIDES = [*SMALL_AGENT, "agent.encoder.channels=[8,16]", "agent.encoder.strides=[2,2]"]


@pytest.fixture(scope="module")
def agent() -> Agent:
    cfg = compose_config("finetune", OVERRIDES)
    torch.manual_seed(0)
    agent = Agent(build_networks(SPEC.obs_dim, SPEC.act_dim, cfg.agent, "cpu", cameras=CAMERAS), cfg.agent)
    with torch.no_grad():  # away from the initial near-zero head, so parity compares real outputs
        for p in agent.actor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return agent


def inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {"obs": rng.standard_normal((n, SPEC.obs_dim)).astype(np.float32)}
    return feeds | {c.name: rng.integers(0, 256, (n, *c.shape), dtype=np.uint8) for c in CAMERAS}


def test_a_camera_policy_exports_one_graph_with_named_raw_inputs_at_parity(agent, tmp_path):
    path = export_policy(agent.policy_module(), tmp_path, spec=SPEC, version=3, step=10, config_hash="abc")
    model = onnx.load(path)
    graph_inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(graph_inputs) == ["obs", "top", "wrist"]
    assert graph_inputs["top"].elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in graph_inputs["wrist"].shape.dim[1:]] == [24, 28, 1]
    assert {n.op_type for n in model.graph.node} >= {"Cast", "Div", "Transpose", "Conv"}  # inside the graph
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["input_names"] == ["obs", "top", "wrist"]
    assert EnvSpec.from_dict(meta["spec"]) == SPEC
    side = json.loads((tmp_path / "policy.json").read_text())
    assert side["input_names"] == ["obs", "top", "wrist"] and side["spec"]["cameras"][1]["channels"] == 1

    # parity, batched and single-row, against the torch module (float outputs within 1e-5)
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    module = agent.policy_module().eval()
    for n, seed in ((64, 1), (1, 2)):
        feeds = inputs(n, seed)
        with torch.no_grad():
            want = [t.numpy() for t in module(*(torch.from_numpy(x) for x in feeds.values()))]
        got = session.run(["mean", "log_std"], feeds)
        for w, g in zip(want, got, strict=True):
            assert g.shape == (n, SPEC.act_dim) and float(np.max(np.abs(w - g))) <= 1e-5
        assert float(np.max(np.abs(want[0]))) > 1e-2  # not a trivially zero output

    # the runner's policy runs it from an observation as the driver gives it
    policy = OnnxPolicy.load(path)
    feeds = inputs(1, 3)
    obs = {"state": feeds["obs"][0], **{c.name: feeds[c.name][0] for c in CAMERAS}}
    expected = np.tanh(session.run(["mean"], feeds)[0][0])  # normalised, as the runner commands it
    np.testing.assert_allclose(policy.act(obs, deterministic=True), expected, atol=1e-5)


def test_a_camera_policy_exports_from_its_checkpoint(agent, tmp_path):
    cfg = compose_config("finetune", OVERRIDES)
    ckpt = save_training_checkpoint(tmp_path / "c.pt", agent, SPEC, cfg, 7, {})
    path = export_policy(ckpt, tmp_path / "out")
    policy = OnnxPolicy.load(path)
    assert policy.metadata.spec == SPEC and policy.metadata.step == 7
    feeds = inputs(5, 4)
    with torch.no_grad():
        want = agent.policy_module()(*(torch.from_numpy(x) for x in feeds.values()))[0].numpy()
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    assert float(np.max(np.abs(session.run(["mean"], feeds)[0] - want))) <= 1e-5


def test_export_refuses_a_policy_whose_cameras_are_not_the_specs(agent, tmp_path):
    with pytest.raises(ValueError, match="cameras"):
        export_policy(build_actor(dataclasses.replace(SPEC, cameras=()), [8]), tmp_path / "a", spec=SPEC)
    other = dataclasses.replace(SPEC, cameras=(CameraSpec("top", 32, 32), CameraSpec("side", 24, 28, 1)))
    with pytest.raises(ValueError, match="side"):
        export_policy(agent.policy_module(), tmp_path / "b", spec=other)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_state_policy_exports_as_before(tmp_path):
    spec = dataclasses.replace(SPEC, cameras=())
    torch.manual_seed(0)
    actor = build_actor(spec, [16, 16])
    assert not isinstance(actor, CameraActor)
    path = export_policy(actor, tmp_path, spec=spec)
    model = onnx.load(path)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert [i.name for i in model.graph.input] == ["obs"] and meta["input_names"] == ["obs"]
    assert "cameras" not in meta["spec"]  # a state-only spec reads and writes as it always has
    assert model.doc_string.endswith(": obs -> pre-squash mean, log_std")


def test_a_parity_failure_removes_the_camera_export(agent, tmp_path, monkeypatch):
    from robot_wsrl.learn import export as export_module

    monkeypatch.setattr(export_module, "PARITY_ATOL", -1.0)  # nothing passes
    with pytest.raises(PolicyError, match="differs from torch"):
        export_policy(agent.policy_module(), tmp_path, spec=SPEC)
    assert not (tmp_path / "policy.onnx").exists() and not (tmp_path / "policy.json").exists()
