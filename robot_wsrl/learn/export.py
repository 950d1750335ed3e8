"""Export a trained actor to the ONNX policy that robots run (the only torch module on the way to a robot).

Output, in `out_dir`:
  policy.onnx  input `obs` float32 [batch, obs_dim] (dynamic batch), outputs `mean` and `log_std`
               float32 [batch, act_dim] (pre-squash; the runner applies tanh and the action scaling).
               A camera task's graph has one more input per camera, named after it: its raw frames,
               uint8 [batch, H, W, C]; the cast, /255 and NHWC -> NCHW are inside the graph.
               The graph reads raw observations (no normaliser, as in the official WSRL code). Opset 17,
               IR version 8, built with the TorchScript exporter: byte-identical files for identical weights.
               metadata_props: the keys of `robot_wsrl.robot.policy.METADATA_KEYS`, each a JSON value.
  policy.json  the same metadata plus `sha256`, the hex SHA-256 of policy.onnx's exact bytes, `file`,
               `size_bytes` and, from a learner, `run_id`. The hash lives only here: a file cannot contain
               the hash of itself.
The export is checked before it is kept: onnxruntime loads it through the same validation as a runner,
and its outputs must match torch's on probe observations (random frames too on a camera task).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from robot_wsrl.core.artifacts import POLICY_ONNX, POLICY_SIDECAR
from robot_wsrl.core.files import write_atomic
from robot_wsrl.core.spec import EnvSpec
from robot_wsrl.learn.checkpoint import load_actor
from robot_wsrl.learn.networks import CameraActor, TanhGaussianActor
from robot_wsrl.robot.policy import (
    INPUT_NAME,
    OUTPUT_NAMES,
    OnnxPolicy,
    PolicyError,
    PolicyMetadata,
    sha256_bytes,
)

Policy = TanhGaussianActor | CameraActor

OPSET = 17
IR_VERSION = 8  # the IR version that opset 17 requires; onnxruntime has loaded it since 1.12
PARITY_ATOL = 1e-5
PARITY_PROBES = 256


def _probe_inputs(spec: EnvSpec, count: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded observations for every input of the graph: state ~ 3 N(0, 1), frames uniform uint8."""
    rng = np.random.default_rng(seed)
    inputs = {INPUT_NAME: 3.0 * rng.standard_normal((count, spec.obs_dim)).astype(np.float32)}
    for cam in spec.cameras:
        inputs[cam.name] = rng.integers(0, 256, (count, *cam.shape), dtype=np.uint8)
    return inputs


def _onnx_bytes(actor: nn.Module, metadata: PolicyMetadata) -> bytes:
    """Trace the actor, then pin IR version, fixed output widths and metadata; serialise deterministically."""
    spec = metadata.spec
    buffer = io.BytesIO()
    batch = {0: "batch"}
    example = {name: np.zeros_like(x) for name, x in _probe_inputs(spec, 1, 0).items()}
    names = list(example)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, and chosen on purpose
        torch.onnx.export(
            actor,
            tuple(torch.from_numpy(x) for x in example.values()),
            buffer,
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch for name in [*names, *OUTPUT_NAMES]},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    for output in model.graph.output:  # the split leaves the width symbolic; it is act_dim by construction
        output.type.tensor_type.shape.dim[1].Clear()
        output.type.tensor_type.shape.dim[1].dim_value = spec.act_dim
    model.doc_string = (
        f"robot-wsrl tanh-Gaussian actor for {spec.name}: {', '.join(names)} -> pre-squash mean, log_std"
    )
    del model.metadata_props[:]
    for key, value in metadata.to_dict().items():
        model.metadata_props.add(key=key, value=json.dumps(value, sort_keys=True))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def _check_parity(actor: nn.Module, policy: OnnxPolicy, data: bytes) -> None:
    """onnxruntime must reproduce torch on probe observations, or the export is not kept."""
    inputs = _probe_inputs(policy.spec, PARITY_PROBES, 0)
    with torch.no_grad():
        expected = [t.numpy() for t in actor(*(torch.from_numpy(x) for x in inputs.values()))]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for name, want, got in zip(OUTPUT_NAMES, expected, session.run(list(OUTPUT_NAMES), inputs), strict=True):
        err = float(np.max(np.abs(want - got)))
        if not err <= PARITY_ATOL:
            raise PolicyError(f"{policy.path}: {name!r} differs from torch by {err:.3g} (> {PARITY_ATOL})")


def export_policy(
    checkpoint_or_actor: str | Path | Policy,
    out_dir: str | Path,
    *,
    version: int = 0,
    parent_version: int | None = None,
    spec: EnvSpec | None = None,
    step: int | None = None,
    config_hash: str | None = None,
    run_id: str | None = None,
    verify: bool = True,
) -> Path:
    """Write `out_dir/policy.onnx` and `out_dir/policy.json`; returns the path of the ONNX file.

    From a checkpoint path, spec, step and config hash come from the checkpoint (explicit values win);
    from an actor module (a `CameraActor` for a camera task), `spec` is required. With `verify`, a file
    that fails validation or torch parity is removed and PolicyError raised. `run_id` (a learner's run
    identity) goes into the sidecar, and so into what its signature covers: a runner takes only newer
    versions of the run it follows.
    """
    if isinstance(checkpoint_or_actor, Policy):
        if spec is None:
            raise ValueError("exporting an actor module needs its EnvSpec")
        actor, ckpt_step, ckpt_hash = checkpoint_or_actor, 0, ""
    else:
        actor, ckpt_spec, meta = load_actor(checkpoint_or_actor)
        spec, ckpt_step, ckpt_hash = spec or ckpt_spec, meta["step"], meta["config_hash"]
    if (actor.obs_dim, actor.act_dim) != (spec.obs_dim, spec.act_dim):
        raise ValueError(
            f"actor is {actor.obs_dim}->{actor.act_dim} but spec {spec.name} "
            f"is {spec.obs_dim}->{spec.act_dim}"
        )
    cameras = actor.encoder.cameras if isinstance(actor, CameraActor) else ()
    if cameras != spec.cameras:
        raise ValueError(
            f"actor reads cameras {[c.shape for c in cameras]} {[c.name for c in cameras]} but spec "
            f"{spec.name} has {[c.shape for c in spec.cameras]} {list(spec.camera_names)}"
        )
    actor = copy.deepcopy(actor).cpu().eval()  # never touch the caller's module (device, train mode)
    metadata = PolicyMetadata(
        spec=spec,
        version=version,
        parent_version=parent_version,
        step=ckpt_step if step is None else step,
        config_hash=ckpt_hash if config_hash is None else config_hash,
    )
    data = _onnx_bytes(actor, metadata)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, sidecar = out / POLICY_ONNX, out / POLICY_SIDECAR
    write_atomic(onnx_path, data)
    side = {**metadata.to_dict(), "file": POLICY_ONNX, "size_bytes": len(data), "sha256": sha256_bytes(data)}
    if run_id is not None:
        side["run_id"] = run_id
    write_atomic(sidecar, (json.dumps(side, indent=2, sort_keys=True) + "\n").encode())
    if verify:
        try:
            _check_parity(actor, OnnxPolicy.load(onnx_path, sidecar, expected_spec=spec), data)
        except PolicyError:
            onnx_path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            raise
    return onnx_path
