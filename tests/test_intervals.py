"""Bootstrap intervals and the IQM that the learning benchmarks report over seeds."""

import numpy as np
import pytest

from robot_wsrl.bench.intervals import bootstrap_ci, iqm


def test_iqm_is_the_mean_of_the_middle_half_with_fractional_ends():
    assert iqm(np.arange(8.0)) == pytest.approx(3.5)  # 2, 3, 4, 5
    assert iqm(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(3.0)  # one diverged seed ignored
    assert np.isnan(iqm(np.array([])))


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(1)
    few, many = rng.normal(100, 20, 5), rng.normal(100, 20, 200)
    low, high = bootstrap_ci(few)
    assert low < few.mean() < high
    many_low, many_high = bootstrap_ci(many)
    assert many_high - many_low < high - low
    assert bootstrap_ci(few) == bootstrap_ci(few)  # deterministic: a fixed resampling seed
    assert all(np.isnan(bootstrap_ci(np.array([3.0]))))
