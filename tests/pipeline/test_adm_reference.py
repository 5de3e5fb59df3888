"""guided-diffusion reference batches (``VIRTUAL_*.npz``: ``arr_0`` images, ``mu``/``sigma``,
``mu_s``/``sigma_s``) as a reference: FID reads their statistics (no encoder, nothing cached),
precision/recall extract their images through the image path and the feature cache. The batches
here are tiny synthetic ones written as the suite writes them (``np.savez``)."""

import os
from pathlib import Path

import numpy as np
import pytest

import shardeval as se
from shardeval.pipeline.errors import SingularCovarianceWarning, StatsFormatError, StoreError
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.images.cache import cached_features, is_image_source
from shardeval.pipeline.io.statsio import (
    adm_provenance,
    is_adm_reference,
    is_stats,
    load_adm_reference,
    load_stats,
    stats_provenance,
)
from shardeval.workflows.cli import main
from tests.conftest import write_zarr


def _gaussian(rng, d, shift=0.0):
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal(d) + shift, a @ a.T + 0.1 * np.eye(d)


def write_virtual(path, rng, *, n=6, side=16, d=8, d_s=7, images=None, labels=True, **over):
    """A reference batch as guided-diffusion's suite lays one out."""
    mu, sigma = _gaussian(rng, d)
    mu_s, sigma_s = _gaussian(rng, d_s)
    arrays = {
        "arr_0": images
        if images is not None
        else rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
        "mu": mu,
        "sigma": sigma,
        "mu_s": mu_s,
        "sigma_s": sigma_s,
    }
    if labels:
        arrays["arr_1"] = np.arange(len(arrays["arr_0"]), dtype=np.int64)
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


@pytest.fixture
def virtual(tmp_path, rng):
    return write_virtual(tmp_path / "VIRTUAL_test16_labeled.npz", rng)


def test_told_apart_by_content(tmp_path, rng, virtual):
    assert is_adm_reference(virtual)
    renamed = tmp_path / "reference.bin"
    renamed.write_bytes(Path(virtual).read_bytes())
    assert is_adm_reference(renamed)  # by its bytes, not its name
    # It is both statistics and images: each reader takes what it needs.
    assert is_stats(virtual)
    assert is_image_source(virtual)
    mu, sigma = _gaussian(rng, 4)
    np.savez(tmp_path / "fid_stats.npz", mu=mu, sigma=sigma)
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(tmp_path / "gray.npz", arr_0=np.zeros((2, 4, 4), np.uint8), mu=mu, sigma=sigma)
    np.save(tmp_path / "features.npy", rng.normal(size=(5, 4)))
    (tmp_path / "text.npz").write_text("not a zip")
    for other in ("fid_stats.npz", "images.npz", "gray.npz", "features.npy", "text.npz", "nope"):
        assert not is_adm_reference(tmp_path / other), other


def test_read_and_checked(tmp_path, rng, virtual):
    ref = load_adm_reference(virtual)
    with np.load(virtual) as z:
        np.testing.assert_array_equal(ref.pool.mean, z["mu"])
        np.testing.assert_array_equal(ref.pool.cov, z["sigma"])
        np.testing.assert_array_equal(ref.spatial.mean, z["mu_s"])
    assert ref.pool.n is None  # the file does not say how many rows: not mergeable
    assert ref.images == (6, 16, 16, 3)
    described = ref.describe()
    assert described == adm_provenance(virtual) == stats_provenance(virtual)
    assert described["format"] == "guided-diffusion reference batch"
    assert described["resize"] == "legacy-tensorflow"
    assert (described["images"], described["d"], described["spatial_statistics_d"]) == (6, 8, 7)
    assert "pool_3 of the TF Inception graph" in described["features"]
    # load_stats (every verb's statistics reader) takes its mu and sigma.
    stats = load_stats(virtual)
    assert isinstance(stats, Gaussian)
    np.testing.assert_array_equal(stats.mean, ref.pool.mean)
    # Without the sFID statistics it is still a reference batch.
    bare = write_virtual(tmp_path / "bare.npz", rng, mu_s=None, sigma_s=None)
    assert load_adm_reference(bare).spatial is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sigma_s": None}, "come in pairs"),
        ({"sigma": np.triu(np.ones((8, 8)))}, "not symmetric"),
        ({"mu": np.full(8, np.nan)}, "NaN or inf"),
        ({"sigma_s": np.ones((6, 6))}, "expected (d,) and (d, d)"),
        ({"arr_0": np.zeros((1, 4, 4, 3), np.uint8)}, "N >= 2"),
        ({"arr_0": np.zeros((3, 4, 4, 3), np.float32)}, "uint8 (N, H, W, 3)"),
        ({"mu": None}, "holds"),
    ],
)
def test_damaged_batches_are_one_line(tmp_path, rng, change, words):
    path = write_virtual(tmp_path / "bad.npz", rng, **change)
    with pytest.raises(StatsFormatError) as info:
        load_adm_reference(path)
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="does not exist"):
        load_adm_reference(tmp_path / "missing.npz")


