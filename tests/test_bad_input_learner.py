"""Bad input to the learner-side commands (learner, finetune, pretrain, validate, policies), as a new user
types it: exit 2 with one line naming the problem and the fix, no traceback (`--debug` shows it); a
read-only command writes nothing into the repository; a new run never overwrites another; what a command
prints at exit is readable (JSON or lines), not a Python repr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BALANCES, FAST, TINY_LEARNER, write_linear_policy

from robot_wsrl.apps import finetune, learner, policies, pretrain, validate
from robot_wsrl.apps.errors import DEBUG_ENV
from robot_wsrl.core.artifacts import CHECKPOINT, REPORT, VALIDATION_DIR
from robot_wsrl.core.paths import REPO_ROOT
from robot_wsrl.learn.config import AgentConfig, Rule, at_least, check, compose_config, refuse_overwrite

COMMANDS = {"finetune": finetune.cli, "pretrain": pretrain.cli, "learner": learner.cli}


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def _one_line(code: int, err: str, prog: str, *words: str) -> str:
    """The one stderr line of a refused command (exit 2), holding each of `words`."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith(f"robot-wsrl {prog}: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ----- 1. a key added with `+` must be one the schema has -----


@pytest.mark.parametrize(
    ("prog", "argv", "words"),
    [
        ("learner", ["+service.foo=1", "service.keys=keys"], ["service.foo: no such key; known: keys, name"]),
        ("learner", ["+service.keyz=k"], ["service.keyz: no such key (did you mean service.keys?)"]),
        ("finetune", ["+run.foo=1"], ["run.foo: no such key; known: name, checkpoint, dataset, steps"]),
        ("finetune", ["+run.stepz=3"], ["run.stepz: no such key (did you mean run.steps?)"]),
        ("pretrain", ["+agent.bar=2"], ["agent.bar: no such key; known: name, actor_hidden"]),
        (
            "pretrain",
            ["+agent.cql.alhpa=1"],
            ["agent.cql.alhpa: no such key (did you mean agent.cql.alpha?)"],
        ),
        ("finetune", ["+sed=3"], ["sed: no such key (did you mean seed?)"]),
    ],
)
def test_an_unknown_key_added_with_plus_is_refused_with_a_did_you_mean(
    prog: str, argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = COMMANDS[prog](argv)
    _one_line(code, capsys.readouterr().err, prog, *words)


def test_group_appends_still_compose() -> None:
    """`recipe=NAME` is appended as `+recipe/RUN=NAME`: a config group, not a key, and it applies."""
    plain = compose_config("pretrain", ["run.dataset=d.npz"])
    for recipe in (["recipe=cpu"], ["+recipe/pretrain=cpu"]):
        cfg = compose_config("pretrain", [*recipe, "run.dataset=d.npz"])
        assert cfg.run.keep_checkpoints and not plain.run.keep_checkpoints


# ----- 2. value ranges: one table, one line -----


@pytest.mark.parametrize(
    ("prog", "argv", "line"),
    [
        ("finetune", ["agent.utd=0"], "agent.utd=0: must be >= 1"),
        ("finetune", ["agent.batch_size=-3"], "agent.batch_size=-3: must be >= 1"),
        ("finetune", ["run.steps=0"], "run.steps=0: must be >= 1"),
        ("finetune", ["run.eval_episodes=-1"], "run.eval_episodes=-1: must be >= 1"),
        ("finetune", ["agent.discount=1.5"], "agent.discount=1.5: must be in (0, 1]"),
        (
            "finetune",
            ["run.offline_ratio=0.5"],
            "run.dataset=null: run.offline_ratio > 0 needs the offline data",
        ),
        (
            "pretrain",
            ["run.dataset=d.npz", "agent.num_target_critics=20"],
            "must be in [1, agent.num_critics]",
        ),
        ("pretrain", [], "run.dataset=null: pretrain needs a dataset"),
        ("learner", ["service.max_seconds=-1"], "service.max_seconds=-1.0: must be > 0 (or null: no limit)"),
        ("learner", ["service.credit=0"], "service.credit=0: must be >= 1"),
        ("learner", ["service.pacing=fast"], "service.pacing=fast: must be one of lockstep, realtime"),
    ],
)
def test_out_of_range_values_are_one_line(
    prog: str, argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _one_line(COMMANDS[prog](argv), capsys.readouterr().err, prog, line)


def test_every_broken_rule_is_named_in_the_one_line() -> None:
    with pytest.raises(ValueError) as caught:
        compose_config("finetune", ["agent.utd=0", "run.steps=-5", "seed=-1"])
    assert str(caught.value) == "agent.utd=0: must be >= 1; run.steps=-5: must be >= 1; seed=-1: must be >= 0"
    # An Agent built from an AgentConfig that was never composed is held to the same table.
    with pytest.raises(ValueError, match=r"^agent\.batch_size=0: must be >= 1$"):
        AgentConfig(batch_size=0).validate()
    # A section is checked from its own object; keys outside it are left alone.
    check(AgentConfig(), (at_least("run.steps", 10**9), Rule("agent.utd", "x", lambda v, _: v == 4)), "agent")


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert finetune.cli(["agent.utd=0", "--debug"]) == 2  # still a user's mistake: exit 2, not a crash's 1
    assert os.environ.pop(DEBUG_ENV) == "1"  # children of the command would show theirs too
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("robot-wsrl finetune: agent.utd=0")


# ----- 3, 4. validate: overrides as the others, reports outside the policy's folder -----


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_linear_policy(tmp_path_factory.mktemp("pendulum"), BALANCES).parent


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("episode=4", ["episode: no such key (did you mean episodes?)"]),
        (
            "thresholds.max_fault=1",
            ["thresholds.max_fault: no such key (did you mean thresholds.max_faults?)"],
        ),
        ("episodes=abc", ["episodes: Value 'abc'", "Integer"]),
        ("episodes", ["override 'episodes' has no '=': give KEY=VALUE"]),
    ],
)
def test_validate_overrides_are_worded_as_the_learners(
    policy: Path, override: str, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = validate.cli([str(policy), override, "--allow-unsigned"])
    _one_line(code, capsys.readouterr().err, "validate", *words)
    assert not (policy / VALIDATION_DIR).exists()


def test_validate_writes_its_report_under_runs_not_beside_the_policy(
    policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert validate.cli([str(policy), *FAST, "--allow-unsigned"]) == 0
    (out,) = (tmp_path / "runs" / "validate").iterdir()
    assert out.name.startswith(f"{policy.name}-") and out.name.endswith("Z")  # NAME-UTCTIME
    assert json.loads((out / REPORT).read_text())["passed"]
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"PASS: {out.relative_to(tmp_path) / REPORT}")
    assert not (
        policy / VALIDATION_DIR
    ).exists()  # the policy's folder (policies/ for a shipped one) untouched


def test_runs_is_ignored_by_git() -> None:
    """Where validate (and every run) writes by default is not part of the repository."""
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "runs/validate/hopper-20260101-000000Z/report.json"], cwd=REPO_ROOT
    )
    assert ignored.returncode == 0


