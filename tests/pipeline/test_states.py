import itertools
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardeval.pipeline.core.chunks import FeatureSummary
from shardeval.pipeline.core.reduce import merge_all
from shardeval.pipeline.core.states import Moments, NonFiniteRows
from tests.reference import np_stats

DATA = np.random.default_rng(7).standard_normal((300, 5)) * [1, 10, 0.1, 3, 1] + [1e3, -2, 0, 5, 7]


def _split(x, cuts):
    edges = [0, *sorted(set(cuts)), len(x)]
    return [x[a:b] for a, b in itertools.pairwise(edges)]


def _random_tree_merge(states, draw_index):
    states = list(states)
    while len(states) > 1:
        i = draw_index(len(states) - 1)
        states[i : i + 2] = [states[i].merge(states[i + 1])]
    return states[0]


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, len(DATA) - 1), max_size=12), data=st.data())
def test_merge_matches_concatenated_under_random_partitions_and_orders(cuts, data):
    parts = [Moments.from_rows(p) for p in _split(DATA, cuts)]
    merged = _random_tree_merge(parts, lambda k: data.draw(st.integers(0, k - 1)) if k > 0 else 0)
    mean, cov = np_stats(DATA)
    assert merged.n == len(DATA)
    np.testing.assert_allclose(merged.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(merged.covariance(), cov, rtol=1e-9, atol=1e-9 * np.abs(cov).max())


@given(st.lists(st.integers(0, 4), min_size=1, max_size=6))
def test_merge_is_commutative_and_ignores_empty_states(sizes):
    blocks = [DATA[i * 5 : i * 5 + s] for i, s in enumerate(sizes)]
    states = [Moments.from_rows(b) if len(b) else Moments.empty(5) for b in blocks]
    forward = merge_all(Moments.empty(5), *states)
    backward = merge_all(*reversed(states), Moments.empty(5))
    assert forward.n == backward.n == sum(sizes)
    np.testing.assert_allclose(forward.m2, backward.m2, rtol=1e-12, atol=1e-9)


def test_empty_is_identity():
    m = Moments.from_rows(DATA[:10])
    assert m.merge(Moments.empty(5)) is m
    assert Moments.empty(5).merge(m) is m


def test_state_is_frozen_and_pickles():
    m = Moments.from_rows(DATA[:20])
    with pytest.raises(ValueError, match="read-only"):
        m.mean[0] = 1.0
    back = pickle.loads(pickle.dumps(m))
    assert back.n == m.n
    np.testing.assert_array_equal(back.m2, m.m2)
    s = FeatureSummary(m, NonFiniteRows(2, (3, 9)))
    assert pickle.loads(pickle.dumps(s)).nonfinite == NonFiniteRows(2, (3, 9))


def test_mismatched_dimensions_do_not_merge():
    with pytest.raises(ValueError, match="d=5 and d=3"):
        Moments.from_rows(DATA[:4]).merge(Moments.from_rows(DATA[:4, :3]))


def test_nonfinite_rows_keep_the_first_indices_in_order():
    a = NonFiniteRows.from_mask(np.array([False, True, True]), offset=100)
    b = NonFiniteRows.from_mask(np.array([True, False, True, True, True, True]), offset=0)
    merged = b.merge(a)
    assert merged.count == 7
    assert merged.first == (0, 2, 3, 4, 5)


def test_covariance_needs_two_rows():
    with pytest.raises(ValueError, match="n > ddof"):
        Moments.from_rows(DATA[:1]).covariance()
    # Two rows are enough: np.cov of them.
    np.testing.assert_allclose(
        Moments.from_rows(DATA[:2]).covariance(), np.cov(DATA[:2], rowvar=False), rtol=1e-12
    )


def test_moments_hold_an_int_count_and_read_only_float64_arrays():
    from shardeval.pipeline.errors import StatsFormatError

    m = Moments(np.int64(2), np.zeros(3, np.float32), np.eye(3, dtype=np.float32))
    assert type(m.n) is int
    for array in (m.mean, m.m2):
        assert array.dtype == np.float64
        assert not array.flags.writeable
    for bad in (True, 2.0):
        with pytest.raises(StatsFormatError, match="must be an integer"):
            Moments(bad, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"mean \(d,\) and m2 \(d, d\)"):
        Moments(2, np.zeros((1, 3)), np.eye(3))
    with pytest.raises(ValueError, match=r"mean \(d,\) and m2 \(d, d\)"):
        Moments(2, np.zeros(3), np.eye(2))


@pytest.mark.parametrize("offset", [0.0, 800.0, -800.0])
def test_log_sum_exp_of_values_is_scipys(offset):
    # Values beyond exp's float64 range (|x| ~ 800), -inf among them, a 2-D array, and
    # every value -inf: the log-sum-exp, its parts and the count, against scipy.
    from scipy.special import logsumexp

    from shardeval.pipeline.core.states import LogSumExp

    rng = np.random.default_rng(3)
    values = rng.standard_normal((4, 5)) * 3 + offset
    values[1, 2] = -np.inf
    got = LogSumExp.from_values(values)
    assert got.n == 20
    assert got.max == values.max()
    assert got.value == pytest.approx(logsumexp(values), rel=1e-14, abs=1e-12)
    assert got.sum == pytest.approx(np.exp(logsumexp(values) - values.max()), rel=1e-14)
    nothing = LogSumExp.from_values(np.full(3, -np.inf))
    assert (nothing.max, nothing.sum, nothing.n, nothing.value) == (-np.inf, 0.0, 3, -np.inf)
    single = LogSumExp.from_values(np.array([offset]))
    assert (single.max, single.sum, single.n, single.value) == (offset, 1.0, 1, offset)
    assert LogSumExp.from_values(np.zeros(0)) == LogSumExp.empty()


def test_a_state_must_be_a_frozen_dataclass_with_a_merge():
    from dataclasses import dataclass

    from shardeval.pipeline.core.mergeable import _REGISTRY, registered_states, state

    def examples(rng):
        raise AssertionError("never called")

    before = dict(registered_states())
    with pytest.raises(TypeError, match="Loose must be a frozen dataclass"):

        @state(examples=examples)
        @dataclass
        class Loose:
            n: int = 0

            def merge(self, other):
                return self

    with pytest.raises(TypeError, match="Plain must be a frozen dataclass"):

        @state(examples=examples)
        class Plain:
            def merge(self, other):
                return self

    with pytest.raises(TypeError, match="Unmergeable has no merge method"):

        @state(examples=examples)
        @dataclass(frozen=True)
        class Unmergeable:
            n: int = 0

    assert dict(registered_states()) == before

    @dataclass(frozen=True)
    class Count:
        n: int = 0

        def merge(self, other):
            return Count(self.n + other.n)

    try:  # a valid state is registered with its examples and reports its size to Dask
        assert state(examples=examples)(Count) is Count
        assert registered_states()[Count] is examples
        assert sys.getsizeof(Count(3)) >= object.__sizeof__(Count(3))
    finally:
        _REGISTRY.pop(Count, None)
    assert dict(registered_states()) == before


def test_chan_merge_of_scalars_and_vectors_is_the_two_pass_moments():
    # Chan, Golub & LeVeque's update against np.mean and the centred sums of squares (and
    # cross-products) of the concatenation: scalars (δ² branch) and vectors (δδᵀ), parts of
    # unequal sizes, far apart, so that every term of the update counts.
    from shardeval.pipeline.core.mergeable import chan_merge

    rng = np.random.default_rng(11)
    a = rng.normal(size=(7, 3)) * np.array([1.0, 2.0, 3.0])
    b = rng.normal(size=(4, 3)) + np.array([5.0, -3.0, 1.0])
    both = np.concatenate([a, b])

    def m2(x):
        centred = x - x.mean(axis=0)
        return centred.T @ centred

    mean, co = chan_merge(7, a.mean(axis=0), m2(a), 4, b.mean(axis=0), m2(b))
    np.testing.assert_allclose(mean, both.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(co, m2(both), rtol=1e-13)
    mean, sq = chan_merge(
        7, a[:, 0].mean(), m2(a[:, :1])[0, 0], 4, b[:, 0].mean(), m2(b[:, :1])[0, 0]
    )
    assert mean == pytest.approx(both[:, 0].mean(), rel=1e-14)
    assert sq == pytest.approx(m2(both[:, :1])[0, 0], rel=1e-13)


@pytest.mark.parametrize("power", [1, 2])
def test_lse_merge_is_scipys_log_sum_exp_of_the_union(power):
    # Pairs (max, Σ e^(p(x − max))) of two parts, merged, against scipy's logsumexp of p·x
    # over the union: scalars either side of each other, arrays element-wise, and a side that
    # saw only −inf (its max −inf, sum 0), alone and on both sides.
    from scipy.special import logsumexp

    from shardeval.pipeline.core.mergeable import lse_merge

    def pair(x):
        top = np.max(x, axis=-1)
        safe = np.where(np.isneginf(top), 0.0, top)
        return top, np.exp(power * (x - safe[..., None])).sum(axis=-1)

    def log_sum(top, total):
        return power * top + np.log(total)

    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(3, 5)) * 4, rng.normal(size=(3, 6)) * 4 + [[3.0], [-3.0], [0.0]]
    a[2] = -np.inf
    given = {} if power == 1 else {"power": power}  # p = 1 by default, as LogSumExp merges
    top, total = lse_merge(*pair(a), *pair(b), **given)
    np.testing.assert_array_equal(top, np.maximum(a.max(axis=1), b.max(axis=1)))
    want = logsumexp(power * np.concatenate([a, b], axis=1), axis=1)
    np.testing.assert_allclose(log_sum(top, total), want, rtol=1e-13)
    for x, y in ((a[0], b[0]), (b[1], a[1])):  # scalars, the larger max on either side
        top, total = lse_merge(*pair(x), *pair(y), **given)
        assert log_sum(top, total) == pytest.approx(logsumexp(power * np.r_[x, y]), rel=1e-13)
    top, total = lse_merge(*pair(a[2]), *pair(a[2]), **given)
    assert (top, total) == (-np.inf, 0.0)


def test_a_state_reports_the_bytes_of_its_fields_to_dask():
    # sys.getsizeof of a registered state (what Dask's sizeof falls back to): the object's own
    # size (its slots) plus each field's bytes: an array's data, a tuple's and a dict's own
    # size plus their items', anything else its getsizeof.
    from dataclasses import dataclass

    from shardeval.pipeline.core.mergeable import _REGISTRY, state

    @dataclass(frozen=True, slots=True)
    class Bundle:
        values: np.ndarray
        parts: tuple
        named: dict
        n: int

        def merge(self, other):
            return self

    rows, col, tail = np.zeros((3, 4)), np.ones(5), np.zeros(7)
    bundle = Bundle(rows, (col, 2.5), {"tail": tail}, 12)
    want = (
        object.__sizeof__(bundle)  # the slots of four fields
        + rows.nbytes
        + (sys.getsizeof(bundle.parts) + col.nbytes + sys.getsizeof(2.5))
        + (sys.getsizeof(bundle.named) + sys.getsizeof("tail") + tail.nbytes)
        + sys.getsizeof(12)
    )
    try:
        state(examples=lambda rng: (bundle, [bundle] * 3))(Bundle)
        assert object.__sizeof__(bundle) > object.__sizeof__(None)  # the slots count
        assert bundle.__sizeof__() == want
    finally:
        _REGISTRY.pop(Bundle, None)


def test_states_of_float32_rows_are_the_float64_moments_of_their_values():
    # Rows of float32 (a feature store's dtype) are read in float64 before any sum: the
    # moments are numpy's float64 moments of the same values, to float64's rounding.
    from shardeval.pipeline.core.states import RowMean, ScalarMoments

    rows = DATA.astype(np.float32)
    exact = rows.astype(np.float64)
    mean, cov = np_stats(exact)
    m = Moments.from_rows(rows)
    np.testing.assert_allclose(m.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(m.covariance(), cov, rtol=1e-11, atol=1e-11 * np.abs(cov).max())
    np.testing.assert_allclose(RowMean.from_rows(rows).mean, mean, rtol=1e-13)
    s = ScalarMoments.from_values(rows[:, 0])
    assert s.mean == pytest.approx(exact[:, 0].mean(), rel=1e-13)
    assert s.variance() == pytest.approx(exact[:, 0].var(ddof=1), rel=1e-10)


def test_a_block_of_no_rows_is_the_empty_state():
    # A shard whose rows were all dropped (non-finite) gives the identity: count 0, zero
    # mean and co-moment of the block's width, never the NaN mean of no rows.
    from shardeval.pipeline.core.states import RowMean

    none = np.empty((0, 4))
    m = Moments.from_rows(none)
    assert (m.n, m.d) == (0, 4)
    np.testing.assert_array_equal(m.mean, np.zeros(4))
    np.testing.assert_array_equal(m.m2, np.zeros((4, 4)))
    for r in (RowMean.from_rows(none), RowMean.empty(4)):
        assert r.n == 0
        np.testing.assert_array_equal(r.mean, np.zeros(4))


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, len(DATA) - 1), max_size=8), data=st.data())
def test_row_means_and_scalar_moments_are_numpys_on_the_concatenated_values(cuts, data):
    # RowMean's mean and ScalarMoments' count, mean, variances, extremes and standard error
    # against numpy on all the values, under a random partition (an empty block among them)
    # and a random merge tree; ScalarMoments flattens a block of several values per row.
    from shardeval.pipeline.core.states import RowMean, ScalarMoments

    blocks = [*_split(DATA, cuts), DATA[:0]]
    draw = lambda k: data.draw(st.integers(0, k - 1)) if k > 0 else 0  # noqa: E731
    row_mean = _random_tree_merge([RowMean.from_rows(b) for b in blocks], draw)
    assert row_mean.n == len(DATA)
    np.testing.assert_allclose(row_mean.mean, DATA.mean(axis=0), rtol=1e-12)
    scalars = _random_tree_merge([ScalarMoments.from_values(b[:, 1:3]) for b in blocks], draw)
    values = DATA[:, 1:3].reshape(-1)
    assert scalars.n == values.size
    assert scalars.mean == pytest.approx(values.mean(), rel=1e-12)
    for ddof in (0, 1):
        assert scalars.variance(ddof) == pytest.approx(values.var(ddof=ddof), rel=1e-10)
    assert (scalars.min, scalars.max) == (values.min(), values.max())
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert scalars.standard_error() == pytest.approx(se, rel=1e-10)


