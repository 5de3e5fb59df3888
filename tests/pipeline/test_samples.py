"""KID, CMMD, PRDC and FID∞ against float64 brute force, the peers' formulas and closed forms;
the same values whatever the blocks; a set against itself."""

import importlib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardeval.pipeline import Gaussian, NumericalError, ShapeError, open_features
from shardeval.pipeline.fid.frechet import frechet_distance
from shardeval.pipeline.fid.infinity import fid_infinity
from shardeval.pipeline.io.synthetic import gaussian_features, population, write_features
from shardeval.pipeline.mmd.kid import subset_indices
from shardeval.pipeline.pairwise.passes import (
    CMMDParams,
    KIDParams,
    PRDCParams,
    kid_subsets,
    sample_metrics,
)
from tests.reference import exact_kid, exact_poly_sums, mp_cmmd


def _store(tmp_path, name, x):
    np.save(tmp_path / f"{name}.npy", x)
    return open_features(str(tmp_path / f"{name}.npy"))


def _poly(a, b, d):
    return (a @ b.T / d + 1.0) ** 3


def kid_brute(x, y):
    """The unbiased MMD² over all pairs, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d, m, n = x.shape[1], len(x), len(y)
    kxx, kyy, kxy = _poly(x, x, d), _poly(y, y, d), _poly(x, y, d)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.sum() / (m * n)
    )


def cmmd_brute(x, y, sigma=10.0, unbiased=False):
    """The reference's formula (V-statistic) or the U-statistic, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)

    def k(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
        return np.exp(-sq / (2 * sigma * sigma))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    if unbiased:
        within = (kxx.sum() - m) / (m * (m - 1)) + (kyy.sum() - n) / (n * (n - 1))
    else:
        within = kxx.mean() + kyy.mean()
    return 1000 * (within - 2 * kxy.mean())


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(3)
    d = 48
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    x = (rng.standard_normal((1100, d)) @ a + 0.4).astype(np.float32)
    y = (rng.standard_normal((900, d)) @ (1.15 * a) + 0.45).astype(np.float32)
    return x, y, _store(tmp_path, "x", x), _store(tmp_path, "y", y)


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_kid_over_all_pairs_equals_float64_brute_force(pair, precision):
    # Kernel sums take float64 products whatever the precision (which the decisions of PRDC
    # use): both give the brute force to its own rounding.
    x, y, sx, sy = pair
    got = sample_metrics(sx, sy, kid=KIDParams(), block_rows=256, precision=precision)["kid"]
    assert got.kid == pytest.approx(kid_brute(x, y), rel=1e-9)
    assert got.standard_error > 0
    assert 0 < got.rounding_bound < 1e-9 * abs(got.kid)
    assert (got.gamma, got.coef0, got.degree) == (1 / 48, 1.0, 3)


def test_kid_of_a_kernel_given_in_full_equals_float64_brute_force(tmp_path):
    # γ, c and the degree as given (not the defaults 1/d, 1, 3), in the value and the result.
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((120, 5)), rng.standard_normal((100, 5)) * 1.2 + 0.3
    params = KIDParams(degree=2, gamma=0.7, coef0=0.25)
    got = sample_metrics(_store(tmp_path, "x", x), _store(tmp_path, "y", y), kid=params)["kid"]
    kxx, kyy, kxy = ((0.7 * a @ b.T + 0.25) ** 2 for a, b in ((x, x), (y, y), (x, y)))
    want = (
        (kxx.sum() - np.trace(kxx)) / (120 * 119)
        + (kyy.sum() - np.trace(kyy)) / (100 * 99)
        - 2 * kxy.mean()
    )
    assert got.kid == pytest.approx(want, rel=1e-9)
    assert (got.gamma, got.coef0, got.degree) == (0.7, 0.25, 2)


@pytest.mark.parametrize("d", [6, 64])
@pytest.mark.parametrize("offset", [10.0, 100.0, 1000.0, 10000.0])
# The bound is within 1e-5 of the value here: a rounding warning would be a false alarm.
@pytest.mark.filterwarnings("error::shardeval.pipeline.errors.RoundingWarning")
def test_kid_of_features_with_a_large_common_offset_is_exact(tmp_path, d, offset):
    # Rows N(0, 1) + offset against N(0, 1) + 1.00001 offset, float32: with fp32 products KID
    # was 1.9e-2 off at an offset of 100, had the wrong sign at 1,000 and was 131× the exact
    # value at 10,000 (d = 64), exit 0. Exact: rational arithmetic on the same floats.
    rng = np.random.default_rng(int(offset) + d)
    x = (rng.standard_normal((120, d)) + offset).astype(np.float32)
    y = (rng.standard_normal((100, d)) + offset * 1.00001).astype(np.float32)
    got = sample_metrics(
        _store(tmp_path, "x", x), _store(tmp_path, "y", y), kid=KIDParams(), block_rows=50
    )["kid"]
    exact = float(exact_kid(x, y))
    assert abs(got.kid - exact) <= got.rounding_bound
    assert got.kid == pytest.approx(exact, rel=1e-5)
    assert got.rounding_bound <= 1e-5 * abs(exact)


def test_the_reported_offset_case_to_1e_5(tmp_path):
    # The issue's own case: 300 × 64 rows N(0, 1) + 1000 against 250 × 64 N(0, 1) + 1000.01.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 64)) + 1000).astype(np.float32)
    y = (rng.standard_normal((250, 64)) + 1000.01).astype(np.float32)
    got = sample_metrics(_store(tmp_path, "x", x), _store(tmp_path, "y", y), kid=KIDParams())
    exact = float(exact_kid(x, y))
    assert got["kid"].kid == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("cross_diagonal", [False, True])
def test_kid_rounding_bound_is_its_documented_sum(cross_diagonal):
    # The bound of mmd2_rounding written out: each mean errs by its sum's bound (the block
    # pairs' own, plus u × magnitude per float64 addition) over its count, and a + b − 2c by
    # 4u(|a| + |b| + 2|c|). Sums of unequal counts and signs (m = 5, n = 4), and bounds of
    # different sizes, so that each term is seen.
    from shardeval.pipeline.mmd.kid import mmd2_rounding
    from shardeval.pipeline.pairwise.blocks import CrossSums, SetSums

    u = 2.0**-53
    xx = SetSums(30.0, 0.0, 0.0, np.zeros(5), error=2e-13, magnitude=64.0, additions=3)
    yy = SetSums(-24.0, 0.0, 0.0, np.zeros(4), error=5e-14, magnitude=32.0, additions=1)
    xy = CrossSums(-50.0, 0.0, np.zeros(5), np.zeros(4), error=1e-12, magnitude=80.0, additions=2)
    nxy = 25 if cross_diagonal else 20
    a, b, c = 30.0 / 20, -24.0 / 12, -50.0 / nxy
    sums = (2e-13 + 3 * u * 64) / 20 + (5e-14 + u * 32) / 12 + 2 * (1e-12 + 2 * u * 80) / nxy
    want = sums + 4 * u * (abs(a) + abs(b) + 2 * abs(c))
    got = mmd2_rounding(xx, yy, xy, 5, 4, cross_diagonal=cross_diagonal)
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    if not cross_diagonal:
        assert mmd2_rounding(xx, yy, xy, 5, 4) == got  # the all-pairs estimator by default


def test_kid_standard_error_survives_the_offset(tmp_path):
    # The Hoeffding terms (sums of squares less squared means) are formed from values less
    # their common P^D: the standard error at an offset of 1,000 equals the one from exact
    # kernel values put through the same formula in float64.
    from fractions import Fraction

    from shardeval.pipeline.mmd.kid import mmd2_and_se
    from shardeval.pipeline.pairwise.blocks import CrossSums, SetSums

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((60, 8)) + 1000).astype(np.float32)
    y = (rng.standard_normal((50, 8)) + 1000.5).astype(np.float32)
    got = sample_metrics(_store(tmp_path, "x", x), _store(tmp_path, "y", y), kid=KIDParams())
    centre = x.astype(np.float64).mean(axis=0)

    def exact_matrix(a, b):
        out = np.empty((len(a), len(b)))
        for i in range(len(a)):
            for j in range(len(b)):
                total, _ = exact_poly_sums(a[i : i + 1], b[j : j + 1], 1 / 8, 1.0, 3, centre)
                out[i, j] = float(total)
        return out

    def own(k):
        np.fill_diagonal(k, 0.0)
        return SetSums(float(k.sum()), float((k * k).sum()), 0.0, k.sum(1))

    kxy = exact_matrix(x, y)
    cross = CrossSums(float(kxy.sum()), float((kxy * kxy).sum()), kxy.sum(1), kxy.sum(0))
    _, se = mmd2_and_se(own(exact_matrix(x, x)), own(exact_matrix(y, y)), cross, 60, 50)
    assert got["kid"].standard_error == pytest.approx(se, rel=1e-6)
    assert Fraction(got["kid"].kid) != 0


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_kid_subsets_equal_the_peers_formula_on_the_same_draws(pair, precision):
    x, y, sx, sy = pair
    got = kid_subsets(sx, sy, subsets=7, subset_size=200, seed=11, precision=precision)
    draws = subset_indices(len(x), len(y), 7, 200, 11)
    values = []
    for real_rows, gen_rows in draws:
        a, b = np.asarray(x[real_rows], np.float64), np.asarray(y[gen_rows], np.float64)
        kxx, kyy, kxy = _poly(a, a, 48), _poly(b, b, 48), _poly(a, b, 48)
        m = 200
        values.append(
            (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.sum() / (m * m)
        )
    assert got.kid == pytest.approx(np.mean(values), rel=1e-9)
    assert got.standard_error == pytest.approx(np.std(values), rel=1e-6)
    assert 0 < got.rounding_bound < 1e-9 * abs(got.kid)
    assert (got.subsets, got.subset_size, got.seed, got.estimator) == (7, 200, 11, "subsets")


def test_subset_draws_follow_torch_fidelity():
    # One RandomState(seed); per subset the generated set's rows first, then the reference's.
    rng = np.random.RandomState(5)
    gen_first = rng.choice(50, 10, replace=False)
    real_second = rng.choice(40, 10, replace=False)
    (real_rows, gen_rows), *_ = subset_indices(40, 50, 3, 10, 5)
    np.testing.assert_array_equal(gen_rows, gen_first)
    np.testing.assert_array_equal(real_rows, real_second)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_cmmd_equals_the_reference_formula(pair, unbiased, precision):
    x, y, sx, sy = pair
    params = CMMDParams(unbiased=unbiased)
    got = sample_metrics(sx, sy, cmmd=params, block_rows=300, precision=precision)["cmmd"]
    assert got.cmmd == pytest.approx(cmmd_brute(x, y, unbiased=unbiased), rel=1e-9)
    assert got.rounding_bound < 1e-9 * abs(got.cmmd)
    assert got.estimator == ("U-statistic" if unbiased else "V-statistic")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cmmd_of_nearly_parallel_rows_is_exact_and_never_negative(tmp_path, seed):
    # Rows N(0, 1) + 1e4, d = 6: every unit row lies within 1e-4 of every other. The fp32
    # V-statistic was 36× the float64 value on one draw and negative on another (-4.3e-9,
    # a squared norm). Reference: 40-digit arithmetic.
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((40, 6)) + 1e4).astype(np.float32)
    y = (rng.standard_normal((30, 6)) + 1e4).astype(np.float32)
    sx, sy = _store(tmp_path, "x", x), _store(tmp_path, "y", y)
    for unbiased in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # within 1e-5 by its own bound: no RoundingWarning
            got = sample_metrics(sx, sy, cmmd=CMMDParams(unbiased=unbiased))["cmmd"]
        exact = float(mp_cmmd(x, y, unbiased=unbiased))
        assert abs(got.cmmd - exact) <= got.rounding_bound
        assert got.cmmd == pytest.approx(exact, rel=1e-5)
        if not unbiased:
            assert got.cmmd > 0
            assert not got.clamped


