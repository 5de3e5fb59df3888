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


def _hoeffding_reference(kxx, kyy, kxy):
    """KID and its standard error from the kernel matrices, term by term as Hoeffding's
    decomposition defines them (Serfling 1980, §5.2; Lee 1990, §2.2), in float64 loops: for
    the one-sample U-statistics A (within X) and B (within Y) Var = [4(m−2)ζ₁ + 2ζ₂]/(m(m−1))
    with ζ₁ the variance of h₁(x_i) = mean_{j≠i} k(x_i, x_j) and ζ₂ = Var k(x_i, x_j); for the
    two-sample C, Var = [(n−1)ζ₁₀ + (m−1)ζ₀₁ + ζ₁₁]/(mn); Cov(A, C) = (2/m)·cov(h₁(x_i),
    mean_j k(x_i, y_j)), Cov(B, C) likewise; Var(A + B − 2C)."""
    m, n = len(kxx), len(kyy)

    def one_sample(k):
        size = len(k)
        pairs = [k[i, j] for i in range(size) for j in range(size) if i != j]
        mean = sum(pairs) / len(pairs)
        h1 = np.array(
            [sum(k[i, j] for j in range(size) if j != i) / (size - 1) for i in range(size)]
        )
        zeta1 = sum((h - mean) ** 2 for h in h1) / size
        zeta2 = sum(v * v for v in pairs) / len(pairs) - mean * mean
        return mean, h1, (4 * (size - 2) * zeta1 + 2 * zeta2) / (size * (size - 1))

    a, h_a, var_a = one_sample(kxx)
    b, h_b, var_b = one_sample(kyy)
    c = kxy.sum() / (m * n)
    h10, h01 = kxy.mean(axis=1), kxy.mean(axis=0)
    zeta10 = sum((h - c) ** 2 for h in h10) / m
    zeta01 = sum((h - c) ** 2 for h in h01) / n
    zeta11 = (kxy**2).sum() / (m * n) - c * c
    var_c = ((n - 1) * zeta10 + (m - 1) * zeta01 + zeta11) / (m * n)
    cov_ac = 2 / m * sum((p - a) * (q - c) for p, q in zip(h_a, h10, strict=True)) / m
    cov_bc = 2 / n * sum((p - b) * (q - c) for p, q in zip(h_b, h01, strict=True)) / n
    variance = var_a + var_b + 4 * var_c - 4 * cov_ac - 4 * cov_bc
    return a + b - 2 * c, float(np.sqrt(variance)), (var_a, var_b, var_c, cov_ac, cov_bc)


@pytest.mark.parametrize(("m", "n", "seed"), [(9, 6, 1), (5, 11, 2), (40, 33, 3)])
def test_the_standard_error_is_hoeffdings_plug_in(m, n, seed):
    """mmd2_and_se on sums of the kernel matrices against the decomposition written out from
    the matrices (sets of unequal sizes, so that no m for n goes unseen; a shifted and
    correlated Y, so that both covariances count; features scaled down so that every ζ and
    the variance are below 1)."""
    rng = np.random.default_rng(seed)
    x = 0.5 * rng.normal(size=(m, 3))
    y = 0.5 * rng.normal(size=(n, 3)) @ np.array([[1.0, 0.4, 0], [0, 1.2, 0], [0, 0, 0.6]]) + 0.3
    kernel = lambda p, q: (p @ q.T / 3 + 1.0) ** 3  # noqa: E731
    kid, error = _kid(x, y)
    want, want_error, terms = _hoeffding_reference(kernel(x, x), kernel(y, y), kernel(x, y))
    assert all(abs(t) > 1e-9 for t in terms), terms  # every term weighs in the sum
    assert error**2 < 1
    assert kid == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert error == pytest.approx(want_error, rel=1e-10, abs=0)
