"""Choosing the checkpoint to ship offline: pre-training keeps its checkpoints, and `ship RUN --select
calibrated` takes the latest whose critics are calibrated (calibration.csv), recording why in the manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from robot_wsrl.apps.ship import cli as ship_cli
from robot_wsrl.core.artifacts import CALIBRATION_LOG, CHECKPOINT, MANIFEST, kept_checkpoint
from robot_wsrl.learn.checkpoint import load_checkpoint
from robot_wsrl.learn.config import compose_config, config_hash
from robot_wsrl.learn.pretrain import pretrain
from robot_wsrl.learn.selection import SelectionError, select_calibrated


def fake_run(run: Path, kept: list[int], calibration: list[tuple[int, float]]) -> Path:
    """A run folder with kept checkpoints (placeholders: the rule reads only their names) and a
    calibration.csv in the format pre-training writes."""
    for step in kept:
        path = kept_checkpoint(run, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder")
    with (run / CALIBRATION_LOG).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "q_data_mean", "mc_return_mean", "q_calibration"])
        for step, ratio in calibration:
            writer.writerow([step, ratio * 100.0, 100.0, ratio])
    return run


def test_the_latest_checkpoint_in_the_band_is_chosen_not_the_closest(tmp_path):
    ratios = {1000: 0.5, 2000: 0.9, 3000: 1.2, 4000: 1.4, 5000: 1.6}
    run = fake_run(tmp_path / "run", list(ratios), [(s, r) for s, r in ratios.items()])
    picked = select_calibrated(run, band=0.25)
    assert picked.checkpoint == kept_checkpoint(run, 3000)
    record = picked.record()
    assert record["rule"] == "calibrated" and record["band"] == 0.25
    assert record["step"] == 3000 and record["q_calibration"] == 1.2
    assert [(c["step"], c["q_calibration"], c["accepted"]) for c in record["candidates"]] == [
        (1000, 0.5, False),
        (2000, 0.9, True),
        (3000, 1.2, True),
        (4000, 1.4, False),
        (5000, 1.6, False),
    ]
    assert select_calibrated(run, band=0.5).chosen.step == 4000  # a wider band admits later ones


def test_a_step_not_logged_is_judged_at_the_nearest_earlier_logged_step(tmp_path):
    # kept at 100 (nothing logged yet), 1500 (logged at 1250), 2000; calibration logged every 250 or so
    run = fake_run(tmp_path / "run", [100, 1500, 2000], [(1000, 0.5), (1250, 0.95), (1750, 1.5), (2000, 1.6)])
    picked = select_calibrated(run, band=0.25)
    assert picked.chosen.step == 1500 and picked.chosen.logged_step == 1250 and picked.chosen.ratio == 0.95
    first = picked.record()["candidates"][0]
    assert first == {"step": 100, "q_calibration": None, "logged_step": None, "accepted": False}


def test_a_resumed_run_judges_a_step_by_its_last_logged_row(tmp_path):
    # a part crashed after logging 2000 at 1.1; the resumed part (from the 1000 checkpoint) logged 2000 again
    run = fake_run(tmp_path / "run", [1000, 2000], [(1000, 0.9), (2000, 1.1), (2000, 1.5)])
    assert select_calibrated(run, band=0.25).chosen.step == 1000


def test_nothing_in_the_band_exits_2_naming_the_closest(tmp_path, capsys):
    run = fake_run(
        tmp_path / "run", [1000, 2000, 3000, 4000], [(1000, 0.3), (2000, 0.5), (3000, 1.4), (4000, 1.6)]
    )
    with pytest.raises(SelectionError, match=r"closest: step 3000 at 1\.400, step 2000 at 0\.500"):
        select_calibrated(run, band=0.25)
    out = tmp_path / "policies" / "p"
    assert ship_cli([str(run), "--select", "calibrated", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("robot-wsrl ship: ")
    assert "within [0.75, 1.25]" in err and "closest: step 3000 at 1.400" in err and "--band" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["RUN"], "did you mean --select calibrated"),  # a folder without a rule
        (["RUN/checkpoints/checkpoint-000001000.pt", "--select", "calibrated"], "--select and --band choose"),
        (["EMPTY", "--select", "calibrated"], "run.keep_checkpoints=true"),  # nothing kept
        (["RUN", "--select", "calibrated", "--band", "0"], "must be a positive number"),
    ],
)
def test_bad_selection_input_is_one_line(args, says, tmp_path, capsys):
    fake_run(tmp_path / "RUN", [1000], [(1000, 1.0)])
    (tmp_path / "EMPTY").mkdir()
    argv = [str(tmp_path / a) if a.startswith(("RUN", "EMPTY")) else a for a in args]
    try:
        code = ship_cli([*argv, "--out", str(tmp_path / "p")])
    except SystemExit as usage:  # argparse's own checks exit
        code = usage.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert not (tmp_path / "p").exists()


def test_the_recipes_keep_checkpoints_without_changing_the_config_hash():
    base = ["run.dataset=data.npz"]
    assert not compose_config("pretrain", base).run.keep_checkpoints
    for recipe in ("cpu", "paper"):
        kept = compose_config("pretrain", [*base, f"recipe={recipe}"])
        assert kept.run.keep_checkpoints
        plain = compose_config("pretrain", [*base, f"recipe={recipe}", "run.keep_checkpoints=false"])
        assert config_hash(kept) == config_hash(plain)  # where copies go does not change the result


def test_pretrain_keeps_checkpoints_and_ship_selects_among_them(small_overrides, pendulum_dataset, tmp_path):
    run = tmp_path / "run"
    pretrain(
        compose_config(
            "pretrain",
            [
                "env=inverted_pendulum",
                *small_overrides,
                f"run.dataset={pendulum_dataset}",
                "run.steps=7",
                "run.checkpoint_every=3",
                "run.log_every=2",
                "run.eval_every=0",
                "run.keep_checkpoints=true",
            ],
        )
    )
    # kept every checkpoint_every updates and at the end; checkpoint.pt stays the resume point
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        kept_checkpoint(run, s).name for s in (3, 6, 7)
    ]
    for step in (3, 6, 7):
        assert load_checkpoint(kept_checkpoint(run, step))["step"] == step
    assert load_checkpoint(run / CHECKPOINT)["step"] == 7

    with (run / CALIBRATION_LOG).open() as f:
        logged = {int(row["step"]): float(row["q_calibration"]) for row in csv.DictReader(f)}
    assert sorted(logged) == [2, 4, 6, 7]
    out = tmp_path / "policies" / "pendulum"
    argv = [str(run), "--select", "calibrated", "--band", "1000", "--out", str(out), "--episodes", "1"]
    assert ship_cli(argv) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    selection = manifest["selection"]
    assert selection["rule"] == "calibrated" and selection["band"] == 1000 and selection["run"] == str(run)
    assert selection["step"] == manifest["pretrain_steps"] == 7  # every one is in so wide a band: the latest
    assert selection["q_calibration"] == pytest.approx(logged[7])
    assert [(c["step"], c["logged_step"], c["accepted"]) for c in selection["candidates"]] == [
        (3, 2, True),
        (6, 6, True),
        (7, 7, True),
    ]
    assert selection["candidates"][0]["q_calibration"] == pytest.approx(logged[2])
    assert load_checkpoint(out / CHECKPOINT)["step"] == 7