def test_a_v_statistic_below_zero_by_rounding_is_clamped_to_zero():
    from shardeval.pipeline.mmd.cmmd import cmmd_from_sums
    from shardeval.pipeline.pairwise.blocks import CrossSums, SetSums

    rows = np.zeros(2)
    own = SetSums(1.0, 0.0, 0.0, rows, error=1e-12, magnitude=1.0)
    cross = CrossSums(1.0 - 1e-13, 0.0, rows, rows, error=1e-12, magnitude=1.0)
    value, bound, clamped = cmmd_from_sums(own, own, cross, 2, 2, unbiased=False, scale=1000.0)
    assert (value, clamped) == (0.0, True)
    assert bound > 0
    far = CrossSums(0.5, 0.0, rows, rows, error=1e-12, magnitude=1.0)
    with pytest.raises(NumericalError, match="cannot be negative"):
        cmmd_from_sums(own, own, far, 2, 2, unbiased=False, scale=1000.0)


def _prdc_brute(x, y, k, strict):
    """Kynkäänniemi et al. 2019 / Naeem et al. 2020 by the definition, in float64 (squared
    distances by float64 products: on these continuous data no two differ by their rounding)."""

    def exact_sq_distances(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.maximum(sq, 0.0)

    real_sq, fake_sq = exact_sq_distances(x, x), exact_sq_distances(y, y)
    np.fill_diagonal(real_sq, np.inf)
    np.fill_diagonal(fake_sq, np.inf)
    r = np.sort(real_sq, axis=1)[:, k - 1]
    f = np.sort(fake_sq, axis=1)[:, k - 1]
    cross = exact_sq_distances(x, y)
    inside = cross < r[:, None] if strict else cross <= r[:, None]
    inside_fake = cross < f[None, :] if strict else cross <= f[None, :]
    return {
        "precision": inside.any(axis=0).mean(),
        "recall": inside_fake.any(axis=1).mean(),
        "density": inside.sum() / (k * len(y)),
        "coverage": inside.any(axis=1).mean(),
    }


def test_prdc_equals_the_prdc_package_and_the_definition(tmp_path):
    prdc = importlib.import_module("prdc")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5000, 64))
    y = rng.standard_normal((5000, 64)) * 1.1 + 0.1
    got = sample_metrics(
        _store(tmp_path, "x", x),
        _store(tmp_path, "y", y),
        prdc=PRDCParams(k=5, pr_k=3),
        block_rows=1200,
    )["prdc"]
    package_pr = prdc.compute_prdc(x, y, nearest_k=3)
    package_dc = prdc.compute_prdc(x, y, nearest_k=5)
    brute_pr, brute_dc = _prdc_brute(x, y, 3, strict=False), _prdc_brute(x, y, 5, strict=True)
    assert got.precision == package_pr["precision"] == brute_pr["precision"]
    assert got.recall == package_pr["recall"] == brute_pr["recall"]
    assert got.density == package_dc["density"] == brute_dc["density"]
    assert got.coverage == package_dc["coverage"] == brute_dc["coverage"]