def test_scalar_moments_merged_with_single_values_are_numpys():
    # Blocks of one value (a shard of one row of one value) on either side of a merge, and a
    # chain of them: count, mean, variance and extremes of all the values.
    from shardeval.pipeline.core.states import ScalarMoments

    values = np.array([3.0, -1.5, 7.25, 0.5, 2.0])
    ones = [ScalarMoments.from_values(values[i : i + 1]) for i in range(len(values))]
    rest = ScalarMoments.from_values(values[1:])
    for merged in (
        ones[0].merge(rest),
        rest.merge(ones[0]),
        ones[0].merge(ones[1]).merge(ones[2]).merge(ones[3]).merge(ones[4]),
    ):
        assert merged.n == len(values)
        assert merged.mean == pytest.approx(values.mean(), rel=1e-15)
        assert merged.variance() == pytest.approx(values.var(ddof=1), rel=1e-14)
        assert (merged.min, merged.max) == (values.min(), values.max())


def test_scalar_moments_of_too_few_values_have_no_variance():
    # n ≤ ddof: no variance (NaN, never a division by zero); no standard error below 2
    # values; from 2 values, the sample's: |a − b| / 2 for two.
    from shardeval.pipeline.core.states import ScalarMoments

    none, one = ScalarMoments.empty(), ScalarMoments.from_values(np.array([4.0]))
    two = ScalarMoments.from_values(np.array([1.0, 4.0]))
    assert np.isnan(none.variance(0))
    assert np.isnan(one.variance())
    assert one.variance(0) == 0.0
    assert np.isnan(none.standard_error())
    assert np.isnan(one.standard_error())
    assert two.standard_error() == pytest.approx(1.5, rel=1e-15)
    assert two.variance() == pytest.approx(4.5, rel=1e-15)


