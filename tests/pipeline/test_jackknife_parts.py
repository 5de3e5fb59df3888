"""The jackknife's parts against their definitions: the rows' groups against splitmix64
written out in Python integers, the jackknife of given replicates against its closed form,
the empty grouped state, the bounds on the rows a replicate needs (which side is named), and
the replicates handed to the engine given."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.fid.jackknife import (
    GroupedMoments,
    fid_difference_jackknife,
    fid_jackknife,
    jackknife,
    row_groups,
    summarize_groups,
)

MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment, ⌊2^64/φ⌉ (odd)


def _splitmix64_mix(z: int) -> int:
    """Steele, Lea & Flood (2014), SplittableRandom's mix64, as in Vigna's splitmix64.c."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_splitmix64_reference_gives_the_published_stream():
    # splitmix64 seeded 0: its outputs are mix64(k·γ), k = 1, 2, … (Vigna's splitmix64.c)
    assert _splitmix64_mix(GAMMA) == 0xE220A8397B1DCDAF
    assert _splitmix64_mix((2 * GAMMA) & MASK) == 0x6E789E6AA1B965F4


@pytest.mark.parametrize(("offset", "groups", "seed"), [(0, 10, 0), (10**12, 7, 3), (5, 2, 11)])
def test_a_rows_group_is_splitmix64_of_its_index_and_the_seed(offset, groups, seed):
    """Row i of seed s is in group mix64(i + (s + 1)·γ mod 2^64) mod G; the hash wraps modulo
    2^64 silently (no overflow warning, even for a seed whose product with γ wraps)."""
    n = 300
    expected = [
        _splitmix64_mix((i + (seed + 1) * GAMMA) & MASK) % groups for i in range(offset, offset + n)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = row_groups(offset, n, groups, seed)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_the_jackknife_of_given_replicates_is_its_closed_form():
    estimate, theta, level = 2.0, [2.5, 1.75, 2.25, 3.0, 1.5], 0.8
    g = len(theta)
    mean = sum(theta) / g
    se = math.sqrt((g - 1) / g * sum((t - mean) ** 2 for t in theta))
    half = stats.t.ppf((1 + level) / 2, g - 1) * se
    jack = jackknife(estimate, theta, level)
    assert jack.standard_error == pytest.approx(se, rel=1e-14)
    assert jack.bias == pytest.approx((g - 1) * (mean - estimate), rel=1e-14)
    assert (jack.low, jack.high) == pytest.approx((estimate - half, estimate + half), rel=1e-14)
    assert jack.level == level
    assert jack.groups == g
    assert jack.replicates == tuple(theta)


def test_the_empty_grouped_state_holds_empty_groups_and_is_the_merge_identity():
    empty = GroupedMoments.empty(3, 4)
    assert len(empty.groups) == 4
    assert all(m.n == 0 and m.d == 3 for m in empty.groups)
    assert empty.nonfinite.count == 0
    assert empty.whole().n == 0
    rows = np.random.default_rng(0).normal(size=(40, 3))
    found = summarize_groups(rows, 0, 4, 0)
    for merged in (empty.merge(found), found.merge(empty)):
        for a, b in zip(merged.groups, found.groups, strict=True):
            assert a.n == b.n
            np.testing.assert_array_equal(a.m2, b.m2)
    with pytest.raises(ValueError, match="5 groups with 4"):
        GroupedMoments.empty(3, 5).merge(found)


def test_integers_beyond_two_to_the_53_name_their_global_row():
    block = np.ones((6, 2), dtype=np.int64)
    block[2, 1] = 2**53 + 1
    with pytest.raises(NumericalError, match="first at row 102"):
        summarize_groups(block, 100, 3, 0)


def _rows_in_two_groups(smallest: int, seed: int = 0) -> np.ndarray:
    """One-dimensional rows whose two groups (seed ``seed``) hold ``smallest`` rows and more."""
    for n in range(2 * smallest, 12 * smallest + 20):
        counts = np.bincount(row_groups(0, n, 2, seed), minlength=2)
        if counts.min() == smallest:
            return np.random.default_rng(n).normal(size=(n, 1))
    raise AssertionError("no such n")


def _fid_1d(a: np.ndarray, b: np.ndarray) -> float:
    """FID in one dimension: (μ_a − μ_b)² + (σ_a − σ_b)² (ddof = 1)."""
    return float((a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2)


def test_two_groups_of_two_rows_each_leave_a_replicate_and_one_row_does_not():
    ref = np.random.default_rng(1).normal(size=(50, 1)) + 0.5
    fixed = Gaussian(ref.mean(axis=0), np.atleast_2d(np.var(ref, ddof=1)), 50, "ref")
    gen = _rows_in_two_groups(2)  # the smaller group: 2 rows, a variance of its own
    ids = row_groups(0, len(gen), 2, 0)
    jack = fid_jackknife(0.0, fixed, summarize_groups(gen, 0, 2, 0), 0.9, ("ref", "gen"))
    theta = [_fid_1d(ref, gen[ids != g]) for g in range(2)]
    np.testing.assert_allclose(jack.replicates, theta, rtol=1e-10)
    one = _rows_in_two_groups(1)
    with pytest.raises(ShapeError, match=r"'gen'.* a group of 1 rows"):
        fid_jackknife(0.0, fixed, summarize_groups(one, 0, 2, 0), 0.9, ("ref", "gen"))


def test_a_reference_too_small_for_its_groups_is_named():
    rng = np.random.default_rng(2)
    real = summarize_groups(rng.normal(size=(3, 2)), 0, 5, 0)  # 3 rows cannot fill 5 groups
    gen = summarize_groups(rng.normal(size=(200, 2)), 0, 5, 0)
    with pytest.raises(ShapeError, match="'the-reference'"):
        fid_jackknife(0.0, real, gen, 0.9, ("the-reference", "gen"))


def test_sides_in_different_numbers_of_groups_are_refused():
    rng = np.random.default_rng(3)
    real = summarize_groups(rng.normal(size=(200, 2)), 0, 5, 0)
    gen = summarize_groups(rng.normal(size=(200, 2)), 0, 4, 0)
    with pytest.raises(ShapeError, match="'real' is in 5 groups and 'gen' in 4"):
        fid_jackknife(0.0, real, gen, 0.9, ("real", "gen"))


class _CountingEngine:
    """An engine that runs the delayed replicates in this thread and counts them."""

    def __init__(self):
        self.tasks = 0

    def run_delayed(self, tasks):
        import dask

        self.tasks += len(tasks)
        return list(dask.compute(*tasks, scheduler="sync"))


def test_the_replicates_run_on_the_engine_given():
    rng = np.random.default_rng(4)
    real, a, b = (summarize_groups(rng.normal(size=(120, 2)) + s, 0, 4, 1) for s in (0, 0.3, 0.6))
    engine = _CountingEngine()
    here = fid_jackknife(1.0, real, a, 0.9, ("r", "a"))
    there = fid_jackknife(1.0, real, a, 0.9, ("r", "a"), engine=engine)
    assert engine.tasks == 4
    np.testing.assert_allclose(there.replicates, here.replicates, rtol=1e-12)
    engine = _CountingEngine()
    paired = fid_difference_jackknife(0.0, real, a, b, 0.9, ("r", "a", "b"), engine=engine)
    assert engine.tasks == 8  # four replicates of each distance
    alone = fid_difference_jackknife(0.0, real, a, b, 0.9, ("r", "a", "b"))
    np.testing.assert_allclose(paired.replicates, alone.replicates, rtol=1e-12)


def test_the_groups_pass_reports_progress_and_names_a_side_with_nonfinite_rows(tmp_path):
    from shardeval.pipeline.core.engine import Engine
    from shardeval.pipeline.errors import NonFiniteError
    from shardeval.pipeline.fid.jackknife import grouped_moments
    from shardeval.pipeline.io.stores import open_features

    rows = np.random.default_rng(5).normal(size=(96, 3))
    rows[[7, 40], [0, 2]] = [np.nan, np.inf]
    np.save(tmp_path / "side.npy", rows)
    source = open_features(str(tmp_path / "side.npy"), shard_rows=16)
    args = {"groups": 4, "seed": 0, "engine": Engine("sync"), "device": "cpu", "backend": "auto"}
    with pytest.raises(NonFiniteError, match=r"side\.npy'.*first at rows 7, 40"):
        grouped_moments(source, nonfinite="error", **args)
    seen = []
    got, dropped = grouped_moments(
        source, nonfinite="drop", precision="fp64", progress=lambda *p: seen.append(p), **args
    )
    assert seen[-1] == (6, 6)  # every shard
    assert dropped == 2
    finite = np.isfinite(rows).all(axis=1)
    ids = row_groups(0, len(rows), 4, 0)
    for g, m in enumerate(got.groups):
        mine = rows[finite & (ids == g)]
        assert m.n == len(mine)
        np.testing.assert_allclose(m.mean, mine.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("tiny", [0, 1])
def test_a_replicate_that_cannot_be_computed_names_its_side(tiny):
    # Values of 1e-160: variances of 1e-320, below float64's normal range, which FID refuses
    # naming the statistics' side, in the replicates as in the estimate.
    rng = np.random.default_rng(6)
    sides = [rng.normal(size=(100, 2)) for _ in range(2)]
    sides[tiny] *= 1e-160
    real, gen = (summarize_groups(x, 0, 4, 0, precision="fp64") for x in sides)
    names = ("the-real", "the-gen")
    with pytest.raises(NumericalError, match=f"'{names[tiny]}' have variances below"):
        fid_jackknife(0.0, real, gen, 0.9, names)


class _RecordingEngine:
    """A local (or seemingly distributed) engine that records what the groups' pass asks."""

    def __init__(self, distributed: bool):
        from shardeval.pipeline.core.engine import Engine

        self.is_distributed, self.asked, self.sync = distributed, {}, Engine("sync")

    def reduce(self, roots, **options):
        self.asked = options
        if self.is_distributed:
            raise _Reached
        return self.sync.reduce(roots, **options)


class _Reached(Exception):
    pass


def test_the_groups_pass_hands_its_fan_in_to_the_engine_and_leaves_a_clusters_devices_be(
    tmp_path,
):
    import torch

    from shardeval.pipeline.errors import EngineError
    from shardeval.pipeline.fid.jackknife import grouped_moments
    from shardeval.pipeline.io.stores import open_features

    np.save(tmp_path / "side.npy", np.random.default_rng(7).normal(size=(64, 2)))
    source = open_features(str(tmp_path / "side.npy"), shard_rows=8)
    local = _RecordingEngine(distributed=False)
    got, _ = grouped_moments(source, groups=3, seed=0, engine=local, device="cpu", split_every=3)
    assert local.asked["split_every"] == 3
    assert sum(m.n for m in got.groups) == 64
    if not torch.cuda.is_available():
        # this machine has no GPU: refused here, but a cluster's workers may have one
        with pytest.raises(EngineError, match="no CUDA GPU"):
            grouped_moments(source, groups=3, seed=0, engine=local, device="cuda")
        with pytest.raises(_Reached):
            grouped_moments(
                source, groups=3, seed=0, engine=_RecordingEngine(distributed=True), device="cuda"
            )
