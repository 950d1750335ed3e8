"""`bench pretrain` end to end at its smallest: the three updates run and the JSON has its keys."""

from robot_wsrl.bench.pretrain import run_pretrain_benchmark


def test_the_pretrain_benchmark_reports_ours_and_the_naive_rates() -> None:
    result = run_pretrain_benchmark(device="cpu", rounds=1, repeats=1)
    for key in ("updates_per_s", "naive_updates_per_s", "naive_drawn_only_updates_per_s"):
        assert result[key] > 0, key
    assert result["speedup"] == result["updates_per_s"] / result["naive_updates_per_s"]
