"""sFID (Nash et al. 2021) as guided-diffusion's evaluator computes it: FID of the spatial
features, read from an extraction store's ``spatial`` array, or from an input of one array,
with a guided-diffusion reference batch's ``mu_s``/``sigma_s`` as the reference statistics;
compared with float64 numpy on the same arrays."""

import numpy as np
import pytest
import zarr

import shardeval as se
from shardeval.pipeline.errors import OptionError, StatsFormatError
from tests.pipeline.test_adm_reference import write_virtual
from tests.reference import exact_fid, np_stats

D_SPATIAL = 12  # any width: the metric reads what the array holds (2,023 for the Inception)


def _store(path, rng, n, shift):
    """A group laid out as an extraction store with spatial features: ``features`` and
    ``spatial`` of different widths and different numbers."""
    group = zarr.open_group(str(path), mode="w")
    pool = rng.standard_normal((n, 16)).astype(np.float32)
    a = rng.standard_normal((D_SPATIAL, D_SPATIAL)) / np.sqrt(D_SPATIAL)
    spatial = np.maximum(rng.standard_normal((n, D_SPATIAL)) @ a + shift, 0).astype(np.float32)
    for name, values, dims in (
        ("features", pool, ("sample", "feature")),
        ("spatial", spatial, ("sample", "spatial")),
    ):
        arr = group.create_array(
            name, shape=values.shape, dtype="float32", chunks=(64, values.shape[1]),
            dimension_names=dims,
        )  # fmt: skip
        arr[...] = values
    return str(path), spatial.astype(np.float64)


def test_sfid_of_a_store_against_itself_is_zero(tmp_path, rng):
    path, spatial = _store(tmp_path / "a.zarr", rng, 300, 0.5)
    report = se.metrics(path, path, ["sfid"])
    out = report.to_dict()["sfid"]
    assert abs(out["sfid"]) <= 1e-9 * np.trace(np.cov(spatial, rowvar=False))
    assert out["sfid_n"] == 300


def test_sfid_is_fid_of_the_spatial_arrays(tmp_path, rng):
    real, a = _store(tmp_path / "real.zarr", rng, 400, 0.5)
    gen, b = _store(tmp_path / "gen.zarr", rng, 350, 0.8)
    out = se.metrics(real, gen, ["sfid"]).to_dict()["sfid"]
    expected = exact_fid(*np_stats(a), *np_stats(b))
    assert out["sfid"] == pytest.approx(expected, rel=1e-6)
    mu_a, _ = np_stats(a)
    mu_b, _ = np_stats(b)
    assert out["sfid_mean_term"] == pytest.approx(float((mu_a - mu_b) @ (mu_a - mu_b)), rel=1e-6)
    # an input of one array is read as it is: the same number from the arrays in memory
    again = se.metrics(a, b, ["sfid"]).to_dict()["sfid"]
    assert again["sfid"] == pytest.approx(expected, rel=1e-6)


def test_a_reference_batchs_mu_s_sigma_s_are_the_reference(tmp_path, rng):
    virtual = write_virtual(tmp_path / "VIRTUAL_test.npz", rng, d=8, d_s=D_SPATIAL)
    gen, b = _store(tmp_path / "gen.zarr", rng, 200, 0.3)
    out = se.metrics(virtual, gen, ["sfid"]).to_dict()["sfid"]
    with np.load(virtual) as z:
        expected = exact_fid(z["mu_s"], z["sigma_s"], *np_stats(b))
    assert out["sfid"] == pytest.approx(expected, rel=1e-6)
    assert out["sfid_n_real"] is None  # statistics of unknown n


def test_a_reference_batch_without_mu_s_is_refused(tmp_path, rng):
    bare = write_virtual(tmp_path / "bare.npz", rng, d=8, mu_s=None, sigma_s=None)
    gen, _ = _store(tmp_path / "gen.zarr", rng, 50, 0.3)
    with pytest.raises(StatsFormatError, match="mu_s"):
        se.metrics(bare, gen, ["sfid"])


def test_sfid_is_evaluated_apart_from_metrics_of_other_arrays(tmp_path, rng):
    real, _ = _store(tmp_path / "real.zarr", rng, 50, 0.5)
    with pytest.raises(OptionError, match="evaluate them apart"):
        se.metrics(real, real, ["sfid", "fid"])


def test_extract_spatial_then_sfid_on_the_command_line(tmp_path, rng, weights, capsys):
    """`shardeval extract --spatial` writes the 2,023-wide array and `shardeval sfid` reads it
    (random weights, a few small images): the same number as numpy's on the stored arrays."""
    from PIL import Image

    from shardeval.workflows.cli import main

    stores = []
    for name, shift in (("a", 0), ("b", 60)):
        root = tmp_path / name
        root.mkdir()
        for i in range(4):
            pixels = np.clip(rng.integers(0, 196, (24, 24, 3)) + shift, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"{i}.png")
        out = str(tmp_path / f"{name}.zarr")
        assert main(["extract", str(root), "-o", out, "--spatial", "--weights", weights, "-q"]) == 0
        stores.append(out)
    capsys.readouterr()
    assert main(["sfid", *stores, "-q", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    out = report["sfid"]
    # the stores record their pool3 features' layer; the report names the spatial one read
    for made in report["features_made_by"].values():
        assert made["feature_extractor"] == "inception-2015-12-05/mixed_6/conv[:7]"
    a, b = (zarr.open_group(s, mode="r")["spatial"][:].astype(np.float64) for s in stores)
    assert a.shape == b.shape == (4, 2023)
    # n = 4 rows in 2,023 dimensions: covariances of rank 3, whose zero eigenvalues rounding
    # scatters around 0 on both sides; compared to the scale of the traces
    expected = exact_fid(*np_stats(a), *np_stats(b))
    scale = np.trace(np.cov(a, rowvar=False)) + np.trace(np.cov(b, rowvar=False))
    assert abs(out["sfid"] - expected) <= 1e-6 * scale
    assert out["sfid_mean_term"] == pytest.approx(float(((a - b).mean(0) ** 2).sum()), rel=1e-9)
