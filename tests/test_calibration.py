"""The calibration probe: fixed dataset rows, none whose return-to-go a time limit cut short."""

import math

import numpy as np
import pytest

from robot_wsrl.learn.calibration import calibrated, make_probe, measure, truncation_horizon
from robot_wsrl.learn.replay import ReplayBuffer


def _buffer(discount: float, lengths: list[int], terminal: list[bool]) -> ReplayBuffer:
    """Episodes of reward 1 per step; each ends in a terminal or (if not) a timeout."""
    n = sum(lengths)
    ends = np.zeros(n, bool)
    terminated = np.zeros(n, np.float32)
    for end, term in zip(np.cumsum(lengths) - 1, terminal, strict=True):
        ends[end] = True
        terminated[end] = float(term)
    obs = np.arange(n, dtype=np.float32)[:, None]
    return ReplayBuffer.from_arrays(
        discount, obs, np.zeros((n, 1), np.float32), np.ones(n, np.float32), obs + 1, terminated, ends
    )


def test_the_horizon_is_where_the_cut_off_remainder_falls_below_the_tolerance():
    assert truncation_horizon(0.99) == math.ceil(math.log(0.05) / math.log(0.99)) == 299
    assert 0.99 ** truncation_horizon(0.99) <= 0.05 < 0.99 ** (truncation_horizon(0.99) - 1)
    assert truncation_horizon(0.0) == 0


def test_rows_near_a_timeout_are_left_out_and_terminal_episodes_kept_whole():
    discount = 0.9  # horizon 29 steps
    horizon = truncation_horizon(discount)
    buf = _buffer(discount, [100, 40, 100], [False, True, False])
    probe = make_probe(buf, seed=0, rows=10_000)
    kept = set(probe.rows.tolist())
    timeout_ends = [99, 239]
    for end in timeout_ends:
        assert not kept & set(range(end - horizon + 1, end + 1))
        assert end - horizon in kept
    assert set(range(100, 140)) <= kept  # the terminated episode: every row's return-to-go is exact
    assert probe.mc_return_mean == pytest.approx(float(buf.mc_return[probe.rows].mean()))


def test_the_probe_is_fixed_by_its_seed():
    buf = _buffer(0.99, [500, 500, 500], [True, False, True])
    a, b, c = (make_probe(buf, seed=s, rows=64) for s in (1, 1, 2))
    assert np.array_equal(a.rows, b.rows) and not np.array_equal(a.rows, c.rows)


class _ExactCritic:
    """Stands in for an agent whose Q equals the return-to-go: measures the plumbing, not learning."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def to_batch(self, arrays):
        return arrays

    def mean_q(self, obs, action):
        return self.scale * float(self.mc[obs[:, 0].astype(int)].mean())


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_measure_compares_q_on_the_probe_rows_with_their_returns(scale):
    buf = _buffer(0.99, [300, 300], [True, True])
    probe = make_probe(buf, seed=0, rows=50)
    critic = _ExactCritic(scale)
    critic.mc = buf.mc_return
    result = measure(critic, buf, probe)
    assert result["q_calibration"] == pytest.approx(scale)
    assert calibrated(result["q_calibration"]) == (scale == 1.0)
    assert not calibrated(float("nan"))
