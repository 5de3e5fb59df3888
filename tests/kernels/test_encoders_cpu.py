"""Encoders on the CPU, with random weights written to files and loaded through the real path
(the reference comparisons, which need torchvision/pytorch-fid/clean-fid, are in
tests/encoders and run in their own environment)."""

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

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
from shardeval.kernels.encoders.inception import random_state_dict


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "inception.pth"
    torch.save(random_state_dict(0), path)
    return str(path)


@pytest.fixture(scope="module")
def inception(inception_weights):
    return load_encoder("inception", locate_weights("inception", inception_weights))


def _images(rng, shapes):
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


def test_inception_shape_and_determinism(inception, rng):
    images = _images(rng, [(40, 40), (33, 57), (299, 299)])  # mixed sizes in one batch
    a = inception.encode(images, batch_size=3)
    assert a.shape == (3, 2048)
    assert a.dtype == np.float32
    assert np.isfinite(a).all()
    assert a.std() > 0
    np.testing.assert_array_equal(inception.encode(images, batch_size=3), a)
    # Each image is preprocessed alone, so a batch of one gives that image's row.
    one = inception.encode(images[1:2], batch_size=1)
    np.testing.assert_allclose(one[0], a[1], rtol=1e-5, atol=1e-5)
    assert inception.encode([], batch_size=4).shape == (0, 2048)


def test_checkpoint_with_or_without_batch_counters(tmp_path, inception, rng):
    state = {k: v for k, v in random_state_dict(0).items() if "num_batches_tracked" not in k}
    path = tmp_path / "no-counters.pth"
    torch.save(state, path)
    other = load_encoder("inception", str(path))
    images = _images(rng, [(50, 50), (50, 50)])
    np.testing.assert_array_equal(other.encode(images), inception.encode(images))


def test_missing_weights_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as info:
        locate_weights("inception")
    message = str(info.value)
    expected = os.path.join(str(tmp_path / "torch"), "hub", "checkpoints")
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert expected in message
    assert "weights=PATH" in message
    assert "\n" not in message
    with pytest.raises(WeightsError, match="do not exist"):
        locate_weights("inception", tmp_path / "nope.pth")


def test_standard_cache_is_found(tmp_path, monkeypatch, inception_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    target = folder / "pt_inception-2015-12-05-6726825d.pth"
    target.write_bytes(Path(inception_weights).read_bytes())
    assert locate_weights("inception") == str(target)
    assert weights_digest(target) == weights_digest(inception_weights)


def test_hf_cache_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsError, match="facebook/dinov2-large") as info:
        locate_weights("dinov2-vitl14")
    assert "weights=DIR" in str(info.value)
    assert "--weights DIR" in info.value.cli_text()
    root = tmp_path / "hf" / "hub" / "models--facebook--dinov2-large"
    snap = root / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"config\.json and model\.safetensors"):
        locate_weights("dinov2-vitl14")
    (snap / "model.safetensors").write_bytes(b"x")
    assert locate_weights("dinov2-vitl14") == str(snap)
    assert weights_digest(snap).startswith("sha256:")
    with pytest.raises(WeightsError, match="model folder"):
        locate_weights("clip-vitl14-336", snap / "config.json")


