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


def _made(resize="legacy-pytorch", digest="random:0", source="a.zarr"):
    """What statistics of an extraction store record of how its features were made."""
    return {
        "source": source,
        "feature_extractor": "inception-2015-12-05/pool3",
        "extraction": {"encoder": "inception", "resize": resize, "weights_digest": digest},
    }


def test_npz_statistics_keep_their_provenance(tmp_path, moments):
    from shardeval.pipeline.images.provenance import made_by

    path = save_stats(tmp_path / "s.npz", moments, _made())
    held = stats_provenance(path)
    assert held["extraction"] == _made()["extraction"]
    assert held["feature_extractor"] == "inception-2015-12-05/pool3"
    assert held["n"] == moments.n
    made = made_by(held)
    assert (made.resize, made.weights_status) == ("legacy-pytorch", "random")
    # The arrays are those a pytorch-fid file holds, read as they are.
    with np.load(path) as f:
        assert {"mu", "sigma", "n"} <= set(f.files)
        np.testing.assert_allclose(f["sigma"][:], moments.covariance(), rtol=1e-15)
    back = load_stats(path)
    np.testing.assert_allclose(back.m2, moments.m2, rtol=1e-13)


def test_npz_provenance_that_is_not_an_object_is_refused(tmp_path, moments):
    from shardeval.pipeline.io.statsio import NPZ_PROVENANCE

    path = tmp_path / "s.npz"
    np.savez(path, mu=moments.mean, sigma=moments.covariance(), n=moments.n)
    assert stats_provenance(path) == {}  # a file of another tool records nothing
    np.savez(
        path, mu=moments.mean, sigma=moments.covariance(), **{NPZ_PROVENANCE: np.str_("[1, 2")}
    )
    with pytest.raises(StatsFormatError, match=NPZ_PROVENANCE):
        stats_provenance(path)


def test_merging_npz_and_zarr_statistics_made_differently_is_refused(tmp_path, rng):
    from shardeval.pipeline.images.provenance import made_by
    from shardeval.pipeline.io.statsio import merge_stats

    rows = rng.standard_normal((12, 3))
    a = save_stats(tmp_path / "a.npz", Moments.from_rows(rows[:4]), _made())
    b = save_stats(tmp_path / "b.zarr", Moments.from_rows(rows[4:8]), _made("clean", source="b"))
    c = save_stats(tmp_path / "c.zarr", Moments.from_rows(rows[8:]), _made(source="c.zarr"))
    with pytest.raises(StatsFormatError, match="made differently"):
        merge_stats([a, b])
    merged, provenance = merge_stats([a, c])
    assert merged.n == 8
    made = made_by(provenance)
    assert (made.resize, made.weights_digest) == ("legacy-pytorch", "random:0")
    # Written as .npz, the merge keeps it too.
    out = save_stats(tmp_path / "m.npz", merged, provenance)
    assert made_by(stats_provenance(out)).resize == "legacy-pytorch"


def test_a_merge_with_statistics_that_record_nothing_is_refused(tmp_path, rng):
    from shardeval.pipeline.io.statsio import merge_stats

    rows = rng.standard_normal((12, 3))
    made = save_stats(tmp_path / "made.zarr", Moments.from_rows(rows[:4]), _made())
    bare = tmp_path / "bare.npz"  # mu, sigma and n, and nothing of how
    np.savez(bare, mu=rows[4:8].mean(0), sigma=np.cov(rows[4:8], rowvar=False), n=4)
    with pytest.raises(StatsFormatError, match=r"bare\.npz.* records? nothing of how"):
        merge_stats([made, str(bare)])
    # Statistics that all record nothing merge, and the merge claims nothing either.
    other = tmp_path / "other.npz"
    np.savez(other, mu=rows[8:].mean(0), sigma=np.cov(rows[8:], rowvar=False), n=4)
    merged, provenance = merge_stats([str(bare), str(other)])
    assert merged.n == 8
    assert "extraction" not in provenance
    assert provenance.get("feature_extractor") is None


def test_a_merge_claims_a_feature_extractor_only_when_every_input_records_it(tmp_path, rng):
    from shardeval.pipeline.io.statsio import merge_stats

    rows = rng.standard_normal((8, 3))
    named = save_stats(
        tmp_path / "named.zarr", Moments.from_rows(rows[:4]), {"feature_extractor": "net"}
    )
    plain = save_stats(tmp_path / "plain.zarr", Moments.from_rows(rows[4:]), {})
    with pytest.warns(UserWarning, match=r"plain\.zarr.*no feature extractor"):
        _merged, provenance = merge_stats([named, plain])
    assert provenance["feature_extractor"] is None


@pytest.mark.encoders
def test_our_npz_statistics_load_in_pytorch_fid_and_clean_fid(tmp_path, moments, monkeypatch):
    import importlib

    path = save_stats(tmp_path / "s.npz", moments, _made())
    fid_score = importlib.import_module("pytorch_fid.fid_score")
    mu, sigma = fid_score.compute_statistics_of_path(str(path), None, 1, moments.d, "cpu")
    np.testing.assert_allclose(mu, moments.mean, rtol=1e-15)
    np.testing.assert_allclose(sigma, moments.covariance(), rtol=1e-15)
    features = importlib.import_module("cleanfid.features")
    monkeypatch.setattr(features, "check_download_url", lambda **kwargs: str(path))
    mu, sigma = features.get_reference_statistics("ours", 0, split="custom")
    np.testing.assert_allclose(mu, moments.mean, rtol=1e-15)
    np.testing.assert_allclose(sigma, moments.covariance(), rtol=1e-15)
