"""FID's delete-a-group jackknife: groups that depend on neither sharding nor row order, the
same interval on every route, refusals of what cannot hold an interval, and calibration on
Gaussian data (the reported standard error against the spread of the estimate over
independent replicates, and the interval's coverage of the estimate's mean)."""

import json

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import MetricOptionError, ShapeError
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.fid.jackknife import (
    GroupedMoments,
    fid_jackknife,
    row_groups,
    summarize_groups,
)
from tests.reference import exact_fid, np_stats


def _reference_fid(real, gen):
    """Float64 FID of the rows by the definition (tests/reference.py)."""
    return exact_fid(*np_stats(real), *np_stats(gen))


def _reference_jackknife(real, gen, groups, seed, level):
    """The definition on the concatenated rows: drop group g of each side, FID of the rest."""
    from scipy import stats

    ids_r, ids_g = row_groups(0, len(real), groups, seed), row_groups(0, len(gen), groups, seed)
    theta = np.array([_reference_fid(real[ids_r != g], gen[ids_g != g]) for g in range(groups)])
    estimate = _reference_fid(real, gen)
    se_ = np.sqrt((groups - 1) / groups * np.sum((theta - theta.mean()) ** 2))
    half = stats.t.ppf((1 + level) / 2, groups - 1) * se_
    return estimate, se_, (groups - 1) * (theta.mean() - estimate), estimate - half, estimate + half


def test_a_rows_group_depends_on_its_index_alone():
    whole = row_groups(0, 1000, 7, 3)
    pieces = np.concatenate([row_groups(o, n, 7, 3) for o, n in ((0, 1), (1, 400), (401, 599))])
    np.testing.assert_array_equal(whole, pieces)
    counts = np.bincount(whole, minlength=7)
    assert counts.min() > 100  # mixed: about 1000 / 7 each
    assert not np.array_equal(whole, row_groups(0, 1000, 7, 4))  # the seed moves rows


@pytest.mark.parametrize("shard_rows", [None, 1, 37, 500])
def test_the_interval_equals_the_definition_under_any_sharding(shard_rows):
    rng = np.random.default_rng(1)
    real = rng.normal(size=(600, 5))
    gen = 1.2 * rng.normal(size=(500, 5)) + 0.4
    report = se.fid(
        real, gen, ci=0.9, ci_groups=6, ci_seed=2, shard_rows=shard_rows, precision="fp64"
    )
    got = report.to_dict()["fid"]
    estimate, se_, bias, low, high = _reference_jackknife(real, gen, 6, 2, 0.9)
    assert got["fid"] == pytest.approx(estimate, rel=1e-9)
    assert got["fid_standard_error"] == pytest.approx(se_, rel=1e-7)
    assert got["fid_jackknife_bias"] == pytest.approx(bias, rel=1e-6, abs=1e-12)
    assert (got["fid_ci_low"], got["fid_ci_high"]) == pytest.approx((low, high), rel=1e-7)
    assert "delete-a-group jackknife over 6 groups" in report.summary()


def test_the_groups_merge_in_any_order():
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(300, 3))
    parts = [summarize_groups(rows[a:b], a, 4, 0) for a, b in ((0, 90), (90, 91), (91, 300))]
    one = summarize_groups(rows, 0, 4, 0)
    for merged in (
        parts[0].merge(parts[1]).merge(parts[2]),
        parts[2].merge(parts[0].merge(parts[1])),
    ):
        for a, b in zip(merged.groups, one.groups, strict=True):
            assert a.n == b.n
            np.testing.assert_allclose(a.m2, b.m2, rtol=1e-9)


def test_a_sorted_set_neither_inflates_nor_shrinks_the_error():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(800, 4))
    gen = rng.normal(size=(800, 4)) + 0.5
    ordered = gen[np.argsort(gen[:, 0])]  # groups of contiguous rows would be slices of it

    def mean_error(rows):
        errors = []
        for seed in range(8):
            g_r, g_g = (summarize_groups(x, 0, 10, seed) for x in (real, rows))
            estimate = _fid_of(g_r, g_g)
            errors.append(fid_jackknife(estimate, g_r, g_g, 0.95, ("r", "g")).standard_error)
        return np.mean(errors)

    assert 0.8 < mean_error(ordered) / mean_error(gen) < 1.25


