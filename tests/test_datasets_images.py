"""Image datasets: deduplicated frames with per-row indices, round trips, sampling, and every refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import egl_env

from robot_wsrl.apps.collect import cli as collect_cli
from robot_wsrl.apps.collect import fetch
from robot_wsrl.bench.estop import write_policy
from robot_wsrl.core.driver import StepResult
from robot_wsrl.core.spec import CameraSpec, EnvSpec, ObservationError
from robot_wsrl.learn import collect as collect_module
from robot_wsrl.learn.collect import dataset_entry, record
from robot_wsrl.learn.datasets import DatasetError, OfflineDataset, load_dataset, save_dataset
from robot_wsrl.learn.replay import MixedSampler, ReplayBuffer
from robot_wsrl.robot.drivers import make_driver

h5py = pytest.importorskip("h5py")

TOP = CameraSpec("top", 6, 5, 3)
GREY = CameraSpec("grey", 4, 4, 1)


def _frame(cam: CameraSpec, episode: int, step: int) -> np.ndarray:
    flat = (np.arange(np.prod(cam.shape)) * 7 + episode * 31 + step * 5) % 256
    flat[:2] = episode, step
    return flat.astype(np.uint8).reshape(cam.shape)


def image_dataset(lengths=(4, 3), cams=(TOP, GREY)) -> OfflineDataset:
    """Episodes with frames stored once: obs frames of each step plus each episode's final next frame."""
    rows, frames, obs_i, next_i = [], {c.name: [] for c in cams}, [], []
    for e, n in enumerate(lengths):
        for t in range(n + 1):
            for c in cams:
                frames[c.name].append(_frame(c, e, t))
        first = sum(lengths[:e]) + e
        rows += [(e, t) for t in range(n)]
        obs_i += [first + t for t in range(n)]
        next_i += [first + t + 1 for t in range(n)]
    ends = np.array([t == lengths[e] - 1 for e, t in rows])
    state = np.array(rows, np.float32)
    return OfflineDataset(
        observations=state,
        actions=np.zeros((len(rows), 2), np.float32),
        rewards=np.arange(len(rows), dtype=np.float32),
        next_observations=state + np.array([0, 1], np.float32),
        terminals=ends,
        timeouts=np.zeros(len(rows), bool),
        frames={c.name: np.stack(frames[c.name]) for c in cams},
        obs_frame={c.name: np.array(obs_i) for c in cams},
        next_frame={c.name: np.array(next_i) for c in cams},
    )


def _check_images(ds: OfflineDataset, idx: np.ndarray, images: dict, next_images: dict) -> None:
    for cam in (TOP, GREY):
        for k, row in enumerate(idx):
            e, t = ds.observations[row].astype(int)
            np.testing.assert_array_equal(images[cam.name][k], _frame(cam, e, t))
            np.testing.assert_array_equal(next_images[cam.name][k], _frame(cam, e, t + 1))


@pytest.mark.parametrize("suffix, compress", [(".npz", False), (".npz", True), (".hdf5", False)])
def test_round_trip_keeps_frames_and_indices(tmp_path, suffix, compress):
    ds = image_dataset()
    path = save_dataset(tmp_path / f"d{suffix}", ds, compress=compress)
    back = load_dataset(path, cameras=(TOP, GREY))
    assert set(back.cameras) == {"top", "grey"}
    for key, value in ds.to_arrays().items():
        np.testing.assert_array_equal(back.to_arrays()[key], value)
    assert back.frames["top"].shape == (9, 6, 5, 3) and back.obs_frame["top"].dtype == np.int64
    _check_images(back, np.arange(back.size), *back.images(np.arange(back.size)))


def test_compressed_file_is_smaller_and_written_deterministically(tmp_path):
    ds = image_dataset(lengths=(30, 30))
    raw = save_dataset(tmp_path / "raw.npz", ds)
    small = save_dataset(tmp_path / "small.npz", ds, compress=True)
    again = save_dataset(tmp_path / "again.npz", ds, compress=True)
    assert small.stat().st_size < raw.stat().st_size
    assert small.read_bytes() == again.read_bytes()


def _offline(ds, **frames) -> ReplayBuffer:
    """The dataset as pre-training's offline buffer; `frames` replaces its frame arrays (a bad index)."""
    columns = (ds.observations, ds.actions, ds.rewards, ds.next_observations, ds.terminals.astype(np.float32))
    given = {"frames": ds.frames, "obs_frame": ds.obs_frame, "next_frame": ds.next_frame} | frames
    return ReplayBuffer.from_arrays(0.9, *columns, ds.episode_ends(), **given)


