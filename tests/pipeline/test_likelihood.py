"""NLL and ESS against closed forms, scipy, ArviZ and float64 direct sums."""

import importlib
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardeval.pipeline import Gaussian, Moments, NonFiniteError, ShapeError, open_features
from shardeval.pipeline.core.states import LogSumExp, ScalarMoments, WeightStats
from shardeval.pipeline.likelihood.ess import ess_of
from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian
from shardeval.pipeline.likelihood.nll import nll_from_loglik, nll_importance
from shardeval.pipeline.likelihood.parzen import nll_parzen, silverman_bandwidth
from shardeval.pipeline.likelihood.psis import gpd_khat, tail_size


def _save(tmp_path, name, array):
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return str(path)


def _log_weights(rng, n, mu, s):
    """log p − log q for p = N(μ, 1), q = N(0, s²), x ~ q (both normalised)."""
    x = rng.normal(0.0, s, n)
    return -0.5 * (x - mu) ** 2 + 0.5 * (x / s) ** 2 + math.log(s)


@pytest.mark.parametrize(("mu", "s"), [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (0.0, 3.0)])
def test_ess_fraction_matches_closed_form(tmp_path, rng, mu, s):
    # ∫ p²/q = s² / √(2s² − 1) · exp(μ² / (2s² − 1)), and ESS/N → 1 / ∫ p²/q.
    expected = 1.0 / (s * s / math.sqrt(2 * s * s - 1) * math.exp(mu * mu / (2 * s * s - 1)))
    lw = _log_weights(rng, 400_000, mu, s)
    got = ess_of(open_features(_save(tmp_path, "lw", lw), ndims=(1,), shard_rows=30_000))
    assert got.ess_fraction == pytest.approx(expected, rel=0.02)
    w = np.exp(lw - lw.max())
    assert got.ess == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
    assert got.max_weight == pytest.approx(w.max() / w.sum(), rel=1e-9)


@pytest.mark.parametrize(
    ("mu", "s", "seed"), [(0.5, 1.5, 0), (2.0, 1.0, 1), (0.0, 0.6, 2), (1.5, 0.8, 3)]
)
def test_khat_agrees_with_arviz(tmp_path, mu, s, seed):
    az = importlib.import_module("arviz")
    lw = _log_weights(np.random.default_rng(seed), 20_000, mu, s)
    got = ess_of(open_features(_save(tmp_path, "lw", lw), ndims=(1,), shard_rows=3000))
    _, k_arviz = az.psislw(lw.copy(), reff=1.0)
    assert got.khat == pytest.approx(float(k_arviz), abs=1e-6)  # the same algorithm
    assert got.khat_reading == (
        "good" if got.khat < 0.5 else "usable" if got.khat < 0.7 else "unreliable"
    )


def test_gpd_khat_recovers_shape():
    rng = np.random.default_rng(5)
    for k in (0.2, 0.7):
        sample = (rng.uniform(size=50_000) ** -k - 1) / k  # GPD(k, σ=1) by inversion
        assert gpd_khat(sample) == pytest.approx(k, abs=0.03)
    assert math.isnan(gpd_khat(np.zeros(10)))
    assert tail_size(100) == 20
    assert tail_size(10_000) == 300


def test_nll_of_gaussian_samples_under_their_own_gaussian(tmp_path, rng):
    d, sigma = 6, 2.5
    x = rng.normal(4.0, sigma, (60_000, d))
    stats = Gaussian.from_moments(Moments.from_rows(x))
    got = nll_gaussian(stats, open_features(_save(tmp_path, "x", x), shard_rows=7000))
    assert got.nats_per_dim == pytest.approx(
        0.5 * math.log(2 * math.pi * math.e * sigma**2), rel=2e-3
    )


