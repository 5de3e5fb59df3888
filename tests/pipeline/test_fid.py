import sys
import warnings

import numpy as np
import pytest

from shardeval.pipeline import Gaussian, NumericalError, ShapeError, SingularCovarianceWarning
from shardeval.pipeline.fid.frechet import frechet_distance, trace_sqrt_product
from tests.reference import (
    eigvals_formula,
    exact_fid,
    exact_trace_sqrt,
    high_precision_fid,
    np_stats,
    pytorch_fid_formula,
)


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


@pytest.mark.parametrize("seed", range(12))
def test_identical_statistics_give_a_fid_never_below_zero(seed):
    # 2 tr Σ − 2 tr (Σ Σ)^½ rounds to ±1e-16 relative: FID is a distance, reported as 0 when
    # the sum is negative by rounding alone (several of these draws round below zero).
    rng = np.random.default_rng(seed)
    d = int(rng.integers(3, 60))
    s = _random_spd(rng, d, 10 ** rng.uniform(-3, 3))
    mu = rng.standard_normal(d)
    got = frechet_distance(Gaussian(mu, s), Gaussian(mu.copy(), s.copy()))
    assert 0.0 <= got.fid <= 1e-12 * np.trace(s)


def test_frechet_distance_passes_its_clamp_tolerance_on():
    # An eigenvalue of −1e-9 of the product: clamped at the default tolerance, an error at
    # clamp_rtol=1e-12.
    real = Gaussian(np.zeros(2), np.diag([4.0, -1e-9]))
    gen = Gaussian(np.zeros(2), np.eye(2))
    assert frechet_distance(real, gen).clamped_count == 1
    with pytest.raises(NumericalError, match="below the rounding tolerance"):
        frechet_distance(real, gen, clamp_rtol=1e-12)


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
    assert "real set has n=10 <= d=24" in got.warnings[0]
    assert "generated set has n=10 <= d=24" in got.warnings[1]


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


