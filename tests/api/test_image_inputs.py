"""Images straight into the metric commands and functions: `shardeval fid dir1 dir2` equals
`extract` + `fid`, through a digest-keyed feature cache that a second run reuses without
running an encoder."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

import shardeval as se
import shardeval.kernels.encoders as encoders
import shardeval.pipeline.images.extract as ex
from shardeval.kernels.encoders import Encoder
from shardeval.pipeline.errors import OptionError, SingularCovarianceWarning
from shardeval.workflows.cli import main


def _folder(root, n, seed):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(
            root / f"{i:02d}.png"
        )
    return str(root)


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
    expected = json.loads(capsys.readouterr().out)["fid"]
    argv = ["fid", real, gen, "--weights", weights, "--cache-root", cache, "--json", "-q"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == expected

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
    se.fid(real, gen, weights=weights)
    assert len(list((tmp_path / "env-cache").glob("features-*.zarr"))) == 2


def test_encoder_options_without_images_are_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(OptionError, match="encoder applies to image inputs"):
        se.fid(x, x + 1, encoder="inception")
