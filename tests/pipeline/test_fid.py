import warnings

import numpy as np
import pytest

from shardeval.pipeline import Gaussian, NumericalError, ShapeError, SingularCovarianceWarning
from shardeval.pipeline.fid.frechet import frechet_distance, trace_sqrt_product
from tests.reference import eigvals_formula, exact_fid, high_precision_fid, pytorch_fid_formula


def _random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, 2 * d))
    return scale * a @ a.T / (2 * d)


def test_closed_form_for_diagonal_covariances(rng):
    d = 6
    v1, v2 = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance(Gaussian(mu1, np.diag(v1)), Gaussian(mu2, np.diag(v2)))
    assert got.fid == pytest.approx(expected, rel=1e-12)
    assert got.mean_term == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-14)
    assert got.fid == pytest.approx(got.mean_term + got.trace_term, rel=1e-14)


@pytest.mark.parametrize("d", [2, 17, 64, 200])
def test_agrees_with_peer_formulas(rng, d):
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 0.3
    got = frechet_distance(Gaussian(mu1, s1), Gaussian(mu2, s2)).fid
    assert got == pytest.approx(exact_fid(mu1, s1, mu2, s2), rel=1e-10)
    assert got == pytest.approx(pytorch_fid_formula(mu1, s1, mu2, s2), rel=1e-5)
    assert got == pytest.approx(eigvals_formula(mu1, s1, mu2, s2), rel=1e-5)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_identical_sets_give_zero(rng, scale):
    s = _random_spd(rng, 50, scale)
    mu = rng.standard_normal(50)
    got = frechet_distance(Gaussian(mu, s), Gaussian(mu.copy(), s.copy()))
    assert abs(got.fid) <= 1e-9 * np.trace(s)


def test_singular_covariances_warn_clamp_and_agree(rng):
    d, n = 24, 10  # rank 9 < d
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.1
    real = Gaussian(x.mean(0), np.cov(x, rowvar=False), n)
    gen = Gaussian(y.mean(0), np.cov(y, rowvar=False), n)
    with pytest.warns(SingularCovarianceWarning, match="n=10 <= d=24"):
        got = frechet_distance(real, gen)
    assert got.clamped_count > 0
    assert got.clamped_max <= 1e-5 * np.linalg.norm(real.cov) * np.linalg.norm(gen.cov)
    expected = high_precision_fid(real.mean, real.cov, gen.mean, gen.cov)
    assert got.fid == pytest.approx(expected, rel=1e-12)
    assert len(got.warnings) == 2


def test_same_singular_set_gives_zero(rng):
    x = rng.standard_normal((5, 30))
    g = Gaussian(x.mean(0), np.cov(x, rowvar=False), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularCovarianceWarning)
        got = frechet_distance(g, g)
    assert abs(got.fid) <= 1e-9 * np.trace(g.cov)


def test_not_positive_semidefinite_is_an_error(rng):
    s = _random_spd(rng, 5)
    bad = s - 2 * np.eye(5) * np.linalg.eigvalsh(s).max()
    with pytest.raises(NumericalError, match="not positive semi-definite"):
        frechet_distance(Gaussian(np.zeros(5), s), Gaussian(np.zeros(5), bad))


def test_trace_sqrt_product_example():
    value, clamped, worst = trace_sqrt_product(np.diag([4.0, 9.0]), np.diag([1.0, 4.0]))
    assert (value, clamped, worst) == (8.0, 0, 0.0)


def test_dimension_mismatch():
    with pytest.raises(ShapeError, match="d=3"):
        frechet_distance(Gaussian(np.zeros(3), np.eye(3)), Gaussian(np.zeros(2), np.eye(2)))


def test_gaussian_rejects_inconsistent_shapes():
    with pytest.raises(ShapeError, match="expected"):
        Gaussian(np.zeros(3), np.eye(2))