@pytest.mark.parametrize("where", ["mean", "cov"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_statistics_holding_nan_or_inf_are_an_error(where, bad):
    # Either half alone: a NaN in the covariance with a finite mean must be refused as well.
    mean, cov = np.zeros(3), np.eye(3)
    (mean if where == "mean" else cov)[1] = bad
    good = Gaussian(np.ones(3), 2 * np.eye(3), source="b.npz")
    with pytest.raises(NumericalError, match=r"'a\.npz' hold NaN or inf"):
        frechet_distance(Gaussian(mean, cov, source="a.npz"), good)
    with pytest.raises(NumericalError, match=r"'a\.npz' hold NaN or inf"):
        frechet_distance(good, Gaussian(mean, cov, source="a.npz"))


def test_the_errors_of_the_statistics_name_their_side():
    good = Gaussian(np.ones(2), np.eye(2))
    nan = Gaussian(np.array([0.0, np.nan]), np.eye(2), source="s.npz")
    tiny = Gaussian(np.zeros(2), 1e-310 * np.eye(2), source="s.npz")
    for bad, why in ((nan, "hold NaN or inf"), (tiny, "have variances below")):
        with pytest.raises(NumericalError, match=rf"^the real statistics 's\.npz' {why}"):
            frechet_distance(bad, good)
        with pytest.raises(NumericalError, match=rf"^the generated statistics 's\.npz' {why}"):
            frechet_distance(good, bad)


def test_a_mean_term_in_float64s_subnormal_range_is_rounded_once():
    # δ = 3e-162 in each of 4 coordinates: each square (9e-324) is below the smallest normal
    # float, where adding four rounded squares gives 8 units of 2^-1074 and the exact term,
    # 3.6e-323, rounds to 7. Reference: the exact square sum in rationals, rounded once.
    from fractions import Fraction

    cov = np.eye(4)
    got = frechet_distance(Gaussian(np.full(4, 3e-162), cov), Gaussian(np.zeros(4), cov))
    assert got.mean_term == float(4 * Fraction(3e-162) ** 2)
    assert got.mean_term != 4 * (3e-162 * 3e-162)  # the sum of rounded squares differs


def test_a_negative_fid_beyond_rounding_is_not_snapped_to_zero():
    # Σ = diag(1, −1e-6) on both sides (its negative eigenvalue within the clamping tolerance):
    # the traces hold −1e-6 each, the square-root term drops it, and FID = −2e-6 is reported
    # as it is; only a negative sum within 1e-12 of the traces is rounding, and 0.
    cov = np.diag([1.0, -1e-6])
    got = frechet_distance(Gaussian(np.zeros(2), cov), Gaussian(np.zeros(2), cov))
    assert got.fid == pytest.approx(-2e-6, rel=1e-9)


def test_a_set_of_identical_rows_has_zero_covariance_and_its_fid_is_exact():
    # Σ_r = 0 (every reference row the same): FID = ‖δ‖² + tr Σ_g, no error (0 is not a
    # variance below float64's normal range).
    gen_cov = np.diag([1.0, 4.0, 9.0])
    got = frechet_distance(Gaussian(np.zeros(3), np.zeros((3, 3))), Gaussian(np.ones(3), gen_cov))
    assert got.fid == pytest.approx(3.0 + 14.0, rel=1e-15)


def test_variances_at_the_smallest_normal_float64_are_computed():
    # The largest variance exactly 2^-1022 (float64's smallest normal number) still holds all
    # its digits: FID is computed, here ‖δ‖² = 2 with equal covariances.
    cov = sys.float_info.min * np.eye(2)
    got = frechet_distance(Gaussian(np.zeros(2), cov), Gaussian(np.ones(2), cov))
    assert got.fid == pytest.approx(2.0, rel=1e-15)


@pytest.mark.parametrize(
    ("clamped", "fp32", "warns"), [(1, True, True), (0, True, False), (1, False, False)]
)
def test_rounding_warning_only_for_clamped_eigenvalues_of_fp32_products(clamped, fp32, warns):
    from shardeval.pipeline.errors import RoundingWarning
    from shardeval.pipeline.fid.frechet import FrechetDistance, warn_if_rounding_reached_spectrum

    result = FrechetDistance(1.0, 0.5, 1.0, 1.0, 0.75, clamped, 1e-9 * clamped)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn_if_rounding_reached_spectrum(result, fp32)
    rounding = [w for w in seen if issubclass(w.category, RoundingWarning)]
    assert len(rounding) == int(warns), [str(w.message) for w in seen]


def test_exact_zero_eigenvalues_are_not_counted_as_clamped():
    # A singular covariance whose zero eigenvalue is exactly 0 (diagonal), on either side:
    # nothing is clamped (the count is of eigenvalues below zero, not at or near it).
    value, clamped, worst = trace_sqrt_product(np.eye(3), np.diag([1.0, 2.0, 0.0]))
    assert (value, clamped, worst) == (pytest.approx(1 + np.sqrt(2), rel=1e-15), 0, 0.0)
    value, clamped, worst = trace_sqrt_product(np.diag([1.0, 0.0]), np.eye(2))
    assert (value, clamped, worst) == (pytest.approx(1.0, rel=1e-15), 0, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_trace_sqrt_product_of_other_dtypes_is_float64s(rng, dtype):
    # float32 or integer covariances are taken as the float64 numbers they hold.
    a = (_random_spd(rng, 6) * 100).astype(dtype)
    b = (_random_spd(rng, 6, 2.0) * 100).astype(dtype)
    if dtype is np.int64:
        a, b = a + 100 * np.eye(6, dtype=dtype), b + 100 * np.eye(6, dtype=dtype)
    expected = exact_trace_sqrt(a.astype(np.float64), b.astype(np.float64))
    assert trace_sqrt_product(a, b)[0] == pytest.approx(expected, rel=1e-13)


def test_clamping_tolerance_of_the_product_is_rtol_times_the_norms():
    # M = diag(1, −t) with Σ_r = diag(1, −t), Σ_g = I: the tolerance is
    # 1e-5 · ‖Σ_r‖_F · ‖Σ_g‖_F = 1e-5 · √2 ≈ 1.414e-5 (the default clamp_rtol).
    value, clamped, worst = trace_sqrt_product(np.diag([1.0, -1.3e-5]), np.eye(2))
    assert (value, clamped) == (pytest.approx(1.0, rel=1e-15), 1)
    assert worst == pytest.approx(1.3e-5, rel=1e-12)
    with pytest.raises(NumericalError, match="below the rounding tolerance"):
        trace_sqrt_product(np.diag([1.0, -1.5e-5]), np.eye(2))


def test_clamping_tolerance_of_a_singular_covariance_is_rtol_times_its_norm():
    # Σ_g = diag(1, −t) itself (Σ_r = I): its own tolerance is 1e-5 · ‖Σ_g‖_F ≈ 1e-5; the
    # clamped magnitude is reported in Σ_g's units.
    value, clamped, worst = trace_sqrt_product(np.eye(2), np.diag([1.0, -0.9e-5]))
    assert (value, clamped) == (pytest.approx(1.0, rel=1e-15), 1)
    assert worst == pytest.approx(0.9e-5, rel=1e-12)
    with pytest.raises(NumericalError, match="below the rounding tolerance"):
        trace_sqrt_product(np.eye(2), np.diag([1.0, -1.1e-5]))


def test_the_error_names_the_matrix_that_is_not_positive_semi_definite():
    # Σ_g itself (its factor is taken first), or the product Fᵀ Σ_r F of the two.
    with pytest.raises(NumericalError, match=r"^covariance is not positive semi-definite"):
        trace_sqrt_product(np.eye(2), np.diag([1.0, -1.1e-5]))
    with pytest.raises(
        NumericalError, match=r"^the product of the covariances is not positive semi-definite"
    ):
        trace_sqrt_product(np.diag([1.0, -1.5e-5]), np.eye(2))


def test_a_singular_covariance_leaves_out_eigenvalues_below_its_rank_tolerance():
    # Σ_g of rank one, λ = 45, with a second eigenvalue of 1e-13: below d·ε·λ_max ≈ 5e-13
    # (the numerical range of Σ_g), it is rounding and adds nothing, where keeping it would add
    # √(1e-13) ≈ 3e-7 to the trace. Reference: tr (I · Σ_g')^½ = √45, Σ_g' the rank-one part.
    d = 50
    v = np.linalg.qr(np.random.default_rng(5).standard_normal((d, d)))[0]
    cov_g = 45.0 * np.outer(v[:, 0], v[:, 0]) + 1e-13 * np.outer(v[:, 1], v[:, 1])
    value, _, _ = trace_sqrt_product(np.eye(d), cov_g)
    assert value == pytest.approx(np.sqrt(45.0), rel=1e-12, abs=0)


def test_clamped_magnitudes_beyond_float64_are_inf_without_a_warning():
    # Σ_r = diag(1e300, −1e290), Σ_g = 1e300·I: the clamped eigenvalue of the product, 1e590 in
    # the covariances' units, is beyond float64: inf, silently; the trace, 1e300, is exact.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, clamped, worst = trace_sqrt_product(np.diag([1e300, -1e290]), 1e300 * np.eye(2))
    assert (clamped, worst) == (1, np.inf)
    assert value == pytest.approx(1e300, rel=1e-14)


def test_float_of_the_result_is_its_fid():
    got = frechet_distance(Gaussian(np.zeros(2), np.eye(2)), Gaussian(np.ones(2), 4 * np.eye(2)))
    assert float(got) == got.fid == pytest.approx(4.0, rel=1e-15)


def test_trace_sqrt_product_example():
    value, clamped, worst = trace_sqrt_product(np.diag([4.0, 9.0]), np.diag([1.0, 4.0]))
    assert (value, clamped, worst) == (8.0, 0, 0.0)


def test_dimension_mismatch():
    with pytest.raises(ShapeError, match="d=3"):
        frechet_distance(Gaussian(np.zeros(3), np.eye(3)), Gaussian(np.zeros(2), np.eye(2)))


def test_gaussian_rejects_inconsistent_shapes():
    with pytest.raises(ShapeError, match="expected"):
        Gaussian(np.zeros(3), np.eye(2))


def test_an_eigenvalue_just_below_zero_in_the_product_is_clamped_to_zero():
    # M = diag(4, −1e-9), within the rounding tolerance: its square-root trace is √4 + √0,
    # one eigenvalue clamped, by 1e-9 (taking |λ| instead would add √1e-9 ≈ 3.2e-5).
    value, clamped, worst = trace_sqrt_product(np.diag([4.0, -1e-9]), np.eye(2))
    assert value == pytest.approx(2.0, rel=1e-15)
    assert clamped == 1
    assert worst == pytest.approx(1e-9, rel=1e-12)


def test_more_than_five_dropped_rows_are_all_counted(tmp_path, rng):
    # The message names the first five rows; the count is of every row left out.
    from shardeval.pipeline.fid.moments import feature_moments
    from shardeval.pipeline.io.stores import open_features
    from tests.conftest import write_zarr

    x = rng.standard_normal((200, 4)).astype(np.float32)
    bad = [3, 17, 40, 41, 99, 150, 199]
    x[bad, [0, 1, 2, 3, 0, 1, 2]] = np.nan
    src = open_features(write_zarr(tmp_path / "x.zarr", x, chunk_rows=32), shard_rows=32)
    ((moments, dropped),) = feature_moments([src], nonfinite="drop")
    keep = np.isfinite(x).all(axis=1)
    assert dropped == int((~keep).sum()) == 7
    assert moments.n == int(keep.sum())


@pytest.mark.parametrize("extra", [0, 1])
def test_as_many_rows_as_features_take_float64_products(tmp_path, rng, extra):
    # n ≤ d: the covariance is singular, and FID cuts its numerical range from its rounding:
    # float64 products, so the moments are float64 two-pass moments to 1e-12 (fp32 products,
    # about 1e-7 off, move FID by ~1e-7 relative at n = d = 32). One row more, n = d + 1,
    # takes fp32 products as asked.
    from shardeval.pipeline.fid.moments import feature_moments
    from shardeval.pipeline.io.stores import open_features
    from tests.conftest import write_zarr

    d = 32
    x = (rng.standard_normal((d + extra, d)) + 3.0).astype(np.float32)
    src = open_features(write_zarr(tmp_path / "x.zarr", x, chunk_rows=64))
    ((moments, _),) = feature_moments([src], precision="fp32")
    rows = x.astype(np.float64)
    centred = rows - rows.mean(axis=0)
    error = np.abs(moments.m2 - centred.T @ centred).max() / np.abs(centred.T @ centred).max()
    if extra == 0:
        assert error < 1e-12
    else:
        assert error > 1e-10  # fp32 products, as asked: the test can tell them apart


def test_fid_with_more_than_five_dropped_rows_counts_them_all(tmp_path, rng):
    # Seven generated and six reference rows hold NaN or inf: the report counts every one of
    # them (the error message names only the first five), and FID is the float64 FID of the
    # finite rows alone.
    import shardeval as se
    from tests.conftest import write_zarr

    real = rng.standard_normal((180, 6)).astype(np.float32)
    gen = (1.3 * rng.standard_normal((200, 6)) + 0.4).astype(np.float32)
    real[[0, 31, 32, 90, 150, 179], [0, 1, 2, 3, 4, 5]] = [np.nan, np.inf, -np.inf] * 2
    gen[[3, 17, 40, 41, 99, 150, 199], [0, 1, 2, 3, 4, 5, 0]] = np.nan
    stores = [
        write_zarr(tmp_path / f"{name}.zarr", x, chunk_rows=32)
        for name, x in (("real", real), ("gen", gen))
    ]
    report = se.fid(*stores, nonfinite="drop", precision="fp64", shard_rows=32)
    fields = report.to_dict()["fid"]
    kept = [x[np.isfinite(x).all(axis=1)] for x in (real, gen)]
    assert (fields["fid_nonfinite_dropped_real"], fields["fid_nonfinite_dropped"]) == (6, 7)
    assert (fields["fid_n_real"], fields["fid_n"]) == (174, 193)
    exact = exact_fid(*np_stats(kept[0]), *np_stats(kept[1]))
    assert float(report) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 4])
def test_fid_of_as_many_rows_as_features_is_the_float64_fid(tmp_path, seed):
    # n = d = 32 on both sides, float32 rows offset by 3: their moments take float64
    # products whatever precision is asked, and FID is the float64 FID to ~1e-14. With fp32
    # products it was 3.7e-7 (seed 0) and 7e-8 (seed 4) relative off; se.fid then recomputed
    # in float64 where an eigenvalue fell below zero (seed 0, with a warning), and reported
    # the fp32 value where none did (seed 4).
    import shardeval as se
    from shardeval.pipeline.fid.moments import feature_moments
    from shardeval.pipeline.io.stores import open_features
    from tests.conftest import write_zarr

    d = 32
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((d, d)) + 3.0).astype(np.float32)
    y = (1.2 * rng.standard_normal((d, d)) + 3.1).astype(np.float32)
    stores = [write_zarr(tmp_path / f"{n}.zarr", z, chunk_rows=64) for n, z in (("x", x), ("y", y))]
    exact = exact_fid(*np_stats(x), *np_stats(y))
    (mx, _), (my, _) = feature_moments([open_features(s) for s in stores], precision="fp32")
    with pytest.warns(SingularCovarianceWarning):
        direct = frechet_distance(Gaussian.from_moments(mx), Gaussian.from_moments(my))
    assert direct.fid == pytest.approx(exact, rel=1e-8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = se.fid(*stores, precision="fp32")
    assert float(report) == pytest.approx(exact, rel=1e-8)
    recomputed = [str(w.message) for w in seen if "recomputed" in str(w.message)]
    assert not recomputed, recomputed


# --- covariances far from 1 --------------------------------------------------------------

# Scales of the features: the covariances are their squares. 1e77–1e150 raised numpy's
# LinAlgError "Eigenvalues did not converge" (Lᵀ Σ_r L overflowed), and 1e-150 put
# tr (Σ_r Σ_g)^½ at 0 (it underflowed): FID 1.6e-299 where it is 1.7e-301, exit 0.
FEATURE_SCALES = [1e-150, 1e-120, 1e-60, 1e60, 1e76, 1e77, 1e80, 1e100, 1e150, 2.0**500]


@pytest.mark.parametrize("scale", FEATURE_SCALES)
def test_fid_is_right_at_every_scale_of_the_features(rng, scale):
    d = 12
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 1.7)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) * 0.1
    expected = exact_fid(mu1, s1, mu2, s2)
    got = frechet_distance(
        Gaussian(mu1 * scale, s1 * scale**2), Gaussian(mu2 * scale, s2 * scale**2)
    )
    assert got.fid / scale**2 == pytest.approx(expected, rel=1e-9)
    assert got.trace_sqrt / scale**2 == pytest.approx(exact_trace_sqrt(s1, s2), rel=1e-9)


@pytest.mark.parametrize(("scale_a", "scale_b"), [(1e150, 1e-150), (1e-200, 1e100), (1e280, 1)])
def test_trace_sqrt_product_of_covariances_of_unlike_scales(rng, scale_a, scale_b):
    # tr (A B)^½ scales by √(ab): each covariance takes its own power of two.
    a, b = _random_spd(rng, 9), _random_spd(rng, 9, 3.0)
    got, _count, _worst = trace_sqrt_product(a * scale_a, b * scale_b)
    assert got / np.sqrt(scale_a * scale_b) == pytest.approx(exact_trace_sqrt(a, b), rel=1e-9)


@pytest.mark.parametrize("scale", [1e-320, 1e-310])
def test_covariances_below_float64s_normal_range_are_an_error(rng, scale):
    # Variances of 1e-310 hold a few bits: FID of them would be a number without digits.
    s = _random_spd(rng, 4)
    with pytest.raises(NumericalError, match="below float64's normal range"):
        frechet_distance(Gaussian(np.zeros(4), s * scale), Gaussian(np.ones(4), s))
