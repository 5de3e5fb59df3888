"""Block-pair kernels against their float64 references, over awkward shapes and dtypes, and
exact decisions where fp32 distances tie with a radius or a k-th neighbour."""

import numpy as np
import pytest

from shardeval.kernels.pairs import (
    TILE,
    PolyKernel,
    RBFKernel,
    exact_sq_distances,
    kernel_sums,
    kernel_sums_reference,
    knn_sq_distances,
    knn_sq_distances_reference,
    radius_decisions,
    radius_decisions_reference,
)

# Relative tolerance of sums (scaled by the largest |total|) per input dtype.
TOLERANCE = {np.float32: 1e-6, np.float64: 1e-12}
SHAPES = [((1, 3), (1, 3)), ((7, 5), (13, 5)), ((40, 64), (TILE + 9, 64)), ((33, 129), (2, 129))]


def _data(shape, dtype, seed, offset=0.5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _kernel(kind, params, d):
    if kind == "poly":
        return PolyKernel(*(params or (1.0 / d, 1.0, 3)))
    return RBFKernel(*params)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize(("sx", "sy"), SHAPES)
@pytest.mark.parametrize(("kind", "params"), [("poly", None), ("rbf", (10.0,)), ("rbf", (0.7,))])
def test_kernel_sums(dtype, sx, sy, kind, params):
    # Float64 products whatever the input dtype (see shardeval.kernels.kernel_sums).
    x, y = _data(sx, dtype, 1), _data(sy, dtype, 2)
    kernel = _kernel(kind, params, sx[1])
    got = kernel_sums(x, y, kernel)
    ref = kernel_sums_reference(x, y, kernel)
    scale = max(got.magnitude, 1e-300)
    assert got.total == pytest.approx(ref.total, rel=1e-12, abs=1e-12 * scale)
    assert got.squares == pytest.approx(ref.squares, rel=1e-10)
    np.testing.assert_allclose(got.rows, ref.rows, rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(got.cols, ref.cols, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.parametrize("kind", ["poly", "rbf"])
def test_kernel_sums_diagonal_block(kind):
    x = _data((50, 16), np.float32, 3)
    kernel = PolyKernel(1 / 16, 1.0, 3) if kind == "poly" else RBFKernel(2.0)
    got = kernel_sums(x, x, kernel, diagonal_block=True)
    ref = kernel_sums_reference(x, x, kernel, diagonal_block=True)
    assert got.total == pytest.approx(ref.total, rel=1e-12)
    assert got.diagonal == pytest.approx(ref.diagonal, rel=1e-12, abs=1e-12)
    if kind == "rbf":
        assert got.diagonal == 0.0  # self-distances are exactly zero


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize(("sx", "sy"), SHAPES)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_is_exact(dtype, sx, sy, k):
    x, y = _data(sx, dtype, 4, offset=30.0), _data(sy, dtype, 5, offset=30.0)
    got_x, got_y = knn_sq_distances(x, y, k)
    ref_x, ref_y = knn_sq_distances_reference(x, y, k)
    # The very float64 values of the definition, never fp32's.
    np.testing.assert_array_equal(got_x, ref_x)
    np.testing.assert_array_equal(got_y, ref_y)


def test_knn_diagonal_block_and_duplicates():
    x = _data((60, 8), np.float32, 6)
    x[10] = x[3]  # a duplicate: its nearest other point is at distance 0
    got, got_t = knn_sq_distances(x, x, 3, diagonal_block=True)
    ref, _ = knn_sq_distances_reference(x, x, 3, diagonal_block=True)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, got_t)
    assert got[3, 0] == got[10, 0] == 0.0


def test_knn_ties_within_fp32_error_are_decided_exactly():
    # Points on a sphere of radius 1e3 around a query, offset by 1e-4: fp32 dot products
    # cannot order them (their error is ~1e-1 in squared distance); float64 can.
    rng = np.random.default_rng(7)
    d = 64
    query = rng.standard_normal((1, d)) * 100 + 500
    directions = rng.standard_normal((200, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 1e3 + rng.uniform(0, 1e-4, 200)
    others = query + directions * radii[:, None]
    got, _ = knn_sq_distances(query, others, 5)
    ref, _ = knn_sq_distances_reference(query, others, 5)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize(("sx", "sy"), SHAPES)
def test_radius_decisions_are_exact(dtype, sx, sy):
    x, y = _data(sx, dtype, 8, offset=20.0), _data(sy, dtype, 9, offset=20.0)
    rng = np.random.default_rng(10)
    # Radii placed exactly on some pair distances, so ties are present.
    sq = exact_sq_distances(x, y)
    rx = sq[np.arange(sx[0]), rng.integers(0, sy[0], sx[0])]
    rx2 = sq[np.arange(sx[0]), rng.integers(0, sy[0], sx[0])]
    ry = sq[rng.integers(0, sx[0], sy[0]), np.arange(sy[0])]
    got = radius_decisions(x, y, rx, rx2, ry)
    ref = radius_decisions_reference(x, y, rx, rx2, ry)
    for a, b in zip(got[:4], ref[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    assert got.uncertain >= 1  # the ties were re-decided


def test_one_request_equals_the_separate_reductions():
    from shardeval.kernels.pairs import PairRequest, pair_reduce

    x, y = _data((70, 12), np.float32, 11), _data((90, 12), np.float32, 12)
    rx = np.full(70, 20.0)
    ry = np.full(90, 25.0)
    poly, rbf = PolyKernel(1 / 12, 1.0, 3), RBFKernel(10.0)
    both = pair_reduce(x, y, PairRequest(poly=poly, rbf=rbf, knn=4, radii=(rx, rx / 2, ry)))
    for shared, alone in ((both.poly, kernel_sums(x, y, poly)), (both.rbf, kernel_sums(x, y, rbf))):
        for a, b in zip(shared, alone, strict=True):
            np.testing.assert_array_equal(a, b)  # the very same floats
    for a, b in zip(both.knn, knn_sq_distances(x, y, 4), strict=True):
        np.testing.assert_array_equal(a, b)
    single = radius_decisions(x, y, rx, rx / 2, ry)
    for a, b in zip(both.radius[:4], single[:4], strict=True):
        np.testing.assert_array_equal(a, b)


# Magnitudes whose fp32 products overflow (|x| ≈ 1e19: ‖x‖² > 3.4e38) or fall into subnormals
# (|x| ≈ 1e-22): PRDC gave precision = recall = 1, density = coverage = 0 and CMMD 90.6 instead
# of 0.546, with exit 0, before blocks were scaled by a power of two.
EXTREME = [2.0**70, 1e19, 1e-22, 2.0**-90, 1e-41]  # 1e-41: fp32 subnormals


def _extreme_pair(scale):
    x = (_data((40, 16), np.float64, 41, offset=2.0) * scale).astype(np.float32)
    y = (_data((50, 16), np.float64, 42, offset=2.3) * scale).astype(np.float32)
    return x, y


@pytest.mark.parametrize("scale", EXTREME)
def test_extreme_magnitudes_keep_neighbours_and_radius_decisions_exact(scale):
    x, y = _extreme_pair(scale)
    for got, ref in zip(
        knn_sq_distances(x, y, 3), knn_sq_distances_reference(x, y, 3), strict=True
    ):
        np.testing.assert_array_equal(got, ref)
    sq = exact_sq_distances(x, y)
    # Radii on pair distances (ties, re-decided in float64) that split the pairs.
    rx, ry = np.sort(sq, axis=1)[:, 1], np.sort(sq, axis=0)[1]
    got = radius_decisions(x, y, rx, rx, ry)
    ref = radius_decisions_reference(x, y, rx, rx, ry)
    for a, b in zip(got[:4], ref[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    assert got.y_count_x_radius.sum() == np.count_nonzero(sq < rx[:, None])  # one per row


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([[2.0**100, 0], [3e-8, 1e-8]], [[1e-8, 2e-8]]),  # 2^-101 would make 1e-8 subnormal
        ([[2.0**21, 0], [3e-40, 1e-40]], [[1e-40, 2e-40], [5.0, 1.0]]),
    ],
)
def test_rows_of_too_wide_a_range_to_scale_exactly_are_decided_exactly(x, y):
    x, y = np.array(x, np.float32), np.array(y, np.float32)
    for got, ref in zip(
        knn_sq_distances(x, y, 1), knn_sq_distances_reference(x, y, 1), strict=True
    ):
        np.testing.assert_array_equal(got, ref)
    sq = exact_sq_distances(x, y)
    rx, ry = sq.min(axis=1), sq.min(axis=0)  # radii exactly on distances
    got = radius_decisions(x, y, rx, rx, ry)
    ref = radius_decisions_reference(x, y, rx, rx, ry)
    for a, b in zip(got[:4], ref[:4], strict=True):
        np.testing.assert_array_equal(a, b)


def test_float32_radii_are_scaled_in_float64():
    x, y = _extreme_pair(1e-22)
    sq = exact_sq_distances(x, y)
    rx, ry = np.median(sq, axis=1), np.median(sq, axis=0)
    got = radius_decisions(x, y, rx.astype(np.float32), rx.astype(np.float32), ry)
    ref = radius_decisions_reference(x, y, rx.astype(np.float32), rx.astype(np.float32), ry)
    np.testing.assert_array_equal(got.y_count_x_radius, ref.y_count_x_radius)


@pytest.mark.parametrize("scale", EXTREME)
def test_extreme_magnitudes_keep_the_rbf_on_unit_rows(scale):
    x, y = _extreme_pair(scale)
    got = kernel_sums(x, y, RBFKernel(0.5))
    ref = kernel_sums_reference(x, y, RBFKernel(0.5))
    assert got.total == pytest.approx(ref.total, rel=1e-12)
    np.testing.assert_allclose(got.rows, ref.rows, rtol=1e-12)


@pytest.mark.parametrize("scale", [3e3, 3e6, 1e12])
def test_polynomial_kernel_values_beyond_fp32_are_summed_exactly(scale):
    # (x·y/d + 1)³ reaches 1e21 (its squares overflow fp32: the KID error was ± inf) and 1e39
    # (the values themselves: KID nan); kernel sums take float64 products.
    x, y = _extreme_pair(scale)
    kernel = PolyKernel(1 / 16, 1.0, 3)
    got = kernel_sums(x, y, kernel)
    ref = kernel_sums_reference(x, y, kernel)
    assert np.isfinite([got.total, got.squares, got.error]).all()
    assert got.total == pytest.approx(ref.total, rel=1e-12)
    assert got.squares == pytest.approx(ref.squares, rel=1e-10)


# --- the Triton path (interpreted on CPU by tests/conftest.py) against the CPU path --------


@pytest.mark.parametrize(("sx", "sy"), [((1, 3), (1, 3)), ((7, 5), (13, 5)), ((70, 33), (45, 33))])
@pytest.mark.parametrize("diagonal", [False, True])
def test_triton_pair_sums(sx, sy, diagonal):
    import torch

    from shardeval.kernels.pairs import PairRequest, pair_reduce

    x = _data(sx, np.float32, 31, offset=30.0)
    y = x if diagonal else _data(sy, np.float32, 32, offset=30.0)
    centre = x.astype(np.float64).mean(axis=0)
    request = PairRequest(
        poly=PolyKernel(1 / sx[1], 1.0, 3, centre), rbf=RBFKernel(10.0, centre / 30.0)
    )
    cpu = pair_reduce(x, y, request, diagonal_block=diagonal)
    gpu = pair_reduce(
        torch.from_numpy(x), torch.from_numpy(y), request, diagonal_block=diagonal, backend="triton"
    )
    for a, b in ((cpu.poly, gpu.poly), (cpu.rbf, gpu.rbf)):
        # Float64 products on both paths, in different orders: within both bounds.
        assert abs(b.total - a.total) <= a.error + b.error
        assert b.error == pytest.approx(a.error, rel=1e-9)
        assert b.magnitude == pytest.approx(a.magnitude, rel=1e-9)
        assert b.shift == a.shift
        assert b.squares == pytest.approx(a.squares, rel=1e-10, abs=1e-300)
        assert b.diagonal == pytest.approx(a.diagonal, rel=1e-10, abs=1e-12 * a.magnitude)
        scale = max(a.magnitude, 1e-300)
        np.testing.assert_allclose(b.rows, a.rows, rtol=1e-10, atol=1e-12 * scale)
        np.testing.assert_allclose(b.cols, a.cols, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.parametrize(("sx", "sy"), [((9, 4), (70, 4)), ((70, 33), (45, 33))])
@pytest.mark.parametrize("diagonal", [False, True])
def test_triton_knn_and_radii_equal_the_cpu_path_exactly(sx, sy, diagonal):
    import torch

    from shardeval.kernels.pairs import PairRequest, pair_reduce

    x = _data(sx, np.float32, 33, offset=10.0)
    y = x if diagonal else _data(sy, np.float32, 34, offset=10.0)
    y_rows = len(y)
    sq = exact_sq_distances(x, y)
    rng = np.random.default_rng(3)
    radii = (
        sq[np.arange(len(x)), rng.integers(0, y_rows, len(x))],
        sq[np.arange(len(x)), rng.integers(0, y_rows, len(x))],
        sq[rng.integers(0, len(x), y_rows), np.arange(y_rows)],
    )
    request = PairRequest(knn=3, radii=None if diagonal else radii)
    cpu = pair_reduce(x, y, request, diagonal_block=diagonal)
    gpu = pair_reduce(
        torch.from_numpy(x), torch.from_numpy(y), request, diagonal_block=diagonal, backend="triton"
    )
    for a, b in zip(cpu.knn, gpu.knn, strict=True):
        np.testing.assert_array_equal(a, b)
    if not diagonal:
        for a, b in zip(cpu.radius[:4], gpu.radius[:4], strict=True):
            np.testing.assert_array_equal(a, b)
        assert gpu.radius.uncertain >= 1  # the radii sit on pair distances: ties re-decided


def test_triton_path_scales_extreme_magnitudes_like_the_cpu_path():
    import torch

    from shardeval.kernels.pairs import PairRequest, pair_reduce

    x, y = _extreme_pair(1e19)
    sq = exact_sq_distances(x, y)
    request = PairRequest(
        rbf=RBFKernel(0.5), knn=3, radii=(np.median(sq, 1), np.median(sq, 1) / 2, np.median(sq, 0))
    )
    cpu = pair_reduce(x, y, request)
    gpu = pair_reduce(torch.from_numpy(x), torch.from_numpy(y), request, backend="triton")
    for a, b in zip(cpu.knn, gpu.knn, strict=True):
        # float64 from the rows on both paths; torch and numpy sum the 16 squares in
        # different orders, so the last bit may differ.
        np.testing.assert_allclose(a, b, rtol=4e-16)
    for a, b in zip(cpu.radius[:4], gpu.radius[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    assert gpu.rbf.total == pytest.approx(cpu.rbf.total, rel=1e-12)
