"""Bad input to the tools (bench, validate, ship, pretrain, finetune): one line naming the problem and the
fix, exit code 2, checked before any work is done (issue 15's convention, apps/errors.py)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import SMALL_AGENT

from robot_wsrl.apps import finetune as finetune_app
from robot_wsrl.apps import pretrain as pretrain_app
from robot_wsrl.apps import ship as ship_app
from robot_wsrl.apps import validate as validate_app
from robot_wsrl.bench import cli as bench_cli
from robot_wsrl.core.paths import REPO_ROOT

POLICY = REPO_ROOT / "policies" / "hopper"


def _one_line(code: int | None, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _run(cli, argv: list[str]) -> int | None:
    """`cli(argv)`'s exit code, whether returned or raised by the parser."""
    try:
        return cli(argv)
    except SystemExit as stop:
        return stop.code


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("ROBOT_WSRL_DEBUG", raising=False)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["finetune", "variant=wsrl"], ["variant: no such key", "did you mean variants?"]),
        (["finetune", "memory_sweep.sizez=[]"], ["memory_sweep.sizez: no such key", "memory_sweep.sizes"]),
        (["finetune", "variants=[wsrll]"], ["variants must be a mapping"]),
        (["finetune", "variants=[wsrl"], ["'[wsrl' does not parse", "close its brackets"]),
        (["finetune", "include=[wsrll]"], ["unknown variant 'wsrll'", "did you mean wsrl?"]),
        (["finetune", "include=[wsrl]", "memory_sweep.variants=[wsrll]"], ["unknown variant 'wsrll'"]),
        (["finetune", "dataset"], ["'dataset' has no '='"]),
        (["soak", "seconds=abc"], ["seconds must be a number", "default 600"]),
        (["soak", "secnds=5"], ["did you mean seconds?"]),
        (["finetunee"], ["no benchmark 'finetunee'", "did you mean finetune?"]),
        (["runner", "steps=10"], ["takes no overrides"]),
    ],
)
def test_bench_bad_input_is_one_line(argv, fragments, tmp_path, capsys):
    code = _run(bench_cli, [*argv, f"out={tmp_path}"] if argv[0] == "finetune" and len(argv) > 1 else argv)
    _one_line(code, capsys.readouterr().err, "robot-wsrl bench: ", *fragments)
    assert not any(tmp_path.iterdir())  # refused before any run


def test_bench_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv("ROBOT_WSRL_DEBUG", "")  # restored after the test: --debug sets it
    assert bench_cli(["--debug", "finetune", "variant=wsrl"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "variant" in err.rstrip().splitlines()[-1]


def test_validate_bad_input_is_one_line_before_any_episode(tmp_path, capsys):
    code = _run(validate_app.cli, [str(POLICY), "--allow-unsigned", "episodes=1", "variants=[real"])
    _one_line(code, capsys.readouterr().err, "robot-wsrl validate: ", "'[real' does not parse")

    code = _run(validate_app.cli, [str(POLICY / "policy.json"), "--allow-unsigned", "episodes=1"])
    _one_line(code, capsys.readouterr().err, "policy.json is a policy's JSON sidecar", "policy.onnx or its")

    a_file = tmp_path / "report.txt"
    a_file.write_text("")
    code = _run(validate_app.cli, [str(POLICY), "--allow-unsigned", "--out", str(a_file), "episodes=1"])
    _one_line(code, capsys.readouterr().err, f"--out {a_file} is a file, not a folder")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("preset=rael", ["preset=rael is not a shift preset of gym:Hopper-v5", "(did you mean real?)"]),
        ("variants=[nominal,real_mlid]", ["its presets: nominal, real, real_mild (did you mean real_mild?)"]),
        ("robot_presets=[raal]", ["no shift preset 'raal'", "(did you mean real?)"]),
        ("preset=moon", ["its presets: nominal, real, real_mild"]),  # nothing close: the list alone
    ],
)
def test_validate_suggests_the_preset_a_typo_meant(override, fragments, tmp_path, capsys):
    code = _run(
        validate_app.cli, [str(POLICY), "--allow-unsigned", "episodes=1", override, "--out", str(tmp_path)]
    )
    _one_line(code, capsys.readouterr().err, "robot-wsrl validate: ", *fragments)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_finetune_refuses_an_unknown_device(device, tmp_path, capsys):
    code = _run(finetune_app.cli, [f"device={device}", f"out_dir={tmp_path / 'run'}"])
    _one_line(code, capsys.readouterr().err, f"device={device}: must be auto, cpu, cuda or cuda:N")
    assert not (tmp_path / "run").exists()


