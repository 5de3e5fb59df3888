"""``se.compare``: each metric's difference is the difference of what ``se.fid`` and ``se.kid``
report for the two sets; its standard error is the paired one on the same rows (FID's paired
jackknife by its definition, KID's from the pair sums of the definition), whatever the
sharding; a reference of statistics is held fixed; what cannot be compared is refused."""

import numpy as np
import pytest
from scipy import stats

import shardeval as se
from shardeval.pipeline.errors import MetricOptionError, OptionError, ShapeError, StoreError
from shardeval.pipeline.fid.jackknife import row_groups
from shardeval.pipeline.metrics.paired import PairedDifference
from shardeval.pipeline.mmd.kid import mmd2_difference_se
from shardeval.pipeline.pairwise.pair_states import CrossSums, SetSums
from tests.reference import exact_fid, np_stats


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(21)
    ref = rng.normal(size=(360, 5))
    a = 1.2 * rng.normal(size=(330, 5)) + 0.3
    b = rng.normal(size=(300, 5)) + 0.4
    return ref, a, b


@pytest.mark.parametrize("shard_rows", [None, 41])
def test_the_difference_is_that_of_the_metrics_alone(sets, shard_rows):
    ref, a, b = sets
    report = se.compare(ref, a, b, "fid,kid", shard_rows=shard_rows)
    for name, verb in (("fid", se.fid), ("kid", se.kid)):
        expected = float(verb(ref, a)) - float(verb(ref, b))
        got = report[name]
        assert isinstance(got, PairedDifference)
        assert got.difference == pytest.approx(expected, rel=1e-10)
        assert report.to_dict()[name][f"{name}_difference"] == got.difference
        assert got.a == pytest.approx(float(verb(ref, a)), rel=1e-10)
        assert got.low < got.difference < got.high
    assert float(report) == report["fid"].difference
    assert report.to_dict()["gen_a"]["kid"]["kid"] == report["kid"].a


def test_fids_standard_error_is_the_paired_jackknife_of_the_rows(sets):
    ref, a, b = sets
    report = se.compare(ref, a, b, ci=0.9, ci_groups=6, ci_seed=4, precision="fp64")
    ids = [row_groups(0, len(x), 6, 4) for x in (ref, a, b)]

    def fid(r, g):
        return exact_fid(*np_stats(r), *np_stats(g))

    theta = np.array(
        [
            fid(ref[ids[0] != g], a[ids[1] != g]) - fid(ref[ids[0] != g], b[ids[2] != g])
            for g in range(6)
        ]
    )
    se_ = np.sqrt(5 / 6 * np.sum((theta - theta.mean()) ** 2))
    got = report["fid"]
    assert got.standard_error == pytest.approx(se_, rel=1e-7)
    half = stats.t.ppf(0.95, 5) * se_
    assert (got.low, got.high) == pytest.approx((got.difference - half, got.difference + half))
    assert got.level == 0.9
    assert "over 6 groups" in got.method
    assert "seed 4" in got.method


def _set_sums(k):
    diagonal = np.diag(k)
    return SetSums(
        float(k.sum() - diagonal.sum()),
        float((k**2).sum() - (diagonal**2).sum()),
        float(diagonal.sum()),
        k.sum(axis=1) - diagonal,
    )


def test_kids_standard_error_reads_the_sums_of_both_passes(sets):
    ref, a, b = sets

    def kernel(x, y):
        return (x @ y.T / 5 + 1.0) ** 3

    own = []
    for g in (a, b):
        k = kernel(ref, g)
        cross = CrossSums(float(k.sum()), float((k**2).sum()), k.sum(axis=1), k.sum(axis=0))
        own.append((_set_sums(kernel(g, g)), cross))
    expected = mmd2_difference_se(own[0], own[1], len(ref), len(a), len(b))
    got = se.compare(ref, a, b, "kid", ci=0.8)["kid"]
    assert got.standard_error == pytest.approx(expected, rel=1e-8)
    z = stats.norm.ppf(0.9)
    assert got.low == pytest.approx(got.difference - z * got.standard_error, rel=1e-12)


def test_a_reference_of_statistics_is_held_fixed(sets, tmp_path):
    ref, a, b = sets
    se.stats(ref, str(tmp_path / "ref.npz"))
    report = se.compare(str(tmp_path / "ref.npz"), a, b)
    rows = se.compare(ref, a, b)
    assert report["fid"].difference == pytest.approx(rows["fid"].difference, rel=1e-6)
    assert "held fixed: the interval is conditional on it" in report["fid"].method
    assert "conditional" in report.summary()
    assert report.to_dict()["inputs"]["real"]["kind"] == "statistics"


def test_the_summary_reads_as_a_sentence(sets):
    ref, a, _ = sets
    report = se.compare(ref, a, a + 1.0, "fid,kid")
    first = report.summary().splitlines()[0]
    assert first.startswith("FID a ")
    assert ": difference " in first
    assert "(95 % interval [" in first
    assert first.endswith("a is lower")
    assert report["kid"].verdict == "a is lower"
    same = se.compare(ref, a, a.copy())["fid"]
    assert same.difference == 0.0
    assert same.verdict == "within noise"


def test_what_cannot_be_compared_is_refused(sets, tmp_path):
    ref, a, b = sets
    for level in (0, 1.0, -0.2, 1.5):
        with pytest.raises(OptionError, match=r"ci: expected a finite number in \(0, 1\)"):
            se.compare(ref, a, b, ci=level)
    with pytest.raises(OptionError, match="compare supports fid, kid; not cmmd"):
        se.compare(ref, a, b, "fid,cmmd")
    with pytest.raises(MetricOptionError, match="subsets"):
        se.compare(ref, a, b, "kid", subsets=3)
    with pytest.raises(ShapeError, match="d=4"):
        se.compare(ref, a, b[:, :4])
    se.stats(b, str(tmp_path / "b.npz"))
    with pytest.raises(StoreError, match="rows of both generated sets"):
        se.compare(ref, a, str(tmp_path / "b.npz"))
    with pytest.raises(ShapeError, match="group"):
        se.compare(ref, a, b[:8])  # 8 rows cannot fill 10 groups
