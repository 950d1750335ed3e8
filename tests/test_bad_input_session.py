"""Bad input that used to waste or damage a run (session 5's new-user trial): a session's --validate-arg and
--env-id checked before any child starts, a failed emulated robot named with its log, a learner that will
not write into another kind of run's folder, and the standalone runner's signature rule."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robot_wsrl.apps import learner, runner, session
from robot_wsrl.apps.errors import DEBUG_ENV
from robot_wsrl.core.artifacts import CHECKPOINT, INGEST_LOG, LEARNER_STATE, RUN_CONFIG, sidecar_path
from robot_wsrl.learn.config import compose_config, refuse_overwrite
from robot_wsrl.learn.learner import RESTARTS_FROM
from robot_wsrl.robot.policy import SIGNED_HINT
from robot_wsrl.wire import keys, signing
from tests.helpers import NULL_SPEC, TINY_LEARNER, write_policy


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "")


def _one_line(code: int, stderr: str, *words: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, (code, stderr)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ----- session: checked before any child starts -----


def test_a_session_refuses_a_bad_validate_arg_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each validation would refuse it and hold back every version while the session ran on (exit 0)."""
    out = tmp_path / "s"
    code = session.cli(["--plain", "--validate-arg", "episdoes=3", "--out", str(out)])
    line = _one_line(code, capsys.readouterr().err)
    assert line == "robot-wsrl session: --validate-arg episdoes=3: no such key (did you mean episodes?)"
    typed = session.cli(["--plain", "--validate-arg", "episodes=abc", "--out", str(out)])
    _one_line(typed, capsys.readouterr().err, "--validate-arg episodes=abc: ", "'abc'")
    ranged = session.cli(["--plain", "--validate-arg", "episodes=0", "--out", str(out)])
    _one_line(ranged, capsys.readouterr().err, "--validate-arg: ", "episodes must be positive")
    few = session.cli(["--plain", "--validate-arg", "episodes=2", "--out", str(out)])
    _one_line(few, capsys.readouterr().err, "--validate-arg episodes=2: ", "needs episodes >= 3")
    assert not out.exists()  # nothing started, nothing written
    session.check_validate_args(["preset=real", "episodes=3", "variants=[nominal]"])  # the gate's own form


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        ("preset=reacher_rael", ["--validate-arg preset=reacher_rael: ", "not a shift preset of gym:Hopper"]),
        ("preset=reacher_real", ["--validate-arg preset=reacher_real: ", "nominal, real, real_mild"]),
        ("variants=[nominal,rael]", ["['rael'] are not shift presets", "did you mean real?"]),
        ("driver=gym:Walker2d-v5", ["--validate-arg driver=gym:Walker2d-v5: ", "obs_dim 11 != expected 17"]),
    ],
)
def test_a_validate_arg_the_policys_robot_cannot_take_is_refused_before_it_starts(
    arg: str, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Well-formed but wrong for this policy: each validation would refuse it (exit 2, logged by the
    learner) and hold back every version, unseen, for the whole session."""
    out = tmp_path / "s"
    code = session.cli(["--plain", "--validate-arg", arg, "--out", str(out)])
    _one_line(code, capsys.readouterr().err, *words)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--warmup", "-1"], ["argument --warmup: must be an integer >= 0, got -1"]),
        (["--utd", "0"], ["argument --utd: must be a positive integer, got 0"]),
        (["--policy-dir", "/nonexistent"], ["--policy-dir /nonexistent: no checkpoint.pt there", "policies"]),
    ],
)
def test_session_options_out_of_range_are_its_own_one_line_errors(
    argv: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Said in the session's words before anything starts, not as the learner's `run.warmup_steps=-1`."""
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as exited:
        session.cli(["--plain", *argv, "--out", str(out)])
    _one_line(int(exited.value.code or 0), capsys.readouterr().err, *words)
    assert not out.exists()


def test_a_session_runs_on_a_preset_of_its_policys_robot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default preset is the gate's for the shipped Hopper (`real`); the camera arm's is refused."""
    assert session.parse_args(["--plain", "--out", str(tmp_path / "s")]).preset == "real"
    out = tmp_path / "t"
    with pytest.raises(SystemExit) as exited:
        session.cli(["--plain", "--preset", "reacher_real", "--out", str(out)])
    _one_line(
        int(exited.value.code or 0), capsys.readouterr().err,
        "--preset reacher_real: it describes another robot (cam:reacher), not gym:Hopper-v5", "real_mild",
    )  # fmt: skip
    assert not out.exists()


def test_a_session_refuses_an_unknown_env_id_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as exited:
        session.cli(["--plain", "--env-id", "Hoper-v5", "--out", str(out)])
    line = _one_line(int(exited.value.code or 0), capsys.readouterr().err, "--env-id Hoper-v5: ", "Hopper")
    assert line.startswith("robot-wsrl session: ")
    assert not out.exists()
    assert session.env_id_problem("Hopper-v5") is None
    for other in ("dmc:hopper-hop", "emulated:tcp://127.0.0.1:1"):  # drivers the session cannot emulate
        assert "gymnasium id (e.g. Hopper-v5" in (session.env_id_problem(other) or "")
    assert session.parse_args(["--env-id", "gym:Hopper-v5", "--out", str(out)]).env_id == "Hopper-v5"


def test_an_emulated_robot_that_fails_to_start_is_named_with_its_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The robot's output goes to logs/robot.log, as the learner's and the runner's do; the session's
    error names it and shows the robot's one-line reason."""
    args = session.parse_args(["--plain", "--out", str(tmp_path / "s")])
    args.env_id = "Hoper-v5"  # past the up-front check: the robot itself refuses it now
    summary = session.Session(args, stream=io.StringIO()).run()
    log = tmp_path / "s" / "logs" / "robot.log"
    assert summary["error"] == f"emulated robot exited during start-up (code 2); its log: {log}"
    assert summary["failed_child"]["log_tail"] == [
        "python -m robot_wsrl.sim.emulated_robot: error: gym:Hoper-v5: Environment `Hoper` doesn't exist. "
        "Did you mean: `Hopper`?"
    ]  # the robot's own one-line refusal (exit 2), no traceback anywhere
    assert "Traceback" not in log.read_text() and "Traceback" not in capfd.readouterr().err
    assert "learner" not in summary["pids"]  # nothing else was started
    # Refused its input (exit 2), as a runner or a learner refusing theirs: the session exits 2 for each.
    assert summary["failed_child"]["exit_code"] == 2 and session.exit_status(summary) == 2


def test_a_policy_that_does_not_fit_the_robot_is_refused_before_any_child_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Hopper policy on a Walker, the camera arm's policy on the state-only Reacher: one line, naming
    what differs and the fix, before the learner imports torch (the runner used to find it 20 s in)."""
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as exited:
        session.cli(["--plain", "--env-id", "Walker2d-v5", "--out", str(out)])
    line = _one_line(int(exited.value.code or 0), capsys.readouterr().err, "obs_dim 11 != expected 17")
    assert (
        "(made for Hopper-v5) does not fit the robot gym:Walker2d-v5" in line and "leave out --env-id" in line
    )
    camera = ["--policy-dir", "policies/reacher_cam", "--env-id", "Reacher-v5", "--preset", "nominal"]
    with pytest.raises(SystemExit) as exited:
        session.cli(["--plain", *camera, "--out", str(out)])
    _one_line(int(exited.value.code or 0), capsys.readouterr().err, "cameras ['top 84x84x3'] != expected []")
    assert not out.exists()


def test_a_camera_policy_that_cannot_render_is_refused_before_any_child_starts(tmp_path: Path) -> None:
    out = tmp_path / "s"
    command = ["session", "--plain", "--policy-dir", "policies/reacher_cam", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", *command],
        env={**os.environ, "MUJOCO_GL": "disable", DEBUG_ENV: ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    _one_line(done.returncode, done.stderr, "cannot render camera 'top': MUJOCO_GL=disable", "MUJOCO_GL=egl")
    assert not out.exists()


def test_a_warmup_under_one_batch_is_the_batch_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The learner's first update needs one batch (256 for the shipped Hopper's agent): the session
    reports the warmup it will really have; --warmup 0 (no warmup) is an update as soon as one batch is in."""
    out = ["--plain", "--out", str(tmp_path / "s")]
    for given, effective in ((100, 256), (0, 256), (300, 300)):
        args = session.parse_args([*out, "--warmup", str(given)])
        assert (args.warmup, args.batch_size, args.effective_warmup) == (given, 256, effective)
    assert session.parse_args([*out, "--warmup", "100", "agent.batch_size=64"]).effective_warmup == 100
    with pytest.raises(SystemExit) as exited:
        session.cli([*out, "--warmup", "0", "--steps", "200"])
    _one_line(
        int(exited.value.code or 0), capsys.readouterr().err, "no update before step 256", "batch size 256"
    )


# ----- learner: its own out_dir it restarts in, another run's it leaves alone -----


def _learner_argv(keydir: Path, checkpoint: Path, out: Path, env: str = "inverted_pendulum") -> list[str]:
    service = [f"service.keys={keydir}", "service.plain=true", "service.bind=tcp://127.0.0.1:0"]
    return [
        *service,
        "service.gate=false",
        f"env={env}",
        *TINY_LEARNER,
        f"run.checkpoint={checkpoint}",
        f"out_dir={out}",
    ]


@pytest.mark.parametrize("held", [CHECKPOINT, RUN_CONFIG])
def test_the_learner_refuses_another_kind_of_runs_folder(
    held: str,
    tmp_path: Path,
    learner_keydir: Path,
    learner_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "pt1"
    run.mkdir()
    (run / held).write_text("a pre-training run's")
    code = learner.cli(_learner_argv(learner_keydir, learner_checkpoint, run))
    fresh = tmp_path / "pt1-learner"
    _one_line(
        code,
        capsys.readouterr().err,
        f"out_dir={run} already holds another kind of run ({held}, no learner.pt)",
        f"give a fresh out_dir, e.g. out_dir={fresh}",
    )
    assert (
        sorted(p.name for p in run.iterdir()) == [held] and (run / held).read_text() == "a pre-training run's"
    )
    fresh.mkdir()  # the suggestion is always a folder that does not exist yet
    with pytest.raises(ValueError, match=f"out_dir={tmp_path / 'pt1-learner-2'}"):
        refuse_overwrite(compose_config("finetune", [f"out_dir={run}"]), RESTARTS_FROM)


@pytest.mark.parametrize("state", RESTARTS_FROM)
def test_the_learner_restarts_in_its_own_folder(state: str, tmp_path: Path) -> None:
    """learner.pt or transitions.log beside the config: the learner's own run, which it carries on."""
    run = tmp_path / "learner"
    (run / state).mkdir(parents=True)
    (run / RUN_CONFIG).write_text("the learner's")
    (run / CHECKPOINT).write_text("")
    refuse_overwrite(compose_config("finetune", [f"out_dir={run}"]), RESTARTS_FROM)
    refuse_overwrite(compose_config("finetune", [f"out_dir={tmp_path / 'new'}"]), RESTARTS_FROM)
    assert set(RESTARTS_FROM) == {LEARNER_STATE, INGEST_LOG}


def test_a_learner_that_fails_to_start_leaves_no_run_to_refuse_a_retry(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "l2"
    code = learner.cli(_learner_argv(learner_keydir, learner_checkpoint, out, env="walker2d"))
    _one_line(code, capsys.readouterr().err, "env=walker2d drives Walker2d-v5")
    assert not out.exists() or not any(out.iterdir())  # no config.yaml left to make it "another run"
    refuse_overwrite(compose_config("finetune", [f"out_dir={out}"]), RESTARTS_FROM)


# ----- runner: the signature rule of validate --keys and of a link's runner -----


@pytest.fixture
def policies(tmp_path: Path, learner_keydir: Path) -> dict[str, Path]:
    """policy.onnx of an unsigned policy, of one signed by learner_keydir's learner, and of one signed whose
    sidecar changed since."""
    made = {name: write_policy(tmp_path / name, NULL_SPEC) for name in ("unsigned", "signed", "altered")}
    signer = keys.load_signing_key(learner_keydir, "learner")
    for name in ("signed", "altered"):
        signing.write_signature(made[name], signer)
    sidecar = sidecar_path(made["altered"])
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "note": "edited after signing"}))
    return made


