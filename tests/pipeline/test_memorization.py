"""AuthPct and each generated row's nearest training row against the float64 definition on
the concatenated data (scipy's cdist) and against dgm-eval's computation, whatever the blocks;
ties (duplicate rows, rows at one distance) decided as stated; inputs it cannot measure refused
in one line."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import shardeval as se
from shardeval.pipeline import NonFiniteError, ShapeError, open_features
from shardeval.pipeline.pairwise.passes import PRDCParams, sample_metrics


def authpct_reference(train, gen):
    """The definition in float64 on the whole sets: (AuthPct, copies, nearest distance,
    nearest index), the first training row of equal distances (np.argmin's)."""
    train, gen = np.asarray(train, np.float64), np.asarray(gen, np.float64)
    cross = cdist(gen, train, "sqeuclidean")
    index = np.argmin(cross, axis=1)
    sq = cross[np.arange(len(gen)), index]
    within = cdist(train, train, "sqeuclidean")
    np.fill_diagonal(within, np.inf)
    radius = within.min(axis=1)
    authentic = sq > radius[index]
    return 100.0 * int(authentic.sum()) / len(gen), int((sq == 0).sum()), np.sqrt(sq), index


def dgm_eval_authpct(train, gen):
    """dgm-eval's AuthPct (layer6ai-labs/dgm-eval, dgm_eval/metrics/authpct.py, after
    marcojira/fls), transcribed: torch.cdist in fp32 between all rows, each training row's
    distance to its nearest other training row (the diagonal set to inf), each generated row's
    nearest training row by ``min(dim=0)``; authentic where that row's radius < the distance."""
    t = torch.as_tensor(np.asarray(train), dtype=torch.float32)
    g = torch.as_tensor(np.asarray(gen), dtype=torch.float32)
    within = torch.cdist(t, t)
    within.fill_diagonal_(float("inf"))
    radius = within.min(dim=0).values
    nearest = torch.cdist(t, g).min(dim=0)
    authentic = radius[nearest.indices] < nearest.values
    return float(100 * authentic.sum() / len(authentic))


def _store(folder, name, x):
    np.save(folder / f"{name}.npy", x)
    return open_features(str(folder / f"{name}.npy"))


def _memorization(folder, train, gen, **kw):
    return sample_metrics(
        _store(folder, "train", train), _store(folder, "gen", gen), memorization=True, **kw
    )["memorization"]


def _assert_definition(got, train, gen):
    authpct, copies, distance, index = authpct_reference(train, gen)
    assert got.authpct == authpct
    assert got.copies == copies
    np.testing.assert_array_equal(got.nearest_index, index)
    np.testing.assert_allclose(got.nearest_distance, distance, rtol=1e-14, atol=0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 120),
    m=st.integers(2, 120),
    d=st.integers(1, 40),
    block_rows=st.integers(1, 130),
    precision=st.sampled_from(["fp32", "fp64"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_authpct_equals_the_float64_definition_whatever_the_blocks(
    tmp_path_factory, seed, n, m, d, block_rows, precision, dtype
):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n, d)).astype(dtype)
    gen = (rng.normal(size=(m, d)) * 1.3).astype(dtype)
    copied = rng.integers(0, n, size=rng.integers(0, m + 1))
    gen[: copied.size] = train[copied]  # copies of training rows
    if n > 3:
        train[rng.integers(n)] = train[rng.integers(n)]  # a duplicate: its radius is 0
    got = _memorization(
        tmp_path_factory.mktemp("memo"), train, gen, block_rows=block_rows, precision=precision
    )
    _assert_definition(got, train, gen)
    assert (got.n_train, got.n_gen) == (n, m)


def test_authpct_equals_dgm_eval(tmp_path):
    rng = np.random.default_rng(11)
    d = 32
    train = rng.normal(size=(1500, d)).astype(np.float32)
    gen = (rng.normal(size=(1200, d)) * 0.9 + 0.05).astype(np.float32)
    gen[:150] = train[rng.choice(1500, 150, replace=False)]  # memorized rows, and near ones:
    gen[150:300] = train[:150] + rng.normal(size=(150, d)).astype(np.float32) * 0.3
    got = _memorization(tmp_path, train, gen, block_rows=400)
    assert got.authpct == pytest.approx(dgm_eval_authpct(train, gen), rel=1e-6)  # its fp32
    assert 10 < got.authpct < 90
    _assert_definition(got, train, gen)


@pytest.mark.parametrize("block_rows", [1, 2, None])
@pytest.mark.parametrize("flipped", [False, True])
def test_a_generated_row_at_one_distance_from_two_training_rows_takes_the_first(
    tmp_path, block_rows, flipped
):
    # g = (1, 0) is at distance 1 from a = (0, 0) and b = (2, 0). a's radius is 0.5 (to
    # (-0.5, 0)): g is authentic against a; b's is 2: g is not authentic against b. Of rows at
    # one distance the first is taken, as torch's min(dim) takes it in dgm-eval.
    a, b = [0.0, 0.0], [2.0, 0.0]
    rest = [[-0.5, 0.0], [2.0, 3.0]]
    train = np.array([b, a, *rest] if flipped else [a, b, *rest])
    gen = np.array([[1.0, 0.0], [9.0, 9.0]])
    got = _memorization(tmp_path, train, gen, block_rows=block_rows)
    _assert_definition(got, train, gen)
    assert got.nearest_index[0] == 0
    assert got.nearest_distance[0] == 1.0
    assert got.authentic[0] is np.False_ if flipped else got.authentic[0]
    assert got.authpct == (50.0 if flipped else 100.0)
    assert dgm_eval_authpct(train, gen) == got.authpct


def test_duplicate_training_rows_and_copies(tmp_path):
    # A training row given twice has radius 0: a generated row equal to it (distance 0) is not
    # authentic (0 > 0 is false), one at any positive distance from it is; the copy's nearest
    # row is the first of the two.
    rng = np.random.default_rng(5)
    train = rng.normal(size=(40, 3)) * 10
    train[25] = train[7]
    gen = np.stack([train[7], train[7] + 1e-9, train[12], train[30] + 50.0])
    got = _memorization(tmp_path, train, gen, block_rows=10)
    _assert_definition(got, train, gen)
    assert got.authentic.tolist() == [False, True, False, True]
    assert got.nearest_index[:3].tolist() == [7, 7, 12]
    assert got.copies == 2
    assert got.authpct == 50.0


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e200, 1e300, 2.0**-1000, 2.0**1000])
def test_float64_rows_at_any_scale(tmp_path, scale):
    # AuthPct compares distances: it does not change with the scale of both sets, and the
    # distances reported scale with it (the rows are compared × a power of two, exactly).
    rng = np.random.default_rng(9)
    train, gen = rng.normal(size=(70, 5)), rng.normal(size=(60, 5)) * 1.2
    got = _memorization(tmp_path, train * scale, gen * scale, block_rows=16)
    authpct, copies, distance, index = authpct_reference(train, gen)
    assert (got.authpct, got.copies) == (authpct, copies)
    np.testing.assert_array_equal(got.nearest_index, index)
    np.testing.assert_allclose(got.nearest_distance, distance * scale, rtol=1e-14)