def test_bad_checkpoints_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="are not a torch checkpoint"):
        load_encoder("inception", str(garbage))
    state = random_state_dict(0)
    del state["Mixed_6b.branch7x7_2.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(WeightsError, match=r"missing Mixed_6b\.branch7x7_2\.conv\.weight"):
        load_encoder("inception", str(partial))
    good = tmp_path / "good.pth"
    torch.save(random_state_dict(0), good)
    with pytest.raises(WeightsError, match="every worker must see the same weights"):
        load_encoder("inception", str(good), digest="sha256:" + "0" * 64)


def test_resize_modes(rng):
    image = _images(rng, [(37, 53)])[0]
    legacy = pre.legacy_pytorch(image)
    clean = pre.clean(image)
    for x in (legacy, clean):
        assert x.shape == (3, 299, 299)
        assert x.dtype == torch.float32
        assert x.is_contiguous()
        assert 0 <= x.min() <= x.max() <= 1
    assert (legacy - clean).abs().max() > 1e-3  # two different resizes
    raw = pre.clean_resize(image)
    assert raw.shape == (299, 299, 3)
    assert raw.dtype == np.float32
    assert 0 <= raw.min() <= raw.max() <= 255
    exact = _images(rng, [(299, 299)])[0]  # already 299: bilinear is the identity
    np.testing.assert_array_equal(pre.legacy_pytorch(exact).numpy(), pre.to_tensor(exact).numpy())
    square = pre.center_crop_square(rng.integers(0, 256, (10, 4, 3), dtype=np.uint8))
    assert square.shape == (4, 4, 3)
    assert pre.dinov2(image).shape == (3, 224, 224)
    assert pre.clip(image).shape == (3, 336, 336)


def test_resize_choice():
    assert resolve_resize("inception", None) == "legacy-pytorch"
    assert resolve_resize("inception", "clean") == "clean"
    with pytest.raises(EncoderError, match="does not apply"):
        resolve_resize("dinov2-vitl14", "clean")
    with pytest.raises(EncoderError, match="unknown encoder"):
        resolve_resize("vgg", None)
    assert {s.dim for s in ENCODERS.values()} == {2048, 1024, 768, 384, 1536, 1152}


def test_encoders_package_imports_nothing_heavy():
    import subprocess
    import sys

    script = (
        "import sys, shardeval.kernels.encoders; "
        "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- ViT encoders: tiny configurations (transformers is a test dependency) ---


@pytest.fixture
def transformers():
    return importlib.import_module("transformers")


def _tiny_dinov2(transformers, folder, seed=0):
    torch.manual_seed(seed)
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=70,  # a 5 x 5 position grid, interpolated to 16 x 16 at 224 px
        patch_size=14,
    )
    model = transformers.Dinov2Model(config).eval()
    model.save_pretrained(folder)
    return model


def test_dinov2_tiny(tmp_path, rng, transformers):
    from shardeval.kernels.encoders.vit import HUB_INTERPOLATE_OFFSET

    reference = _tiny_dinov2(transformers, tmp_path / "dino")
    encoder = load_encoder("dinov2-vitl14", locate_weights("dinov2-vitl14", tmp_path / "dino"))
    images = _images(rng, [(64, 48), (224, 224)])
    features = encoder.encode(images, batch_size=2)
    assert features.shape == (2, 32)
    x = torch.stack([pre.dinov2(im) for im in images])
    # The hub's interpolation, written out: scale (16 + 0.1) / 5 on the 5 x 5 grid.
    pos = reference.embeddings.position_embeddings
    grid = pos[:, 1:].reshape(1, 5, 5, 32).permute(0, 3, 1, 2)
    scale = (16 + HUB_INTERPOLATE_OFFSET) / 5
    grid = torch.nn.functional.interpolate(grid, scale_factor=(scale, scale), mode="bicubic")
    expected_pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 256, 32)], 1)
    got_pos = encoder.network.model.embeddings.interpolate_pos_encoding(
        torch.zeros(1, 257, 32), 224, 224
    )
    torch.testing.assert_close(got_pos, expected_pos, rtol=0, atol=0)
    hf_pos = reference.embeddings.interpolate_pos_encoding(torch.zeros(1, 257, 32), 224, 224)
    assert (hf_pos - expected_pos).abs().max() > 1e-4  # what the replacement is for
    with torch.no_grad():
        reference.embeddings.interpolate_pos_encoding = (
            encoder.network.model.embeddings.interpolate_pos_encoding
        )
        out = reference(pixel_values=x)
    cls = out.last_hidden_state[:, 0]  # the sequence after the final layer norm
    torch.testing.assert_close(out.pooler_output, cls)
    np.testing.assert_allclose(features, cls.numpy(), rtol=1e-5, atol=1e-5)


def test_clip_tiny_and_uninitialised_weights_refused(tmp_path, rng, transformers):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=336,
        patch_size=14,
        projection_dim=16,
    )
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    encoder = load_encoder("clip-vitl14-336", str(tmp_path / "clip"))
    features = encoder.encode(_images(rng, [(300, 400), (336, 336), (20, 10)]))
    assert features.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    # A checkpoint without the projection would leave it randomly initialised: refused.
    transformers.CLIPVisionModel(config).save_pretrained(tmp_path / "no-projection")
    with pytest.raises(WeightsError, match="visual_projection"):
        load_encoder("clip-vitl14-336", str(tmp_path / "no-projection"))