def test_an_image_dataset_in_a_replay_samples_rows_with_their_images():
    """Pre-training's batch: the rows as the state task samples them, plus image/CAM and next_image/CAM."""
    ds = image_dataset()
    offline = _offline(ds)
    batch = MixedSampler(None, offline, 1.0).sample(2, 8, np.random.default_rng(0))
    assert batch["obs"].shape == (16, 2) and batch["image/top"].shape == (16, 6, 5, 3)
    assert batch["next_image/grey"].dtype == np.uint8 and batch["mc_return"].shape == (16,)
    rows = [int(np.flatnonzero((ds.observations == o).all(axis=1))[0]) for o in batch["obs"]]
    images = {cam: batch[f"image/{cam}"] for cam in ("top", "grey")}
    _check_images(ds, np.array(rows), images, {cam: batch[f"next_image/{cam}"] for cam in ("top", "grey")})
    with pytest.raises(ValueError, match="one frame index shared by all cameras"):
        _offline(ds, obs_frame={**ds.obs_frame, "grey": ds.obs_frame["grey"][::-1]})


def test_max_transitions_keeps_the_rows_and_the_frames_they_use(tmp_path):
    path = save_dataset(tmp_path / "d.npz", image_dataset())
    head = load_dataset(path, max_transitions=2)
    assert head.size == 2 and head.frames["top"].shape[0] == 3
    _check_images(head, np.arange(2), *head.images(np.arange(2)))


def _write(path, ds: OfflineDataset, **changes):
    arrays = {**ds.to_arrays(), **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "changes, cameras, field, expected",
    [
        (
            {"frames/top": np.zeros((9, 6, 5, 3), np.float32)},
            None,
            "frames/top",
            "expected uint8 [F, H, W, C]",
        ),
        ({"frames/top": np.zeros((9, 6, 5), np.uint8)}, None, "frames/top", "expected uint8"),
        ({"frames/top": np.zeros((9, 6, 5, 2), np.uint8)}, None, "frames/top", "C 1 or 3"),
        ({"frames/top": np.zeros((0, 6, 5, 3), np.uint8)}, None, "frames/top", "F > 0"),
        ({}, (CameraSpec("top", 84, 84, 3), GREY), "frames/top", "expected uint8 [F, 84, 84, 3]"),
        ({"obs_frame/top": np.full(7, 9)}, None, "obs_frame/top", "row 0 points at frame 9, outside 0..8"),
        ({"next_frame/grey": np.full(7, -1)}, None, "next_frame/grey", "outside 0..8"),
        ({"obs_frame/top": np.zeros(6, np.int64)}, None, "obs_frame/top", "expected integer [7]"),
        ({"obs_frame/top": np.zeros(7, np.float32)}, None, "obs_frame/top", "expected integer [7]"),
        ({"next_frame/top": None}, None, "next_frame/top", "missing"),
        ({}, (TOP,), "frames/grey", "not one of the task's cameras ['top']"),
        ({}, (TOP, GREY, CameraSpec("wrist", 2, 2)), "frames/wrist", "missing: the task's cameras"),
        ({}, (), "frames/grey", "not one of the task's cameras []"),
        ({"next_observations": None}, None, "next_observations", "an image dataset stores next_observations"),
    ],
)
def test_bad_image_parts_are_refused_naming_the_field(tmp_path, changes, cameras, field, expected):
    ds = image_dataset()
    path = _write(tmp_path / "bad.npz", ds, **changes)
    with pytest.raises(DatasetError) as info:
        load_dataset(path, cameras=cameras)
    assert info.value.field == field and expected in str(info.value), str(info.value)


def test_a_state_dataset_is_refused_where_the_task_has_cameras(tmp_path):
    path = save_dataset(tmp_path / "s.npz", image_dataset(cams=()))
    assert load_dataset(path, cameras=()).cameras == ()
    with pytest.raises(DatasetError, match=r"field 'frames/top': missing: the task's cameras are \['top'\]"):
        load_dataset(path, cameras=(TOP,))