def _prdc_cdist(x, y, k, pr_k):
    """The four values by the definitions, from scipy's float64 squared distances (differences
    of the rows, not the Gram expansion)."""
    from scipy.spatial.distance import cdist

    def radii(a, kk):
        sq = cdist(a, a, "sqeuclidean")
        np.fill_diagonal(sq, np.inf)
        return np.sort(sq, axis=1)[:, kk - 1]

    cross = cdist(x, y, "sqeuclidean")
    r_pr, r_dc, f_pr = radii(x, pr_k), radii(x, k), radii(y, pr_k)
    inside = cross < r_dc[:, None]
    return (
        float((cross <= r_pr[:, None]).any(axis=0).mean()),
        float((cross <= f_pr[None, :]).any(axis=1).mean()),
        float(inside.sum() / (k * len(y))),
        float(inside.any(axis=1).mean()),
    )


def _four(result):
    return (result.precision, result.recall, result.density, result.coverage)


def _scale_pair(seed, n=100, d=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


# 1e154 gave precision 1, recall 1, density 0.30, coverage 0.15 (float64 squared distances
# overflow), 1e155–1e300 and 1e-300 gave 1/1/0/0 (inf or 0 everywhere), all with exit 0.
SCALES = [1e-300, 1e-250, 1e-200, 1e-160, 1e-155, 1e-100, 1e-20, 1.0, 1e20, 1e100, 1e150]
SCALES += [1e154, 1e155, 1e200, 1e250, 1e300, 2.0**1000, 2.0**-1000]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_prdc_of_float64_rows_is_the_same_at_every_scale(tmp_path, scale, precision):
    # PRDC compares distances with radii: it is scale-invariant, and the float64 brute force
    # of the unscaled rows is the reference (the rows are continuous: no distance lies within
    # float64 rounding of a radius, so scaling the rows, which rounds them, changes nothing).
    x, y = _scale_pair(0)
    got = sample_metrics(
        _store(tmp_path, "x", x * scale),
        _store(tmp_path, "y", y * scale),
        prdc=PRDCParams(k=3, pr_k=3),
        precision=precision,
        block_rows=37,
    )["prdc"]
    assert _four(got) == _prdc_cdist(x, y, 3, 3)
    assert _four(got) == pytest.approx((0.9, 0.95, 1.0233333333, 0.97))  # the tester's values


@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1.0, 1e100, 1e150])
def test_prdc_at_scales_the_prdc_package_holds(tmp_path, scale):
    # The package forms squared distances of the scaled rows in float64: right within 1e±150.
    prdc = importlib.import_module("prdc")
    x, y = (v * scale for v in _scale_pair(4, 300, 6))
    got = sample_metrics(
        _store(tmp_path, "x", x), _store(tmp_path, "y", y), prdc=PRDCParams(k=5, pr_k=3)
    )["prdc"]
    pr = prdc.compute_prdc(x, y, nearest_k=3)
    dc = prdc.compute_prdc(x, y, nearest_k=5)
    assert _four(got) == (pr["precision"], pr["recall"], dc["density"], dc["coverage"])