def test_fid_reads_the_statistics_and_extracts_nothing(tmp_path, rng, virtual):
    ref = load_adm_reference(virtual)
    gen = write_zarr(tmp_path / "gen.zarr", rng.normal(0.3, 1.2, size=(300, 8)).astype(np.float32))
    cache = tmp_path / "cache"
    report = se.fid(virtual, gen)
    expected = se.fid(ref.pool, gen)
    assert float(report) == pytest.approx(float(expected), rel=1e-12)
    real = report.to_dict()["inputs"]["real"]
    assert real["kind"] == "statistics"
    assert real["format"] == "guided-diffusion reference batch"
    # Given as the reference statistics explicitly, the same; and no cache was made.
    assert float(se.fid(virtual, gen, real_is_statistics=True)) == float(report)
    assert not os.path.exists(cache)


def test_fid_on_the_command_line(tmp_path, rng, virtual, capsys):
    gen = write_zarr(tmp_path / "gen.zarr", rng.normal(size=(200, 8)).astype(np.float32))
    assert main(["fid", virtual, gen, "-q"]) == 0
    assert main(["fid", "--ref", virtual, gen, "-q", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FID ")
    assert '"guided-diffusion reference batch"' in out


def test_precision_recall_extract_the_reference_images(tmp_path, rng, weights):
    images = rng.integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    virtual = write_virtual(tmp_path / "VIRTUAL.npz", rng, images=images, d=2048, d_s=7)
    gen = tmp_path / "gen.npz"
    np.savez(gen, arr_0=rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8))
    cache = str(tmp_path / "cache")
    options = {"weights": weights, "cache_root": cache}
    report = se.prdc(virtual, str(gen), k=2, pr_k=2, **options)
    # The reference's rows are the features of its images, arr_0, in the feature cache.
    entry = cached_features(virtual, **options)
    assert entry.reused
    assert entry.open().n == 4
    rows = cached_features(str(gen), **options)
    same = se.prdc(entry.path, rows.path, k=2, pr_k=2, array="features")
    assert report.to_dict()["prdc"] == same.to_dict()["prdc"]
    entries = sorted(p for p in os.listdir(cache) if p.endswith(".zarr"))
    assert len(entries) == 2
    # FID against the same file reads its statistics instead (d = 2048): nothing extracted.
    with pytest.warns(SingularCovarianceWarning):
        fid = se.fid(virtual, str(gen), **options)
    assert fid.to_dict()["inputs"]["real"]["kind"] == "statistics"
    assert sorted(p for p in os.listdir(cache) if p.endswith(".zarr")) == entries
    # metrics: FID from the batch's statistics, PRDC from its images, in one call.
    with pytest.warns(SingularCovarianceWarning):
        fid_only = se.metrics(virtual, str(gen), ["fid"], **options)
    with pytest.warns(SingularCovarianceWarning):
        both = se.metrics(virtual, str(gen), ["fid", "prdc"], k=2, pr_k=2, **options)
    assert fid_only.to_dict()["fid"]["fid"] == fid.to_dict()["fid"]["fid"]
    assert both.to_dict()["fid"]["fid"] == fid.to_dict()["fid"]["fid"]
    mine = report.to_dict()["prdc"]
    assert both.to_dict()["prdc"]["prdc_precision"] == mine["prdc_precision"]
    assert both.to_dict()["prdc"]["prdc_coverage"] == mine["prdc_coverage"]