def test_moments_of_no_dimensions_pickle():
    # The packed upper triangle of a 0 × 0 co-moment is empty: nothing to concatenate.
    back = pickle.loads(pickle.dumps(Moments.empty(0)))
    assert (back.n, back.d, back.m2.shape) == (0, 0, (0, 0))


def test_log_states_of_float32_values_are_scipys_in_float64():
    # Log-weights or log-densities stored as float32 are read in float64 before exp: the sums
    # are scipy's float64 log-sum-exp of the same values (float32's exp would be off by 1e-7).
    # WeightStats flattens a block (n, k) of log-weights; RowLogSumExp sums each row.
    from scipy.special import logsumexp

    from shardeval.pipeline.core.states import LogSumExp, RowLogSumExp, WeightStats

    values = (np.random.default_rng(12).standard_normal((6, 50)) * 4).astype(np.float32)
    exact = values.astype(np.float64)
    lse = LogSumExp.from_values(values)
    assert lse.value == pytest.approx(logsumexp(exact), rel=1e-14)
    w = WeightStats.from_values(values, keep=7)
    assert w.n == exact.size
    weights = np.exp(exact - exact.max())
    assert w.sum == pytest.approx(weights.sum(), rel=1e-13)
    assert w.ess() == pytest.approx(weights.sum() ** 2 / (weights**2).sum(), rel=1e-13)
    assert w.max_normalized_weight() == pytest.approx(1 / weights.sum(), rel=1e-13)
    np.testing.assert_array_equal(w.top, np.sort(exact.reshape(-1))[::-1][:7])
    rows = RowLogSumExp.from_values(values)
    np.testing.assert_allclose(rows.values(), logsumexp(exact, axis=1), rtol=1e-14)