@settings(max_examples=25, deadline=None)
@given(
    exponent=st.integers(-300, 300),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(8, 40),
    m=st.integers(8, 40),
    d=st.integers(1, 6),
    k=st.integers(1, 5),
)
def test_prdc_of_float64_rows_at_any_scale_equals_the_brute_force(
    tmp_path_factory, exponent, seed, n, m, d, k
):
    tmp_path = tmp_path_factory.mktemp("prdc")
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.2 + 0.1
    scale = 10.0**exponent
    got = sample_metrics(
        _store(tmp_path, "x", x * scale),
        _store(tmp_path, "y", y * scale),
        prdc=PRDCParams(k=k, pr_k=k),
        block_rows=int(rng.integers(3, 50)),
    )["prdc"]
    assert _four(got) == _prdc_cdist(x, y, k, k)


def test_prdc_of_a_float32_set_against_a_float64_set_far_from_1(tmp_path):
    # The fp32 set's own radii and the cross distances must be in one unit: both sets'
    # decisions take the common scale.
    x, y = _scale_pair(5, 60, 5)
    x32 = (x * 1e30).astype(np.float32)
    y64 = y * 1e30
    expected = _prdc_cdist(x32.astype(np.float64), y64, 4, 2)
    for a, b, flip in ((x32, y64, False), (y64, x32, True)):
        got = sample_metrics(
            _store(tmp_path, "a", a), _store(tmp_path, "b", b), prdc=PRDCParams(k=4, pr_k=2)
        )["prdc"]
        want = _prdc_cdist(a.astype(np.float64), b.astype(np.float64), 4, 2) if flip else expected
        assert _four(got) == want


