"""`ship` and `validate` on a camera policy of any frame size, as a user runs them (issue 16): the policy's
own task, cameras and robot presets without being told; a ship that fails leaves no folder a runner could
run, and a shipped folder is replaced only with --force; a run at another frame size than the env's driver
is told the `env.driver=` that fits. A tiny untrained 24x24 agent; commands that render run in
subprocesses with MUJOCO_GL=egl (skipped where nothing renders), the others in-process."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SMALL_AGENT, egl_env, tiny_checkpoint

from robot_wsrl.apps.ship import cli as ship_cli
from robot_wsrl.apps.validate import cli as validate_cli
from robot_wsrl.core.spec import CameraSpec
from robot_wsrl.learn import ship as ship_module
from robot_wsrl.learn.agent import Agent
from robot_wsrl.learn.config import compose_config
from robot_wsrl.learn.export import export_policy
from robot_wsrl.learn.networks import build_networks
from robot_wsrl.learn.training import save_training_checkpoint
from robot_wsrl.robot.drivers import make_driver, simulator_name
from robot_wsrl.sim.camera_tasks import CameraTaskDriver
from robot_wsrl.sim.shift import preset_names

DRIVER = "cam:reacher@top:24x24"
ARM_PRESETS = ["nominal", "reacher_real", "reacher_real_mild"]
TIMEOUT_S = 600.0  # a loaded 2-core box rendering in software
GATE = ["--allow-unsigned", "episodes=2", "workers=1"]


def _robot_wsrl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", *argv],
        env=egl_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _one_line(done: subprocess.CompletedProcess[str], prog: str, *words: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"robot-wsrl {prog}: "), done.stderr
    assert all(w in done.stderr for w in words), done.stderr


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained agent for the arm at 24x24, saved as pre-training saves it (no rendering)."""
    blind = CameraTaskDriver(cameras=())  # the task's spec without rendering, then its camera at 24x24
    spec = dataclasses.replace(blind.spec, cameras=(CameraSpec("top", 24, 24),))
    blind.close()
    overrides = ["env=reacher_cam", f"env.driver={DRIVER}", *SMALL_AGENT, "agent.encoder.channels=[8,16]",
                 "agent.encoder.strides=[2,2]"]  # fmt: skip
    cfg = compose_config("finetune", overrides)
    torch.manual_seed(0)
    agent = Agent(
        build_networks(spec.obs_dim, spec.act_dim, cfg.agent, "cpu", cameras=spec.cameras), cfg.agent
    )
    path = tmp_path_factory.mktemp("pre") / "checkpoint.pt"
    return Path(save_training_checkpoint(path, agent, spec, cfg, 0, {}))


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> Path:
    """Its policy as the learner exports a version: no manifest beside it, only the ONNX graph's spec."""
    return export_policy(checkpoint, checkpoint.parent.parent / "v000000")


@pytest.fixture(scope="module")
def shipped(checkpoint: Path) -> Path:
    out = checkpoint.parent.parent / "policies" / "arm"
    done = _robot_wsrl("ship", str(checkpoint), "--out", str(out), "--episodes", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["gym:InvertedPendulum-v5", "dmc:cartpole-swingup", "cam:reacher"])
def test_the_driver_a_policy_runs_on_is_named_from_its_spec(name: str) -> None:
    """The inverse of the names the simulators give their specs; cameras as requested after `@`."""
    driver = CameraTaskDriver(cameras=()) if name == "cam:reacher" else make_driver(name)  # nothing renders
    spec = driver.spec
    driver.close()
    assert simulator_name(spec) == name
    cams = (CameraSpec("top", 32, 24), CameraSpec("side", 16, 16))
    assert simulator_name(dataclasses.replace(spec, cameras=cams)) == f"{name}@top:32x24+side:16x16"


def test_the_presets_describing_a_robot_are_its_own() -> None:
    """One rule (a preset's for_driver), used by ship to measure and by validate to judge."""
    assert preset_names(DRIVER) == preset_names("cam:reacher") == ARM_PRESETS
    assert (
        preset_names("gym:Hopper-v5")
        == preset_names("gym:Hopper-v5@track:84x84")
        == [
            "nominal",
            "real",
            "real_mild",
        ]
    )
    assert preset_names("dmc:cartpole-swingup") == ["nominal"]


def test_ship_measures_a_camera_policy_on_the_arms_presets(shipped: Path) -> None:
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert manifest["driver"] == DRIVER and manifest["name"] == "arm"
    assert sorted(manifest["returns"]) == ARM_PRESETS  # not the Hopper's real / real_mild
    assert all("success_rate" in r for r in manifest["returns"].values())
    assert [p.name for p in shipped.parent.iterdir()] == ["arm"]  # nothing left beside it


