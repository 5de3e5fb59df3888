"""The Gaussian mixture NLL against scikit-learn's GaussianMixture started from the same
parameters, under several shardings, and against closed forms where the floor decides."""

import math
import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

import shardeval as se
from shardeval.api.feature_inputs import features
from shardeval.pipeline.errors import (
    EmptyComponentWarning,
    NonFiniteError,
    OptionError,
    ShapeError,
)
from shardeval.pipeline.likelihood.gmm import fit_gmm, kmeans_plus_plus, nll_gmm


def _clusters(seed: int, n: int, d: int = 4, k: int = 3) -> np.ndarray:
    """Well-separated clusters of unequal sizes, each with its own full covariance."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(100).normal(size=(k, d)) * 12
    shapes = np.random.default_rng(101).normal(size=(k, d, d)) / math.sqrt(d)
    sizes = rng.multinomial(n, np.arange(1, k + 1) / (k * (k + 1) / 2))
    rows = [
        rng.normal(size=(m, d)) @ (shapes[j] + np.eye(d)) + centres[j] for j, m in enumerate(sizes)
    ]
    return rng.permutation(np.concatenate(rows))


TRAIN, TEST = _clusters(0, 900), _clusters(1, 300)


def _sklearn(fit, covariance, **kw):
    """scikit-learn's mixture fitted to TRAIN from the parameters ours started from."""
    init = fit.initial
    precisions = np.linalg.inv(init.covariances) if covariance == "full" else 1 / init.covariances
    return GaussianMixture(
        init.k,
        covariance_type=covariance,
        weights_init=init.weights,
        means_init=init.means,
        precisions_init=precisions,
        **kw,
    ).fit(TRAIN)


@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("shard_rows", [37, 128, None])
def test_same_optimum_as_sklearn(covariance, shard_rows):
    result, fit = nll_gmm(
        features(TRAIN, shard_rows=shard_rows), features(TEST, shard_rows=shard_rows), 3,
        covariance=covariance, tol=1e-10, max_iter=1000,
    )  # fmt: skip
    gm = _sklearn(fit, covariance, tol=1e-10, max_iter=1000)
    assert fit.converged
    assert gm.converged_
    assert abs(result.nll - -gm.score(TEST)) < 1e-6
    assert abs(fit.loglik[-1] - gm.lower_bound_) < 1e-6
    np.testing.assert_allclose(fit.mixture.weights, gm.weights_, rtol=1e-6)
    np.testing.assert_allclose(fit.mixture.means, gm.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fit.mixture.covariances, gm.covariances_, rtol=1e-6, atol=1e-8)
    assert result.extra["bic"] == pytest.approx(gm.bic(TRAIN), rel=1e-9)
    assert result.dims == 4
    assert result.bits_per_dim == pytest.approx(result.nll / (4 * math.log(2)))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_iterations_as_sklearn_at_its_default_tolerance(covariance):
    # Overlapping clusters: EM moves for several iterations before the change falls below 1e-3.
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) * 0.7 + 1.5])
    fit = fit_gmm(features(x, shard_rows=53), 2, covariance=covariance)
    init = fit.initial
    precisions = np.linalg.inv(init.covariances) if covariance == "full" else 1 / init.covariances
    gm = GaussianMixture(
        2, covariance_type=covariance, weights_init=init.weights, means_init=init.means,
        precisions_init=precisions,
    ).fit(x)  # fmt: skip
    assert fit.iterations == gm.n_iter_ > 2
    assert fit.converged == gm.converged_
    np.testing.assert_allclose(fit.loglik, gm.lower_bounds_, rtol=1e-10)
    np.testing.assert_allclose(fit.mixture.means, gm.means_, rtol=1e-8)


