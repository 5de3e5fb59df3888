import numpy as np
import pytest

from shardeval.pipeline import (
    Gaussian,
    Moments,
    StatsFormatError,
    StoreError,
    frechet_distance,
    load_stats,
    save_stats,
)
from shardeval.pipeline.fid.gaussian import as_gaussian
from shardeval.pipeline.io.statsio import stats_provenance
from tests.reference import pytorch_fid_formula


@pytest.fixture
def moments(rng):
    return Moments.from_rows(rng.standard_normal((40, 6)) + 2)


def test_zarr_stats_round_trip_exactly(tmp_path, moments):
    path = save_stats(tmp_path / "s.zarr", moments, {"source": "x.zarr"})
    back = load_stats(path)
    assert isinstance(back, Moments)
    assert back.n == moments.n
    np.testing.assert_array_equal(back.mean, moments.mean)
    np.testing.assert_array_equal(back.m2, moments.m2)
    assert stats_provenance(path)["source"] == "x.zarr"
    save_stats(path, moments.merge(moments), overwrite=True)  # replaces the old group whole
    assert load_stats(path).n == 2 * moments.n


def test_npz_with_n_is_mergeable(tmp_path, moments):
    back = load_stats(save_stats(tmp_path / "s.npz", moments))
    assert isinstance(back, Moments)
    assert back.n == moments.n
    np.testing.assert_allclose(back.m2, moments.m2, rtol=1e-13)
    with np.load(tmp_path / "s.npz") as f:
        np.testing.assert_allclose(f["sigma"], moments.covariance(), rtol=1e-15)


def test_bare_pytorch_fid_npz_gives_pytorch_fids_value(tmp_path, rng):
    stats = []
    for i, shift in enumerate((0.0, 0.4)):
        x = rng.standard_normal((300, 8)) @ rng.standard_normal((8, 8)) + shift
        mu, sigma = x.mean(0), np.cov(x, rowvar=False)
        np.savez(tmp_path / f"{i}.npz", mu=mu, sigma=sigma)
        stats.append((mu, sigma))
    a, b = load_stats(tmp_path / "0.npz"), load_stats(tmp_path / "1.npz")
    assert isinstance(a, Gaussian)
    assert not a.mergeable
    ours = frechet_distance(as_gaussian(a), as_gaussian(b)).fid
    assert ours == pytest.approx(pytorch_fid_formula(*stats[0], *stats[1]), rel=1e-5)


@pytest.mark.parametrize(
    ("arrays", "msg"),
    [
        ({"mu": np.zeros(3)}, "lacks \\['sigma'\\]"),
        ({"mean": np.zeros(3), "cov": np.eye(3)}, "lacks"),
        ({"mu": np.zeros(3), "sigma": np.eye(4)}, "expected \\(d,\\) and \\(d, d\\)"),
        ({"mu": np.zeros((3, 1)), "sigma": np.eye(3)}, "expected"),
        ({"mu": np.full(3, np.nan), "sigma": np.eye(3)}, "NaN"),
    ],
)
def test_bad_npz(tmp_path, arrays, msg):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(StatsFormatError, match=msg):
        load_stats(tmp_path / "bad.npz")


def test_missing_and_foreign_stats(tmp_path, rng):
    with pytest.raises(StoreError, match="does not exist"):
        load_stats(tmp_path / "none.zarr")
    import zarr

    zarr.create_array(str(tmp_path / "feats.zarr"), shape=(3, 2), dtype="f4")
    with pytest.raises((StatsFormatError, StoreError)):
        load_stats(tmp_path / "feats.zarr")


def test_zarr_statistics_with_a_missing_chunk_are_refused(tmp_path, moments):
    import os

    path = save_stats(tmp_path / "s.zarr", moments)
    chunks = [
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(path, "m2"))
        for name in names
        if name != "zarr.json"
    ]
    os.remove(chunks[0])  # an m2 that would read as zeros
    with pytest.raises(StoreError, match="chunks of 'm2' are missing"):
        load_stats(path)


def test_statistics_are_recognised_by_their_bytes_not_their_names(tmp_path, rng, moments):
    from shardeval.pipeline.io.statsio import is_stats

    x = rng.standard_normal((100, 3))
    np.savez(tmp_path / "s.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    (tmp_path / "s.npz").rename(tmp_path / "s.npy")  # a zip archive named .npy
    save_stats(tmp_path / "group.zarr", moments)
    (tmp_path / "group.zarr").rename(tmp_path / "group.npz")  # a Zarr folder named .npz
    with open(tmp_path / "features.npz", "wb") as fh:
        np.save(fh, x)  # an array named .npz: not statistics
    assert is_stats(tmp_path / "s.npy")
    assert is_stats(tmp_path / "group.npz")
    assert not is_stats(tmp_path / "features.npz")
    np.testing.assert_allclose(load_stats(tmp_path / "s.npy").mean, x.mean(0), rtol=1e-15)
    back = load_stats(tmp_path / "group.npz")
    assert isinstance(back, Moments)
    np.testing.assert_array_equal(back.m2, moments.m2)
    assert stats_provenance(tmp_path / "group.npz")["format"] == "shardeval.moments"
    with pytest.raises(StatsFormatError, match=r"holds one array of shape \(100, 3\)"):
        load_stats(tmp_path / "features.npz")
    (tmp_path / "junk.npz").write_bytes(b"not numpy at all")
    with pytest.raises(StoreError, match=r"is neither a \.npy array nor a \.npz archive"):
        load_stats(tmp_path / "junk.npz")


@pytest.mark.parametrize(
    ("mu", "sigma"),
    [
        (np.float64(1.5), np.float64(4.0)),  # 0-d mu and sigma
        (np.array([1.5]), np.float64(4.0)),  # 1-element mu, 0-d sigma
        (np.array([1.5]), np.array([[4.0]])),  # already (1,) and (1, 1)
    ],
)
def test_pytorch_fid_statistics_at_d_1(tmp_path, mu, sigma):
    # pytorch-fid takes np.atleast_1d(mu) and np.atleast_2d(sigma); a d = 1 file was refused.
    np.savez(tmp_path / "a.npz", mu=mu, sigma=sigma)
    np.savez(tmp_path / "b.npz", mu=np.float64(-0.5), sigma=np.float64(0.25))
    a, b = load_stats(tmp_path / "a.npz"), load_stats(tmp_path / "b.npz")
    assert a.d == b.d == 1
    # Two 1-D Gaussians: (μ1 − μ2)² + (σ1 − σ2)² with σ the standard deviations.
    closed_form = (1.5 - (-0.5)) ** 2 + (2.0 - 0.5) ** 2
    assert frechet_distance(as_gaussian(a), as_gaussian(b)).fid == pytest.approx(
        closed_form, rel=1e-12
    )
