"""Each row's nearest row of the other block (the memorization metrics' reduction) against
its float64 reference: the very float64 distances of the definition, the first index of equal
distances, close calls within fp32's error decided exactly, any magnitude."""

import numpy as np
import pytest

from shardeval.kernels.distances import nearest_reference
from shardeval.kernels.pairs import TILE, PairRequest, exact_sq_distances, pair_reduce

SHAPES = [((1, 3), (1, 3)), ((7, 5), (13, 5)), ((40, 64), (TILE + 9, 64)), ((33, 129), (2, 129))]


def _data(shape, dtype, seed, offset=0.5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _nearest(x, y, **kw):
    return pair_reduce(x, y, PairRequest(nearest=True), **kw).nearest


def _assert_exact(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[1].dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("sx", "sy"), SHAPES)
def test_nearest_is_exact(dtype, sx, sy):
    x, y = _data(sx, dtype, 4, offset=30.0), _data(sy, dtype, 5, offset=30.0)
    _assert_exact(_nearest(x, y), nearest_reference(x, y))


def test_equal_distances_take_the_first_row():
    x = _data((50, 6), np.float32, 6)
    x[[11, 30, 42]] = x[7]  # four equal rows: every y at one distance from all of them
    y = _data((2 * TILE + 5, 6), np.float32, 7)
    y[[0, 900, TILE + 3]] = x[7]  # copies: distance 0 to rows 7, 11, 30 and 42
    got = _nearest(x, y)
    _assert_exact(got, nearest_reference(x, y))
    assert got[0][[0, 900, TILE + 3]].tolist() == [0.0, 0.0, 0.0]
    assert got[1][[0, 900, TILE + 3]].tolist() == [7, 7, 7]
    assert not np.isin(got[1], [11, 30, 42]).any()


def test_close_calls_within_fp32_error_are_decided_exactly():
    # Rows on a sphere of radius 1e3 around each query, 1e-4 apart in radius: fp32 products
    # cannot order them (their error is ~1e-1 in squared distance); float64 from the rows can.
    rng = np.random.default_rng(7)
    d = 64
    queries = rng.standard_normal((3, d)) * 100 + 500
    directions = rng.standard_normal((300, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 1e3 + rng.uniform(0, 1e-4, 300)
    x = (queries[0] + directions * radii[:, None]).astype(np.float32)
    y = queries.astype(np.float32)
    got = _nearest(x, y)
    _assert_exact(got, nearest_reference(x, y))
    sq = exact_sq_distances(x, y)
    assert got[1][0] == int(np.argmin(sq[:, 0]))


@pytest.mark.parametrize("scale", [2.0**70, 1e19, 1e-22, 2.0**-90, 1e-41])
def test_extreme_magnitudes_keep_the_nearest_rows_exact(scale):
    x = (_data((40, 16), np.float64, 41, offset=2.0) * scale).astype(np.float32)
    y = (_data((50, 16), np.float64, 42, offset=2.3) * scale).astype(np.float32)
    _assert_exact(_nearest(x, y), nearest_reference(x, y))


def test_one_request_equals_the_separate_reductions():
    x, y = _data((70, 12), np.float32, 11), _data((90, 12), np.float32, 12)
    radii = (np.full(70, 20.0), np.full(70, 10.0), np.full(90, 25.0))
    both = pair_reduce(x, y, PairRequest(knn=4, radii=radii, nearest=True))
    _assert_exact(both.nearest, _nearest(x, y))
    alone = pair_reduce(x, y, PairRequest(knn=4, radii=radii))
    for a, b in zip(both.knn, alone.knn, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(both.radius[:4], alone.radius[:4], strict=True):
        np.testing.assert_array_equal(a, b)


def test_tensors_on_the_triton_path_give_the_cpu_path_rows():
    import torch

    x, y = _data((9, 4), np.float32, 33, offset=10.0), _data((70, 4), np.float32, 34, offset=10.0)
    x[5] = x[2]
    y[3] = x[2]
    got = pair_reduce(
        torch.from_numpy(x),
        torch.from_numpy(y),
        PairRequest(knn=2, nearest=True),
        backend="triton",
    ).nearest
    _assert_exact(got, nearest_reference(x, y))
    assert got[1][3] == 2
