"""Camera policies on the robot side: OnnxPolicy takes `obs` plus one uint8 image per camera, refuses a wrong
part (image shape, dtype, camera name) at its boundary and a graph that does not match the spec's parts,
probes images; the runner drives one with dict observations, copies the driver's frames and latches a
driver fault on a malformed frame. Graphs are made with onnx.helper (no torch)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from robot_wsrl.core.driver import StepResult
from robot_wsrl.core.spec import STATE, CameraSpec, EnvSpec, ObservationError
from robot_wsrl.robot.policy import OnnxPolicy, PolicyError, PolicyMetadata, sha256_bytes
from robot_wsrl.robot.runner import Runner
from robot_wsrl.robot.safety import EStopCause
from robot_wsrl.wire.protocol import Transitions, decode, encode

TOP = CameraSpec("top", 8, 6, 3)
SPEC = EnvSpec("cam-arm", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.01, cameras=(TOP,))
# mean = [state, image mean / 255] @ W: the image's brightness moves both actions
W = np.array([[0.5, 0.0], [0.0, 0.5], [0.1, -0.1], [0.0, 0.2], [1.0, -2.0]], dtype=np.float32)


def camera_graph(
    *,
    camera: str = "top",
    elem_type: int = TensorProto.UINT8,
    shape: tuple[int, int, int] = TOP.shape,
    log_std: str = "constant",
) -> onnx.ModelProto:
    """obs [batch, 4] and camera [batch, H, W, C] -> mean = concat(obs, mean(image) / 255) @ W.

    `log_std`: "constant" (-1), "log_brightness" (log of the image mean: -inf on a black image) or
    "saturated" (1 / (255 - max pixel): inf on an image with a white pixel, finite on a black one)."""
    nodes = [
        helper.make_node("Cast", [camera], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["mean4"], ["brightness"], axis=1),
        helper.make_node("Div", ["brightness", "full"], ["feature"]),
        helper.make_node("Concat", ["obs", "feature"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "w"], ["mean"]),
        helper.make_node("MatMul", ["joined", "zero"], ["flat"]),
    ]
    if log_std == "constant":
        nodes.append(helper.make_node("Add", ["flat", "minus_one"], ["log_std"]))
    elif log_std == "log_brightness":
        nodes += [
            helper.make_node("Log", ["feature"], ["log_feature"]),
            helper.make_node("Add", ["flat", "log_feature"], ["log_std"]),
        ]
    else:
        nodes += [
            helper.make_node("ReduceMax", ["pixels"], ["max4"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Flatten", ["max4"], ["brightest"], axis=1),
            helper.make_node("Sub", ["full", "brightest"], ["headroom"]),
            helper.make_node("Reciprocal", ["headroom"], ["inverse"]),
            helper.make_node("Add", ["flat", "inverse"], ["log_std"]),
        ]
    graph = helper.make_graph(
        nodes,
        "camera-policy",
        [
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", SPEC.obs_dim]),
            helper.make_tensor_value_info(camera, elem_type, ["batch", *shape]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("mean", "log_std")],
        [
            helper.make_tensor("w", TensorProto.FLOAT, W.shape, W.ravel().tolist()),
            helper.make_tensor("zero", TensorProto.FLOAT, W.shape, [0.0] * W.size),
            helper.make_tensor("full", TensorProto.FLOAT, [], [255.0]),
            helper.make_tensor("minus_one", TensorProto.FLOAT, [], [-1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write(directory: Path, model: onnx.ModelProto, spec: EnvSpec = SPEC, **meta_overrides: Any) -> Path:
    """The policy files as the exporter writes them: metadata in the model and the sidecar, with its hash."""
    meta = {**PolicyMetadata(spec, 1, None, 0, "test").to_dict(), **meta_overrides}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    data = model.SerializeToString()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.onnx").write_bytes(data)
    (directory / "policy.json").write_text(json.dumps({**meta, "sha256": sha256_bytes(data)}))
    return directory / "policy.onnx"


def observation(brightness: int, state: float = 0.0) -> dict[str, np.ndarray]:
    return {
        STATE: np.full(SPEC.obs_dim, state, dtype=np.float32),
        "top": np.full(TOP.shape, brightness, dtype=np.uint8),
    }


def expected_mean(obs: dict[str, np.ndarray]) -> np.ndarray:
    joined = np.concatenate([obs[STATE], [obs["top"].mean() / 255.0]]).astype(np.float32)
    return joined @ W


@pytest.fixture(scope="module")
def camera_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("camera-policy"), camera_graph())


def test_a_camera_policy_loads_and_acts_on_the_dict_observation(camera_policy: Path) -> None:
    policy = OnnxPolicy.load(camera_policy, expected_spec=SPEC)
    assert policy.spec.cameras == (TOP,)
    assert json.loads(camera_policy.with_suffix(".json").read_text())["input_names"] == ["obs", "top"]
    dark, bright = observation(0, 0.3), observation(200, 0.3)
    for obs in (dark, bright):
        np.testing.assert_allclose(policy.act(obs, True), np.tanh(expected_mean(obs)), atol=1e-6)
    assert not np.allclose(policy.act(dark, True), policy.act(bright, True))  # the image is read
    batch = {part: np.stack([dark[part], bright[part]]) for part in (STATE, "top")}
    mean, log_std = policy.forward(batch)
    np.testing.assert_allclose(mean, np.stack([expected_mean(dark), expected_mean(bright)]), atol=1e-6)
    np.testing.assert_allclose(log_std, -1.0)
    sampled = policy.act(bright, False)
    assert sampled.shape == (2,) and np.all(np.abs(sampled) <= 1.0)


def test_a_state_only_policy_keeps_its_metadata() -> None:
    state_only = EnvSpec("arm", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.01)
    meta = PolicyMetadata(state_only, 0, None, 0, "").to_dict()
    assert meta["input_names"] == ["obs"] and "cameras" not in meta["spec"]
    assert PolicyMetadata.from_dict(meta, "here").spec == state_only


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda o: {**o, "top": np.zeros((6, 8, 3), np.uint8)},
            r"observation part 'top' must be uint8 \(8, 6, 3\), got uint8 \(6, 8, 3\)",
        ),
        (
            lambda o: {**o, "top": o["top"].astype(np.float32)},
            r"observation part 'top' must be uint8 \(8, 6, 3\), got float32",
        ),
        (
            lambda o: {STATE: o[STATE], "wrist": o["top"]},
            r"observation parts must be \['state', 'top'\]; unknown \['wrist'\]; missing \['top'\]",
        ),
        (lambda o: o[STATE], r"observations are parts \['state', 'top'\], got ndarray"),
        (lambda o: {**o, STATE: np.zeros(5, np.float32)}, r"observation part 'state' must be float32 \(4,\)"),
    ],
)
def test_the_policy_refuses_a_wrong_part_naming_it(camera_policy: Path, change: Any, message: str) -> None:
    policy = OnnxPolicy.load(camera_policy)
    with pytest.raises(ObservationError, match=r"policy input: cam-arm " + message):
        policy.act(change(observation(10)), True)


def test_a_batch_with_a_wrong_image_is_refused(camera_policy: Path) -> None:
    policy = OnnxPolicy.load(camera_policy)
    batch = {STATE: np.zeros((3, 4), np.float32), "top": np.zeros((3, 8, 6, 1), np.uint8)}
    with pytest.raises(ObservationError, match=r"part 'top' must be uint8 \[batch, 8, 6, 3\], got uint8 \[3"):
        policy.forward(batch)
    with pytest.raises(ObservationError, match=r"batches are parts \['state', 'top'\], got \['state'\]"):
        policy.forward({STATE: batch[STATE]})


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (
            camera_graph(camera="wrist"),
            r"graph has inputs \['obs', 'wrist'\] and outputs \['mean', 'log_std'\], "
            r"expected \['obs', 'top'\] \(the spec's parts \['state', 'top'\]\)",
        ),
        (
            camera_graph(elem_type=TensorProto.FLOAT),
            r"input 'top' \(part 'top'\) is tensor\(float\)\['batch', 8, 6, 3\], "
            r"expected tensor\(uint8\)\[batch, 8, 6, 3\]",
        ),
        (
            camera_graph(shape=(6, 8, 3)),
            r"input 'top' \(part 'top'\) is tensor\(uint8\)\['batch', 6, 8, 3\], "
            r"expected tensor\(uint8\)\[batch, 8, 6, 3\]",
        ),
    ],
)
def test_a_graph_that_does_not_match_the_spec_parts_is_refused(
    tmp_path: Path, graph: onnx.ModelProto, message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        OnnxPolicy.load(write(tmp_path, graph))


def test_metadata_and_spec_must_name_the_cameras(camera_policy: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"metadata names \['obs'\] -> .* expected \['obs', 'top'\]"):
        OnnxPolicy.load(write(tmp_path / "names", camera_graph(), input_names=["obs"]))
    wider = EnvSpec("cam-arm", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.01, cameras=(CameraSpec("top", 84, 84),))
    with pytest.raises(PolicyError, match=r"cameras \['top 8x6x3'\] != expected \['top 84x84x3'\]"):
        OnnxPolicy.load(camera_policy, expected_spec=wider)
    clash = EnvSpec("cam-arm", 4, 2, (-1.0, -1.0), (1.0, 1.0), 0.01, cameras=(CameraSpec("mean", 8, 6),))
    with pytest.raises(PolicyError, match=r"camera names \['mean'\] are names of the policy graph's own"):
        PolicyMetadata(clash, 0, None, 0, "").to_dict()


@pytest.mark.parametrize("log_std", ["log_brightness", "saturated"])
def test_validation_probes_black_and_random_images(tmp_path: Path, log_std: str) -> None:
    """A graph that is not finite on a black image, or only on random ones, is refused at load."""
    with pytest.raises(PolicyError, match="'log_std' is not finite on probe observations"):
        OnnxPolicy.load(write(tmp_path, camera_graph(log_std=log_std)))


# ----- the runner with camera observations -----


class ReusingCameraDriver:
    """A camera robot whose driver writes every observation into the same buffers (as real drivers may):
    the frame's pixels are the step number, the state is the step number too."""

    def __init__(self, episode_steps: int = 4, bad_frame_at: int | None = None) -> None:
        self.spec = SPEC
        self._frame = np.zeros(TOP.shape, np.uint8)
        self._state = np.zeros(SPEC.obs_dim, np.float32)
        self._episode_steps, self._bad_frame_at = episode_steps, bad_frame_at
        self._step = self.total = 0

    def _obs(self) -> dict[str, np.ndarray]:
        self._frame[:] = self.total
        self._state[:] = self.total
        if self.total == self._bad_frame_at:
            return {STATE: self._state, "top": self._frame[:, :, :1]}
        return {STATE: self._state, "top": self._frame}

    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._step = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> StepResult:
        self._step += 1
        self.total += 1
        truncated = self._step >= self._episode_steps
        return StepResult(self._obs(), 1.0, False, truncated, np.clip(action, -1.0, 1.0).astype(np.float32))

    def safe_stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_runner_keeps_its_own_copy_of_each_frame(camera_policy: Path) -> None:
    driver = ReusingCameraDriver(episode_steps=4)
    runner = Runner(driver, OnnxPolicy.load(camera_policy), deterministic=True, realtime=False)
    status = runner.run(max_steps=8)
    assert status["state"] == "idle" and status["episodes_done"] == 2 and status["mean_episode_return"] == 4.0
    assert status["policy_step_p99_us"] is not None and status["policy_step_p99_us"] > 0
    transitions = runner.transitions
    assert len(transitions) == 8
    for t in transitions:
        step_no = t.episode * 4 + t.step  # the driver's total steps when it gave `obs`
        assert set(t.obs) == set(t.next_obs) == {STATE, "top"}
        assert np.all(t.obs["top"] == step_no) and np.all(t.next_obs["top"] == step_no + 1)
        assert np.all(t.obs[STATE] == step_no) and t.obs[STATE].dtype == np.float32
        np.testing.assert_allclose(t.action, np.tanh(expected_mean(t.obs)), atol=1e-6)
    for before, after in itertools.pairwise(transitions):
        if before.episode == after.episode:
            assert after.obs is before.next_obs  # one copy per frame, shared by the consecutive rows
    assert transitions[3].next_obs is not transitions[4].obs  # a new episode starts from the reset's