def test_a_set_against_itself(tmp_path):
    x = np.random.default_rng(2).normal(size=(50, 4))
    store = _store(tmp_path, "x", x)
    got = sample_metrics(store, store, memorization=True, block_rows=7)["memorization"]
    assert got.authpct == 0.0
    assert got.copies == 50
    np.testing.assert_array_equal(got.nearest_index, np.arange(50))


def test_shared_passes_give_each_metric_its_own_value(tmp_path):
    rng = np.random.default_rng(4)
    train, gen = rng.normal(size=(300, 6)), rng.normal(size=(250, 6))
    alone = _memorization(tmp_path, train, gen)
    both = sample_metrics(
        _store(tmp_path, "t", train),
        _store(tmp_path, "g", gen),
        memorization=True,
        prdc=PRDCParams(k=4, pr_k=2),
    )
    assert both["memorization"].authpct == alone.authpct
    np.testing.assert_array_equal(both["memorization"].nearest_index, alone.nearest_index)
    prdc = sample_metrics(
        _store(tmp_path, "t", train), _store(tmp_path, "g", gen), prdc=PRDCParams(k=4, pr_k=2)
    )["prdc"]
    assert both["prdc"] == prdc


def test_inputs_it_cannot_measure_are_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(1)
    gen = rng.normal(size=(20, 4))
    with pytest.raises(ShapeError, match=r"d=5, .* d=4"):
        _memorization(tmp_path, rng.normal(size=(30, 5)), gen)
    with pytest.raises(ShapeError, match=r"'.*train.npy' has 1 row\(s\); at least 2"):
        _memorization(tmp_path, rng.normal(size=(1, 4)), gen)
    bad = rng.normal(size=(30, 4))
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError):
        _memorization(tmp_path, bad, gen)


