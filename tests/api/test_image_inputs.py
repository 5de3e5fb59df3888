"""Images straight into the metric commands and functions: `shardeval fid dir1 dir2` equals
`extract` + `fid`, through a digest-keyed feature cache that a second run reuses without
running an encoder."""

import json
import warnings

import numpy as np
import pytest

import shardeval as se
import shardeval.kernels.encoders as encoders
import shardeval.pipeline.images.extract as ex
from shardeval.kernels.encoders import Encoder
from shardeval.pipeline.errors import OptionError, SingularCovarianceWarning
from shardeval.workflows.cli import main
from tests.api.test_streaming import cheap_network  # noqa: F401  (a fixture)
from tests.conftest import png_folder


def _folder(root, n, seed):
    return png_folder(root, n, seed, size=36)


def test_fid_of_two_image_folders_equals_extract_then_fid(tmp_path, weights, capsys, monkeypatch):
    real, gen = _folder(tmp_path / "real", 6, 1), _folder(tmp_path / "gen", 5, 2)
    # (6 and 5 rows of 2,048 features: singular covariances, FID still defined.)
    warnings.simplefilter("ignore", SingularCovarianceWarning)
    cache = str(tmp_path / "cache")
    for name, images in (("real", real), ("gen", gen)):
        argv = ["extract", images, "-o", str(tmp_path / f"{name}.zarr"), "--weights", weights]
        assert main([*argv, "--batch-size", "4", "-q"]) == 0
    capsys.readouterr()
    stores = [str(tmp_path / "real.zarr"), str(tmp_path / "gen.zarr")]
    assert main(["fid", *stores, "--json", "-q"]) == 0
    expected = json.loads(capsys.readouterr().out)["fid"]["fid"]
    argv = ["fid", real, gen, "--weights", weights, "--cache-root", cache, "--json", "-q"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["fid"]["fid"] == expected

    # A second run, by the API, finds both in the cache and loads no encoder.
    def no_encoder(*args, **kwargs):
        raise AssertionError("an encoder was loaded for features already in the cache")

    monkeypatch.setattr(encoders, "load_encoder", no_encoder)
    monkeypatch.setattr(ex, "cached_encoder", no_encoder)
    monkeypatch.setattr(ex, "extract_chunk", no_encoder)
    monkeypatch.setattr(Encoder, "forward", no_encoder)
    again = se.fid(real, gen, weights=weights, cache_root=cache, batch_size=2)
    assert float(again) == expected
    # Mixed with a store, and into the pair metrics too.
    assert float(se.fid(stores[0], gen, weights=weights, cache_root=cache)) == expected
    kid = se.kid(real, gen, weights=weights, cache_root=cache)
    assert float(kid) == float(se.kid(*stores))


@pytest.mark.filterwarnings("ignore::shardeval.pipeline.errors.SingularCovarianceWarning")
def test_the_cache_follows_the_environment(tmp_path, weights, monkeypatch):
    real, gen = _folder(tmp_path / "r", 4, 3), _folder(tmp_path / "g", 4, 4)
    monkeypatch.setenv("SHARDEVAL_CACHE", str(tmp_path / "env-cache"))
    report = se.fid(real, gen, weights=weights)
    assert len(list((tmp_path / "env-cache").glob("features-*.zarr"))) == 2
    # The summary names the images as given; the JSON keeps the cache entry read, too.
    text = report.summary()
    assert f"real {real}  n=4" in text
    assert f"gen  {gen}  n=4" in text
    assert "features-" not in text
    side = report.to_dict()["inputs"]["real"]
    assert side["source"].startswith(str(tmp_path / "env-cache" / "features-"))
    assert side["given"] == real


def test_encoder_options_without_images_are_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(OptionError, match="encoder applies to image inputs"):
        se.fid(x, x + 1, encoder="inception")


# ---------------------------------------------------------------------------------------------
# images in memory


def _no_encoder(monkeypatch):
    def no_encoder(*args, **kwargs):
        raise AssertionError("an encoder ran for images whose features are in the cache")

    monkeypatch.setattr(ex, "cached_encoder", no_encoder)
    monkeypatch.setattr(ex, "extract_chunk", no_encoder)
    monkeypatch.setattr(Encoder, "forward", no_encoder)


@pytest.mark.usefixtures("cheap_network")
@pytest.mark.filterwarnings("ignore::shardeval.pipeline.errors.SingularCovarianceWarning")
def test_images_in_memory_go_through_the_encoder_on_every_metric(tmp_path, weights, monkeypatch):
    import torch

    rng = np.random.default_rng(5)
    real = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)  # (N, H, W, 3), numpy's layout
    gen = rng.integers(0, 256, (6, 3, 30, 34), dtype=np.uint8)  # (N, 3, H, W), torch's layout
    # The reference: the same images as array files, extracted by `extract` (the file path).
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "gen.npy", gen.transpose(0, 2, 3, 1))
    stores = []
    for name in ("real", "gen"):
        out = str(tmp_path / f"{name}.zarr")
        se.extract(str(tmp_path / f"{name}.npy"), out, weights=weights, batch_size=4)
        stores.append(out)
    cache = str(tmp_path / "cache")
    options = {"weights": weights, "cache_root": cache}
    # (FID of 2,048-d features costs two eigenvalue problems of that size: compared once.)
    assert float(se.fid(real, torch.from_numpy(gen), **options)) == float(se.fid(*stores))
    entries = sorted((tmp_path / "cache").glob("features-*.zarr"))
    assert len(entries) == 2
    assert not list((tmp_path / "cache").glob("*.npy"))  # the staged pixels are removed
    # Every metric function takes them, from the cache now: no encoder runs. Floats in [0, 1]
    # are the same images (k / 255 quantises back to k), so the same entries.
    _no_encoder(monkeypatch)
    as_floats = torch.from_numpy(gen).double() / 255
    assert float(se.kid(real / 255.0, as_floats, **options)) == float(se.kid(*stores))
    assert float(se.cmmd(real, gen, **options)) == float(se.cmmd(*stores))
    assert se.prdc(real, gen, k=3, **options)["prdc"] == se.prdc(*stores, k=3)["prdc"]
    both = se.metrics(real, gen, "kid,prdc", k=3, **options)
    assert both["kid"]["kid"] == float(se.kid(*stores))
    report = se.stats(real, str(tmp_path / "real-stats.zarr"), **options)
    direct = se.stats(stores[0], str(tmp_path / "store-stats.zarr"))
    for name in ("mean", "m2"):
        expected = getattr(direct["moments"], name)
        np.testing.assert_array_equal(getattr(report["moments"], name), expected)
    assert "<numpy.ndarray (7, 32, 32, 3)>" in report.summary()
    assert sorted((tmp_path / "cache").glob("features-*.zarr")) == entries


