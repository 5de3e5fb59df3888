"""``--resize legacy-tensorflow`` against torch-fidelity 0.4.0's ``inception-v3-compat``
extractor (the TF 1.x bilinear resize of the original FID code, then the 2015-12-05 graph), with
the same random weights written to a file and read by each through its own loading code.

What is compared, and how closely:

* the resize itself, against torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``
  (its ``slow`` method, the one its extractor runs): bit for bit, at 299 and at other output
  sizes, from 1 × 1 up to 2048 px, upsampling and downsampling;
* what the first convolution sees: their (x − 128) / 128 and our network's 2·(x / 256) − 1,
  bit for bit;
* the 2048-d pool features, and the 1,008 logits (with and without the bias) computed from them
  through the checkpoint's ``fc``: within 1e-5 relative to the largest value, the tolerance of
  the pytorch-fid comparison, because another convolution backend may order its sums
  differently. Measured on this machine (CPU, torch 2.14.1): 0.0 at every size tested, features
  and logits both (max |Δ| = 0, relative 0).

torch-fidelity is imported by fixtures, so the main environment collects and deselects this
module; where the ``encoders`` marker is selected, a missing torch-fidelity is an error.
"""

import importlib

import numpy as np
import pytest
import torch

from shardeval.kernels.encoders import load_encoder, locate_weights
from shardeval.kernels.encoders import resize as pre
from shardeval.kernels.encoders.inception import random_state_dict

pytestmark = pytest.mark.encoders

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tf_interpolate():
    module = importlib.import_module("torch_fidelity.interpolate_compat_tensorflow")
    return module.interpolate_bilinear_2d_like_tensorflow1x


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "inception-random.pth"
    torch.save(random_state_dict(11), path)
    return str(path)


@pytest.fixture(scope="module")
def reference(weights):
    """torch-fidelity's extractor with our file as its ``feature_extractor_weights_path``
    (loaded strictly by its own ``load_state_dict``), pool features and both logits."""
    module = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    return module.FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048", "logits_unbiased", "logits"],
        feature_extractor_weights_path=weights,
    )


@pytest.fixture(scope="module")
def ours(weights):
    return load_encoder(
        "inception", locate_weights("inception", weights), resize="legacy-tensorflow"
    )


def _their_resize(tf_interpolate, image, size):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float32)
    return tf_interpolate(x, size=size, align_corners=False)[0]


RESIZE_SIZES = [(1, 1), (1, 9), (9, 1), (2, 3), (17, 23), (64, 64), (150, 598), (299, 299)]
RESIZE_SIZES += [(298, 300), (384, 512), (512, 384), (1000, 7), (2048, 1536)]


@pytest.mark.parametrize(("height", "width"), RESIZE_SIZES)
def test_resize_equals_torch_fidelity(tf_interpolate, rng, height, width):
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for size in [(299, 299), (13, 40), (1, 1), (300, 5)]:
        theirs = _their_resize(tf_interpolate, image, size)
        ours = pre.tf1_bilinear_resize(image, size)
        assert ours.dtype == theirs.dtype == torch.float32
        assert ours.shape == theirs.shape
        assert torch.equal(ours, theirs), (size, (ours - theirs).abs().max())


def test_every_small_input_size(tf_interpolate, rng):
    """The float32 scale and products at every input side up to 64 (and a few larger), where a
    sample falling on an integer position in exact arithmetic tests the truncation."""
    sides = [*range(1, 65), 97, 149, 150, 298, 300, 597, 598, 599, 897]
    for side in sides:
        image = rng.integers(0, 256, (side, 3, 3), dtype=np.uint8)
        image_t = np.ascontiguousarray(image.transpose(1, 0, 2))
        for im in (image, image_t):
            assert torch.equal(
                pre.tf1_bilinear_resize(im), _their_resize(tf_interpolate, im, (299, 299))
            )


def test_network_input_is_theirs(tf_interpolate, rng):
    """torch-fidelity feeds (x − 128) / 128 to its first convolution; ours computes 2x' − 1
    from x' = x / 256: the same float32 values."""
    image = rng.integers(0, 256, (37, 211, 3), dtype=np.uint8)
    theirs = (_their_resize(tf_interpolate, image, (299, 299)) - 128) / 128
    ours = 2 * pre.legacy_tensorflow(image) - 1
    assert torch.equal(ours, theirs)


def _close(ours, theirs):
    scale = max(1.0, float(np.abs(theirs).max()))
    diff = float(np.abs(ours - theirs).max())
    assert diff <= TOLERANCE * scale, (diff, scale)


@pytest.mark.parametrize(
    ("height", "width", "batch"),
    [(1, 1, 2), (17, 23, 3), (64, 64, 2), (299, 299, 2), (512, 384, 1)],
)
def test_features_and_logits_equal_torch_fidelity(reference, ours, rng, height, width, batch):
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    with torch.no_grad():
        pool, unbiased, logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
    features = ours.encode(list(images), batch_size=batch)
    _close(features, pool.numpy())
    # The logits of the checkpoint's fc on our pool features, in torch-fidelity's order of
    # operations (x Wᵀ, then + b).
    fc = ours.network.fc
    ours_unbiased = torch.from_numpy(features).mm(fc.weight.T)
    _close(ours_unbiased.numpy(), unbiased.numpy())
    _close((ours_unbiased + fc.bias).numpy(), logits.numpy())


def test_batches_of_mixed_sizes(reference, ours, rng):
    """Each image is resized alone, so a batch may mix sizes; torch-fidelity takes one size a
    batch, so each is compared on its own."""
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 50), (300, 200)]]
    mixed = ours.encode(images, batch_size=2)
    for row, image in zip(mixed, images, strict=True):
        with torch.no_grad():
            pool = reference(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
        _close(row[None], pool.numpy())