def test_mixture_loglik_matches_direct_sum_and_survives_underflow(tmp_path, rng):
    # Per-sample log-likelihoods of a 3-component mixture computed with LSE.
    x = rng.normal(0, 1, 500)
    means, w = np.array([-1.0, 0.0, 2.0]), np.array([0.2, 0.5, 0.3])
    comp = -0.5 * (x[:, None] - means) ** 2 - 0.5 * math.log(2 * math.pi) + np.log(w)
    lse = np.array([LogSumExp.from_values(row).value for row in comp])
    direct = np.log(np.exp(comp).sum(axis=1))
    np.testing.assert_allclose(lse, direct, rtol=1e-12)
    far = comp - 800.0  # densities ~1e-348: the direct sum underflows to log(0) = −inf
    with np.errstate(divide="ignore"):
        assert np.isneginf(np.log(np.exp(far).sum(axis=1))).all()
    far_lse = np.array([LogSumExp.from_values(row).value for row in far])
    np.testing.assert_allclose(far_lse, lse - 800.0, rtol=1e-12)
    got = nll_from_loglik(
        open_features(_save(tmp_path, "ll", far_lse), ndims=(1,), shard_rows=64), dims=1
    )
    assert got.nll == pytest.approx(-far_lse.mean(), rel=1e-12)
    assert got.standard_error == pytest.approx(far_lse.std(ddof=1) / math.sqrt(500), rel=1e-9)
    assert got.bits_per_dim == pytest.approx(got.nll / math.log(2), rel=1e-12)


def test_parzen_matches_scipy_kde_and_brute_force(tmp_path, rng):
    from scipy.stats import gaussian_kde

    d = 3
    mix = rng.normal(size=(d, d))
    raw = rng.normal(size=(400, d)) @ mix
    # Whiten the samples exactly (sample covariance = I): scipy's kernel covariance is then
    # h² I, the isotropic kernel of bandwidth h.
    centred = raw - raw.mean(0)
    w, v = np.linalg.eigh(np.cov(centred, rowvar=False))
    root = v / np.sqrt(w) @ v.T
    samples = centred @ root
    test = (rng.normal(size=(150, d)) @ mix - raw.mean(0)) @ root
    h = 0.6
    kde = gaussian_kde(samples.T, bw_method=h)
    got = nll_parzen(
        open_features(_save(tmp_path, "s", samples), shard_rows=90),
        open_features(_save(tmp_path, "t", test), shard_rows=40),
        h,
    )
    # Distances use fp32 products on the CPU path (as on the GPU): 1e-6 relative.
    assert got.nll == pytest.approx(-kde.logpdf(test.T).mean(), rel=1e-6)
    sq = ((test[:, None, :] - samples[None]) ** 2).sum(-1)
    brute = np.log(np.exp(-sq / (2 * h * h)).mean(axis=1)) - 0.5 * d * math.log(2 * math.pi * h * h)
    assert got.nll == pytest.approx(-brute.mean(), rel=1e-6)


def test_parzen_bandwidth_rules(tmp_path, rng):
    samples = rng.normal(size=(2000, 2))
    test = rng.normal(size=(300, 2))
    s, t = open_features(_save(tmp_path, "s", samples)), open_features(_save(tmp_path, "t", test))
    sil = nll_parzen(s, t, "silverman")
    assert sil.extra["bandwidth"] == pytest.approx(
        silverman_bandwidth(np.trace(np.cov(samples, rowvar=False)), 2000, 2), rel=1e-12
    )
    cv = nll_parzen(s, t, "cv")
    scores = cv.extra["cv"]["mean_loglik"]
    assert cv.extra["bandwidth"] == cv.extra["cv"]["candidates"][int(np.argmax(scores))]
    assert cv.extra["cv"]["held_out"] == 200
    with pytest.raises(ValueError, match="bandwidth"):
        nll_parzen(s, t, "scott")


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 299), max_size=8), data=st.data())
def test_scalar_and_weight_states_merge_under_random_partitions(cuts, data):
    values = np.random.default_rng(9).normal(size=300) * 40
    values[[3, 100]] = -np.inf  # zero weights are legal log-weights
    edges = [0, *sorted(set(cuts)), 300]
    parts = [values[a:b] for a, b in itertools.pairwise(edges)]
    order = data.draw(st.permutations(range(len(parts))))
    ws = [WeightStats.from_values(parts[i], 11) for i in order]
    total = ws[0]
    for w in ws[1:]:
        total = total.merge(w)
    finite = values[np.isfinite(values)]
    w = np.exp(values - finite.max())
    assert total.ess() == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
    np.testing.assert_array_equal(total.top, np.sort(values)[::-1][:11])
    sm = [ScalarMoments.from_values(parts[i][np.isfinite(parts[i])]) for i in order]
    merged = sm[0]
    for m in sm[1:]:
        merged = merged.merge(m)
    assert merged.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert merged.variance() == pytest.approx(finite.var(ddof=1), rel=1e-9)