def test_a_kept_reference_is_not_reused_at_another_scale(tmp_path):
    # A job keeps the reference's radii between entries: an entry that moves the common scale
    # must not compare its distances with radii in the other unit.
    x, y = _scale_pair(6, 50, 3)
    real = _store(tmp_path, "x", x * 1e100)
    cache: dict = {}
    for i, factor in enumerate((1e100, 1e100 * 2.0**40, 1e100)):
        got = sample_metrics(
            real, _store(tmp_path, f"y{i}", y * factor), prdc=PRDCParams(), reference_cache=cache
        )["prdc"]
        assert _four(got) == _prdc_cdist(x, y * (factor / 1e100), 5, 3)


def test_prdc_of_rows_too_wide_for_float64_distances_is_an_error(tmp_path):
    # Magnitudes 1e300 and 1e-20 in one run: no power of two brings both into float64's
    # normal range of squared distances; an error, not a number.
    x, y = _scale_pair(2, 20, 3)
    x[0, 0], y[0, 1] = 1e300, 1e-20
    with pytest.raises(NumericalError, match=r"from 1e-20 to 1e\+300"):
        sample_metrics(_store(tmp_path, "x", x), _store(tmp_path, "y", y), prdc=PRDCParams())


def test_a_set_against_itself(pair):
    # The two-sample estimators, as for a copy of the set (the route decides nothing): KID
    # below zero by 2/m·(mean k(x_i, x_i) − mean k(x_i, x_j)), the V-statistic 0 to rounding.
    from shardeval.pipeline.errors import RoundingWarning

    x, _, sx, _ = pair
    with pytest.warns(RoundingWarning, match="CMMD = .* is right to"):  # 0 beside values ~1
        got = sample_metrics(
            sx, sx, kid=KIDParams(), cmmd=CMMDParams(), prdc=PRDCParams(), block_rows=300
        )
    assert got["kid"].kid == pytest.approx(kid_brute(x, x), rel=1e-9)
    assert got["kid"].kid < 0
    assert abs(got["cmmd"].cmmd) <= got["cmmd"].rounding_bound
    assert got["prdc"].precision == got["prdc"].recall == 1.0
    assert got["kid"].same_store


