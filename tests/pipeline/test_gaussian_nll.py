"""Gaussian NLL against exact values: in sample (closed form), on an ill-conditioned
covariance (scipy), and refused where it is not defined (n ≤ d, singular)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from pipeline import Gaussian, Moments, NumericalError, ShapeError, open_features
from pipeline.gaussian import nll_gaussian
from tests.reference import gaussian_nll_in_sample


def _source(tmp_path, x, name="x", **kw):
    np.save(tmp_path / f"{name}.npy", x)
    return open_features(str(tmp_path / f"{name}.npy"), **kw)


def test_in_sample_value_is_the_closed_form(tmp_path, rng):
    x = rng.normal(size=(3000, 12)) @ rng.normal(size=(12, 12)) + 5.0
    stats = Gaussian.from_moments(Moments.from_rows(x))
    got = nll_gaussian(stats, _source(tmp_path, x, shard_rows=700))
    assert got.nll == pytest.approx(gaussian_nll_in_sample(x), rel=1e-9)


def test_ill_conditioned_covariance_matches_scipy(tmp_path, rng):
    d = 10
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov = q @ np.diag(np.logspace(-6, 2, d)) @ q.T  # condition number 1e8
    mean = rng.normal(size=d)
    x = rng.multivariate_normal(mean, cov, size=2000).astype(np.float32)
    stats = Gaussian(mean, cov, n=10**6)
    got = nll_gaussian(stats, _source(tmp_path, x, shard_rows=300))
    expected = -multivariate_normal(mean, cov).logpdf(x.astype(np.float64)).mean()
    # fp32 products against L⁻¹ of a condition-1e8 covariance: 1e-4 relative here.
    assert got.nll == pytest.approx(expected, rel=1e-4)


def test_too_few_rows_for_a_covariance(tmp_path, rng):
    # 63 x 64 statistics: fp32 noise sometimes let Cholesky pass, giving 5.65e8 nats.
    x = rng.normal(size=(63, 64))
    stats = Gaussian.from_moments(Moments.from_rows(x))
    with pytest.raises(ShapeError, match="n=63 <= d=64"):
        nll_gaussian(stats, _source(tmp_path, x))


def test_singular_covariance_without_a_row_count(tmp_path, rng):
    x = rng.normal(size=(63, 64))
    stats = Gaussian(x.mean(0), np.cov(x, rowvar=False), n=None)  # a bare mu/sigma file
    with pytest.raises(NumericalError, match="singular to working precision"):
        nll_gaussian(stats, _source(tmp_path, x))
