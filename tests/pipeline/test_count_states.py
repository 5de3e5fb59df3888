"""The counting states' values against numpy on the concatenated data: :class:`Magnitudes` (the
largest and smallest nonzero finite magnitude) and :class:`Histogram` (counts over fixed edges,
values outside them in the end bins, and the upper edge of the bin holding a quantile)."""

import math

import numpy as np
import pytest

from shardeval.pipeline.core.count_states import Histogram, Magnitudes


def _magnitudes_reference(blocks):
    """max and min of |x| over the finite nonzero values of every block, in float64."""
    size = np.abs(np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in blocks]))
    size = size[np.isfinite(size) & (size != 0)]
    return (size.max(), size.min()) if size.size else (0.0, math.inf)


@pytest.mark.parametrize("seed", range(4))
def test_magnitudes_are_the_extremes_of_the_finite_nonzero_values(seed):
    rng = np.random.default_rng(seed)
    blocks = [rng.standard_normal((5, 3)) * 10.0 ** rng.integers(-8, 8, size=(5, 3)) for _ in "abc"]
    blocks[0][1, 2] = 0.0  # no magnitude: it would be the smallest
    blocks[1][0, 0] = -np.inf  # not finite: it would be the largest
    blocks[1][2, 1] = np.inf
    blocks[2][3, 0] = np.nan
    state = Magnitudes.empty()
    for b in blocks:
        state = state.merge(Magnitudes.from_values(b))
    largest, smallest = _magnitudes_reference(blocks)
    assert (state.largest, state.smallest) == (largest, smallest)
    assert 0 < state.smallest < state.largest < math.inf
    one = Magnitudes.from_values(blocks[1])  # a single block, without the merge
    assert (one.largest, one.smallest) == _magnitudes_reference(blocks[1:2])


def test_magnitudes_of_no_nonzero_finite_value_are_the_empty_state():
    for values in (np.zeros((3, 2)), np.array([np.nan, np.inf, -np.inf, 0.0]), np.empty((0, 4))):
        got = Magnitudes.from_values(values)
        assert (got.largest, got.smallest) == (0.0, math.inf)


def test_magnitudes_of_integers_are_their_float64_magnitudes():
    # |−128| of int8 and |−2^63| of int64 wrap to themselves in their own type; in float64 they
    # are the largest magnitudes.
    for dtype in (np.int8, np.int64):
        low = np.iinfo(dtype).min
        values = np.array([[low, 3], [0, -1]], dtype=dtype)
        got = Magnitudes.from_values(values)
        assert (got.largest, got.smallest) == (-float(low), 1.0)


EDGES = np.linspace(-2.0, 2.0, 9)


def _binned(values, edges):
    """Each value's bin: [e_i, e_{i+1}), the last closed, values outside in the end bins."""
    bins = np.searchsorted(edges, values, side="right") - 1
    return np.clip(bins, 0, len(edges) - 2)


def test_histogram_counts_every_value_outside_the_edges_in_the_end_bins():
    rng = np.random.default_rng(7)
    blocks = [3.0 * rng.standard_normal(n) for n in (40, 1, 25)]  # many beyond ±2
    blocks[1][0] = EDGES[0] + 0.1  # the first bin
    state = Histogram.empty(EDGES)
    for b in blocks:
        state = state.merge(Histogram.from_values(b, EDGES))
    values = np.concatenate(blocks)
    expected = np.bincount(_binned(values, EDGES), minlength=len(EDGES) - 1)
    np.testing.assert_array_equal(state.counts, expected)
    assert state.counts.sum() == len(values)
    assert expected[0] > 1  # the ends are reached from outside
    assert expected[-1] > 0
    # counts are integers, exact at any total
    assert state.counts.dtype == np.int64
    assert Histogram.from_values(blocks[0], EDGES).counts.dtype == np.int64


def test_histogram_of_values_on_the_edges():
    got = Histogram.from_values(np.array(EDGES), EDGES).counts
    # every edge opens its bin, except the last, which closes the last bin
    np.testing.assert_array_equal(got, [1, 1, 1, 1, 1, 1, 1, 2])


@pytest.mark.parametrize("seed", range(3))
def test_histogram_quantile_is_the_upper_edge_of_the_bin_of_the_order_statistic(seed):
    """The q-quantile (the ⌈q·n⌉-th smallest value, numpy's ``inverted_cdf``) lies in one
    bin; the histogram reports that bin's upper edge."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([1.5 * rng.standard_normal(60), [2.5, 1.9]])  # the last bin too
    state = Histogram.from_values(values[:20], EDGES).merge(
        Histogram.from_values(values[20:], EDGES)
    )
    for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0):
        order = np.quantile(values, q, method="inverted_cdf")
        expected = EDGES[_binned(np.array([order]), EDGES)[0] + 1]
        assert state.quantile(q) == expected, q
    assert state.quantile(1.0) == EDGES[-1]


def test_histogram_quantile_of_one_value_and_of_none():
    one = Histogram.from_values(np.array([0.3]), EDGES)
    for q in (0.05, 0.5, 1.0):
        assert one.quantile(q) == 0.5  # the bin [0, 0.5)
    assert math.isnan(Histogram.empty(EDGES).quantile(0.5))