def test_a_failed_ship_leaves_no_folder_and_a_shipped_one_is_replaced_only_with_force(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process (MUJOCO_GL=disable) the camera policy's ship fails before its export (it checked the
    driver renders after the export, tens of seconds in); the pendulum's, which renders nothing, succeeds:
    no EGL needed."""
    exports: list[Path] = []
    monkeypatch.setattr(
        ship_module, "export_policy", lambda *a, **k: exports.append(a[0]) or export_policy(*a, **k)
    )
    policies = tmp_path / "policies"
    new = policies / "new"
    assert ship_cli([str(checkpoint), "--out", str(new), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot render camera 'top'" in err and "MUJOCO_GL=egl" in err
    assert list(policies.iterdir()) == [] and exports == []  # no half-built folder, nothing exported

    pendulum = tiny_checkpoint(tmp_path / "pendulum.pt")
    existing = policies / "pendulum"
    assert ship_cli([str(pendulum), "--out", str(existing), "--episodes", "1"]) == 0
    before = _digests(existing)
    assert ship_cli([str(pendulum), "--out", str(existing), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a shipped policy" in err and "--force" in err
    assert ship_cli([str(checkpoint), "--out", str(existing), "--episodes", "1", "--force"]) == 2
    assert "cannot render" in capsys.readouterr().err
    assert _digests(existing) == before and [p.name for p in policies.iterdir()] == ["pendulum"]

    # shipped again in place with --force (from its own checkpoint, more episodes): replaced whole
    again = [str(existing / "checkpoint.pt"), "--out", str(existing), "--episodes", "2", "--force"]
    assert ship_cli(again) == 0
    manifest = json.loads((existing / "manifest.json").read_text())
    assert sorted(manifest["returns"]) == ["nominal", "real", "real_mild"]  # a gymnasium robot's presets
    assert all(r["episodes"] == 2 for r in manifest["returns"].values())
    assert _digests(existing)["checkpoint.pt"] == before["checkpoint.pt"]
    assert [p.name for p in policies.iterdir()] == ["pendulum"]


def test_force_replaces_only_a_shipped_policy_never_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force was advised for any non-empty folder and then deleted whatever it held."""
    pendulum = tiny_checkpoint(tmp_path / "pendulum.pt")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    for extra in ([], ["--force"]):
        assert ship_cli([str(pendulum), "--out", str(notes), "--episodes", "1", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds files but no shipped policy" in err and "--force" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "pendulum.pt"]
    assert (notes / "todo.txt").read_text() == "mine"
    monkeypatch.chdir(notes)  # the current folder cannot be renamed away: refused before any work
    assert ship_cli([str(pendulum), "--out", ".", "--episodes", "1", "--force"]) == 2
    assert "is the current folder" in capsys.readouterr().err
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]


def test_validate_runs_a_camera_policy_on_its_own_cameras_and_presets(
    exported: Path, shipped: Path, tmp_path: Path
) -> None:
    done = _robot_wsrl("validate", str(exported), *GATE, "--out", str(tmp_path / "own"))  # no manifest
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "own" / "report.json").read_text())
    assert report["env"] == "reacher_cam" and report["setup"]["episode"]["driver"] == DRIVER
    assert report["setup"]["variants"] == ["reacher_real", "nominal"]  # the arm's, not the Hopper's
    assert report["candidate"]["variants"]["reacher_real"]["success_rate"] is not None

    # chosen explicitly: the env config, the driver and the robot's preset
    explicit = ["env=reacher_cam", f"driver={DRIVER}", "preset=reacher_real_mild"]
    done = _robot_wsrl("validate", str(shipped), *GATE, *explicit, "--out", str(tmp_path / "explicit"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "explicit" / "report.json").read_text())
    assert report["setup"]["variants"] == ["reacher_real_mild", "nominal"]

    # a driver at another size than the policy's: refused, naming both
    done = _robot_wsrl("validate", str(shipped), *GATE, "driver=cam:reacher", "--out", str(tmp_path / "x"))
    _one_line(
        done, "validate", "does not fit", "top 24x24x3", "top 84x84x3", f"validate it with driver={DRIVER}"
    )


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("preset=real", ["preset=real is not a shift preset of cam:reacher@top:24x24", "reacher_real"]),
        ("preset=reacher_rael", ["its presets: nominal, reacher_real,", "(did you mean reacher_real?)"]),
        ("variants=[nominal,reacher_rael_mild]", ["not shift presets", "did you mean reacher_real_mild?"]),
        ("robot_presets=[reacher_rael]", ["no shift preset 'reacher_rael'", "did you mean reacher_real?"]),
        (f"env.driver={DRIVER}", [f"did you mean driver={DRIVER}?"]),
        ("env.shift=reacher_real", ["did you mean preset=reacher_real?"]),
    ],
)
def test_validate_refuses_what_does_not_describe_the_arm(
    exported: Path, override: str, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert validate_cli([str(exported), *GATE, override, "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("robot-wsrl validate: ") and all(w in err for w in words)


def test_runs_at_another_frame_size_than_the_env_are_told_the_driver_that_fits(
    checkpoint: Path, tmp_path: Path
) -> None:
    done = _robot_wsrl("collect", "--driver", "cam:reacher@top:32x24", "--behaviour", "expert",
                       "--transitions", "50", "--out", str(tmp_path / "data"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    small = [*SMALL_AGENT, "threads=1"]
    dataset = tmp_path / "data" / "expert.npz"
    done = _robot_wsrl("pretrain", "env=reacher_cam", *small, f"run.dataset={dataset}", "run.steps=2",
                       f"out_dir={tmp_path / 'pre'}")  # fmt: skip
    _one_line(done, "pretrain", "frames/top", "did you mean env.driver=cam:reacher@top:32x24?")
    done = _robot_wsrl("finetune", "env=reacher_cam", *small, f"run.checkpoint={checkpoint}", "run.steps=4",
                       f"out_dir={tmp_path / 'ft'}")  # fmt: skip
    _one_line(done, "finetune", "(24, 24, 3)", f"did you mean env.driver={DRIVER}?")
