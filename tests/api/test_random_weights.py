"""A smoke test of the whole image path without the published weights: ``weights="random"``
(``--weights random``) builds the FID Inception with seeded random weights, deterministically;
everything it produces is stamped as such (store, report, summary), and its features have a
cache key of their own, so they are never taken for features of real weights."""

import json

import numpy as np
import pytest
import torch
import zarr

import shardeval as se
from shardeval.kernels.encoders import WeightsError, load_encoder, locate_weights
from shardeval.kernels.encoders.inception import random_state_dict
from shardeval.pipeline.images.extract import EncoderSetupError
from shardeval.pipeline.images.sources import open_images
from shardeval.workflows.cli import main
from tests.conftest import png_folder

pytestmark = pytest.mark.filterwarnings(
    "ignore::shardeval.pipeline.errors.SingularCovarianceWarning"
)

SMOKE = "random weights"


_folder = png_folder


def test_random_weights_are_seeded_and_are_the_tests_random_state_dict(tmp_path):
    """``random:SEED`` is :func:`random_state_dict` of that seed (the weights the test suite
    writes to files), so the network is exactly the one a file of them gives."""
    assert locate_weights("inception", "random") == "random:0"
    assert locate_weights("inception", "random:7") == "random:7"
    file = tmp_path / "seed7.pth"
    torch.save(random_state_dict(7), file)
    images = [np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)] * 2
    from_seed = load_encoder("inception", "random:7").encode(images)
    np.testing.assert_array_equal(from_seed, load_encoder("inception", str(file)).encode(images))
    assert not np.array_equal(from_seed, load_encoder("inception", "random:0").encode(images))
    for bad in ("random:x", "random:-1"):
        with pytest.raises(WeightsError, match="random"):
            locate_weights("inception", bad)
    with pytest.raises(WeightsError, match="Inception"):
        locate_weights("dinov2-vitl14", "random")


def test_images_to_metrics_with_random_weights(tmp_path, capsys):
    real, gen = _folder(tmp_path / "real", 4, 1), _folder(tmp_path / "gen", 4, 2)
    cache = str(tmp_path / "cache")
    out = str(tmp_path / "gen.zarr")
    extracted = se.extract(gen, out, weights="random")
    attrs = zarr.open_group(out, mode="r").attrs
    assert attrs["weights_digest"] == "random:0"
    assert attrs["weights_status"] == "random"
    assert SMOKE in extracted.summary()
    # Deterministic: the same features again, in another store, from the seed alone.
    again = str(tmp_path / "again.zarr")
    se.extract(gen, again, weights="random")
    np.testing.assert_array_equal(
        zarr.open_group(out, mode="r")["features"][:],
        zarr.open_group(again, mode="r")["features"][:],
    )
    argv = ["fid", real, gen, "--weights", "random", "--cache-root", cache, "--json", "-q"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    for role in ("real", "gen"):
        assert data["features_made_by"][role]["weights_status"] == "random"
        assert data["features_made_by"][role]["weights_digest"] == "random:0"
    assert any(SMOKE in w for w in data["warnings"])
    assert main(["kid", real, gen, "--weights", "random", "--cache-root", cache, "-q"]) == 0
    summary = capsys.readouterr().out
    assert SMOKE in summary
    assert "random:0" in summary
    report = se.metrics(real, gen, ["fid", "kid"], weights="random", cache_root=cache)
    assert any(SMOKE in w for w in report.to_dict()["warnings"])
    assert SMOKE in report.summary()
    assert SMOKE in se.inception_score(gen, weights="random", cache_root=cache).summary()


def test_random_features_are_never_reused_as_real_ones(tmp_path):
    """The same random network from a weights file (the case of real weights) and from the
    seed: two entries of the cache, never one reused for the other."""
    from shardeval.pipeline.images.cache import cache_key, cached_features
    from shardeval.pipeline.images.extract import plan_extraction

    images = _folder(tmp_path / "images", 3, 3)
    file = tmp_path / "seed0.pth"
    torch.save(random_state_dict(0), file)
    cache = str(tmp_path / "cache")
    source = open_images(images)
    assert cache_key(source, plan_extraction(weights="random")) != cache_key(
        source, plan_extraction(weights=str(file))
    )
    first = cached_features(images, cache_root=cache, weights=str(file))
    second = cached_features(images, cache_root=cache, weights="random")
    assert not second.reused
    assert first.path != second.path
    np.testing.assert_array_equal(first.open().array.compute(), second.open().array.compute())


def test_random_weights_for_a_vit_are_refused_in_one_line(tmp_path):
    images = _folder(tmp_path / "images", 2, 4)
    with pytest.raises(EncoderSetupError, match="Inception") as info:
        se.extract(images, str(tmp_path / "x.zarr"), encoder="dinov2-vitl14", weights="random")
    assert "\n" not in str(info.value)