def test_encoder_says_when_pytorch_would_round_to_tf32(inception, monkeypatch, fp32_flags):
    import copy

    from shardeval.kernels import use_ieee_fp32

    assert inception.fp32_products == "ieee"  # no TF32 on a CPU
    gpu = copy.copy(inception)
    gpu.device = "cuda:0"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default
    assert gpu.fp32_products == "tf32"
    use_ieee_fp32()
    assert gpu.fp32_products == "ieee"
    torch.set_float32_matmul_precision("high")  # TF32 matmuls, in the ViTs' linear layers
    assert gpu.fp32_products == "tf32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert gpu.fp32_products == "ieee"  # no TF32 units before Ampere


def _wrong_weights_files(folder):
    """Files a user may give as weights that are not a torch state dict of tensors, with what
    the message must call each."""
    import pickle
    import zipfile

    from torch import nn

    files = {}
    files["module.pth"] = "pickled torch.nn.modules.linear.Linear"
    torch.save(nn.Linear(2, 2), folder / "module.pth")
    files["arrays.pth"] = "numpy"
    torch.save({"w": np.zeros(3)}, folder / "arrays.pth")
    files["plain.pkl"] = "Python pickle"
    (folder / "plain.pkl").write_bytes(pickle.dumps({"w": np.zeros(3)}))
    files["text.pth"] = "begins with b'hello"
    (folder / "text.pth").write_text("hello, not weights")
    files["empty.pth"] = "empty"
    (folder / "empty.pth").write_bytes(b"")
    files["other.zip"] = "zip archive"
    with zipfile.ZipFile(folder / "other.zip", "w") as archive:
        archive.writestr("x.txt", "y")
    files["model.safetensors"] = "safetensors"
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (folder / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + bytes(4)
    )
    return files


def test_a_wrong_weights_file_is_one_line_saying_what_it_is(tmp_path):
    """What the file is and what is expected, in one line; not torch's advice on
    ``weights_only`` (re-loading an untrusted file with it off would run its code)."""
    import warnings

    for name, what in _wrong_weights_files(tmp_path).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(WeightsError) as info:
                load_encoder("inception", str(tmp_path / name))
        message = str(info.value)
        assert what in message, (name, message)
        assert "pt_inception-2015-12-05-6726825d.pth" in message, (name, message)
        assert "\n" not in message, (name, message)
        assert "\x1b" not in message, (name, message)
        for text in (message, *(str(w.message) for w in caught)):
            assert "weights_only" not in text, (name, text)
            assert "trust" not in text, (name, text)


@pytest.mark.parametrize(
    ("name", "model_id", "dim"),
    [
        ("dinov2-vits14", "facebook/dinov2-small", 384),
        ("dinov2-vitb14", "facebook/dinov2-base", 768),
        ("dinov2-vitl14", "facebook/dinov2-large", 1024),
        ("dinov2-vitg14", "facebook/dinov2-giant", 1536),
    ],
)
def test_each_dinov2_size_is_declared_with_its_snapshot(name, model_id, dim, tmp_path, monkeypatch):
    spec = ENCODERS[name]
    assert (spec.dim, spec.weights.model_id, spec.feature_extractor) == (
        dim,
        model_id,
        f"{name}/cls",
    )
    assert spec.default_resize == "pil-bicubic-224"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsError, match=model_id):
        locate_weights(name)


def test_dinov2_giant_layout_loads_under_its_name(tmp_path, rng, transformers):
    """ViT-g/14's layer is a SwiGLU MLP (``use_swiglu_ffn``): a tiny model of that layout loads
    through the registered path and gives the CLS token after the final norm."""
    torch.manual_seed(1)
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=70,
        patch_size=14,
        use_swiglu_ffn=True,
    )
    reference = transformers.Dinov2Model(config).eval()
    reference.save_pretrained(tmp_path / "giant")
    encoder = load_encoder("dinov2-vitg14", locate_weights("dinov2-vitg14", tmp_path / "giant"))
    images = _images(rng, [(50, 60), (224, 224)])
    features = encoder.encode(images, batch_size=2)
    x = torch.stack([pre.dinov2(im) for im in images])
    with torch.no_grad():
        reference.embeddings.interpolate_pos_encoding = (
            encoder.network.model.embeddings.interpolate_pos_encoding
        )
        cls = reference(pixel_values=x).last_hidden_state[:, 0]
    np.testing.assert_allclose(features, cls.numpy(), rtol=1e-5, atol=1e-5)