def _fid_of(real: GroupedMoments, gen: GroupedMoments) -> float:
    from shardeval.pipeline.fid.frechet import frechet_distance

    def merged(side):
        total = Moments.empty(side.groups[0].d)
        for m in side.groups:
            total = total.merge(m)
        return Gaussian.from_moments(total, "rows")

    return frechet_distance(merged(real), merged(gen)).fid


@pytest.mark.parametrize("n", [400, 2000])
def test_the_interval_is_calibrated_on_gaussian_data(n):
    """1,000 independent replicates of FID between N(0, I) and N(0.3·1, 1.2² I) at d = 4:
    the mean reported standard error within 20 % of the estimates' standard deviation, and
    the 95 % interval covering the estimates' mean in 92–98 % of replicates (the binomial
    standard deviation of the coverage is 0.7 %)."""
    rng = np.random.default_rng(100 + n)
    replicates = 1000
    estimates, errors, lows, highs = [], [], [], []
    for _ in range(replicates):
        real = rng.normal(size=(n, 4))
        gen = 1.2 * rng.normal(size=(n, 4)) + 0.3
        g_r, g_g = summarize_groups(real, 0, 10, 0), summarize_groups(gen, 0, 10, 0)
        estimate = _fid_of(g_r, g_g)
        jack = fid_jackknife(estimate, g_r, g_g, 0.95, ("real", "gen"))
        estimates.append(estimate)
        errors.append(jack.standard_error)
        lows.append(jack.low)
        highs.append(jack.high)
    estimates = np.array(estimates)
    ratio = np.mean(errors) / estimates.std(ddof=1)
    covered = np.mean((np.array(lows) <= estimates.mean()) & (estimates.mean() <= np.array(highs)))
    assert 0.8 <= ratio <= 1.2, ratio
    assert 0.92 <= covered <= 0.98, covered


def test_the_interval_against_a_reference_of_statistics_holds_it_fixed(tmp_path):
    rng = np.random.default_rng(4)
    real = rng.normal(size=(500, 3))
    gen = rng.normal(size=(500, 3)) + 0.2
    se.stats(real, str(tmp_path / "real.npz"))
    fixed = se.fid(str(tmp_path / "real.npz"), gen, ci=0.95).to_dict()["fid"]
    both = se.fid(real, gen, ci=0.95).to_dict()["fid"]
    assert fixed["fid"] == pytest.approx(both["fid"], rel=1e-6)
    # holding the reference fixed drops its share of the variance
    assert 0 < fixed["fid_standard_error"] < both["fid_standard_error"]


def test_what_cannot_hold_an_interval_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    real, gen = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    for level in (1.0, -0.5, 1.5):
        with pytest.raises(MetricOptionError, match="ci"):
            se.fid(real, gen, ci=level)
    with pytest.raises(MetricOptionError, match="ci_groups"):
        se.fid(real, gen, ci_groups=5)  # applies with «ci» only
    with pytest.raises(ShapeError, match="group"):
        se.fid(real[:8], gen, ci=0.95)  # 8 rows cannot fill 10 groups
    se.stats(gen, str(tmp_path / "gen.npz"))
    with pytest.raises(MetricOptionError, match="generated rows"):
        se.fid(real, str(tmp_path / "gen.npz"), ci=0.95)


def test_every_route_gives_the_same_interval(tmp_path, capsys):
    from shardeval.workflows.cli import main
    from shardeval.workflows.history import History
    from shardeval.workflows.jobs import load_job, run_job

    rng = np.random.default_rng(6)
    np.save(tmp_path / "real.npy", rng.normal(size=(300, 4)))
    np.save(tmp_path / "gen.npy", rng.normal(size=(260, 4)) + 0.3)
    real, gen = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    python = se.fid(real, gen, ci=0.9, ci_groups=5).to_dict()["fid"]
    capsys.readouterr()
    assert main(["fid", real, gen, "--ci", "0.9", "--ci-groups", "5", "--json", "-q"]) == 0
    command = json.loads(capsys.readouterr().out)["fid"]
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "ci"\nhistory = "h.zarr"\n[reference]\nstore = "{real}"\n'
        f'[[entries]]\nname = "gen"\nstore = "{gen}"\nstep = 1\n'
        "[metrics.fid]\nci = 0.9\nci_groups = 5\n"
    )
    run_job(load_job(tmp_path / "job.toml"))
    (row,) = History(str(tmp_path / "h.zarr")).table()
    for key in ("fid", "fid_standard_error", "fid_ci_low", "fid_ci_high", "fid_jackknife_bias"):
        assert command[key] == python[key]
        assert row[key] == pytest.approx(python[key], rel=1e-12), key


