"""Parzen NLL at its edges: non-finite rows under both policies, bandwidths at the ends of the
float range, and samples without spread."""

import math

import numpy as np
import pytest

from shardeval.pipeline import NonFiniteError, NumericalError, ShapeError, open_features
from shardeval.pipeline.likelihood.parzen import nll_parzen


def _brute(test, samples, h):
    sq = ((test[:, None, :] - samples[None]) ** 2).sum(-1)
    d = test.shape[1]
    return np.log(np.exp(-sq / (2 * h * h)).mean(axis=1)) - 0.5 * d * math.log(2 * math.pi * h * h)


@pytest.fixture
def sets(tmp_path, rng):
    samples = rng.normal(size=(500, 3))
    test = rng.normal(size=(120, 3))
    samples[[5, 77]] = np.nan
    test[[3]] = np.inf
    np.save(tmp_path / "s.npy", samples)
    np.save(tmp_path / "t.npy", test)
    return (
        samples,
        test,
        open_features(str(tmp_path / "s.npy"), shard_rows=90),
        open_features(str(tmp_path / "t.npy"), shard_rows=50),
    )


@pytest.mark.parametrize("bandwidth", [0.7, "silverman"])
def test_nonfinite_rows_fail_by_default(sets, bandwidth):
    *_, s, t = sets
    with pytest.raises(NonFiniteError, match=r"1 row\(s\) with NaN or inf \(first at rows 3\)"):
        nll_parzen(s, t, bandwidth)


def test_nonfinite_rows_dropped_on_request_give_the_finite_value(sets):
    samples, test, s, t = sets
    got = nll_parzen(s, t, 0.7, nonfinite="drop")
    keep_s = np.isfinite(samples).all(1)
    keep_t = np.isfinite(test).all(1)
    assert got.nll == pytest.approx(-_brute(test[keep_t], samples[keep_s], 0.7).mean(), rel=1e-6)
    assert got.nonfinite == 1
    assert got.n == keep_t.sum()
    assert got.extra["samples"] == keep_s.sum()
    assert got.extra["samples_nonfinite_dropped"] == 2
    for rule in ("silverman", "cv"):
        assert math.isfinite(nll_parzen(s, t, rule, nonfinite="drop").nll)


