"""ESS and PSIS k̂ where they used to be wrong: ties at the tail cut-off, correlated draws
(r_eff), weights that are all zero, and log-weights near the float64 limit."""

import math

import arviz as az
import numpy as np
import pytest

from shardeval.pipeline import NumericalError, open_features
from shardeval.pipeline.likelihood.ess import ess_of
from shardeval.pipeline.likelihood.psis import psis_khat, tail_size


def _source(tmp_path, lw, **kw):
    np.save(tmp_path / "lw.npy", lw)
    return open_features(str(tmp_path / "lw.npy"), ndims=(1, 2), min_rows=1, **kw)


def _arviz_khat(lw, reff=1.0):
    _, k = az.psislw(np.asarray(lw, dtype=np.float64).copy(), reff=reff)
    return float(k)


@pytest.mark.parametrize(
    ("case", "reff"),
    [
        ("repeated", 1.0),
        ("rounded-t3", 1.0),
        ("rounded-normal", 1.0),
        ("rounded-t3", 0.3),
        ("continuous", 0.7),
    ],
)
def test_khat_equals_arviz_with_ties_and_reff(tmp_path, case, reff):
    rng = np.random.default_rng(11)
    if case == "repeated":  # MCMC-like: each draw kept 4 times
        lw = np.repeat(rng.standard_t(3, 1000), 4)
    elif case == "rounded-t3":
        lw = np.round(rng.standard_t(3, 4000), 1)
    elif case == "rounded-normal":
        lw = np.round(rng.standard_normal(4000), 1)
    else:
        lw = rng.standard_t(4, 4000)
    got = ess_of(_source(tmp_path, lw, shard_rows=700), reff=reff)
    expected = _arviz_khat(lw, reff)
    assert math.isfinite(expected)
    assert got.khat == pytest.approx(expected, abs=1e-6)
    assert got.tail == tail_size(lw.size, reff)


def test_tail_length_follows_az_loo():
    # az.loo: M = ceil(min(N/5, 3 sqrt(N / r_eff))), the square root of N / r_eff.
    assert tail_size(630, 0.7) == math.ceil(min(126, 3 * math.sqrt(630 / 0.7)))
    assert tail_size(100) == 20
    assert tail_size(10_000) == 300


def test_short_tail_is_undetermined():
    lw = np.zeros(30)
    lw[:3] = 1.0  # the tail above the cut-off holds 3 values: no fit
    assert math.isnan(psis_khat(np.sort(lw)[::-1], 30))


def test_all_weights_zero_is_an_error(tmp_path):
    with pytest.raises(NumericalError, match=r"every weight .* is zero"):
        ess_of(_source(tmp_path, np.full(50, -np.inf)))


def test_log_weights_near_the_float64_limit(tmp_path):
    rng = np.random.default_rng(2)
    offsets = rng.standard_normal(5000)
    lw = 1e308 + offsets  # 1e308 + O(1) is 1e308: every weight is equal
    got = ess_of(_source(tmp_path, lw, shard_rows=900))
    assert got.ess == pytest.approx(5000.0, rel=1e-12)
    shifted = 7e307 + offsets * 1e292  # spread on the float64 grid at 7e307
    w = np.exp(shifted - shifted.max())
    got = ess_of(_source(tmp_path, shifted, shard_rows=900))
    assert got.ess == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
    assert math.isfinite(got.max_weight)


def test_per_row_ess_near_the_float64_limit(tmp_path):
    lw = np.full((20, 8), 1e308)
    got = ess_of(_source(tmp_path, lw, shard_rows=7))
    assert got.ess == pytest.approx(160.0, rel=1e-12)
    assert got.per_row["ess_over_k_quantiles"][0.5] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("n", [5, 6, 7, 12, 200])
def test_gpd_fit_equals_arvizs(n):
    # Zhang & Stephens' fit with Vehtari et al.'s prior against ArviZ's _gpdfit (what psislw
    # calls) on the same exceedances (unsorted here: the fit sorts them), down to the
    # shortest tail fitted, 5, where the quartile is the smallest value.
    from arviz.stats.stats import _gpdfit
    from scipy import stats

    from shardeval.pipeline.likelihood.psis import gpd_khat

    x = stats.genpareto.rvs(0.4, size=n, random_state=np.random.default_rng(n))
    assert gpd_khat(x) == pytest.approx(_gpdfit(np.sort(x))[0], rel=1e-12, abs=0)


def test_gpd_fit_needs_five_positive_exceedances():
    # Four exceedances, or six of which none is above the threshold: no fit, NaN.
    from shardeval.pipeline.likelihood.psis import gpd_khat

    assert math.isnan(gpd_khat(np.array([0.5, 1.0, 2.0, 3.0])))
    assert math.isnan(gpd_khat(np.zeros(6)))


def test_khat_readings_are_vehtaris_thresholds():
    # Vehtari et al. (2024): k̂ < 0.5 good, < 0.7 usable, otherwise unreliable.
    from shardeval.pipeline.likelihood.psis import khat_reading

    ks = (-0.2, 0.4999, 0.5, 0.6999, 0.7, 1.6, math.nan, math.inf)
    assert [khat_reading(k) for k in ks] == [
        "good",
        "good",
        "usable",
        "usable",
        "unreliable",
        "unreliable",
        "undetermined",
        "undetermined",
    ]


def test_psis_khat_of_the_shortest_tail_fitted_equals_arviz():
    # N = 30: M = ⌈min(6, 3√30)⌉ = 6, the cut-off the 7th largest; the 6th is tied with it,
    # so the tail holds 5 values, the fewest that are fitted (ArviZ: a finite k̂). r_eff = 1
    # by default, as in psislw.
    rng = np.random.default_rng(4)
    lw = rng.standard_normal(30)
    top = np.sort(lw)[::-1].copy()
    top[5] = top[6]
    expected = _arviz_khat(top)
    assert math.isfinite(expected)
    assert psis_khat(top, 30) == pytest.approx(expected, abs=1e-9)
    # N = 1,000: M = 3√N = 95 at r_eff = 1 (67 at r_eff = 2).
    many = np.sort(rng.standard_t(3, 1000))[::-1].copy()
    assert psis_khat(many, 1000) == pytest.approx(_arviz_khat(many), abs=1e-9)
    # Log-weights near 700, whose exp is at float64's edge: the largest is subtracted first.
    assert psis_khat(many + 700, 1000) == pytest.approx(_arviz_khat(many), abs=1e-9)


def test_psis_khat_without_enough_or_finite_log_weights_is_nan():
    top = np.sort(np.random.default_rng(5).standard_normal(30))[::-1]
    assert math.isfinite(psis_khat(top, 30))
    assert math.isnan(psis_khat(top[:6], 30))  # M + 1 = 7 log-weights needed
    assert math.isnan(psis_khat(np.full(30, -np.inf), 30))  # every weight zero