def test_the_metric_by_every_route(tmp_path, capsys):
    import json

    from shardeval.workflows.cli import main
    from shardeval.workflows.history import History
    from shardeval.workflows.job_spec import JobError
    from shardeval.workflows.jobs import load_job, run_job

    rng = np.random.default_rng(8)
    train, gen = rng.normal(size=(200, 5)), rng.normal(size=(150, 5))
    gen[:20] = train[:20]
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "gen.npy", gen)
    authpct, copies, distance, index = authpct_reference(train, gen)
    python = se.metrics(train, gen, ["authpct"], per_sample=True).to_dict()["authpct"]
    assert python["authpct"] == authpct
    assert python["authpct_copies"] == copies == 20
    assert python["authpct_nearest_index"] == index.tolist()
    np.testing.assert_allclose(python["authpct_nearest_distance"], distance, rtol=1e-14)
    plain = se.metrics(train, gen, ["authpct"]).to_dict()["authpct"]
    assert plain["authpct_nearest_index"] is None
    assert plain["authpct_nearest_distance"] is None
    capsys.readouterr()
    stores = [str(tmp_path / "train.npy"), str(tmp_path / "gen.npy")]
    argv = ["metrics", "--metrics", "authpct", *stores]
    assert main([*argv, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["authpct"] == plain
    # A history holds one row per entry: the per-sample arrays (one value per generated row,
    # of each entry's length) go to the entries' per-sample groups, which the job must name.
    np.save(tmp_path / "short.npy", gen[:90])
    job = (
        '[job]\nname = "memo"\nhistory = "history.zarr"\n{rows}'
        f'[reference]\nstore = "{tmp_path / "train.npy"}"\n'
        f'[[entries]]\nname = "gen"\nstore = "{tmp_path / "gen.npy"}"\nstep = 1\n'
        f'[[entries]]\nname = "short"\nstore = "{tmp_path / "short.npy"}"\nstep = 2\n'
        "[metrics.authpct]\nper_sample = true\n"
    )
    (tmp_path / "job.toml").write_text(job.format(rows=""))
    with pytest.raises(JobError, match=r"metrics.authpct.per_sample = true: .* \[job\] per_sample"):
        load_job(tmp_path / "job.toml")
    (tmp_path / "job.toml").write_text(job.format(rows='per_sample = "rows"\n'))
    run_job(load_job(tmp_path / "job.toml"))
    assert (tmp_path / "rows" / "short.zarr").exists()
    row, short = History(str(tmp_path / "history.zarr")).table()
    assert row["authpct"] == authpct
    assert short["authpct"] == authpct_reference(train, gen[:90])[0]
    assert row.get("authpct_nearest_index") is None
    with se.RowMetrics(("authpct",)) as metric:
        metric.update(torch.as_tensor(train), real=True)
        metric.update(torch.as_tensor(gen))
        assert metric.compute().to_dict()["authpct"] == plain
