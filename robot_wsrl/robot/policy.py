"""The onboard policy: an exported ONNX actor run by onnxruntime (numpy + onnxruntime only, never torch).

A policy is two files: `policy.onnx` and its JSON sidecar `policy.json`. The sidecar carries the sha256 of
the ONNX file's exact bytes (the ONNX metadata cannot contain a hash of the file it is part of); the same
metadata as the sidecar, minus the hash, is also stored in the ONNX file's metadata_props so that the
model describes itself. Loading refuses any file whose bytes, graph signature, metadata or probe outputs
do not check out: a robot must never run a policy nobody validated.

The sidecar may carry `run_id`, the identity of the learner run that made the policy (signed with the
rest of the sidecar): a runner takes versions only forward within one run.

A camera policy's graph takes the state part as `obs` (float32 [batch, obs_dim]) and each camera's image
under the camera's name (uint8 [batch, H, W, C]: the cast, scaling and layout change are inside the graph);
`act` takes an observation as the driver gives it, the state array or the dict of parts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from robot_wsrl.core.artifacts import POLICY_ONNX, sidecar_path, signature_path
from robot_wsrl.core.spec import STATE, EnvSpec, ObservationError
from robot_wsrl.robot.drivers import simulator_name
from robot_wsrl.wire import keys
from robot_wsrl.wire.signing import SignatureError, read_signature, verify_signature_file

FORMAT = "robot-wsrl-policy/1"
INPUT_NAME = "obs"  # the state part's graph input; each camera's input is named after its camera
OUTPUT_NAMES = ("mean", "log_std")
# Keys of the ONNX metadata_props (values are JSON); the sidecar holds the same keys plus "sha256".
METADATA_KEYS = (
    "format",
    "spec",
    "control_period_s",
    "version",
    "parent_version",
    "step",
    "config_hash",
    "input_names",
    "output_names",
)
PROBE_COUNT = 8  # seeded random probe observations, in addition to the all-zeros one
_ONNX_TYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}
SIGNED_HINT = "signed policy: give --keys KEYS to verify it, or --allow-unsigned"


class PolicyError(ValueError):
    """A policy file is missing, corrupt, mismatched or produces non-finite outputs."""


class SpecMismatch(PolicyError):
    """A sound policy made for other observations or actions than a driver's. `driver` is the simulator
    driver it was made for (`simulator_name`), so a command can say how to run it with its own option."""

    def __init__(self, message: str, driver: str) -> None:
        super().__init__(message, driver)  # both in args: it crosses a process pool's pickling whole
        self.driver = driver

    def __str__(self) -> str:
        return str(self.args[0])


def input_names(spec: EnvSpec) -> list[str]:
    """The graph's inputs, in the order of `spec.obs_parts()`: the state part as `obs`, then each camera."""
    taken = sorted({INPUT_NAME, *OUTPUT_NAMES} & set(spec.camera_names))
    if taken:
        raise PolicyError(
            f"{spec.name}: camera names {taken} are names of the policy graph's own inputs or outputs: "
            "rename the camera"
        )
    return [INPUT_NAME, *spec.camera_names]