def test_independent_samples_of_one_distribution_give_kid_within_its_error(tmp_path):
    rng = np.random.default_rng(21)
    d = 32
    values = []
    for i in range(4):
        x = rng.standard_normal((600, d)).astype(np.float32)
        y = rng.standard_normal((500, d)).astype(np.float32)
        r = sample_metrics(
            _store(tmp_path, f"a{i}", x), _store(tmp_path, f"b{i}", y), kid=KIDParams()
        )
        values.append(r["kid"].kid / r["kid"].standard_error)
    assert max(abs(v) for v in values) < 3.5


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.integers(90, 700), rows2=st.integers(90, 700))
def test_results_do_not_depend_on_the_blocks(pair, rows, rows2):
    _x, _y, sx, sy = pair
    a = sample_metrics(
        sx, sy, kid=KIDParams(), cmmd=CMMDParams(), prdc=PRDCParams(), block_rows=rows
    )
    b = sample_metrics(
        sx, sy, kid=KIDParams(), cmmd=CMMDParams(), prdc=PRDCParams(), block_rows=rows2
    )
    assert a["kid"].kid == pytest.approx(b["kid"].kid, rel=1e-6)
    assert a["cmmd"].cmmd == pytest.approx(b["cmmd"].cmmd, rel=1e-6)
    four = ("precision", "recall", "density", "coverage")
    assert [getattr(a["prdc"], f) for f in four] == [getattr(b["prdc"], f) for f in four]


def test_bad_parameters(pair):
    _x, _y, sx, sy = pair
    with pytest.raises(ShapeError, match="k = 2000 nearest neighbours need more rows"):
        sample_metrics(sx, sy, prdc=PRDCParams(k=2000))
    with pytest.raises(ShapeError, match="subset size 5000 exceeds"):
        kid_subsets(sx, sy, subsets=2, subset_size=5000)


def test_cmmd_refuses_rows_of_zeros(tmp_path):
    # A zero row has no unit direction: it was left at distance 2 from every other row but 0
    # from itself, so a set and its copy gave CMMD 6.6e-4 instead of 0, exit 0.
    from shardeval.pipeline import ZeroRowError

    x = np.random.default_rng(9).normal(size=(300, 8)).astype(np.float32)
    x[[5, 7, 11]] = 0
    sx, sy = _store(tmp_path, "x", x), _store(tmp_path, "y", x.copy())
    with pytest.raises(ZeroRowError, match=r"has 3 row\(s\) of zeros \(first at row 5\)"):
        sample_metrics(sx, sy, cmmd=CMMDParams())
    assert sample_metrics(sx, sy, kid=KIDParams())["kid"].kid is not None  # KID needs no norm


def test_fid_infinity_is_closer_to_the_population_than_fid(tmp_path):
    # The real side is the population itself (exact statistics), so FID_N's bias is all from
    # the generated set's 1/N; FID∞ removes it.
    d = 32
    mu_r, cov_r = population(d)
    mu_g, cov_g = population(d, mean=0.05, scale=1.1)
    truth = frechet_distance(Gaussian(mu_r, cov_r), Gaussian(mu_g, cov_g)).fid
    err_n, err_inf = [], []
    for seed in range(5):
        path = tmp_path / f"g{seed}.zarr"
        write_features(path, gaussian_features(20_000, d, seed=100 + seed, mean=0.05, scale=1.1))
        r = fid_infinity(Gaussian(mu_r, cov_r), open_features(str(path)), seed=seed)
        assert r.sizes[-1] == 20_000
        assert len(r.sizes) == 15
        err_n.append(r.fid - truth)
        err_inf.append(r.fid_infinity - truth)
    assert np.mean(np.abs(err_inf)) < np.mean(np.abs(err_n))
    assert np.mean(err_n) > 0  # FID_N is biased upwards