def test_tiny_bandwidth_is_refused(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.normal(size=(50, 2)))
    x = open_features(str(tmp_path / "x.npy"))
    with pytest.raises(NumericalError, match="1/\\(2h²\\) overflows"):
        nll_parzen(x, x, 1e-300)
    # Scaled distances beyond fp32 (1e6 / 2e-34) are within float64, which the products
    # take when fp32's would overflow: the log-density is finite and exact.
    y = rng.normal(size=(50, 2)) + 1e3
    np.save(tmp_path / "y.npy", y)
    got = nll_parzen(x, open_features(str(tmp_path / "y.npy")), 1e-17)
    from scipy.special import logsumexp

    xs = np.load(tmp_path / "x.npy")
    sq = ((y[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
    lp = logsumexp(-sq * (0.5 / 1e-17 / 1e-17), axis=1) - math.log(50)
    lp -= 0.5 * 2 * (math.log(2 * math.pi) + 2 * math.log(1e-17))
    assert got.nll == pytest.approx(-lp.mean(), rel=1e-12)
    # Distances beyond float64 (1e400): every kernel value is 0, an error.
    np.save(tmp_path / "far.npy", rng.normal(size=(50, 2)) + 1e200)
    with pytest.raises(NumericalError, match="density 0 at bandwidth"):
        nll_parzen(x, open_features(str(tmp_path / "far.npy")), 1.0)


def test_huge_bandwidth_is_exact(tmp_path, rng):
    # Every kernel value is 1 to float64 precision: log p = −(d/2) log(2π h²), computed as
    # −(d/2)(log 2π + 2 log h) because h² overflows.
    np.save(tmp_path / "x.npy", rng.normal(size=(40, 2)))
    x = open_features(str(tmp_path / "x.npy"))
    got = nll_parzen(x, x, 1e300)
    assert got.nll == pytest.approx(
        0.5 * 2 * (math.log(2 * math.pi) + 2 * math.log(1e300)), rel=1e-12
    )


def test_constant_samples_have_no_silverman_bandwidth(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((30, 4)))
    c = open_features(str(tmp_path / "c.npy"))
    with pytest.raises(NumericalError, match="no spread"):
        nll_parzen(c, c, "silverman")
    with pytest.raises(NumericalError, match="no spread"):
        nll_parzen(c, c, "cv")


@pytest.mark.parametrize(("d", "h", "float64_pairs"), [(2, 10.0, 0), (64, 1.0, 1)])
def test_parzen_rounding_is_bounded_and_fp32_only_within_tolerance(
    tmp_path, rng, d, h, float64_pairs
):
    # A pair whose fp32 products could move a log-density by more than 1e-6 nats (d = 64 at
    # h = 1) takes float64 products; the reported bound holds against float64 brute force.
    from scipy.special import logsumexp

    s = (rng.normal(size=(80, d)) + 30).astype(np.float32)
    t = (rng.normal(size=(50, d)) + 30).astype(np.float32)
    np.save(tmp_path / "s.npy", s)
    np.save(tmp_path / "t.npy", t)
    got = nll_parzen(
        open_features(str(tmp_path / "s.npy")), open_features(str(tmp_path / "t.npy")), h
    )
    s64, t64 = s.astype(np.float64), t.astype(np.float64)
    sq = ((t64[:, None, :] - s64[None, :, :]) ** 2).sum(-1)
    lp = logsumexp(-0.5 * sq / h**2, axis=1) - math.log(80)
    lp -= 0.5 * d * math.log(2 * math.pi * h**2)
    assert got.extra["pairs_float64"] == float64_pairs
    assert got.extra["rounding_bound"] <= 1e-6
    assert abs(got.nll + lp.mean()) <= got.extra["rounding_bound"] + 1e-12 * abs(lp.mean())


def test_too_many_shard_pairs_are_refused(tmp_path, rng):
    # 200 × 200 one-row shards made 40,000 tasks (two minutes); 1,000² would be a million.
    np.save(tmp_path / "s.npy", rng.normal(size=(200, 2)))
    s = open_features(str(tmp_path / "s.npy"), shard_rows=1)
    with pytest.raises(ShapeError, match="40,000 tasks"):
        nll_parzen(s, s, 0.5)


def test_float64_data_at_a_tiny_bandwidth(tmp_path, rng):
    # Refused as "1/(2h²) overflows fp32" though the products are float64.
    from scipy.special import logsumexp

    x = rng.normal(size=(30, 2)) * 1e-25
    np.save(tmp_path / "x.npy", x)
    src = open_features(str(tmp_path / "x.npy"))
    got = nll_parzen(src, src, 1e-25)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    lp = logsumexp(-sq / (2 * 1e-50), axis=1) - math.log(30) - math.log(2 * math.pi * 1e-50)
    assert got.nll == pytest.approx(-lp.mean(), rel=1e-12)


def test_the_bound_covers_the_normalisation(tmp_path, rng):
    # At h = 1e100 every kernel value is 1 and the log-density is all normalisation: its
    # rounding (3.7e-12 here) was left out of a bound of 8e-211.
    import mpmath

    x = rng.normal(size=(20, 400))
    np.save(tmp_path / "x.npy", x)
    src = open_features(str(tmp_path / "x.npy"))
    got = nll_parzen(src, src, 1e100)
    with mpmath.workdps(40):
        exact = 200 * (mpmath.log(2 * mpmath.pi) + 2 * mpmath.log(mpmath.mpf(1e100)))
    assert abs(got.nll - float(exact)) <= got.extra["rounding_bound"]