def test_finetune_refuses_cuda_torch_cannot_see(tmp_path, capsys):
    index = torch.cuda.device_count() if torch.cuda.is_available() else 0  # one past the last device
    device = f"cuda:{index}"
    code = _run(finetune_app.cli, [f"device={device}", f"out_dir={tmp_path / 'run'}"])
    _one_line(code, capsys.readouterr().err, f"device={device}: torch sees ", "use device=auto or cpu")
    if not torch.cuda.is_available():
        code = _run(pretrain_app.cli, ["device=cuda", "run.dataset=d.npz", f"out_dir={tmp_path / 'run'}"])
        _one_line(code, capsys.readouterr().err, "device=cuda: torch sees no CUDA device", torch.__version__)


def test_ship_refuses_zero_episodes(tmp_path, capsys):
    out = tmp_path / "policy"
    code = _run(ship_app.cli, [str(POLICY / "checkpoint.pt"), "--out", str(out), "--episodes", "0"])
    _one_line(code, capsys.readouterr().err, "--episodes: must be a positive integer, got 0")
    assert not out.exists()


def test_a_recipe_typo_suggests_the_recipe_option(capsys):
    code = _run(pretrain_app.cli, ["recipe=cpuu", "run.dataset=d.npz"])
    _one_line(code, capsys.readouterr().err, "recipe=cpuu: no such recipe config", "did you mean recipe=cpu?")


def test_a_stopped_pretraining_checkpoints_the_update_it_reached_and_resumes(tmp_path, pendulum_dataset):
    """SIGTERM (a service stop, Ctrl-C alike) ends a long pre-training with a checkpoint of where it was, not
    of the last periodic save: `run.resume` continues from there."""
    run = tmp_path / "run"
    argv = ["env=inverted_pendulum", *SMALL_AGENT, f"run.dataset={pendulum_dataset}", "run.eval_every=0",
            "run.steps=1000000", "run.checkpoint_every=1000000", "run.log_every=5", "progress=false",
            f"out_dir={run}"]  # fmt: skip
    command = [sys.executable, "-m", "robot_wsrl.apps.cli", "pretrain", *argv]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 180
        while not ((run / "train.csv").exists() and len((run / "train.csv").read_text().splitlines()) > 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] and summary["steps"] >= 10 and "pre-training stopped at" in out
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == summary["steps"]
    assert pretrain_app.cli([f"run.resume={run}", f"run.steps={summary['steps'] + 2}"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == summary["steps"] + 2


def test_pretrain_resume_takes_the_saved_dataset_and_extends_to_run_steps(tmp_path, pendulum_dataset, capsys):
    run = tmp_path / "run"
    first = ["env=inverted_pendulum", *SMALL_AGENT, f"run.dataset={pendulum_dataset}", "run.eval_every=0"]
    assert pretrain_app.cli([*first, "run.steps=3", "run.log_every=1", f"out_dir={run}"]) == 0
    capsys.readouterr()

    assert pretrain_app.cli([f"run.resume={run}", "run.steps=5"]) == 0  # no dataset given: the saved one
    assert "pre-training done: 5 updates" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["steps"] == 5
    assert "steps: 5" in (run / "config.yaml").read_text()

    code = _run(pretrain_app.cli, [f"run.resume={run}", "run.steps=6", "agent.utd=3"])
    _one_line(code, capsys.readouterr().err, "agent.utd would be ignored", "give only run.steps")
    code = _run(pretrain_app.cli, [f"run.resume={pendulum_dataset}"])
    _one_line(code, capsys.readouterr().err, "no config.yaml, not a run folder to resume")
