"""KID's interval: the estimate ∓ z·SE, SE from the Hoeffding decomposition of the three
U-statistics; calibrated on Gaussian data over independent replicates (the reported standard
error against the spread of the estimates, and the interval's coverage of their mean, which is
the squared MMD itself: the estimator is unbiased)."""

import json

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.errors import MetricOptionError
from shardeval.pipeline.metrics.intervals import normal_interval
from shardeval.pipeline.mmd.kid import mmd2_and_se
from shardeval.pipeline.pairwise.pair_states import CrossSums, SetSums


def _set_sums(k):
    """Sums over ordered pairs i ≠ j of a kernel matrix, by their definition."""
    diagonal = np.diag(k)
    return SetSums(
        float(k.sum() - diagonal.sum()),
        float((k**2).sum() - (diagonal**2).sum()),
        float(diagonal.sum()),
        k.sum(axis=1) - diagonal,
    )


def _kid(x, y):
    d = x.shape[1]
    kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxy = kernel(x, y)
    cross = CrossSums(float(kxy.sum()), float((kxy**2).sum()), kxy.sum(axis=1), kxy.sum(axis=0))
    return mmd2_and_se(_set_sums(kernel(x, x)), _set_sums(kernel(y, y)), cross, len(x), len(y))


@pytest.mark.parametrize("n", [200, 600])
def test_the_interval_is_calibrated_on_gaussian_data(n):
    """1,000 replicates of KID between N(0, I) and N(0.3·1, 1.2² I) at d = 4: the mean
    reported standard error within 20 % of the estimates' standard deviation, the 95 % interval
    covering their mean in 92–98 % of replicates (binomial SD of the coverage: 0.7 %)."""
    rng = np.random.default_rng(200 + n)
    estimates, errors, intervals = [], [], []
    for _ in range(1000):
        kid, error = _kid(rng.normal(size=(n, 4)), 1.2 * rng.normal(size=(n, 4)) + 0.3)
        estimates.append(kid)
        errors.append(error)
        intervals.append(normal_interval(kid, error, 0.95))
    estimates, (low, high) = np.array(estimates), np.array(intervals).T
    ratio = np.mean(errors) / estimates.std(ddof=1)
    covered = np.mean((low <= estimates.mean()) & (estimates.mean() <= high))
    assert 0.8 <= ratio <= 1.2, ratio
    assert 0.92 <= covered <= 0.98, covered


def test_every_route_gives_the_interval_of_the_standard_error(tmp_path, capsys):
    from scipy import stats

    from shardeval.workflows.cli import main

    rng = np.random.default_rng(7)
    np.save(tmp_path / "real.npy", rng.normal(size=(250, 5)))
    np.save(tmp_path / "gen.npy", rng.normal(size=(230, 5)) + 0.2)
    real, gen = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    python = se.kid(real, gen, ci=0.9).to_dict()["kid"]
    z = stats.norm.ppf(0.95)
    assert python["kid_ci_low"] == pytest.approx(
        python["kid"] - z * python["kid_standard_error"], rel=1e-12
    )
    assert python["kid_ci_high"] == pytest.approx(
        python["kid"] + z * python["kid_standard_error"], rel=1e-12
    )
    capsys.readouterr()
    assert main(["kid", real, gen, "--ci", "0.9", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["kid"] == python
    plain = se.kid(real, gen).to_dict()["kid"]
    assert plain["kid_ci_low"] is None
    assert plain["kid"] == python["kid"]


def test_the_interval_is_refused_for_the_peers_subsets():
    rng = np.random.default_rng(8)
    with pytest.raises(MetricOptionError, match="subsets"):
        se.kid(rng.normal(size=(60, 3)), rng.normal(size=(60, 3)), ci=0.95, subsets=3)
