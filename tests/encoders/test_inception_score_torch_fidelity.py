"""The Inception Score against torch-fidelity 0.4.0 itself (its package imports torchvision, so
it runs in the encoder environment; the main one checks a float64 transcription of the same
formula, tests/pipeline/test_inception_score.py).

* ``isc_features_to_metric`` on the same logits (float64 inside, as it computes): its mean and
  std over splits equal our split protocol's to 1e-12 relative (measured: below 5e-15);
* end to end: images → torch-fidelity's ``inception-v3-compat`` extractor's
  ``logits_unbiased`` → its ``isc``, against images → our extraction store (legacy-tensorflow
  resize, logits beside the features) → ``shardeval.inception_score(store, splits=S)``, with the
  same random weights file read by each: the logits within 1e-5 of the largest (the tolerance of
  the other encoder comparisons; measured 0 here), the scores to 1e-6 relative.

torch-fidelity is imported by fixtures, so the main environment collects and deselects this
module; where the ``encoders`` marker is selected, a missing torch-fidelity is an error.
"""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

import shardeval as se
from shardeval.kernels.encoders import load_encoder, locate_weights
from shardeval.kernels.encoders.inception import encode_with_logits, random_state_dict
from shardeval.pipeline.images.extract import LOGITS_ARRAY, extract_features

pytestmark = pytest.mark.encoders


@pytest.fixture(scope="module")
def isc():
    return importlib.import_module("torch_fidelity.metric_isc").isc_features_to_metric


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "inception-random.pth"
    torch.save(random_state_dict(13), path)
    return str(path)


@pytest.mark.parametrize(
    ("n", "c", "splits", "seed"),
    [(1000, 1008, 10, 2020), (1003, 1008, 10, 2020), (517, 40, 7, 3), (30, 5, 30, 2020)],
)
def test_isc_equals_torch_fidelity(isc, rng, n, c, splits, seed):
    centres = rng.standard_normal((12, c)) * 4
    logits = (centres[rng.integers(0, 12, n)] + rng.standard_normal((n, c))).astype(np.float32)
    theirs = isc(torch.from_numpy(logits), splits=splits, shuffle=True, rng_seed=seed)
    ours = se.inception_score(logits, splits=splits, seed=seed, shard_rows=97).results["is"]
    assert ours["is_split_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert ours["is_split_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-9, abs=1e-12)
    one = isc(torch.from_numpy(logits), splits=1, shuffle=False)["inception_score_mean"]
    assert ours["is"] == pytest.approx(one, rel=1e-12)


def test_images_to_score_equals_torch_fidelity(isc, weights, tmp_path, rng):
    module = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    reference = module.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=weights
    )
    images = rng.integers(0, 256, (12, 64, 48, 3), dtype=np.uint8)
    with torch.no_grad():
        (theirs,) = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    store = str(tmp_path / "x.zarr")
    extract_features(str(folder), store, weights=weights, resize="legacy-tensorflow", batch_size=4)
    import zarr

    ours = zarr.open_group(store, mode="r")[LOGITS_ARRAY][:]
    scale = float(np.abs(theirs.numpy()).max())
    assert np.abs(ours - theirs.numpy()).max() <= 1e-5 * scale
    encoder = load_encoder(
        "inception", locate_weights("inception", weights), resize="legacy-tensorflow"
    )
    # The same from the encoder in this thread (the store's came from Dask's worker threads,
    # where torch may sum a convolution in another order).
    _, direct = encode_with_logits(encoder, list(images[:4]), 4)
    assert np.abs(direct - ours[:4]).max() <= 1e-5 * scale
    want = isc(theirs, splits=3, shuffle=True, rng_seed=2020)
    got = se.inception_score(store, splits=3).results["is"]
    assert got["is_split_mean"] == pytest.approx(want["inception_score_mean"], rel=1e-6)
    assert got["is_split_std"] == pytest.approx(want["inception_score_std"], rel=1e-4, abs=1e-9)
