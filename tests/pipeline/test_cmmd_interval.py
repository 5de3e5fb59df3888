"""CMMD's standard error and interval: the U-statistic's standard error from the Hoeffding
decomposition KID's takes, on the complement sums the pair pass collects; calibrated on
Gaussian data over independent replicates (the reported standard error against the spread of
the estimates, and the interval's coverage of their mean) for the U-statistic and for the
default V-statistic (whose interval is about the V-statistic's own mean).

The replicates go through the pipeline functions the plug-in's pass calls
(:func:`~shardeval.pipeline.mmd.cmmd.cmmd_from_sums`,
:func:`~shardeval.pipeline.mmd.cmmd.cmmd_standard_error`) on complement sums formed in numpy
from the whole kernel matrix: about 100 times faster than a pass per replicate, and the test of
every route checks that the plug-in gives what those functions give on the same rows."""

import json

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.errors import MetricOptionError
from shardeval.pipeline.metrics.intervals import normal_interval
from shardeval.pipeline.mmd.cmmd import cmmd_from_sums, cmmd_standard_error
from shardeval.pipeline.pairwise.pair_states import CrossSums, SetSums

SIGMA, SCALE = 10.0, 1000.0


def _complements(a, b):
    """1 − exp(−‖â − b̂‖²/2σ²) between unit-norm rows, in float64, by the definition."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    squared = np.maximum(2.0 - 2.0 * (a @ b.T), 0.0)  # ‖â − b̂‖² of unit rows
    return -np.expm1(-squared / (2 * SIGMA**2))


def _set_sums(k):
    """Sums over ordered pairs i ≠ j of a matrix of complements (whose diagonal is 0)."""
    np.fill_diagonal(k, 0.0)
    return SetSums(float(k.sum()), float((k**2).sum()), 0.0, k.sum(axis=1))


def _cmmd(x, y):
    """(V-statistic, U-statistic, standard error), ×1000, of reference x and generated y."""
    kxy = _complements(x, y)
    cross = CrossSums(float(kxy.sum()), float((kxy**2).sum()), kxy.sum(axis=1), kxy.sum(axis=0))
    xx, yy, m, n = _set_sums(_complements(x, x)), _set_sums(_complements(y, y)), len(x), len(y)
    v, _, _ = cmmd_from_sums(xx, yy, cross, m, n, unbiased=False, scale=SCALE)
    u, _, _ = cmmd_from_sums(xx, yy, cross, m, n, unbiased=True, scale=SCALE)
    return v, u, cmmd_standard_error(xx, yy, cross, m, n, scale=SCALE)


def _calibration(n, replicates=400, d=4, level=0.95):
    """{estimator: (mean reported SE / SD of the estimates, coverage of their mean)} over
    ``replicates`` draws of n rows of N(0, I) against n of N(0.3·1, 1.2² I)."""
    rng = np.random.default_rng(300 + n)
    draws = [
        _cmmd(rng.normal(size=(n, d)), 1.2 * rng.normal(size=(n, d)) + 0.3)
        for _ in range(replicates)
    ]
    v, u, error = (np.array(column) for column in zip(*draws, strict=True))
    out = {}
    for name, estimates in (("V-statistic", v), ("U-statistic", u)):
        low, high = np.array(
            [normal_interval(e, s, level) for e, s in zip(estimates, error, strict=True)]
        ).T
        centre = estimates.mean()
        out[name] = (
            float(error.mean() / estimates.std(ddof=1)),
            float(np.mean((low <= centre) & (centre <= high))),
        )
    return out


@pytest.mark.parametrize("n", [200, 400])
def test_the_interval_is_calibrated_on_gaussian_data(n):
    """400 replicates at d = 4, both estimators from each: the mean reported standard error
    within 20 % of the estimates' standard deviation, the 95 % interval covering their mean in
    92–98 % of replicates (binomial SD of the coverage: 1.1 %)."""
    for name, (ratio, covered) in _calibration(n).items():
        assert 0.8 <= ratio <= 1.2, (name, ratio)
        assert 0.92 <= covered <= 0.98, (name, covered)


def test_the_standard_error_is_the_kernels_not_the_complements():
    """1 − k changes the sign of the MMD² of the sums and none of its variance terms: the
    standard error from the complements is the one from k itself (KID's formula on k)."""
    from shardeval.pipeline.mmd.kid import mmd2_and_se

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(70, 3)), rng.normal(size=(50, 3)) + 0.5
    _, u, error = _cmmd(x, y)

    def kernel_sums(a, b):
        return 1.0 - _complements(a, b)

    def own(k):
        np.fill_diagonal(k, 0.0)
        return SetSums(float(k.sum()), float((k**2).sum()), 0.0, k.sum(axis=1))

    kxy = kernel_sums(x, y)
    cross = CrossSums(float(kxy.sum()), float((kxy**2).sum()), kxy.sum(axis=1), kxy.sum(axis=0))
    value, se_ = mmd2_and_se(own(kernel_sums(x, x)), own(kernel_sums(y, y)), cross, 70, 50)
    assert u == pytest.approx(SCALE * value, rel=1e-9)
    assert error == pytest.approx(SCALE * se_, rel=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_every_route_gives_the_interval_of_the_standard_error(tmp_path, capsys, unbiased):
    from scipy import stats

    from shardeval.workflows.cli import main

    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(250, 5)), rng.normal(size=(230, 5)) + 0.2
    np.save(tmp_path / "real.npy", x)
    np.save(tmp_path / "gen.npy", y)
    real, gen = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    report = se.cmmd(real, gen, ci=0.9, unbiased=unbiased)
    python = report.to_dict()["cmmd"]
    v, u, error = _cmmd(x, y)
    assert python["cmmd"] == pytest.approx(u if unbiased else v, rel=1e-9)
    assert python["cmmd_standard_error"] == pytest.approx(error, rel=1e-6)
    z = stats.norm.ppf(0.95)
    assert python["cmmd_ci_low"] == pytest.approx(python["cmmd"] - z * error, rel=1e-6)
    assert python["cmmd_ci_high"] == pytest.approx(python["cmmd"] + z * error, rel=1e-6)
    assert "90% interval" in report.summary()
    flags = ["--unbiased"] if unbiased else []
    capsys.readouterr()
    assert main(["cmmd", real, gen, "--ci", "0.9", *flags, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["cmmd"] == python
    both = se.metrics(real, gen, ["kid", "cmmd"], ci=0.9, unbiased=unbiased)
    assert both.to_dict()["cmmd"] == python
    assert both.to_dict()["kid"]["kid_ci_low"] is not None
    plain = se.cmmd(real, gen, unbiased=unbiased).to_dict()["cmmd"]
    assert plain["cmmd_ci_low"] is None
    assert plain["cmmd_ci_high"] is None
    assert plain["cmmd"] == python["cmmd"]
    assert plain["cmmd_standard_error"] == python["cmmd_standard_error"]


@pytest.mark.parametrize("level", [-0.1, 1.0, 1.5])
def test_a_level_outside_0_1_is_refused(level):
    rng = np.random.default_rng(8)
    with pytest.raises(MetricOptionError, match="'ci'"):
        se.cmmd(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)), ci=level)


def test_two_rows_give_a_finite_interval():
    """The fewest rows a pair metric takes (2 a side) still give a standard error (the
    within-set first-order term vanishes with m − 2), so a finite interval, never NaN."""
    rng = np.random.default_rng(9)
    got = se.cmmd(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), ci=0.95).to_dict()["cmmd"]
    assert np.isfinite([got["cmmd_ci_low"], got["cmmd_ci_high"]]).all()
    assert got["cmmd_ci_low"] <= got["cmmd"] <= got["cmmd_ci_high"]
