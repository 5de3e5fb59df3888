"""SigLIP's vision tower as a registered encoder: declared with its model, its preprocessing
equal to transformers' ``SiglipImageProcessor`` (the installed one, on random uint8 images),
and tiny random-weight models saved with ``save_pretrained`` loading through the registered
path (the Hugging Face cache snapshot, or «weights=DIR») to give ``pooler_output`` as
transformers' own forward gives it. The published weights are never run here."""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from shardeval.kernels.encoders import (
    ENCODERS,
    EncoderError,
    WeightsError,
    load_encoder,
    locate_weights,
    resolve_resize,
    weights_digest,
)
from shardeval.kernels.encoders import resize as pre

SIGLIPS = [
    ("siglip-so400m-patch14-384", "google/siglip-so400m-patch14-384", 1152, 384, 14),
    ("siglip-base-patch16-224", "google/siglip-base-patch16-224", 768, 224, 16),
]


@pytest.fixture
def transformers():
    return importlib.import_module("transformers")


def _images(rng, shapes):
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


def _processor(transformers, size):
    """transformers' SigLIP image processor on its Pillow path (the class the published
    ``preprocessor_config.json`` names falls back to it where torchvision is missing; named
    directly, it is the same arithmetic either way)."""
    cls = (
        getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    )
    return cls(size={"height": size, "width": size})


def _vision_config(transformers, size, patch, **kwargs):
    return transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=size,
        patch_size=patch,
        **kwargs,
    )


@pytest.mark.parametrize(("name", "model_id", "dim", "size", "patch"), SIGLIPS)
def test_each_siglip_is_declared_with_its_snapshot(
    name, model_id, dim, size, patch, tmp_path, monkeypatch
):
    spec = ENCODERS[name]
    assert (spec.dim, spec.size, spec.weights.kind, spec.weights.model_id) == (
        dim,
        size,
        "hf",
        model_id,
    )
    assert spec.feature_extractor == f"{name}/pooled"
    assert spec.default_resize == f"siglip-pil-bicubic-{size}"
    assert spec.weights.fetch is None  # no public source pins the snapshot's digest
    assert resolve_resize(name, None) == spec.default_resize
    with pytest.raises(EncoderError, match="does not apply"):
        resolve_resize(name, "pil-bicubic-224")  # DINOv2's: another normalisation
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsError, match=model_id) as info:
        locate_weights(name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [384, 224])
def test_preprocessing_is_the_installed_siglip_image_processor(size, rng, transformers):
    """Bit for bit, on random uint8 images smaller, larger and of the model's side."""
    processor = _processor(transformers, size)
    # The defaults the resize reproduces, as the installed processor declares them.
    assert int(processor.resample) == int(Image.Resampling.BICUBIC)
    assert processor.rescale_factor == 1 / 255
    assert list(processor.image_mean) == list(processor.image_std) == [0.5, 0.5, 0.5]
    assert processor.do_resize
    assert processor.do_rescale
    assert processor.do_normalize
    assert not getattr(processor, "do_center_crop", False)
    images = _images(rng, [(37, 53), (size, size), (500, 300), (1, 1)])
    expected = processor(images=[Image.fromarray(im) for im in images], return_tensors="np")
    got = np.stack([pre.siglip(im, size).numpy() for im in images])
    assert got.dtype == np.float32
    assert got.shape == (4, 3, size, size)
    np.testing.assert_array_equal(got, expected["pixel_values"])
    assert got.min() >= -1
    assert got.max() <= 1
    # Every uint8 value (a 16 x 16 image holding each once, at its own size: no resampling):
    # the float32 division by 255 is transformers' float64 rescale cast to float32.
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    expected = _processor(transformers, 16)(images=[Image.fromarray(every)], return_tensors="np")
    np.testing.assert_array_equal(pre.siglip(every, 16).numpy(), expected["pixel_values"][0])
    # Not DINOv2's ImageNet normalisation on the same resize.
    assert np.abs(got[0] - pre.dinov2(images[0], size).numpy()).max() > 0.1


@pytest.mark.parametrize(("name", "model_id", "dim", "size", "patch"), SIGLIPS)
def test_tiny_siglip_from_the_cache_gives_the_pooled_output(
    name, model_id, dim, size, patch, tmp_path, monkeypatch, rng, transformers
):
    """A tiny SiglipVisionModel in the Hugging Face cache snapshot of the model id loads under
    the registered name and gives its ``pooler_output`` (the MAP head's, not normalised) on
    the processor's input."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    root = cache / ("models--" + model_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("abc")
    snapshot = root / "snapshots" / "abc"
    torch.manual_seed(3)
    reference = transformers.SiglipVisionModel(_vision_config(transformers, size, patch)).eval()
    reference.save_pretrained(snapshot)
    located = locate_weights(name)
    assert located == str(snapshot)
    encoder = load_encoder(name, located, digest=weights_digest(located))
    images = _images(rng, [(40, 50), (size, size), (9, 70)])
    features = encoder.encode(images, batch_size=2)
    assert features.shape == (3, 32)
    x = _processor(transformers, size)(
        images=[Image.fromarray(im) for im in images], return_tensors="pt"
    )
    with torch.no_grad():
        out = reference(pixel_values=x["pixel_values"])
        # the attention-pooling head, by hand (under vision_model before transformers 5)
        head = getattr(reference, "head", None) or reference.vision_model.head
        head = head(out.last_hidden_state)
    np.testing.assert_allclose(features, out.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features, head.numpy(), rtol=1e-5, atol=1e-5)
    norms = np.linalg.norm(features, axis=1)
    assert np.abs(norms - 1).max() > 1e-2  # raw, not L2-normalised


def test_a_full_siglip_checkpoint_loads_its_vision_tower(tmp_path, rng, transformers):
    """The published checkpoints are SiglipModel (text and vision towers): the vision tower is
    read from it, and gives what SiglipModel's get_image_features gives."""
    torch.manual_seed(4)
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 99,
    }
    vision = _vision_config(transformers, 384, 14).to_dict()
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    full = transformers.SiglipModel(config).eval()
    full.save_pretrained(tmp_path / "full")
    name = "siglip-so400m-patch14-384"
    encoder = load_encoder(name, locate_weights(name, tmp_path / "full"))
    images = _images(rng, [(64, 48), (384, 384)])
    x = torch.stack([pre.siglip(im) for im in images])
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=x)
    expected = getattr(expected, "pooler_output", expected)  # an output object from v5 on
    np.testing.assert_allclose(encoder.encode(images), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_siglip_weights_that_do_not_fit_are_refused(tmp_path, transformers):
    torch.manual_seed(5)
    name = "siglip-so400m-patch14-384"
    headless = _vision_config(transformers, 384, 14, vision_use_head=False)
    transformers.SiglipVisionModel(headless).save_pretrained(tmp_path / "headless")
    with pytest.raises(WeightsError, match="attention-pooling head") as info:
        load_encoder(name, str(tmp_path / "headless"))
    assert "\n" not in str(info.value)
    other = _vision_config(transformers, 224, 16)
    transformers.SiglipVisionModel(other).save_pretrained(tmp_path / "small")
    with pytest.raises(WeightsError, match=r"224 px images, but .* 384 px"):
        load_encoder(name, str(tmp_path / "small"))
    dino = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    transformers.Dinov2Model(dino).save_pretrained(tmp_path / "dino")
    with pytest.raises(WeightsError, match="siglip-so400m-patch14-384"):
        load_encoder(name, str(tmp_path / "dino"))
