"""The Gaussian NLL's interval: (mean ∓ z·SE)/d, conditional on the reference Gaussian (held
fixed); calibrated with that Gaussian fixed and the generated rows drawn afresh for each of
independent replicates (the reported standard error against the spread of the estimates, and
the interval's coverage of their mean), and the same interval on every route.

The replicates go through :func:`~shardeval.pipeline.likelihood.gaussian_nll.nll_gaussian`, the
function the plug-in calls, on rows in memory: three times faster than ``se.metrics`` per
replicate (which adds the report and its inputs' digests); the test of every route checks that
the plug-in's interval is the one of that function's mean and standard error."""

import json
import math

import dask.array as da
import numpy as np
import pytest
from scipy import stats

import shardeval as se
from shardeval.pipeline.core.engine import Engine
from shardeval.pipeline.errors import MetricOptionError
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.io.feature_source import FeatureSource
from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian
from shardeval.pipeline.metrics.intervals import normal_interval

#: The reference Gaussian, held fixed: d = 3, correlated.
MEAN = np.array([0.0, 0.5, -0.3])
COV = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, -0.4], [0.0, -0.4, 0.5]])
REFERENCE = Gaussian(MEAN, COV, n=10**6)


def _generated(rng, n):
    """Rows of N(0.3·1, 1.2² I): not the reference's distribution."""
    return 1.2 * rng.normal(size=(n, 3)) + 0.3


def _expected_nll():
    """E[−log N(y | μ, Σ)] for y ~ N(m, S), in closed form:
    ½[tr(Σ⁻¹S) + (m − μ)ᵀΣ⁻¹(m − μ) + log det(2πΣ)]."""
    inverse = np.linalg.inv(COV)
    shift = np.full(3, 0.3) - MEAN
    return 0.5 * (
        np.trace(inverse * 1.44) + shift @ inverse @ shift + np.linalg.slogdet(2 * np.pi * COV)[1]
    )


def _calibration(n, replicates=400, level=0.95):
    """(mean reported SE / SD of the estimates, coverage of their mean, their mean) over
    ``replicates`` draws of n generated rows, the reference fixed."""
    rng = np.random.default_rng(500 + n)
    engine = Engine()
    estimates, errors = [], []
    for _ in range(replicates):
        rows = _generated(rng, n)
        result = nll_gaussian(
            REFERENCE, FeatureSource("gen", da.from_array(rows, chunks=rows.shape)), engine=engine
        )
        estimates.append(result.nll)
        errors.append(result.standard_error)
    estimates, errors = np.array(estimates), np.array(errors)
    low, high = np.array(
        [normal_interval(e, s, level) for e, s in zip(estimates, errors, strict=True)]
    ).T
    centre = estimates.mean()
    return (
        float(errors.mean() / estimates.std(ddof=1)),
        float(np.mean((low <= centre) & (centre <= high))),
        float(centre),
    )


@pytest.mark.parametrize("n", [300, 1000])
def test_the_interval_is_calibrated_with_the_reference_fixed(n):
    """400 replicates at d = 3: the mean reported standard error within 20 % of the estimates'
    standard deviation, the 95 % interval covering their mean in 92–98 % of replicates
    (binomial SD of the coverage: 1.1 %); their mean is the closed form's (the NLL is an
    unbiased mean of per-row terms). The per-row NLL is skewed (a shifted χ²), so the normal
    interval covers a little less at small n: 92.7 % at n = 100 with these seeds."""
    ratio, covered, centre = _calibration(n)
    assert 0.8 <= ratio <= 1.2, ratio
    assert 0.92 <= covered <= 0.98, covered
    assert centre == pytest.approx(_expected_nll(), rel=0.01)


def test_every_route_gives_the_interval_of_the_standard_error(tmp_path, capsys):
    from shardeval.workflows.cli import main

    rng = np.random.default_rng(11)
    real, gen = rng.multivariate_normal(MEAN, COV, size=400), _generated(rng, 300)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "gen.npy", gen)
    paths = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    report = se.metrics(*paths, "nll_gaussian", ci=0.9, precision="fp64")
    python = report.to_dict()["nll_gaussian"]
    # float64 reference: the rows' log-densities under the reference rows' Gaussian (ddof 1)
    logpdf = stats.multivariate_normal(real.mean(axis=0), np.cov(real.T)).logpdf(gen)
    nll, error, z = -logpdf.mean(), logpdf.std(ddof=1) / math.sqrt(300), stats.norm.ppf(0.95)
    assert python["nll_gaussian_ci_low"] == pytest.approx((nll - z * error) / 3, rel=1e-9)
    assert python["nll_gaussian_ci_high"] == pytest.approx((nll + z * error) / 3, rel=1e-9)
    assert "given the reference Gaussian, held fixed" in report.summary()
    capsys.readouterr()
    argv = ["metrics", *paths, "--metrics", "nll_gaussian", "--ci", "0.9", "--precision", "fp64"]
    assert main([*argv, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["nll_gaussian"] == python
    plain = se.metrics(*paths, "nll_gaussian", precision="fp64").to_dict()["nll_gaussian"]
    assert plain["nll_gaussian_ci_low"] is None
    assert plain["nll_gaussian_ci_high"] is None
    assert plain["nll_gaussian"] == python["nll_gaussian"]


def test_a_level_outside_0_1_is_refused():
    rng = np.random.default_rng(12)
    with pytest.raises(MetricOptionError, match="'ci'"):
        se.metrics(REFERENCE, rng.normal(size=(20, 3)), "nll_gaussian", ci=1.0)


def test_one_finite_row_has_no_interval():
    """Rows dropped as non-finite down to one: no standard error, so no interval: an error
    naming why, never a NaN interval."""
    from shardeval.pipeline.errors import ShapeError

    rows = np.full((3, 3), np.nan)
    rows[0] = 0.1
    with pytest.raises(ShapeError, match="at least 2"):
        se.metrics(REFERENCE, rows, "nll_gaussian", ci=0.95, nonfinite="drop")
