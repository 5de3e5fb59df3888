"""The whole pipeline against float64 references on the concatenated data, whatever the shard
sizes, the merge tree and the scheduler."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardeval.pipeline import (
    Engine,
    Gaussian,
    NonFiniteError,
    ShapeError,
    feature_moments,
    frechet_distance,
    open_features,
)
from shardeval.pipeline.io.synthetic import gaussian_features, population, write_features
from tests.conftest import write_zarr
from tests.reference import exact_fid, np_stats, pytorch_fid_formula


def _fid(sources, **kw):
    (a, _), (b, _) = feature_moments(sources, **kw)
    return frechet_distance(Gaussian.from_moments(a), Gaussian.from_moments(b)).fid


def test_matches_numpy_reference(feature_pair):
    real_path, real, gen_path, gen = feature_pair
    got = _fid([open_features(real_path), open_features(gen_path)])
    assert got == pytest.approx(exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 400),
    split_every=st.one_of(st.none(), st.integers(2, 9)),
    scheduler=st.sampled_from(["threads", "sync"]),
)
def test_fp64_invariant_to_shards_tree_and_scheduler(feature_pair, rows, split_every, scheduler):
    real_path, _, gen_path, _ = feature_pair
    baseline = _fid([open_features(real_path), open_features(gen_path)], precision="fp64")
    shards = [open_features(real_path, shard_rows=rows), open_features(gen_path, shard_rows=rows)]
    got = _fid(shards, split_every=split_every, engine=Engine(scheduler), precision="fp64")
    assert got == pytest.approx(baseline, rel=1e-9)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 400),
    split_every=st.one_of(st.none(), st.integers(2, 9)),
    scheduler=st.sampled_from(["threads", "sync"]),
)
def test_fp32_tree_and_scheduler_invariance(feature_pair, rows, split_every, scheduler):
    # Fixed shards: only the float64 merge order changes, so 1e-9 holds with fp32 products.
    # Changing the shard sizes changes the fp32 rounding inside shards: ~1e-7 relative in FID.
    real_path, real, gen_path, gen = feature_pair
    shards = [open_features(real_path, shard_rows=rows), open_features(gen_path, shard_rows=rows)]
    baseline = _fid(shards, split_every=2, engine=Engine("sync"))
    got = _fid(shards, split_every=split_every, engine=Engine(scheduler))
    assert got == pytest.approx(baseline, rel=1e-9)
    assert got == pytest.approx(exact_fid(*np_stats(real), *np_stats(gen)), rel=1e-6)


def test_distributed_local_cluster_matches_threads(feature_pair):
    from distributed import LocalCluster

    real_path, _, gen_path, _ = feature_pair
    sources = [open_features(real_path, shard_rows=50), open_features(gen_path, shard_rows=50)]
    baseline = _fid(sources)
    seen = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        got = _fid(
            sources,
            engine=Engine(cluster.scheduler_address),
            progress=lambda done, total: seen.append((done, total)),
        )
    assert got == pytest.approx(baseline, rel=1e-9)
    assert seen[-1] == (sources[0].shards + sources[1].shards,) * 2


def test_progress_counts_every_shard(feature_pair):
    real_path, _, gen_path, _ = feature_pair
    sources = [open_features(real_path, shard_rows=100), open_features(gen_path, shard_rows=100)]
    seen = []
    feature_moments(sources, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 16)
    assert seen[-1] == (16, 16)


def test_nonfinite_rows_error_or_drop(tmp_path, rng):
    x = rng.standard_normal((120, 5)).astype(np.float32)
    x[[7, 50, 51, 119], [0, 2, 3, 4]] = [np.nan, np.inf, -np.inf, np.nan]
    src = open_features(write_zarr(tmp_path / "x.zarr", x, chunk_rows=16), shard_rows=16)
    with pytest.raises(NonFiniteError, match=r"4 row\(s\).*rows 7, 50, 51, 119"):
        feature_moments([src])
    ((m, dropped),) = feature_moments([src], nonfinite="drop")
    keep = np.isfinite(x).all(axis=1)
    assert dropped == 4
    assert m.n == 116
    np.testing.assert_allclose(
        m.covariance(), np.cov(x[keep].astype(np.float64), rowvar=False), rtol=1e-6, atol=1e-6
    )


def test_fewer_than_two_finite_rows(tmp_path):
    x = np.full((3, 2), np.nan, np.float32)
    x[0] = 1.0
    src = open_features(write_zarr(tmp_path / "x.zarr", x))
    with pytest.raises(ShapeError, match="1 finite row"):
        feature_moments([src], nonfinite="drop")


def test_closed_form_population(tmp_path):
    # Two synthetic sets whose population FID is known: sampling error shrinks as 1/√n.
    d, n = 8, 200_000
    for name, seed, mean, scale in (("r", 1, 0.0, 1.0), ("g", 2, 0.2, 1.3)):
        write_features(
            tmp_path / f"{name}.zarr", gaussian_features(n, d, seed=seed, mean=mean, scale=scale)
        )
    got = _fid([open_features(str(tmp_path / "r.zarr")), open_features(str(tmp_path / "g.zarr"))])
    expected = exact_fid(*population(d), *population(d, mean=0.2, scale=1.3))
    assert got == pytest.approx(expected, rel=0.02)


@pytest.mark.slow
def test_acceptance_50k_by_2048(tmp_path):
    """Acceptance: 50,000 x 2,048 float32 against float64 np.cov + an exact eigenvalue trace
    (1e-6 relative) and pytorch-fid's formula on the same statistics (1e-5 relative)."""
    n, d = 50_000, 2048
    paths = []
    for name, seed, mean, scale in (("r", 1, 0.5, 1.0), ("g", 2, 0.55, 1.1)):
        paths.append(str(tmp_path / f"{name}.zarr"))
        write_features(paths[-1], gaussian_features(n, d, seed=seed, mean=mean, scale=scale))
    (mr, _), (mg, _) = feature_moments([open_features(p) for p in paths])
    got = frechet_distance(Gaussian.from_moments(mr), Gaussian.from_moments(mg))
    ref_stats = []
    for p in paths:
        x = open_features(p).array.compute().astype(np.float64)
        ref_stats.append(np_stats(x))
        del x
    expected = exact_fid(*ref_stats[0], *ref_stats[1])
    assert got.fid == pytest.approx(expected, rel=1e-6)
    assert got.clamped_count == 0
    ours_on_same_stats = frechet_distance(Gaussian(*ref_stats[0]), Gaussian(*ref_stats[1])).fid
    assert ours_on_same_stats == pytest.approx(
        pytorch_fid_formula(*ref_stats[0], *ref_stats[1]), rel=1e-5
    )
    same = frechet_distance(Gaussian.from_moments(mr), Gaussian.from_moments(mr))
    assert abs(same.fid) <= 1e-9 * same.trace_real


def test_triton_path_equals_cpu_path(feature_pair):
    """FID through the Triton shard-moments kernel (interpreter on CPU) equals the BLAS path."""
    real_path, _, gen_path, _ = feature_pair
    sources = [open_features(real_path, shard_rows=300), open_features(gen_path, shard_rows=300)]
    cpu = _fid(sources, backend="torch")
    triton_path = _fid(sources, backend="triton")
    assert triton_path == pytest.approx(cpu, rel=1e-6)
