"""Kernel sums (KID's polynomial kernel, CMMD's RBF on unit rows) against exact arithmetic:
the rounding bound each result carries is never exceeded (hypothesis over offsets, scales,
degrees and centres), and it is small where the old fp32 products lost every digit."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardeval.kernels.kernel_sums import (
    PolyKernel,
    RBFKernel,
    kernel_sums_reference,
    poly_sums,
    rbf_sums,
    unit_rows,
)
from tests.reference import exact_poly_sums, mp_rbf_sums


def _rows(rng, shape, offset, scale, dtype):
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 9),
    d=st.integers(1, 7),
    log_offset=st.floats(-3, 7),
    log_scale=st.floats(-3, 3),
    degree=st.integers(1, 4),
    coef0=st.sampled_from([1.0, 0.0, -0.5, 3.0]),
    centre=st.sampled_from(["none", "mean", "far"]),
    diagonal=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_polynomial_sums_are_within_their_bound_of_the_exact_value(
    m, n, d, log_offset, log_scale, degree, coef0, centre, diagonal, dtype, seed
):
    rng = np.random.default_rng(seed)
    offset, scale = 10.0**log_offset, 10.0**log_scale
    x = _rows(rng, (m, d), offset, scale, dtype)
    y = x if diagonal else _rows(rng, (n, d), offset * 1.01, scale, dtype)
    o = {
        "none": None,
        "mean": x.astype(np.float64).mean(axis=0),
        "far": np.full(d, -3 * offset),
    }[centre]
    kernel = PolyKernel(1.0 / d, coef0, degree, o)
    got = poly_sums(x, y, kernel, diagonal_block=diagonal)
    total, diag = exact_poly_sums(x, y, 1.0 / d, coef0, degree, o, diagonal=diagonal)
    assert abs(Fraction(got.total) - total) <= Fraction(got.error)
    assert np.isfinite(got.error)
    if diagonal:
        assert got.diagonal == pytest.approx(float(diag), rel=1e-9, abs=got.error + 1e-300)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 7),
    n=st.integers(1, 7),
    d=st.integers(1, 6),
    log_offset=st.floats(-2, 6),
    sigma=st.sampled_from([10.0, 1.0, 0.05]),
    centre=st.sampled_from(["none", "mean"]),
    diagonal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rbf_sums_are_within_their_bound_of_the_exact_value(
    m, n, d, log_offset, sigma, centre, diagonal, seed
):
    rng = np.random.default_rng(seed)
    x = _rows(rng, (m, d), 10.0**log_offset, 1.0, np.float32)
    y = x if diagonal else _rows(rng, (n, d), 10.0**log_offset, 1.0, np.float32)
    o = unit_rows(x).mean(axis=0) if centre == "mean" else None
    got = rbf_sums(x, y, RBFKernel(sigma, o), diagonal_block=diagonal)
    exact = mp_rbf_sums(x, y, sigma, diagonal=diagonal)
    assert abs(got.total - float(exact)) <= got.error
    assert got.diagonal == 0.0


def test_a_large_common_offset_keeps_its_digits():
    # Rows N(0, 1) + 1000: the values (x·y/d + 1)³ are near 1e18 and agree in 9 digits; with
    # the centre at the rows' mean the sum is right to ~1e-13 of its spread.
    rng = np.random.default_rng(1)
    x = _rows(rng, (40, 64), 1000.0, 1.0, np.float32)
    y = _rows(rng, (30, 64), 1000.01, 1.0, np.float32)
    kernel = PolyKernel(1 / 64, 1.0, 3, x.astype(np.float64).mean(axis=0))
    got = poly_sums(x, y, kernel)
    total, _ = exact_poly_sums(x, y, 1 / 64, 1.0, 3, kernel.centre)
    assert abs(Fraction(got.total) - total) <= Fraction(got.error)
    assert got.error < 1e-10 * got.magnitude


def test_nearly_parallel_rows_keep_their_distances():
    # Unit rows within 1e-4 of each other: ‖x̂ − ŷ‖² ≈ 1e-8 is formed from centred rows, not
    # as 2 − 2 cos (which leaves nothing of it in fp32).
    rng = np.random.default_rng(2)
    x = _rows(rng, (12, 6), 1e4, 1.0, np.float32)
    y = _rows(rng, (10, 6), 1e4, 1.0, np.float32)
    got = rbf_sums(x, y, RBFKernel(10.0, unit_rows(x).mean(axis=0)))
    exact = float(mp_rbf_sums(x, y, 10.0))
    assert got.total == pytest.approx(exact, rel=1e-9)
    assert got.error < 1e-6 * exact


@pytest.mark.parametrize("kind", ["poly", "rbf"])
@pytest.mark.parametrize(("m", "n", "d"), [(1, 1, 3), (7, 13, 5), (40, 600, 64), (33, 2, 129)])
def test_sums_equal_the_float64_definition(kind, m, n, d):
    rng = np.random.default_rng(m + n + d)
    x, y = _rows(rng, (m, d), 0.5, 1.0, np.float32), _rows(rng, (n, d), 0.5, 1.0, np.float32)
    kernel = PolyKernel(1 / d, 1.0, 3) if kind == "poly" else RBFKernel(0.7)
    got = (poly_sums if kind == "poly" else rbf_sums)(x, y, kernel)
    ref = kernel_sums_reference(x, y, kernel)
    scale = max(got.magnitude, 1e-300)
    assert got.total == pytest.approx(ref.total, abs=1e-12 * scale)
    assert got.squares == pytest.approx(ref.squares, rel=1e-10)
    np.testing.assert_allclose(got.rows, ref.rows, rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(got.cols, ref.cols, rtol=1e-10, atol=1e-12 * scale)


def test_unit_rows_of_any_magnitude():
    x = np.array([[3e200, 4e200], [3e-200, -4e-200], [0.0, 0.0]])
    np.testing.assert_allclose(unit_rows(x), [[0.6, 0.8], [0.6, -0.8], [0.0, 0.0]], rtol=1e-15)


def test_degree_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="degree must be a positive integer"):
        PolyKernel(1.0, 1.0, 0)