# ----- 5. policies: a folder that is not there -----


@pytest.mark.parametrize("option", ["--shipped", "--runs"])
def test_policies_refuses_a_missing_folder(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexist"
    _one_line(
        policies.cli([option, str(missing)]),
        capsys.readouterr().err,
        "policies",
        f"{missing}: no such folder",
    )


def test_policies_without_a_policies_folder_lists_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default, policies/, is optional
    assert policies.cli([]) == 0
    assert capsys.readouterr().out.strip() == "no policies under policies"


# ----- 6. a new run never overwrites another -----


@pytest.mark.parametrize("prog", ["pretrain", "finetune"])
def test_a_new_run_refuses_a_folder_that_holds_a_run(
    prog: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT).write_bytes(b"a run's checkpoint")
    code = COMMANDS[prog]([f"out_dir={run}", "run.dataset=d.npz"])
    _one_line(code, capsys.readouterr().err, prog, f"run.resume={run}", "give a new out_dir")
    assert (run / CHECKPOINT).read_bytes() == b"a run's checkpoint"
    # Continuing it is what run.resume is for; an empty or new folder is a new run's.
    refuse_overwrite(compose_config(prog, [f"out_dir={run}", f"run.resume={run}", "run.dataset=d.npz"]))
    refuse_overwrite(compose_config(prog, [f"out_dir={tmp_path / 'new'}", "run.dataset=d.npz"]))


# ----- 7. what a command prints at exit -----


def test_the_learner_prints_its_final_status_as_json(
    tmp_path: Path, learner_keydir: Path, learner_checkpoint: Path
) -> None:
    argv = [f"service.keys={learner_keydir}", "service.plain=true", "service.bind=tcp://127.0.0.1:0"]
    argv += ["service.gate=false", "service.max_seconds=1", "env=inverted_pendulum", *TINY_LEARNER]
    argv += [f"run.checkpoint={learner_checkpoint}", f"out_dir={tmp_path / 'learner'}"]
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "robot_wsrl.apps.cli", "learner", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "MUJOCO_GL": "disable"},
    )
    assert done.returncode == 0, done.stderr
    first, _, rest = done.stdout.partition("\n")
    assert first.startswith("learner learner on tcp://127.0.0.1:")
    status = json.loads(rest)
    assert status["step"] == 0 and status["policy_version"] == 0 and status["runners"] == {}