def test_the_runner_s_camera_transitions_cross_the_wire_once_per_frame(camera_policy: Path) -> None:
    runner = Runner(ReusingCameraDriver(episode_steps=4), OnnxPolicy.load(camera_policy), realtime=False)
    runner.run(max_steps=8)
    batch = decode(encode(Transitions.from_steps("robot1", 0, runner.transitions)))
    assert isinstance(batch, Transitions) and batch.cameras == ("top",)
    assert batch.chained.tolist() == [True, True, True, False] * 2  # episode ends are never chained
    np.testing.assert_array_equal(batch.camera_obs("top")[:, 0, 0, 0], np.arange(8))
    np.testing.assert_array_equal(batch.camera_next("top")[:, 0, 0, 0], np.arange(1, 9))
    np.testing.assert_array_equal(batch.obs[:, 0], np.arange(8))


def test_a_malformed_frame_from_the_driver_is_a_driver_fault(camera_policy: Path) -> None:
    driver = ReusingCameraDriver(episode_steps=100, bad_frame_at=3)
    runner = Runner(driver, OnnxPolicy.load(camera_policy), realtime=False)
    status = runner.run(max_steps=10)
    assert status["state"] == "faulted" and runner.latch.cause is EStopCause.DRIVER_FAULT
    assert status["steps"] == 2 and len(runner.transitions) == 2
    assert "driver step: cam-arm observation part 'top' must be uint8 (8, 6, 3), got uint8 (8, 6, 1)" in (
        runner.latch.detail
    )
