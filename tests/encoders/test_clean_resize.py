"""Our ``clean`` resize against clean-fid's: the resize function itself, and the tensors its
dataset feeds the network. Both are exact: the same Pillow filter on the same float32 values.

clean-fid is imported by a fixture, so the main environment can collect and deselect this
module; where the ``encoders`` marker is selected, a missing clean-fid is an error, not a skip.
"""

import importlib

import numpy as np
import pytest
from PIL import Image

from shardeval.kernels.encoders import resize as pre

pytestmark = pytest.mark.encoders


@pytest.fixture(scope="module")
def cleanfid():
    resize = importlib.import_module("cleanfid.resize")
    utils = importlib.import_module("cleanfid.utils")
    return resize, utils


SIZES = [(40, 40), (299, 299), (512, 384), (7, 1000), (300, 298), (1, 1)]


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_clean_resize_equals_clean_fid(cleanfid, rng, height, width):
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    theirs = cleanfid[0].make_resizer("PIL", False, "bicubic", (299, 299))(image)
    ours = pre.clean_resize(image)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_clean_mode_is_clean_fids_resizer(cleanfid, rng):
    image = rng.integers(0, 256, (123, 77, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        pre.clean_resize(image), cleanfid[0].build_resizer("clean")(image)
    )


def test_network_input_equals_clean_fid_dataset(cleanfid, tmp_path, rng):
    """clean-fid's dataset yields the resized image in [0, 255]; its clean-mode Inception
    computes (x − 128) / 128, which our network's 2x − 1 gives from x / 256."""
    paths = []
    for i, (h, w) in enumerate([(64, 48), (299, 299), (20, 31)]):
        mode = ("RGB", "L", "RGBA")[i]
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(path)
        paths.append(str(path))
    dataset = cleanfid[1].ResizeDataset(paths, mode="clean")
    for i, path in enumerate(paths):
        resized = dataset[i].numpy()
        ours = pre.clean(np.asarray(Image.open(path).convert("RGB"))).numpy()
        np.testing.assert_array_equal(ours, resized / np.float32(256))
        # What the two networks' first layers see: equal to one rounding.
        their_input = (resized - np.float32(128)) / np.float32(128)
        np.testing.assert_allclose(2 * ours - 1, their_input, rtol=0, atol=2**-23)
