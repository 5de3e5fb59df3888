"""sFID's spatial features written by extraction beside the pool features (random-weights
Inception, small images, CPU): opt-in, of the same pass, laid out as the features."""

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from shardeval.kernels.encoders import load_encoder
from shardeval.pipeline.images.extract import ExtractionError, extract_features
from shardeval.pipeline.images.sources import open_images


@pytest.fixture
def images(tmp_path, rng):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            root / f"img-{i}.png"
        )
    return str(root)


def test_spatial_features_are_written_beside_the_features(tmp_path, images, weights):
    out = str(tmp_path / "spatial.zarr")
    result = extract_features(images, out, weights=weights, batch_size=2, spatial=True)
    assert (result.rows, result.dim, result.spatial, result.classes) == (5, 2048, 2023, 1008)
    group = zarr.open_group(out, mode="r")
    spatial = group["spatial"]
    assert spatial.shape == (5, 2023)
    assert spatial.chunks == (2, 2023)
    assert spatial.dtype == np.float32
    assert tuple(spatial.metadata.dimension_names) == ("sample", "spatial")
    assert "mixed_6/conv" in group.attrs["spatial"]
    # The stored rows are the network's spatial output for the preprocessed images, whose
    # pool3 features are the store's features: one pass gave both.
    encoder = load_encoder("inception", weights)
    decoded = open_images(images).refs(range(5)).read()
    with torch.no_grad():
        pool, expected = encoder.network.forward_with_spatial(encoder._batch(decoded))
    # (batches of 2 there, of 5 here: the convolutions may sum in another order)
    scale = float(expected.abs().max())
    np.testing.assert_allclose(spatial[:], expected.numpy(), rtol=1e-4, atol=1e-5 * scale)
    scale = float(pool.abs().max())
    np.testing.assert_allclose(group["features"][:], pool.numpy(), rtol=1e-4, atol=1e-5 * scale)
    assert (spatial[:] >= 0).all()  # after the ReLU
    again = extract_features(images, out, weights=weights)  # a store keeps its arrays
    assert (again.already_complete, again.spatial) == (True, 2023)


def test_spatial_features_are_opt_in(tmp_path, images, weights):
    out = str(tmp_path / "plain.zarr")
    result = extract_features(images, out, weights=weights, batch_size=5)
    assert result.spatial == 0
    assert "spatial" not in zarr.open_group(out, mode="r")


def test_an_encoder_without_spatial_features_refuses_them(tmp_path, images):
    network = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    with pytest.raises(ExtractionError, match="no spatial features"):
        extract_features(images, str(tmp_path / "x.zarr"), encoder=network, spatial=True)
