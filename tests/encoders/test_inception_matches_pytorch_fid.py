"""Our plain-torch FID Inception against pytorch-fid's (torchvision-based) one, with the same
random weights written to a file and read by each through its own loading code.

Random weights test the architecture as thoroughly as the real ones (every layer, branch order
and pooling quirk changes the output) and need no download. The tolerance is 1e-5 relative to
the largest feature: both run the same float32 operations, and on this machine they agree
bit for bit; another convolution backend may order sums differently.

The reference packages are imported by the fixtures, not at module level, so that the main
environment can collect (and deselect, ``-m "not encoders"``) this module; where the marker is
selected, a missing package is an error, never a skip.
"""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from shardeval.kernels.encoders import load_encoder, locate_weights
from shardeval.kernels.encoders.inception import FIDInception, random_state_dict
from shardeval.pipeline.images.extract import extract_features

pytestmark = pytest.mark.encoders

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def pfi():
    """pytorch-fid's Inception module (imports torchvision)."""
    return importlib.import_module("pytorch_fid.inception")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(random_state_dict(7), path)
    return str(path)


@pytest.fixture(scope="module")
def reference(pfi, weights):
    """pytorch-fid's InceptionV3 (pool3 block), its checkpoint fetched from our file instead of
    the network."""
    requested = []

    def from_file(url, *args, **kwargs):
        requested.append(url)
        return torch.load(weights, map_location="cpu")

    patch = pytest.MonkeyPatch()
    patch.setattr(pfi, "load_state_dict_from_url", from_file)
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        patch.undo()
    assert requested == [pfi.FID_WEIGHTS_URL]
    return model


@pytest.fixture(scope="module")
def ours(weights):
    return load_encoder("inception", locate_weights("inception", weights))


def _reference_features(model, images):
    """As pytorch-fid computes them: ToTensor per image, stacked, resized inside the model."""
    to_tensor = importlib.import_module("torchvision.transforms").ToTensor()
    batch = torch.stack([to_tensor(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        return model(batch)[0].flatten(1).numpy()


def _close(ours, ref):
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(ours - ref).max() <= TOLERANCE * scale, np.abs(ours - ref).max()


def test_same_module_names_as_torchvision(pfi, weights):
    requested = []

    def from_file(url, *args, **kwargs):
        requested.append(url)
        return torch.load(weights, map_location="cpu")

    patch = pytest.MonkeyPatch()
    patch.setattr(pfi, "load_state_dict_from_url", from_file)
    try:
        theirs = pfi.fid_inception_v3().state_dict()
    finally:
        patch.undo()
    mine = FIDInception().state_dict()
    assert set(theirs) == set(mine)
    assert all(theirs[k].shape == mine[k].shape for k in mine)


@pytest.mark.parametrize(
    ("height", "width", "batch"),
    [(299, 299, 2), (40, 40, 3), (64, 100, 5), (512, 384, 1), (17, 300, 4)],
)
def test_features_equal_pytorch_fid(reference, ours, rng, height, width, batch):
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    _close(ours.encode(list(images), batch_size=batch), _reference_features(reference, images))


def test_batches_of_mixed_sizes(reference, ours, rng):
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 50), (299, 299)]]
    mixed = ours.encode(images, batch_size=2)
    for row, im in zip(mixed, images, strict=True):
        _close(row[None], _reference_features(reference, [im]))


def test_extracted_store_equals_get_activations(tmp_path, reference, weights, rng):
    """End to end: our folder listing, decoding, resize and store against pytorch-fid's
    get_activations on the same files (it takes them in the order given: sorted here)."""
    import zarr

    get_activations = importlib.import_module("pytorch_fid.fid_score").get_activations
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        mode = ("RGB", "L", "RGBA")[i % 3]
        Image.fromarray(pixels).convert(mode).save(folder / f"{i:02d}.png")
    files = sorted(str(p) for p in folder.iterdir())
    expected = get_activations(files, reference, batch_size=3, dims=2048, num_workers=0)
    out = str(tmp_path / "features.zarr")
    extract_features(str(folder), out, weights=weights, batch_size=3)
    got = zarr.open_group(out, mode="r")["features"][:]
    _close(got, expected.astype(np.float32))
