"""Extraction writes the Inception's 1,008 logits beside its pool features, from the same
forward pass (random weights, small images, CPU): the logits are pool3 · Wᵀ without the bias,
the features are unchanged, resuming recomputes a chunk whose logits are missing, a store
without logits stays without them, and the Inception Score reads them."""

import os

import numpy as np
import pytest
import zarr
from PIL import Image

import shardeval as se
import shardeval.pipeline.images.extract as ex
from shardeval.kernels.encoders import load_encoder
from shardeval.kernels.encoders.inception import CLASSES, encode_with_logits
from shardeval.pipeline.errors import StoreError
from shardeval.pipeline.images.extract import LOGITS_ARRAY, extract_features
from shardeval.pipeline.images.sources import open_images
from shardeval.pipeline.io.stores import INCOMPLETE_ATTR, open_features
from tests.pipeline.test_inception_score import torch_fidelity_isc


@pytest.fixture
def images(tmp_path, rng):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(4):
        pixels = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img-{i:02d}.png")
    return str(root)


def test_logits_beside_the_features(tmp_path, images, weights):
    out = str(tmp_path / "x.zarr")
    result = extract_features(images, out, weights=weights, batch_size=2)
    assert result.classes == CLASSES
    group = zarr.open_group(out, mode="r")
    logits = group[LOGITS_ARRAY]
    assert (logits.shape, logits.chunks, logits.dtype) == ((4, 1008), (2, 1008), np.float32)
    assert tuple(logits.metadata.dimension_names) == ("sample", "class")
    assert "without the fc bias" in group.attrs[LOGITS_ARRAY]
    # The group's features are still what a reader picks, and what they were.
    source = open_features(out)
    assert (source.name, source.d) == ("features", 2048)
    plain = str(tmp_path / "plain.zarr")
    assert extract_features(images, plain, weights=weights, batch_size=2, logits=False).classes == 0
    assert LOGITS_ARRAY not in zarr.open_group(plain, mode="r")
    features = group["features"][:]
    np.testing.assert_array_equal(features, zarr.open_group(plain, mode="r")["features"][:])
    # The logits are the network's, pool3 · Wᵀ (no bias), from the same pass.
    encoder = load_encoder("inception", weights)
    decoded = open_images(images).refs(range(4)).read()
    pool, scores = encode_with_logits(encoder, decoded, 2)
    np.testing.assert_array_equal(pool[:2], encoder.encode(decoded[:2], 2))
    np.testing.assert_allclose(features, pool, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:], scores, rtol=1e-5, atol=1e-5)
    w = encoder.network.fc.weight.detach().double().numpy()
    exact = features.astype(np.float64) @ w.T
    assert np.abs(logits[:] - exact).max() <= 1e-5 * np.abs(exact).max()
    # The Inception Score of the store is that of its logits.
    want = torch_fidelity_isc(logits[:], 1, shuffle=False)[0]
    assert float(se.inception_score(out)) == pytest.approx(want, rel=1e-12)
    assert float(se.inception_score(out, splits=2)) == pytest.approx(want, rel=1e-12)
    with pytest.raises(StoreError, match="without class logits"):
        se.inception_score(plain)
    # metrics reads the store's logits in the shards it is asked for, as inception_score does.
    totals: dict[str, set[int]] = {"metrics": set(), "inception_score": set()}
    se.metrics(None, out, ["is"], shard_rows=1, progress=lambda d, t: totals["metrics"].add(t))
    se.inception_score(out, shard_rows=1, progress=lambda d, t: totals["inception_score"].add(t))
    assert totals["metrics"] == totals["inception_score"] == {4}


def test_a_chunk_whose_logits_are_missing_is_computed_again(tmp_path, images, weights, monkeypatch):
    out = str(tmp_path / "x.zarr")
    extract_features(images, out, weights=weights, batch_size=2)
    before = zarr.open_group(out, mode="r")[LOGITS_ARRAY][:]
    group = zarr.open_group(out, mode="r+")
    group.attrs.put({**dict(group.attrs), INCOMPLETE_ATTR: ex.INCOMPLETE_NOTE, "complete": False})
    os.remove(os.path.join(out, LOGITS_ARRAY, "c", "1", "0"))
    calls = []
    original = ex.extract_chunk
    monkeypatch.setattr(ex, "extract_chunk", lambda *a: calls.append(a[1]) or original(*a))
    result = extract_features(images, out, weights=weights)
    assert calls == [1]
    assert (result.computed, result.resumed) == (1, True)
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")[LOGITS_ARRAY][:], before)


def test_a_store_without_logits_is_resumed_and_reused_as_it_is(tmp_path, images, weights):
    out = str(tmp_path / "x.zarr")
    extract_features(images, out, weights=weights, batch_size=2, logits=False)
    group = zarr.open_group(out, mode="r+")
    group.attrs.put({**dict(group.attrs), INCOMPLETE_ATTR: ex.INCOMPLETE_NOTE, "complete": False})
    os.remove(os.path.join(out, "features", "c", "1", "0"))
    resumed = extract_features(images, out, weights=weights)  # logits asked (the default)
    assert (resumed.computed, resumed.classes) == (1, 0)
    again = extract_features(images, out, weights=weights)
    assert (again.already_complete, again.classes) == (True, 0)
    assert LOGITS_ARRAY not in zarr.open_group(out, mode="r")


def test_images_given_to_the_score_are_read_by_their_logits(tmp_path, images, weights):
    """Images become an extraction store in the feature cache; the score reads its logits,
    not its features (images are not logits passed in memory, nor a named array)."""
    out = str(tmp_path / "x.zarr")
    extract_features(images, out, weights=weights, batch_size=2)
    logits = zarr.open_group(out, mode="r")[LOGITS_ARRAY][:]
    want = torch_fidelity_isc(logits, 1, shuffle=False)[0]
    cache = str(tmp_path / "cache")
    got = se.inception_score(images, weights=weights, cache_root=cache, batch_size=2)
    assert float(got) == pytest.approx(want, rel=1e-6)  # another run of the network
    assert got.to_dict()["inputs"]["gen"]["array"] == LOGITS_ARRAY
    both = se.metrics(None, images, ["is"], weights=weights, cache_root=cache)
    assert both.to_dict()["is"]["is"] == float(got)  # the cached store, read again
