"""Gaussian NLL against exact values: in sample (closed form), on an ill-conditioned
covariance (scipy), and refused where it is not defined (n ≤ d, singular)."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from shardeval.pipeline import Gaussian, Moments, NumericalError, ShapeError, open_features
from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian
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


def _mp_gaussian_nll(x, mean, cov, digits=40):
    """Mean NLL of the rows under N(mean, cov), in ``digits``-digit arithmetic."""
    import mpmath

    with mpmath.workdps(digits):
        c = mpmath.matrix(np.asarray(cov, np.float64).tolist())
        inv, det = mpmath.inverse(c), mpmath.det(c)
        d = len(mean)
        total = mpmath.mpf(0)
        for row in np.asarray(x, np.float64):
            diff = mpmath.matrix(
                [
                    mpmath.mpf(float(a)) - mpmath.mpf(float(b))
                    for a, b in zip(row, mean, strict=True)
                ]
            )
            total += (diff.T * inv * diff)[0] / 2
        n = len(x)
        return float(total / n + mpmath.log(det) / 2 + d * mpmath.log(2 * mpmath.pi) / 2)


@pytest.mark.parametrize(("d", "offset", "products"), [(3, 0.0, "fp32"), (40, 1e4, "float64")])
def test_the_nll_is_within_its_rounding_bound(tmp_path, rng, d, offset, products):
    # fp32 products only where their bound meets 1e-5 of the Mahalanobis term (small d, a
    # well-conditioned covariance); float64 elsewhere. The reported bound holds against
    # 40-digit arithmetic, and with a large common offset too.
    a = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    x = (rng.normal(size=(60, d)) @ a + offset).astype(np.float32)
    mean = x.astype(np.float64).mean(axis=0)
    cov = np.cov(x.astype(np.float64), rowvar=False) + 0.1 * np.eye(d)
    np.save(tmp_path / "x.npy", x)
    got = nll_gaussian(Gaussian(mean, cov, n=1000), open_features(str(tmp_path / "x.npy")))
    exact = _mp_gaussian_nll(x, mean, cov)
    assert got.extra["products"] == products
    assert abs(got.nll - exact) <= got.extra["rounding_bound"] + 1e-12 * abs(exact)
    assert got.extra["rounding_bound"] <= 1e-5 * abs(exact)


def test_an_ill_conditioned_covariance_widens_the_bound_to_the_factorisation(tmp_path, rng):
    # Eigenvalues 8e-15, 1e-10 and 1.07 (accepted as non-singular): the float64 Cholesky
    # factor moves the NLL by 3.5e-4 nats; the bound covered the products only (2.6e-8).
    from shardeval.pipeline.errors import RoundingWarning

    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    cov = q @ np.diag([8.2e-15, 1e-10, 1.07]) @ q.T
    cov = (cov + cov.T) / 2
    mean = np.array([0.3, -0.2, 0.1])
    x = rng.multivariate_normal(mean, cov, size=40)
    np.save(tmp_path / "x.npy", x)
    with pytest.warns(RoundingWarning, match="right to"):
        got = nll_gaussian(Gaussian(mean, cov, n=1000), open_features(str(tmp_path / "x.npy")))
    exact = _mp_gaussian_nll(x, mean, cov, digits=60)
    assert got.extra["products"] == "float64"  # float64 data: never fp32 products
    assert abs(got.nll - exact) <= got.extra["rounding_bound"]
