"""`collect` at tiny scale: behaviour training with snapshots, medium / medium-replay datasets, manifest."""

import json
from pathlib import Path

import numpy as np
import pytest

from robot_wsrl.apps.collect import cli as collect_cli
from robot_wsrl.apps.collect import fetch
from robot_wsrl.learn.collect import collect, dataset_entry, file_sha256, pick_medium_snapshot
from robot_wsrl.learn.datasets import load_dataset


def test_pick_medium_snapshot_closest_to_fraction_of_best():
    evals = [(100, 10.0), (200, 31.0), (300, 90.0), (400, 60.0)]
    assert pick_medium_snapshot(evals, 1 / 3) == (200, 31.0)
    assert pick_medium_snapshot(evals, 1.0) == (300, 90.0)
    with pytest.raises(ValueError):
        pick_medium_snapshot([], 0.3)


TINY = [
    "env=inverted_pendulum",
    "agent.num_critics=2",
    "agent.critic_hidden=[16,16]",
    "agent.actor_hidden=[16,16]",
    "agent.batch_size=16",
    "agent.utd=1",
    "run.steps=120",
    "run.warmup_steps=40",
    "run.eval_every=40",
    "run.eval_episodes=1",
    "run.buffer_capacity=1000",
    "run.checkpoint_every=0",
    "progress=false",
    "tensorboard=false",
]


def test_collect_writes_datasets_and_manifest(tmp_path):
    manifest = collect(TINY, tmp_path, medium_size=50, fraction=1 / 3, seed=3)
    snap = manifest["medium_snapshot"]["step"]
    assert snap in (40, 80, 120) and len(manifest["snapshot_returns"]) == 3
    medium = load_dataset(tmp_path / "medium.npz", action_low=-3.0, action_high=3.0)
    replay = load_dataset(tmp_path / "medium-replay.npz", action_low=-3.0, action_high=3.0)
    assert medium.size == 50 and replay.size == snap
    assert replay.episode_ends()[-1] and np.abs(replay.actions).max() <= 3.0
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["datasets"]["medium"]["size"] == 50 and len(on_disk["datasets"]["medium"]["sha256"]) == 64
    assert on_disk["seed"] == 3 and on_disk["behaviour_config_hash"]


def test_collect_is_deterministic_and_fetch_reuses_or_regenerates(tmp_path, monkeypatch, capsys):
    """Same seed, threads=1, same machine: bit-identical files, so a shipped policy's dataset sha256 can
    check a cached copy and a regenerated one; a mismatch is reported, never hidden."""
    monkeypatch.chdir(tmp_path)
    out = Path("data") / "pendulum"
    collect([*TINY, "threads=1"], out, medium_size=50, fraction=1 / 3, seed=3)
    first = {name: file_sha256(out / name) for name in ("medium.npz", "medium-replay.npz")}
    entry = dataset_entry(out / "medium.npz")
    assert entry["sha256"] == first["medium.npz"] and entry["command"].startswith("robot-wsrl collect --out")

    assert fetch(entry) and "cached" in capsys.readouterr().out  # nothing retrained

    (out / "medium.npz").unlink()
    assert fetch(entry) and "regenerated, sha256 matches" in capsys.readouterr().out
    assert {name: file_sha256(out / name) for name in first} == first

    assert not fetch({**entry, "sha256": "0" * 64})
    assert "NOT bit-identical" in capsys.readouterr().err


def test_fetch_cli_refuses_a_manifest_without_a_dataset(tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"name": "x"}))
    assert collect_cli(["--fetch", str(manifest)]) == 2
    assert capsys.readouterr().err.startswith("robot-wsrl collect: ")