def _run(capsys: pytest.CaptureFixture[str], policy: Path, tmp_path: Path, *extra: str) -> int:
    """`runner --driver null --steps 3` on `policy`, what earlier runs printed left out of capsys."""
    capsys.readouterr()
    state = tmp_path / "state"
    shutil.rmtree(state, ignore_errors=True)
    return runner.cli(
        ["--policy", str(policy), "--driver", "null", "--steps", "3", "--state", str(state), *extra]
    )


def test_the_runner_runs_only_verified_policies_with_keys(
    policies: dict[str, Path], tmp_path: Path, learner_keydir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyed = ("--keys", str(learner_keydir))
    assert _run(capsys, policies["signed"], tmp_path, *keyed) == 0
    unsigned = _run(capsys, policies["unsigned"], tmp_path, *keyed)
    _one_line(unsigned, capsys.readouterr().err, "robot-wsrl runner: ", "unsigned", "--allow-unsigned")
    assert _run(capsys, policies["unsigned"], tmp_path, *keyed, "--allow-unsigned") == 0
    for allowed in ((), ("--allow-unsigned",)):  # a signature that does not verify: refused always
        altered = _run(capsys, policies["altered"], tmp_path, *keyed, *allowed)
        _one_line(altered, capsys.readouterr().err, "does not verify", "altered after signing")
    stranger = tmp_path / "stranger"
    keys.new_identity(stranger, "learner", "learner")
    untrusted = _run(capsys, policies["signed"], tmp_path, "--keys", str(stranger))
    _one_line(untrusted, capsys.readouterr().err, "unknown key")
    missing = _run(capsys, policies["signed"], tmp_path, "--keys", str(tmp_path / "nope"))
    _one_line(missing, capsys.readouterr().err, f"--keys {tmp_path / 'nope'}: no such key directory")


def test_without_keys_a_signed_policy_needs_them_or_allow_unsigned(
    policies: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _run(capsys, policies["unsigned"], tmp_path) == 0
    )  # as before: the README's runner --policy ... --driver
    for name in ("signed", "altered"):
        line = _one_line(_run(capsys, policies[name], tmp_path), capsys.readouterr().err)
        assert line.endswith(SIGNED_HINT), line
    assert _run(capsys, policies["signed"], tmp_path, "--allow-unsigned") == 0