def test_images_in_memory_of_another_layout_or_range_are_refused(tmp_path, weights):
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(20, 4))
    options = {"weights": weights, "cache_root": str(tmp_path / "cache")}
    with pytest.raises(se.ShapeError, match=r"\(N, 3, H, W\) or \(N, H, W, 3\)"):
        se.fid(rng.integers(0, 256, (4, 8, 8, 4), dtype=np.uint8), feats, **options)
    with pytest.raises(se.DtypeError, match=r"must lie in \[0, 1\]"):
        se.fid(rng.normal(size=(4, 8, 8, 3)), feats, **options)
    with pytest.raises(se.DtypeError, match="uint8"):
        se.kid(rng.integers(0, 256, (4, 3, 8, 8)).astype(np.int64), feats, **options)
    with pytest.raises(se.ShapeError, match="images in memory 4-D"):
        se.fid(rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), feats)
    assert not (tmp_path / "cache").exists()  # refused before anything is written


def test_extract_takes_images_in_memory(tmp_path, weights):
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (5, 24, 20, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    by_file = se.extract(str(tmp_path / "images.npy"), str(tmp_path / "a.zarr"), weights=weights)
    by_array = se.extract(images, str(tmp_path / "b.zarr"), weights=weights)
    assert float(by_array) == float(by_file) == 5.0
    import zarr

    a, b = (zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r") for n in "ab")
    np.testing.assert_array_equal(a["features"][...], b["features"][...])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.zarr",
        "a.zarr.lock",
        "b.zarr",
        "b.zarr.lock",
        "images.npy",
    ]
    with pytest.raises(OptionError, match="skip_bad"):
        se.extract(images, str(tmp_path / "c.zarr"), weights=weights, skip_bad=True)
