"""Each row's largest ratio of a reference row's squared radius to its squared distance (the
realism score's reduction) against its float64 reference: exact float64 ratios, rows with a
zero radius left out, copies (distance 0) giving inf, close calls within fp32's error decided
exactly, any magnitude, on the Triton path's tensors as on numpy."""

import numpy as np
import pytest

from shardeval.kernels.distances import realism_reference
from shardeval.kernels.pairs import TILE, PairRequest, exact_sq_distances, pair_reduce

SHAPES = [((1, 3), (1, 3)), ((7, 5), (13, 5)), ((40, 64), (TILE + 9, 64)), ((33, 129), (2, 129))]


def _data(shape, dtype, seed, offset=0.5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(dtype)


def _radii(m, seed, zero=0.3):
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.5, 40.0, m)
    r[rng.random(m) < zero] = 0.0  # rows that do not count
    return r


def _realism(x, y, radii, **kw):
    return pair_reduce(x, y, PairRequest(realism=radii), **kw).realism


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("sx", "sy"), SHAPES)
def test_realism_ratios_are_exact(dtype, sx, sy):
    x, y = _data(sx, dtype, 4, offset=30.0), _data(sy, dtype, 5, offset=30.0)
    radii = _radii(sx[0], 6)
    radii[0] = 3.0  # at least one row counts
    np.testing.assert_array_equal(_realism(x, y, radii), realism_reference(x, y, radii))


def test_no_row_counts_gives_zero():
    x, y = _data((6, 4), np.float32, 1), _data((9, 4), np.float32, 2)
    got = _realism(x, y, np.zeros(6))
    assert got.tolist() == [0.0] * 9


def test_a_copy_of_a_counted_row_is_inf_and_of_an_uncounted_row_is_not():
    x = _data((30, 6), np.float32, 6)
    y = _data((2 * TILE + 5, 6), np.float32, 7)
    radii = _radii(30, 8, zero=0.0)
    radii[12] = 0.0
    y[[0, TILE + 3]] = x[7]  # counted: distance 0, ratio inf
    y[[5]] = x[12]  # a row of radius 0 adds 0, whatever its distance
    got = _realism(x, y, radii)
    np.testing.assert_array_equal(got, realism_reference(x, y, radii))
    assert np.isinf(got[[0, TILE + 3]]).all()
    assert np.isfinite(got[5])
    sq = exact_sq_distances(x, y)
    keep = radii > 0
    assert got[5] == (radii[keep] / sq[keep, 5]).max()


def test_close_calls_within_fp32_error_are_decided_exactly():
    # Reference rows on a sphere of radius 1e3 around a query, 1e-4 apart in radius, all with
    # one radius: fp32 products cannot order their ratios; float64 from the rows can.
    rng = np.random.default_rng(7)
    d = 64
    query = rng.standard_normal(d) * 100 + 500
    directions = rng.standard_normal((300, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = (query + directions * (1e3 + rng.uniform(0, 1e-4, 300))[:, None]).astype(np.float32)
    y = query[None, :].astype(np.float32)
    radii = np.full(300, 5.0)
    got = _realism(x, y, radii)
    np.testing.assert_array_equal(got, realism_reference(x, y, radii))
    assert got[0] == 5.0 / exact_sq_distances(x, y)[:, 0].min()


@pytest.mark.parametrize("scale", [2.0**70, 1e19, 1e-22, 2.0**-90, 1e-41])
def test_extreme_magnitudes_keep_the_ratios_exact(scale):
    x = (_data((40, 16), np.float64, 41, offset=2.0) * scale).astype(np.float32)
    y = (_data((50, 16), np.float64, 42, offset=2.3) * scale).astype(np.float32)
    sq = exact_sq_distances(x, x)
    np.fill_diagonal(sq, np.inf)
    radii = np.sort(sq, axis=1)[:, 2]  # each row's third nearest other row
    radii[::3] = 0.0
    want = realism_reference(x, y, radii)
    np.testing.assert_allclose(_realism(x, y, radii), want, rtol=1e-15)


def test_one_request_equals_the_separate_reductions():
    x, y = _data((70, 12), np.float32, 11), _data((90, 12), np.float32, 12)
    radii = (np.full(70, 20.0), np.full(70, 10.0), np.full(90, 25.0))
    r = _radii(70, 13)
    both = pair_reduce(x, y, PairRequest(knn=4, radii=radii, nearest=True, realism=r))
    np.testing.assert_array_equal(both.realism, _realism(x, y, r))
    alone = pair_reduce(x, y, PairRequest(knn=4, radii=radii, nearest=True))
    for a, b in zip(both.nearest, alone.nearest, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(both.radius[:4], alone.radius[:4], strict=True):
        np.testing.assert_array_equal(a, b)


def test_tensors_on_the_triton_path_give_the_cpu_path_ratios():
    import torch

    x, y = _data((9, 4), np.float32, 33, offset=10.0), _data((70, 4), np.float32, 34, offset=10.0)
    y[3] = x[2]
    r = _radii(9, 35, zero=0.0)
    got = pair_reduce(
        torch.from_numpy(x),
        torch.from_numpy(y),
        PairRequest(knn=2, realism=r),
        backend="triton",
    ).realism
    np.testing.assert_array_equal(got, realism_reference(x, y, r))
    assert np.isinf(got[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_radii_beyond_fp32_take_the_float64_screen(dtype):
    # Radii fp32 cannot hold as normal numbers are screened in float64: the same exact ratios.
    x, y = _data((60, 8), dtype, 51), _data((80, 8), dtype, 52)
    for scale in (1e-50, 1e45):
        radii = _radii(60, 53) * scale
        radii[0] = 2.0 * scale
        got = _realism(x, y, radii)
        np.testing.assert_array_equal(got, realism_reference(x, y, radii))
        assert (got > 0).all()