def test_all_neg_inf_single_row_and_empty_shards(tmp_path):
    lw = np.full(10, -np.inf)
    lw[7] = 0.0
    got = ess_of(open_features(_save(tmp_path, "lw", lw), ndims=(1,), shard_rows=1, min_rows=1))
    assert got.ess == pytest.approx(1.0)
    assert got.max_weight == pytest.approx(1.0)
    assert LogSumExp().merge(LogSumExp.from_values(np.full(3, -np.inf))).value == -np.inf
    assert ScalarMoments().merge(ScalarMoments()).n == 0


def test_importance_weighted_nll_and_per_row_ess(tmp_path, rng):
    n, k = 400, 64
    lw = _log_weights(rng, n * k, 0.3, 1.4).reshape(n, k)  # normalised: E_q w = 1, log p = 0
    src = open_features(_save(tmp_path, "lw", lw), ndims=(2,), shard_rows=50)
    got = nll_importance(src)
    expected = -(np.log(np.exp(lw).mean(axis=1))).mean()
    assert got.nll == pytest.approx(expected, rel=1e-9, abs=1e-12)
    per_row = got.extra["per_row"]
    row_ess = np.exp(lw).sum(1) ** 2 / np.exp(2 * lw).sum(1) / k
    assert abs(per_row["ess_over_k_quantiles"][0.5] - np.median(row_ess)) <= 2e-3
    assert sum(per_row["khat_counts"].values()) == n


def test_rows_too_short_for_khat_are_counted_as_undetermined(tmp_path, rng):
    # K = 20 leaves a tail of 4 weights, too few for a fit: every row was in no k̂ category,
    # so the counts read "good 0, usable 0, unreliable 0" for 200 rows.
    n, k = 200, 20
    lw = _log_weights(rng, n * k, 0.3, 1.4).reshape(n, k)
    got = nll_importance(open_features(_save(tmp_path, "lw", lw), ndims=(2,), shard_rows=50))
    counts = got.extra["per_row"]["khat_counts"]
    assert counts == {"good": 0, "usable": 0, "unreliable": 0, "undetermined": n}


def test_bad_inputs(tmp_path):
    nan = np.zeros((6, 3))
    nan[[1, 4], 0] = np.nan
    src = open_features(_save(tmp_path, "nan", nan), ndims=(2,), shard_rows=2)
    with pytest.raises(NonFiniteError, match=r"2 row\(s\).*rows 1, 4"):
        nll_importance(src)
    assert nll_importance(src, nonfinite="drop").nonfinite == 2
    pinf = np.zeros(5)
    pinf[2] = np.inf
    with pytest.raises(NonFiniteError, match=r"\+inf"):
        ess_of(open_features(_save(tmp_path, "pinf", pinf), ndims=(1,)))
    with pytest.raises(ShapeError, match="1-D"):
        nll_from_loglik(open_features(_save(tmp_path, "two", np.zeros((4, 2))), ndims=(1, 2)))
    with pytest.raises(ShapeError, match="rows are empty"):
        open_features(_save(tmp_path, "k0", np.zeros((4, 0))), ndims=(2,))


def test_log_likelihoods_whose_mean_overflows_are_refused_never_printed_as_inf(tmp_path, capsys):
    # The mean of [1e308, -1e308, 1e308] is finite (1e308 / 3), but their spread is not
    # (Σ(v − mean)² ≈ 2.7e616): no finite NLL ± standard error exists in float64. One line,
    # exit 2, where the command used to print "NLL inf ± inf" and exit 0.
    from shardeval.pipeline.errors import NumericalError
    from shardeval.workflows.cli import main

    path = _save(tmp_path, "ll", np.array([1e308, -1e308, 1e308]))
    with pytest.raises(NumericalError, match=r"from -1e\+308 to 1e\+308 overflow"):
        nll_from_loglik(open_features(path, ndims=(1,), min_rows=1))
    assert main(["nll", path, "-q"]) == 2
    out, err = capsys.readouterr()
    assert not out
    assert err.count("\n") == 1
    assert "overflow" in err
    # Large but representable: computed (the reference is the float64 mean of the values).
    values = np.array([1e150, -1e150, 3e150])
    result = nll_from_loglik(open_features(_save(tmp_path, "big", values), ndims=(1,)))
    assert result.nll == pytest.approx(-values.mean(), rel=1e-15)
    assert result.standard_error == pytest.approx(values.std(ddof=1) / math.sqrt(3), rel=1e-14)