def test_an_in_memory_dataset_checks_its_images_too():
    ds = image_dataset()
    with pytest.raises(DatasetError, match="obs_frame/top"):
        OfflineDataset(**{**_fields(ds), "obs_frame": {**ds.obs_frame, "top": ds.obs_frame["top"] + 100}})
    with pytest.raises(DatasetError, match=r"'frames/state'.*must be"):
        OfflineDataset(
            **{
                **_fields(ds),
                "frames": {"state": ds.frames["top"]},
                "obs_frame": {"state": ds.obs_frame["top"]},
                "next_frame": {"state": ds.next_frame["top"]},
            }
        )


def _fields(ds: OfflineDataset) -> dict:
    keys = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    return {k: getattr(ds, k) for k in keys} | {
        "frames": ds.frames,
        "obs_frame": ds.obs_frame,
        "next_frame": ds.next_frame,
    }


# ----- recording: `robot-wsrl collect --driver NAME --behaviour expert|POLICY` -----


class FakeCameraDriver:
    """A camera task without a simulator: frames say (episode, step); the target is at 1.0; episodes of 4."""

    def __init__(self, seed=None, bad_at: int | None = None, **_):
        self.spec = EnvSpec("fake-cam", 2, 1, (-1.0,), (1.0,), 0.01, cameras=(TOP,))
        self.episode, self.t, self.x, self.bad_at, self.steps = -1, 0, 0.0, bad_at, 0
        self.closed = False

    def _obs(self):
        frame = _frame(TOP, self.episode, self.t)
        if self.bad_at is not None and self.steps >= self.bad_at:
            frame = frame[:, :4]
        return {"state": np.array([self.x, self.t], np.float32), "top": frame}

    def reset(self, seed=None):
        self.episode, self.t, self.x = self.episode + 1, 0, 0.0
        return self._obs(), {}

    def step(self, action):
        self.t, self.steps = self.t + 1, self.steps + 1
        self.x += float(action[0])
        done = self.t == 4
        info = {"success": abs(self.x - 1.0) < 0.3}
        return StepResult(self._obs(), -abs(self.x - 1.0), False, done, np.asarray(action, np.float32), info)

    def expert_action(self, noise_std=0.0, rng=None):
        return np.array([0.25], np.float32) + (rng.normal(0, noise_std, 1) if noise_std else 0)

    def safe_stop(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake_driver(monkeypatch):
    made = []

    def make(name, seed=None, **kwargs):
        if name != "fake:cam":
            return make_driver(name, seed=seed, **kwargs)
        made.append(FakeCameraDriver(seed=seed, bad_at=kwargs.get("bad_at")))
        return made[-1]

    monkeypatch.setattr(collect_module, "make_driver", make)
    return made


def test_record_stores_each_frame_once_and_reports_success(tmp_path, fake_driver):
    steps = []
    manifest = record("fake:cam", "expert", 10, tmp_path, seed=3, command="cmd", progress=steps.append)
    assert steps == list(range(1, 11)) and fake_driver[0].closed
    ds = load_dataset(tmp_path / "expert.npz", cameras=(TOP,))
    assert ds.size == 10 and ds.frames["top"].shape == (5 + 5 + 3, *TOP.shape)  # 4 + 1, 4 + 1, 2 + 1
    for row in range(10):
        e, t = divmod(row, 4)
        np.testing.assert_array_equal(ds.frames["top"][ds.obs_frame["top"][row]], _frame(TOP, e, t))
        np.testing.assert_array_equal(ds.frames["top"][ds.next_frame["top"]][row], _frame(TOP, e, t + 1))
    np.testing.assert_array_equal(ds.timeouts, [False, False, False, True] * 2 + [False, True])
    entry = manifest["datasets"]["expert"]
    assert entry["success_rate"] == 1.0 and entry["finished_episodes"] == 2 and entry["frames"] == {"top": 13}
    assert json.loads((tmp_path / "manifest.json").read_text())["spec"]["cameras"][0]["name"] == "top"


def test_record_refuses_an_observation_that_does_not_fit_the_spec(tmp_path, fake_driver, monkeypatch):
    monkeypatch.setattr(FakeCameraDriver, "__init__", _with_bad_frames(FakeCameraDriver.__init__))
    with pytest.raises(ObservationError, match=r"part 'top' must be uint8 \(6, 5, 3\)"):
        record("fake:cam", "expert", 10, tmp_path)
    assert not (tmp_path / "expert.npz").exists()


def _with_bad_frames(init):
    def patched(self, seed=None, **kwargs):
        init(self, seed=seed, bad_at=5)

    return patched


def test_record_with_an_onnx_policy_on_a_state_driver(tmp_path):
    policy = write_policy(tmp_path / "policy", make_driver("null").spec)
    manifest = record("null", str(policy), 7, tmp_path, seed=1)
    ds = load_dataset(tmp_path / "policy.npz", cameras=())
    assert ds.size == 7 and manifest["behaviour"]["policy"]["sha256"]
    assert "success_rate" not in manifest["datasets"]["policy"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--behaviour", "expert"], "--behaviour record a given behaviour: add --driver NAME"),
        (["--driver", "null"], "add --behaviour expert or --behaviour POLICY.onnx"),
        (
            ["--driver", "null", "--behaviour", "expert", "env=hopper"],
            "env=hopper: configure the behaviour SAC",
        ),
        (
            ["--driver", "null", "--behaviour", "expert", "--medium-size", "5"],
            "--medium-size: configure the behaviour SAC",
        ),
        (
            ["--driver", "null", "--behaviour", "expret"],
            "neither 'expert' nor an existing policy file (did you",
        ),
        (["--driver", "null", "--behaviour", "expert"], "driver null has no scripted expert"),
        (["--driver", "null", "--behaviour", "expert", "--expert-noise", "-1"], "must be a number >= 0"),
        (["--driver", "null", "--behaviour", "expert", "--transitions", "0"], "must be a positive integer"),
        (["--driver", "gym:Nope-v0", "--behaviour", "expert"], "robot-wsrl collect: "),
    ],
)
def test_collect_cli_refuses_bad_input_in_one_line(tmp_path, capsys, argv, expected):
    assert _exit_code([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err


def _exit_code(argv: list[str]) -> int:
    """`collect`'s exit status: returned for a refused value, SystemExit for an option argparse refuses."""
    try:
        return collect_cli(argv)
    except SystemExit as exit:
        return int(exit.code)


def test_collect_cli_refuses_expert_noise_for_a_policy(tmp_path, capsys):
    policy = write_policy(tmp_path / "policy", make_driver("null").spec)
    argv = ["--driver", "null", "--behaviour", str(policy), "--expert-noise", "0.1", "--out", str(tmp_path)]
    assert collect_cli(argv) == 2
    assert "--expert-noise applies to --behaviour expert" in capsys.readouterr().err


def test_collect_cli_records_the_real_camera_task(tmp_path):
    """`cam:reacher` with its scripted expert, rendered headless (MUJOCO_GL=egl) in a subprocess; skipped
    where this machine cannot render."""
    env = egl_env()
    argv = [
        "--driver",
        "cam:reacher",
        "--behaviour",
        "expert",
        "--expert-noise",
        "0.1",
        "--transitions",
        "60",
    ]
    argv += ["--out", str(tmp_path), "--compress"]
    code = f"from robot_wsrl.apps.collect import cli; raise SystemExit(cli({argv!r}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "collect: 60/60 transitions (100%)" in done.stderr and "success rate" in done.stdout
    ds = load_dataset(tmp_path / "expert.npz", cameras=(CameraSpec("top", 84, 84, 3),))
    assert ds.size == 60 and len(ds.frames["top"]) == 51 + 11  # a 50-step episode and 10 steps of the next
    obs, nxt = ds.images(np.arange(60))
    np.testing.assert_array_equal(nxt["top"][:49], obs["top"][1:50])
    assert len({frame.tobytes() for frame in obs["top"]}) > 50  # the arm moves: the frames differ
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["command"].endswith("--compress") and manifest["datasets"]["expert"]["frames"] == {
        "top": 62
    }


def test_the_behaviour_sac_recipe_refuses_a_camera_task(tmp_path, capsys):
    assert _exit_code(["env.driver=cam:reacher", "--out", str(tmp_path)]) == 2
    assert "record a camera task with --driver cam:reacher --behaviour expert" in capsys.readouterr().err


def test_fetch_regenerates_a_recorded_dataset_from_its_command(tmp_path, fake_driver, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--driver", "fake:cam", "--behaviour", "expert", "--expert-noise", "0.2", "--transitions", "9"]
    assert collect_cli([*argv, "--out", "data/cam"]) == 0
    assert "collect: 9/9 transitions (100%)" in capsys.readouterr().err
    entry = dataset_entry(tmp_path / "data/cam/expert.npz")
    assert "--expert-noise 0.2" in entry["command"]
    (tmp_path / "data/cam/expert.npz").unlink()
    assert fetch({**entry, "path": "data/cam/expert.npz"})
    assert "regenerated, sha256 matches" in capsys.readouterr().out
