"""WeightStats' higher sums and ESS/N's relative variance against numpy on the weights: the
delta method's N·Var(ÊSS/N)/(ESS/N)² from the moments m_k = mean(w^k), and its rounding bound
as its docstring writes it, under merges."""

import math

import numpy as np
import pytest

from shardeval.pipeline.core.log_states import WeightStats


def _relative_variance(w):
    m1, m2, m3, m4 = (np.mean(w**k) for k in (1, 2, 3, 4))
    return 4 * m2 / m1**2 - 4 * m3 / (m1 * m2) + m4 / m2**2 - 1


@pytest.mark.parametrize("spread", [0.3, 1.0, 2.5])
def test_the_relative_variance_of_ess_is_the_delta_methods_from_the_moments(spread):
    rng = np.random.default_rng(int(spread * 10))
    log_w = spread * rng.standard_normal(500) + 40.0  # weights far from 1: the max cancels
    w = np.exp(log_w - log_w.max())
    parts = [WeightStats.from_values(p, keep=3, higher=True) for p in np.split(log_w, [1, 200])]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for stats in (WeightStats.from_values(log_w, keep=3, higher=True), merged):
        assert stats.ess_fraction_relative_variance() == pytest.approx(
            _relative_variance(w), rel=1e-9
        )
        s1, s2, s3, s4 = (np.sum(w**k) for k in (1, 2, 3, 4))
        n = len(w)
        terms = n * (4 * s2 / s1**2 + 4 * s3 / (s1 * s2) + s4 / s2**2) + 1
        bound = terms * 4 * (math.log2(n) + 1) * np.finfo(np.float64).eps
        assert stats.ess_fraction_rounding() == pytest.approx(bound, rel=1e-9, abs=0)


def test_equal_weights_have_no_variance_and_none_below_zero():
    stats = WeightStats.from_values(np.full(1000, 3.0), keep=2, higher=True)
    assert stats.ess_fraction_relative_variance() == 0.0  # 4 − 4 + 1 − 1, rounded at most
    assert 0 < stats.ess_fraction_rounding() < 1e-9
    # One weight: ESS/N = 1 exactly, no variance; the bound's approx has no absolute
    # tolerance (pytest's default 1e-12 is above the bound itself).
    one = WeightStats.from_values(np.array([0.5]), keep=1, higher=True)
    assert one.ess_fraction_relative_variance() == 0.0
    assert one.ess_fraction_rounding() == pytest.approx(
        10 * 4 * np.finfo(np.float64).eps, rel=1e-12, abs=0
    )  # N = 1: 4 + 4 + 1 + 1 terms, log₂ 1 + 1 = 1


def test_without_the_higher_sums_or_any_weight_there_is_no_relative_variance():
    without = WeightStats.from_values(np.array([0.0, 1.0, 2.0]), keep=2)
    zero = WeightStats.from_values(np.full(4, -np.inf), keep=2, higher=True)
    for stats in (without, zero, WeightStats.empty(2, higher=True)):
        assert math.isnan(stats.ess_fraction_relative_variance())
        assert math.isnan(stats.ess_fraction_rounding())
    assert (without.sum_cube, without.sum_fourth) == (None, None)
    kept = WeightStats.empty(4, higher=True)
    assert (kept.n, kept.max, kept.sum, kept.sum_sq, kept.keep) == (0, -math.inf, 0.0, 0.0, 4)
    assert (kept.sum_cube, kept.sum_fourth) == (0.0, 0.0)
    assert kept.top.size == 0
    assert WeightStats.empty(4).sum_cube is None


def test_a_shard_of_no_weights_keeps_the_higher_sums_through_a_merge():
    # A shard with no rows among others: its state must keep s₃, s₄ (at 0), or the merge
    # drops them and ESS loses its standard error.
    log_w = np.random.default_rng(3).standard_normal(50)
    none = WeightStats.from_values(np.empty(0), keep=2, higher=True)
    assert none.has_higher
    assert (none.sum_cube, none.sum_fourth) == (0.0, 0.0)
    merged = none.merge(WeightStats.from_values(log_w, keep=2, higher=True))
    assert merged.has_higher
    w = np.exp(log_w - log_w.max())
    assert merged.ess_fraction_relative_variance() == pytest.approx(_relative_variance(w), rel=1e-9)