def test_triton_pair_kernels_give_the_cpu_path_results(tmp_path):
    # Under the interpreter (tests/conftest.py) on CPU tensors: the engine routes every block
    # pair through the Triton kernels; PRDC decisions are exact on both paths, so equal.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((130, 12)).astype(np.float32)
    y = (1.2 * rng.standard_normal((110, 12)) + 0.3).astype(np.float32)
    sx, sy = _store(tmp_path, "x", x), _store(tmp_path, "y", y)
    kwargs = dict(kid=KIDParams(), cmmd=CMMDParams(), prdc=PRDCParams(k=3, pr_k=2), block_rows=48)
    gpu = sample_metrics(sx, sy, device="cpu", backend="triton", **kwargs)
    cpu = sample_metrics(sx, sy, device="cpu", backend="torch", **kwargs)
    assert gpu["kid"].kid == pytest.approx(kid_brute(x, y), rel=1e-9)
    assert abs(gpu["kid"].kid - cpu["kid"].kid) <= gpu["kid"].rounding_bound * 2
    assert gpu["kid"].standard_error == pytest.approx(cpu["kid"].standard_error, rel=1e-9)
    assert gpu["cmmd"].cmmd == pytest.approx(cmmd_brute(x, y), rel=1e-9)
    assert gpu["prdc"] == cpu["prdc"]


def test_pair_tasks_depend_on_no_chunk_of_the_sets(pair, monkeypatch):
    # Each pair task reads its own blocks: its graph holds no chunk of the sources' dask
    # arrays (such a dependency would compute every set whole into each task, and ship it to
    # every worker on a cluster).
    from shardeval.pipeline.core.engine import Engine
    from shardeval.pipeline.likelihood.parzen import nll_parzen

    graphs = []
    original = Engine.run_delayed

    def spy(self, roots, **kwargs):
        graphs.extend(dict(root.__dask_graph__()) for root in roots)
        return original(self, roots, **kwargs)

    monkeypatch.setattr(Engine, "run_delayed", spy)
    _x, _y, sx, sy = pair
    sample_metrics(sx, sy, kid=KIDParams(), cmmd=CMMDParams(), prdc=PRDCParams(), block_rows=300)
    kid_subsets(sx, sy, subsets=2, subset_size=100)
    nll_parzen(sx, sy, 2.0)
    nll_parzen(sx, sy, "cv")
    pair_tasks = ("shard-self", "shard-cross", "shard-parzen", "shard-kid-subset")
    with_pairs = [g for g in graphs if any(str(k).startswith(pair_tasks) for k in g)]
    assert len(with_pairs) >= 6
    ours = ("shard-", "merge-", "parzen-", "_gather-", "_held_out-")
    foreign = [k for g in with_pairs for k in g if not (isinstance(k, str) and k.startswith(ours))]
    assert not foreign


# --- an adversarial pass over the float64 kernel sums -------------------------------------


@pytest.mark.parametrize("scale", [1e50, 1e60, 1e200])
def test_kid_of_features_beyond_float64_is_an_error(tmp_path, scale):
    # KID ± nan (1e50), a traceback (1e52–1e100) and KID nan with exit 0 (1e200) before.
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 3)) * scale, rng.standard_normal((5, 3)) * scale
    with pytest.raises(NumericalError, match="beyond float64"):
        sample_metrics(_store(tmp_path, "x", x), _store(tmp_path, "y", y), kid=KIDParams())