def test_log_states_of_zero_weights_and_of_no_values():
    # Every log-weight −inf (every weight zero): sums 0, ESS and the largest weight undefined
    # (NaN, never a division by zero); a query row with no sample in reach: −inf, without a
    # warning; a block of no values or of one value.
    import warnings

    from shardeval.pipeline.core.states import RowLogSumExp, WeightStats

    zero = WeightStats.from_values(np.full(4, -np.inf), keep=3)
    assert (zero.n, zero.max, zero.sum, zero.sum_sq, zero.all_zero) == (4, -np.inf, 0.0, 0.0, True)
    assert np.isnan(zero.ess())
    assert np.isnan(zero.max_normalized_weight())
    none = WeightStats.from_values(np.zeros(0), keep=3)
    assert (none.n, none.keep, none.top.size, none.all_zero) == (0, 3, 0, True)
    one = WeightStats.from_values(np.array([5.0]), keep=3)
    assert (one.n, one.max, one.sum, one.ess(), one.top.tolist()) == (1, 5.0, 1.0, 1.0, [5.0])
    values = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, -np.inf], [3.0, 3.0, 3.0]])
    rows = RowLogSumExp.from_values(values)
    np.testing.assert_array_equal(rows.max, [-np.inf, 2.0, 3.0])
    np.testing.assert_allclose(rows.sum, [0.0, 1.0 + np.exp(-1.0), 3.0], rtol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = rows.values()
    np.testing.assert_allclose(got, [-np.inf, np.logaddexp(1.0, 2.0), 3.0 + np.log(3.0)])
    nothing = RowLogSumExp.from_values(np.zeros((5, 0)))
    np.testing.assert_array_equal(nothing.max, np.full(5, -np.inf))
    np.testing.assert_array_equal(nothing.sum, np.zeros(5))