def test_with_ci_each_side_is_read_once_and_fid_is_the_same(monkeypatch):
    """The groups give the moments too: no second pass, and the estimate is FID's (the same
    rows summed in another order)."""
    import shardeval.pipeline.fid.moments as moments

    rng = np.random.default_rng(8)
    real, gen = rng.normal(size=(700, 6)), 1.1 * rng.normal(size=(650, 6)) + 0.2
    plain = se.fid(real, gen).to_dict()["fid"]["fid"]
    plain64 = se.fid(real, gen, precision="fp64").to_dict()["fid"]["fid"]

    def no_pass(*args, **kwargs):
        raise AssertionError("a moments pass beside the groups' pass")

    monkeypatch.setattr(moments, "feature_moments", no_pass)
    with_ci = se.fid(real, gen, ci=0.95, shard_rows=128).to_dict()["fid"]
    assert with_ci["fid"] == pytest.approx(plain, rel=1e-6)  # fp32 products, grouped otherwise
    with_ci64 = se.fid(real, gen, ci=0.95, precision="fp64").to_dict()["fid"]
    assert with_ci64["fid"] == pytest.approx(plain64, rel=1e-12)
    assert with_ci64["fid"] == pytest.approx(_reference_fid(real, gen), rel=1e-10)


def test_replicates_on_the_engine_are_those_computed_in_process():
    from shardeval.pipeline.core.engine import Engine

    rng = np.random.default_rng(9)
    real, gen = rng.normal(size=(300, 4)), rng.normal(size=(280, 4)) + 0.3
    g_r, g_g = summarize_groups(real, 0, 5, 1), summarize_groups(gen, 0, 5, 1)
    args = (1.0, g_r, g_g, 0.95, ("r", "g"))
    here = fid_jackknife(*args)
    there = fid_jackknife(*args, engine=Engine("threads", num_workers=2))
    np.testing.assert_allclose(there.replicates, here.replicates, rtol=1e-12)
    assert there.standard_error == pytest.approx(here.standard_error, rel=1e-9)


def test_rounding_that_reaches_the_spectrum_recomputes_the_groups_in_float64():
    """Repeated rows: a covariance of rank 3 in d = 8, whose zero eigenvalues fp32 products
    cannot resolve; with «ci» the groups are read again with float64 products."""
    rng = np.random.default_rng(10)
    base = rng.normal(size=(4, 8)) * 100 + 1000
    real = np.repeat(base, 60, axis=0).astype(np.float32)
    gen = rng.normal(size=(300, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match="recomputed with float64 products"):
        got = se.fid(real, gen, ci=0.95, ci_groups=4).to_dict()["fid"]
    expected = _reference_fid(real.astype(np.float64), gen.astype(np.float64))
    assert got["fid"] == pytest.approx(expected, rel=1e-9)
    assert got["fid_ci_low"] < got["fid"] < got["fid_ci_high"]


def test_the_groups_pass_checks_its_device_before_reading():
    import torch

    from shardeval.pipeline.errors import EngineError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    rng = np.random.default_rng(12)
    with pytest.raises(EngineError, match="no CUDA GPU"):
        se.fid(rng.normal(size=(50, 3)), rng.normal(size=(50, 3)), ci=0.9, device="cuda")


def test_the_interval_never_reaches_below_zero():
    # Same distribution, few rows: FID is small beside its error, and the t interval's low
    # end, estimate − t·SE, falls below 0, where no FID lies.
    rng = np.random.default_rng(5)
    real, gen = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    got = se.fid(real, gen, ci=0.95, precision="fp64").to_dict()["fid"]
    estimate, se_, _, low, high = _reference_jackknife(real, gen, 10, 0, 0.95)
    assert low < 0  # the case this test is about
    assert got["fid"] == pytest.approx(estimate, rel=1e-9)
    assert got["fid_ci_low"] == 0.0
    assert got["fid_ci_high"] == pytest.approx(high, rel=1e-7)
    assert got["fid_standard_error"] == pytest.approx(se_, rel=1e-7)