def test_kid_subsets_keep_float64_rows(tmp_path):
    # Float64 rows of spread 1e-3 at an offset of 1e6 were cast to fp32 by the subset path:
    # KID 0 ± 0 with bound 0, exit 0, where the exact mean over the draws is 2.9e18.
    from fractions import Fraction

    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 3)) * 1e-3 + 1e6
    y = rng.standard_normal((20, 3)) * 2e-3 + 1e6
    from shardeval.pipeline.errors import RoundingWarning

    with pytest.warns(RoundingWarning, match="is right to"):  # 7e-5 of itself: said
        got = kid_subsets(
            _store(tmp_path, "x", x), _store(tmp_path, "y", y), subsets=3, subset_size=6, seed=2020
        )
    values = []
    for real_rows, gen_rows in subset_indices(20, 20, 3, 6, 2020):
        a, b = x[real_rows], y[gen_rows]
        xx, _ = exact_poly_sums(a, a, 1 / 3, 1.0, 3, diagonal=True)
        yy, _ = exact_poly_sums(b, b, 1 / 3, 1.0, 3, diagonal=True)
        xy, _ = exact_poly_sums(a, b, 1 / 3, 1.0, 3)
        values.append((xx + yy) / 30 - 2 * xy / 36)
    exact = float(sum(values, Fraction(0)) / 3)
    assert abs(got.kid - exact) <= got.rounding_bound
    assert got.kid == pytest.approx(exact, rel=1e-3)


def test_integers_beyond_2_53_are_refused(tmp_path):
    # Rows of 2^60 + small integers read as float64 collapsed: KID 0 ± 0, exit 0.
    from shardeval.pipeline import feature_moments

    rng = np.random.default_rng(3)
    x = (2**60 + rng.integers(0, 100, (10, 3))).astype(np.int64)
    y = (2**60 + rng.integers(0, 100, (12, 3))).astype(np.int64)
    sx, sy = _store(tmp_path, "x", x), _store(tmp_path, "y", y)
    with pytest.raises(NumericalError, match="integers beyond 2\\^53"):
        sample_metrics(sx, sy, kid=KIDParams())
    with pytest.raises(NumericalError, match="integers beyond 2\\^53"):
        feature_moments([sx])


def test_too_many_blocks_are_refused_before_any_pass(tmp_path, monkeypatch):
    # The refusal came after a full pass over one-row shards (23 s at 5,000 rows, over 12
    # minutes at 50,000).
    import shardeval.pipeline.pairwise.passes as passes

    def no_pass(*args, **kwargs):
        raise AssertionError("a pass ran before the blocks were checked")

    monkeypatch.setattr(passes, "inspect_sets", no_pass)
    x = np.zeros((5000, 2), np.float32)
    sx = _store(tmp_path, "x", x)
    with pytest.raises(ShapeError, match="at most 4,096 are allowed: use at least 2 rows"):
        sample_metrics(sx, sx, kid=KIDParams(), block_rows=1)


def test_cmmd_bandwidth_too_small_for_float64_is_refused(pair):
    # --sigma 1e-200 raised ZeroDivisionError (a traceback); 1e-160 gave a bound of inf.
    from shardeval.pipeline.metrics import MetricOptionError

    _x, _y, sx, sy = pair
    for sigma in (1e-200, 1e-160):
        with pytest.raises(MetricOptionError, match="within float64"):
            sample_metrics(sx, sy, cmmd=CMMDParams(sigma=sigma))


def test_cmmd_bandwidth_that_is_not_finite_is_refused(pair):
    # σ = inf made every kernel value exp(0) = 1: CMMD 0 for any two sets, exit 0.
    from shardeval.pipeline.metrics import MetricOptionError

    _x, _y, sx, sy = pair
    for sigma in (np.inf, -np.inf, np.nan):
        with pytest.raises(MetricOptionError, match="finite σ > 0"):
            sample_metrics(sx, sy, cmmd=CMMDParams(sigma=sigma))


def test_one_store_spelled_as_a_file_url_is_the_same_store(tmp_path):
    # Z.zarr against file:///…/Z.zarr is read once, and gives what Z.zarr twice gives.
    from shardeval.pipeline.io.synthetic import write_features

    path = tmp_path / "z.zarr"
    write_features(path, gaussian_features(300, 4, seed=5))
    a, b = open_features(str(path)), open_features(f"file://{path}")
    got = sample_metrics(a, b, kid=KIDParams(), cmmd=CMMDParams(unbiased=True))
    twice = sample_metrics(a, a, kid=KIDParams(), cmmd=CMMDParams(unbiased=True))
    x = np.asarray(a.array.compute())
    assert got["kid"].same_store
    assert got["kid"].kid == twice["kid"].kid == pytest.approx(kid_brute(x, x), rel=1e-9)
    assert got["cmmd"].cmmd == twice["cmmd"].cmmd
    assert got["cmmd"].cmmd == pytest.approx(cmmd_brute(x, x, unbiased=True), rel=1e-9)