def test_initialisation_does_not_depend_on_sharding_and_follows_the_seed():
    a = fit_gmm(features(TRAIN, shard_rows=29), 3, max_iter=1)
    b = fit_gmm(features(TRAIN), 3, max_iter=1)
    np.testing.assert_allclose(a.initial.means, b.initial.means, rtol=1e-12)
    assert a.sample_rows == len(TRAIN)
    # The seeding finds one centre per separated cluster whatever the seed.
    for seed in (1, 2):
        centres = kmeans_plus_plus(TRAIN, 3, np.random.default_rng(seed))
        owner = np.argmin(((TRAIN[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        assert len(set(owner)) == 3


def test_more_components_than_rows_is_one_line():
    with pytest.raises(ShapeError, match="gmm=5 components needs at least 5 rows") as e:
        se.nll(TRAIN[:4], TEST, gmm=5)
    assert "\n" not in str(e.value)


def test_dimensions_differ():
    with pytest.raises(ShapeError, match="feature dimensions differ"):
        se.nll(TRAIN, TEST[:, :3], gmm=2)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_identical_rows_give_a_gaussian_of_variance_reg_covar(covariance):
    # Every component collapses onto the one point; the floor leaves N(x, reg_covar·I), whose
    # log-density at its mean is −(d/2) log(2π reg_covar).
    x = np.full((20, 3), 7.5)
    with pytest.warns(EmptyComponentWarning, match="re-seeded"):
        report = se.nll(x, x[:5], gmm=2, covariance=covariance, reg_covar=1e-4)
    assert float(report) == pytest.approx(1.5 * math.log(2 * math.pi * 1e-4), rel=1e-12)
    assert math.isfinite(report.to_dict()["bic"])


def test_one_row():
    x = np.array([[1.0, -2.0]])
    test = np.array([[1.0, -2.0], [1.1, -2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = se.nll(x, test, gmm=1, reg_covar=0.01)
    # −log N(t | x, 0.01·I) in d = 2 at distances 0 and 0.1: log(2π·0.01) + ½·0.1²/0.01 / 2.
    want = math.log(2 * math.pi * 0.01) + 0.25
    assert float(report) == pytest.approx(want, rel=1e-12)
    assert report.to_dict()["iterations"] >= 1


def test_nonfinite_rows_fail_or_are_dropped():
    x = TRAIN.copy()
    x[5, 2] = np.nan
    with pytest.raises(NonFiniteError):
        se.nll(x, TEST, gmm=3)
    dropped = se.nll(x, TEST, gmm=3, nonfinite="drop", shard_rows=100).to_dict()
    clean = se.nll(np.delete(TRAIN, 5, axis=0), TEST, gmm=3).to_dict()
    assert dropped["fit_nonfinite_dropped"] == 1
    assert dropped["fit_rows"] == len(TRAIN) - 1
    assert dropped["nll"] == pytest.approx(clean["nll"], abs=1e-6)


def test_options_of_the_fit_apply_to_gmm_only():
    with pytest.raises(OptionError, match="covariance"):
        se.nll(TRAIN, parzen=TEST, covariance="diag")
    with pytest.raises(OptionError, match="dims"):
        se.nll(TRAIN, TEST, gmm=2, dims=3)
    with pytest.raises(OptionError, match="TEST"):
        se.nll(TRAIN, gmm=2)
    with pytest.raises(OptionError, match="covariance"):
        se.nll(TRAIN, TEST, gmm=2, covariance="spherical")


def test_report_fields_and_cap():
    report = se.nll(TRAIN, TEST, gmm=3, max_iter=1, tol=1e-12)
    data = report.to_dict()
    assert data["method"] == "gmm"
    assert data["k"] == 3
    assert data["covariance"] == "full"
    assert data["iterations"] == 1
    assert data["converged"] is False
    assert len(data["train_loglik"]) == 1
    assert data["settings"]["max_iter"] == 1
    assert report.results["gmm"].mixture.k == 3
    assert "NOT converged" in report.summary()


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_merged_statistics_are_the_weighted_moments_of_all_rows(covariance):
    from shardeval.pipeline.core.states import NonFiniteRows
    from shardeval.pipeline.likelihood.gmm_states import MixtureStats

    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 3)) * [1.0, 10.0, 0.1] + [1e4, -2.0, 0.0]
    r = rng.dirichlet(np.ones(2), size=60)
    ll = rng.normal(size=60)
    parts = [
        MixtureStats.from_rows(x[a:b], r[a:b], covariance, ll[a:b], NonFiniteRows(), a)
        for a, b in ((0, 7), (7, 30), (30, 31), (31, 60))
    ]
    merged = parts[2].merge(parts[0]).merge(parts[3].merge(parts[1]))
    w = r.sum(axis=0)
    np.testing.assert_allclose(merged.weight, w, rtol=1e-13)
    for j in range(2):
        mean = (r[:, j] @ x) / w[j]
        c = x - mean
        m2 = (c * r[:, j, None]).T @ c
        np.testing.assert_allclose(merged.mean[j], mean, rtol=1e-13)
        want = m2 if covariance == "full" else np.diagonal(m2)
        np.testing.assert_allclose(merged.m2[j], want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert merged.worst_index == int(np.argmin(ll))
    assert merged.loglik.n == 60


def test_the_interval_of_the_test_nll_is_given_the_fitted_mixture(tmp_path):
    from scipy import stats

    rng = np.random.default_rng(21)
    fit = np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) + 5])
    test = np.concatenate([rng.normal(size=(100, 3)), rng.normal(size=(100, 3)) + 5])
    np.save(tmp_path / "fit.npy", fit)
    np.save(tmp_path / "test.npy", test)
    report = se.nll(str(tmp_path / "fit.npy"), str(tmp_path / "test.npy"), gmm=2, ci=0.9)
    got = report.to_dict()
    half = stats.norm.ppf(0.95) * got["standard_error"]
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((got["nll"] - half, got["nll"] + half))
    assert "given the fitted mixture" in report.summary()
