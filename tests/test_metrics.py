"""Metrics CSVs: a row with new keys adds columns instead of losing them."""

import csv

from robot_wsrl.learn.metrics import MetricsLogger


def test_new_keys_add_columns_and_keep_earlier_rows(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log("train", 1, {"phase": "warmup"})  # warmup: no update metrics yet
    logger.log("train", 2, {"phase": "online", "q_mean": 0.5})
    logger.log("train", 3, {"phase": "online", "q_mean": 0.25})
    logger.close()
    with open(tmp_path / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["phase"], r["q_mean"]) for r in rows] == [
        ("1", "warmup", ""),
        ("2", "online", "0.5"),
        ("3", "online", "0.25"),
    ]