@dataclass(frozen=True)
class PolicyMetadata:
    """What a runner needs to know about a policy before it lets it drive a robot."""

    spec: EnvSpec
    version: int
    parent_version: int | None
    step: int
    config_hash: str

    def to_dict(self) -> dict[str, Any]:
        """The metadata fields, JSON-ready (without the sha256, which only the sidecar carries)."""
        return {
            "format": FORMAT,
            "spec": self.spec.to_dict(),
            "control_period_s": self.spec.control_period_s,
            "version": self.version,
            "parent_version": self.parent_version,
            "step": self.step,
            "config_hash": self.config_hash,
            "input_names": input_names(self.spec),
            "output_names": list(OUTPUT_NAMES),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> PolicyMetadata:
        missing = [key for key in METADATA_KEYS if key not in d]
        if missing:
            raise PolicyError(f"{where}: metadata lacks {missing}")
        if d["format"] != FORMAT:
            raise PolicyError(f"{where}: format {d['format']!r} is not {FORMAT!r}")
        try:
            spec = EnvSpec.from_dict(d["spec"])
            parent = None if d["parent_version"] is None else int(d["parent_version"])
            meta = cls(spec, int(d["version"]), parent, int(d["step"]), str(d["config_hash"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"{where}: invalid metadata ({type(exc).__name__}: {exc})") from exc
        if d["input_names"] != input_names(spec) or d["output_names"] != list(OUTPUT_NAMES):
            raise PolicyError(
                f"{where}: metadata names {d['input_names']} -> {d['output_names']}, expected "
                f"{input_names(spec)} -> {list(OUTPUT_NAMES)} (the spec's parts {list(spec.obs_parts())})"
            )
        if float(d["control_period_s"]) != spec.control_period_s:
            raise PolicyError(f"{where}: control_period_s disagrees with the spec's")
        return meta


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec_mismatches(expected: EnvSpec, actual: EnvSpec) -> list[str]:
    """How `actual` differs from `expected` in what matters to drive a robot (the name is only a label)."""
    problems = []
    for field in ("obs_dim", "act_dim"):
        if getattr(expected, field) != getattr(actual, field):
            problems.append(f"{field} {getattr(actual, field)} != expected {getattr(expected, field)}")
    if expected.act_dim == actual.act_dim:
        for field in ("action_low", "action_high"):
            if not np.allclose(getattr(expected, field), getattr(actual, field), rtol=1e-6, atol=1e-6):
                problems.append(
                    f"{field} {list(getattr(actual, field))} != expected {list(getattr(expected, field))}"
                )
    if not np.isclose(expected.control_period_s, actual.control_period_s, rtol=1e-9, atol=1e-12):
        problems.append(f"control_period_s {actual.control_period_s} != expected {expected.control_period_s}")
    if expected.cameras != actual.cameras:
        problems.append(f"cameras {_cameras(actual)} != expected {_cameras(expected)}")
    return problems


def _cameras(spec: EnvSpec) -> list[str]:
    return [f"{c.name} {c.height}x{c.width}x{c.channels}" for c in spec.cameras]


def expects(spec: EnvSpec) -> str:
    """What a policy for `spec` takes and gives: `camera 'top' 84x84x3 and state (8,) -> action (2,)`."""
    cameras = [f"camera {c.name!r} {c.height}x{c.width}x{c.channels}" for c in spec.cameras]
    return " and ".join([*cameras, f"state ({spec.obs_dim},)"]) + f" -> action ({spec.act_dim},)"


def _session_options() -> ort.SessionOptions:
    """One thread, sequential: a control loop wants a predictable step, not a parallel one."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolicyError(
            f"{path}: sidecar not found (it holds the sha256 that authenticates the policy)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"{path}: unreadable sidecar ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
        raise PolicyError(f"{path}: sidecar is not a JSON object with a sha256 field")
    return data


def _run_id(sidecar: dict[str, Any], embedded: dict[str, Any], path: Path) -> str | None:
    """The sidecar's run_id (a non-empty string, or absent), equal to the ONNX metadata's where it has one."""
    run_id = sidecar.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise PolicyError(f"{path}: sidecar run_id {run_id!r} is not a non-empty string")
    if "run_id" in embedded and embedded["run_id"] != run_id:
        raise PolicyError(f"{path}: sidecar run_id {run_id!r} disagrees with the ONNX metadata's")
    return run_id


def _check_signature(session: ort.InferenceSession, spec: EnvSpec, path: Path) -> None:
    """Input `obs` float32 [batch, obs_dim], per camera an input named after it, uint8 [batch, H, W, C];
    outputs `mean`, `log_std` float32 [batch, act_dim]."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = input_names(spec)
    if [i.name for i in inputs] != names or [o.name for o in outputs] != list(OUTPUT_NAMES):
        raise PolicyError(
            f"{path}: graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}, "
            f"expected {names} (the spec's parts {list(spec.obs_parts())}) and {list(OUTPUT_NAMES)}"
        )
    for node, (part, (shape, dtype)) in zip(inputs, spec.obs_parts().items(), strict=True):
        _check_node(node, f"input {node.name!r} (part {part!r})", _ONNX_TYPES[dtype], shape, path)
    for node in outputs:
        _check_node(node, f"output {node.name!r}", _ONNX_TYPES["float32"], (spec.act_dim,), path)


def _check_node(node: Any, what: str, onnx_type: str, shape: tuple[int, ...], path: Path) -> None:
    """`node` is `onnx_type` [batch, *shape] (any batch size: probes run a batch, the runner one row)."""
    if node.type != onnx_type or len(node.shape) != 1 + len(shape) or tuple(node.shape[1:]) != shape:
        raise PolicyError(
            f"{path}: {what} is {node.type}{node.shape}, expected {onnx_type}"
            f"[batch, {', '.join(str(n) for n in shape)}]"
        )


class OnnxPolicy:
    """A validated ONNX actor. `act` maps one observation to a normalised action in [-1, 1]^act_dim."""

    def __init__(
        self,
        session: ort.InferenceSession,
        metadata: PolicyMetadata,
        sha256: str,
        path: Path,
        seed: int = 0,
        run_id: str | None = None,
    ) -> None:
        """Use `OnnxPolicy.load`: it authenticates the file and validates it after construction."""
        _check_signature(session, metadata.spec, path)  # the buffers below are bound by these names
        self._session = session
        self.metadata = metadata
        self.sha256 = sha256
        self.path = path
        self.run_id = run_id  # the learner run that made it (sidecar "run_id"), None for an older export
        self._rng = np.random.default_rng(seed)
        spec = metadata.spec
        # Preallocated single-observation buffers bound once: a step copies into `_obs` (and each camera's
        # `_frames` row) and reads `_mean`, `_log_std` without allocating anything in onnxruntime. Copying
        # an 84x84 frame into its bound row (2 us) is cheaper than binding the driver's own array afresh each
        # step (wrapping it alone takes 4 us), and the bound row is always contiguous.
        self._obs = np.zeros((1, spec.obs_dim), dtype=np.float32)
        self._frames = {cam.name: np.zeros((1, *cam.shape), dtype=np.uint8) for cam in spec.cameras}
        self._mean = np.zeros((1, spec.act_dim), dtype=np.float32)
        self._log_std = np.zeros((1, spec.act_dim), dtype=np.float32)
        self._binding = session.io_binding()
        inputs = {INPUT_NAME: self._obs, **self._frames}
        outputs = dict(zip(OUTPUT_NAMES, (self._mean, self._log_std), strict=True))
        # the OrtValues share the arrays' memory and must live as long as the binding
        self._bound = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in {**inputs, **outputs}.items()}
        for name in inputs:
            self._binding.bind_ortvalue_input(name, self._bound[name])
        for name in outputs:
            self._binding.bind_ortvalue_output(name, self._bound[name])
        self._noise = np.zeros(spec.act_dim, dtype=np.float32)

    @classmethod
    def load(
        cls,
        onnx_path: str | Path,
        sidecar: str | Path | None = None,
        *,
        expected_spec: EnvSpec | None = None,
        seed: int = 0,
    ) -> OnnxPolicy:
        """Load and validate `onnx_path` (or a policy folder's policy.onnx) against its sidecar (default: the
        `.json` next to it).

        Checks, in order: sha256 of the file, that onnxruntime can load it, ONNX metadata equal to the
        sidecar's, input/output names and shapes, compatibility with `expected_spec`, finite probe outputs.
        """
        path = Path(onnx_path)
        if path.is_dir():  # a policy folder (policies/NAME): the policy in it
            path = path / POLICY_ONNX
        side = Path(sidecar) if sidecar is not None else sidecar_path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PolicyError(f"{path}: cannot read policy: no such file") from None
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read policy ({type(exc).__name__}: {exc})") from exc
        side_data = _read_sidecar(side)
        digest = sha256_bytes(data)
        if digest != side_data["sha256"]:
            raise PolicyError(
                f"{path}: sha256 mismatch: file is {digest}, sidecar {side.name} says {side_data['sha256']} "
                f"(corrupted, truncated or replaced): export it again (robot-wsrl export CHECKPOINT --out "
                f"{path.parent}) or copy both files together"
            )
        try:
            session = ort.InferenceSession(data, _session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several types for a malformed model
            raise PolicyError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from exc
        try:
            embedded = {
                key: json.loads(value) for key, value in session.get_modelmeta().custom_metadata_map.items()
            }
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{path}: ONNX metadata is not robot-wsrl's (non-JSON value: {exc})") from exc
        metadata = PolicyMetadata.from_dict(embedded, f"{path} (ONNX metadata)")
        differing = [key for key in METADATA_KEYS if side_data.get(key) != embedded[key]]
        if differing:
            raise PolicyError(f"{path}: sidecar {side.name} disagrees with the ONNX metadata on {differing}")
        policy = cls(session, metadata, digest, path, seed, _run_id(side_data, embedded, path))
        policy.validate(expected_spec)
        return policy

    @property
    def spec(self) -> EnvSpec:
        return self.metadata.spec

    @property
    def version(self) -> int:
        return self.metadata.version

    def reseed(self, seed: int) -> None:
        """Restart the exploration noise stream (the runner does this when it activates a policy)."""
        self._rng = np.random.default_rng(seed)

    def validate(self, expected_spec: EnvSpec | None = None) -> None:
        """Raise PolicyError unless names, shapes, spec and outputs on probe observations are all sound."""
        spec = self.spec
        _check_signature(self._session, spec, self.path)
        if expected_spec is not None:
            problems = spec_mismatches(expected_spec, spec)
            if problems:
                raise SpecMismatch(
                    f"{self.path}: policy does not fit {expected_spec.name!r}: {'; '.join(problems)}; "
                    f"the policy expects {expects(spec)}",
                    simulator_name(spec),
                )
        probes = _probes(spec)
        try:
            mean, log_std = self.forward(probes)
        except Exception as exc:  # a graph that loads may still fail at run time
            raise PolicyError(
                f"{self.path}: running probe observations failed ({type(exc).__name__}: {exc})"
            ) from exc
        for name, value in zip(OUTPUT_NAMES, (mean, log_std), strict=True):
            if value.shape != (1 + PROBE_COUNT, spec.act_dim):
                raise PolicyError(
                    f"{self.path}: {name!r} has shape {value.shape} on {1 + PROBE_COUNT} probes"
                )
            if not np.all(np.isfinite(value)):
                raise PolicyError(f"{self.path}: {name!r} is not finite on probe observations")

    def forward(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Batch evaluation -> (pre-squash mean, log_std), each [B, act_dim]; thread-safe. `obs` is the
        batch as the observations are: [B, obs_dim] for a state-only policy, else a dict of each part's
        rows ({"state": [B, obs_dim], camera: uint8 [B, H, W, C], ...})."""
        mean, log_std = self._session.run(list(OUTPUT_NAMES), self._feeds(obs))
        return mean, log_std

    def _feeds(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        if not spec.cameras:
            return {INPUT_NAME: np.asarray(obs, dtype=np.float32)}
        if not isinstance(obs, Mapping) or set(obs) != set(spec.obs_parts()):
            got = sorted(obs) if isinstance(obs, Mapping) else type(obs).__name__
            raise ObservationError(
                f"policy batch: {spec.name} batches are parts {list(spec.obs_parts())}, got {got}"
            )
        feeds = {INPUT_NAME: np.asarray(obs[STATE], dtype=np.float32)}
        for cam in spec.cameras:
            frames = np.asarray(obs[cam.name])
            if frames.dtype != np.uint8 or frames.shape[1:] != cam.shape:
                raise ObservationError(
                    f"policy batch: {spec.name} part {cam.name!r} must be uint8 [batch, "
                    f"{', '.join(str(n) for n in cam.shape)}], got {frames.dtype} {list(frames.shape)}"
                )
            feeds[cam.name] = frames
        return feeds

    def act(self, obs: np.ndarray | Mapping[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """One observation -> normalised action: tanh(mean), or tanh(mean + std * N(0, 1)) when sampling.

        `obs` is the observation as the driver gives it; a wrong part is refused (ObservationError, naming
        the part and its expected shape). Uses the preallocated binding, so it is for one control loop at a
        time (not thread-safe).
        """
        self.spec.check_observation(obs, "policy input")
        if self._frames:
            self._obs[0] = obs[STATE]
            for name, frame in self._frames.items():
                frame[0] = obs[name]
        else:
            self._obs[0] = obs
        self._session.run_with_iobinding(self._binding)
        if deterministic:
            return np.tanh(self._mean[0])
        self._rng.standard_normal(dtype=np.float32, out=self._noise)
        return np.tanh(self._mean[0] + np.exp(self._log_std[0]) * self._noise)


def _probes(spec: EnvSpec) -> np.ndarray | dict[str, np.ndarray]:
    """All zeros (black images), then PROBE_COUNT seeded random observations (random images)."""
    rng = np.random.default_rng(0)
    state = np.concatenate(
        [
            np.zeros((1, spec.obs_dim), dtype=np.float32),
            rng.standard_normal((PROBE_COUNT, spec.obs_dim)).astype(np.float32),
        ]
    )
    if not spec.cameras:
        return state
    probes = {STATE: state}
    for cam in spec.cameras:
        frames = np.zeros((1 + PROBE_COUNT, *cam.shape), dtype=np.uint8)
        frames[1:] = rng.integers(0, 256, (PROBE_COUNT, *cam.shape), dtype=np.uint8)
        probes[cam.name] = frames
    return probes


def policy_signer(path: str | Path, keydir: Path | None, allow_unsigned: bool) -> str | None:
    """The runner's rule for a policy's signature (policy.sig), that of `validate --keys` and of a link's
    runner: with a key dir, the policy must be signed by a learner whose signing key (`*.sign.pub`) is in
    it, unless `allow_unsigned` accepts one without a signature. A signature that is there but does not
    verify, or is malformed, is refused always. Without a key dir an unsigned policy runs as before, and a
    signed one, which cannot be checked then, only with `allow_unsigned`. Returns the signer's key id (None:
    not verified); raises SignatureError (a ValueError) with the reason."""
    onnx = Path(path) / POLICY_ONNX if Path(path).is_dir() else Path(path)
    found = read_signature(onnx)
    if keydir is None:
        if found is not None and not allow_unsigned:
            raise SignatureError(f"{onnx}: {SIGNED_HINT}")
        return None
    if not keydir.is_dir():
        raise keys.KeyFileError(f"--keys {keydir}: no such key directory")
    if found is None:
        if allow_unsigned:
            return None
        raise SignatureError(
            f"{onnx}: unsigned (no {signature_path(onnx).name}): refused (sign it with the learner's key, "
            "or pass --allow-unsigned)"
        )
    return verify_signature_file(onnx, keys.load_verify_keys(keydir))
