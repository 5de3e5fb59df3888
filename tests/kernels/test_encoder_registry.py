"""The encoders' registry: every encoder is one declaration, dispatched by it (never by an
``else``), unknown names refused in one line; users' encoders (a torch module or callable,
``hf:MODEL_ID`` from a local Hugging Face cache) declared, digested and run as the
declarations say. Features are checked against the models run directly."""

import hashlib
import importlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from shardeval.kernels.encoders import (
    ENCODERS,
    EncoderError,
    EncoderSpec,
    Resize,
    WeightsError,
    WeightsSource,
    load_encoder,
    locate_weights,
    python_encoder,
    resolve_encoder,
    tensors_digest,
    weights_digest,
)
from shardeval.kernels.encoders.registry import (
    PROVIDER_FORMS,
    encoder_help,
    function_ref,
    load_function,
)


def _images(rng, shapes):
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


def test_every_registered_encoder_is_wired_by_its_declaration():
    from shardeval.pipeline.io.fetch import ARTIFACTS

    for name, spec in ENCODERS.items():
        assert spec.name == name
        assert spec.source == "shardeval"
        assert callable(load_function(spec.network)), name
        for resize in spec.resizes:
            assert callable(load_function(resize.function)), (name, resize.name)
        if spec.weights.fetch is not None:
            assert spec.weights.fetch in ARTIFACTS, name
        if spec.weights.random:
            assert callable(load_function(spec.weights.random)), name
        assert spec.dim
        assert spec.feature_extractor
        assert spec.summary
    assert ENCODERS["inception"].logits == 1008  # the TF graph's 1000 + 8 classes


def test_a_declaration_that_cannot_run_is_refused_where_it_is_written():
    weights = WeightsSource("hf", model_id="org/model")
    resizes = (Resize("pil", function_ref("resize:pil_pixels")),)
    with pytest.raises(ValueError, match="no network loader"):
        EncoderSpec("siglip", "SigLIP", 768, "siglip/pooled", 224, resizes, "", weights)
    with pytest.raises(ValueError, match="no preprocessing"):
        EncoderSpec("siglip", "SigLIP", 768, "siglip/pooled", 224, (), "m:f", weights)


class _Tiny(torch.nn.Module):
    """A network of a test entry: mean of each channel, then a fixed linear map to 5."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def tiny_network(spec, path):
    """The loader a test entry names (``module:function``): a state dict file."""
    net = _Tiny()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net


def test_a_new_entry_is_one_declaration_and_runs_as_declared(tmp_path, rng, monkeypatch):
    """Adding an encoder is one registry entry: its name is accepted, its weights found in
    torch hub's folder, its own loader and preprocessing run (no branch sends it to CLIP)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = EncoderSpec(
        name="tiny",
        title="a tiny test network",
        dim=5,
        feature_extractor="tiny/mean-linear",
        size=16,
        resizes=(Resize("pil-bicubic-16", function_ref("resize:pil_pixels")),),
        network="tests.kernels.test_encoder_registry:tiny_network",
        weights=WeightsSource("torch-hub", file="tiny.pth"),
        summary="5-d, a test",
    )
    monkeypatch.setitem(ENCODERS, "tiny", spec)
    with pytest.raises(WeightsError, match=r"tiny\.pth are not at .*weights=PATH"):
        locate_weights("tiny")
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    reference = _Tiny().eval()
    torch.save(reference.state_dict(), folder / "tiny.pth")
    encoder = load_encoder("tiny", locate_weights("tiny"))
    assert isinstance(encoder.network, _Tiny)
    images = _images(rng, [(20, 30), (16, 16)])
    # The declared preprocessing, written out: PIL bicubic to 16 x 16, / 255.
    x = torch.stack(
        [
            torch.from_numpy(
                np.array(Image.fromarray(im).resize((16, 16), Image.Resampling.BICUBIC))
            )
            .permute(2, 0, 1)
            .float()
            / 255
            for im in images
        ]
    )
    with torch.no_grad():
        expected = reference(x).numpy()
    np.testing.assert_allclose(encoder.encode(images), expected, rtol=1e-6, atol=1e-6)
    assert "tiny (5-d, a test)" in encoder_help()


def test_unknown_names_are_refused_in_one_line_listing_the_known_ones():
    for name in ("vgg", "timm:", "open_clip:ViT-B-32", "hf:a:b", ""):
        with pytest.raises(EncoderError) as info:
            resolve_encoder(name)
        message = str(info.value)
        assert "\n" not in message
        assert any(form in message for form in PROVIDER_FORMS.values()), message
    with pytest.raises(EncoderError) as info:
        resolve_encoder("vgg")
    for name in ENCODERS:
        assert name in str(info.value)
    with pytest.raises(EncoderError, match=r"random weights|PRETRAINED"):
        resolve_encoder("open_clip:ViT-B-32")
    for name in ("timm:resnet18.a1_in1k", "open_clip:ViT-B-32:openai", "hf:org/model"):
        assert resolve_encoder(name).source == name.split(":")[0]


def test_a_library_that_is_not_installed_is_named(monkeypatch):
    import sys

    for name, package in (("timm:resnet18", "timm"), ("open_clip:RN50:openai", "open_clip")):
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed
        with pytest.raises(EncoderError, match=f"pip install {package}") as info:
            locate_weights(name)
        assert "\n" not in str(info.value)


# --- a module given in Python ---------------------------------------------------------------


def test_a_modules_digest_is_its_tensors_whatever_their_layout():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    b.load_state_dict(a.state_dict())
    b[0].weight.data = b[0].weight.data.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    assert not b[0].weight.is_contiguous()
    assert tensors_digest(a) == tensors_digest(b)  # the same numbers, another memory layout
    with torch.no_grad():
        b[1].running_var[2] += 1e-6  # a buffer counts too
    assert tensors_digest(a) != tensors_digest(b)
    # The format, for one tensor: SHA-256 of a header line per tensor and its bytes.
    one = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        one.weight.copy_(torch.tensor([[1.5, -2.0]]))
    raw = np.array([1.5, -2.0], dtype="<f4").tobytes()
    expected = hashlib.sha256(b"shardeval.state-dict\nweight\0torch.float32\0(1, 2)\n" + raw)
    assert tensors_digest(one) == "sha256:" + expected.hexdigest()


def test_python_encoders_are_declared_or_refused_in_words():
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(EncoderError, match=r"training mode.*\.eval\(\)"):
        python_encoder(net)
    spec = python_encoder(net.eval(), name="mean-rgb", size=8)
    assert (spec.name, spec.source, spec.dim, spec.default_resize) == (
        "python:mean-rgb",
        "python",
        None,
        "pil-bicubic-8",
    )
    assert spec.digest == tensors_digest(net)
    assert resolve_encoder(net).name == "python:torch.nn.modules.container.Sequential"
    with pytest.raises(EncoderError, match="digest"):
        python_encoder(lambda x: x.mean(dim=(2, 3)))
    assert python_encoder(lambda x: x, name="f", digest="v1").digest == "v1"
    for bad in ({"size": 0}, {"dim": -1}, {"input": "float16"}, {"name": "a:b"}):
        with pytest.raises(EncoderError):
            python_encoder(net, **bad)
    with pytest.raises(WeightsError, match="holds its weights"):
        locate_weights(spec, "/some/file.pth")


def test_a_python_encoder_runs_where_it_is_on_its_declared_input(rng):
    seen = []

    def mean_rgb(x):
        seen.append((x.dtype, tuple(x.shape)))
        return x.float().mean(dim=(2, 3))

    images = _images(rng, [(7, 9), (7, 9), (7, 9)])
    as_float = load_encoder(python_encoder(mean_rgb, name="f", digest="d"), "")
    features = as_float.encode(images, batch_size=2)
    expected = np.stack([im.reshape(-1, 3).astype(np.float64).mean(0) / 255 for im in images])
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    assert seen[0] == (torch.float32, (2, 3, 7, 9))
    as_uint8 = load_encoder(python_encoder(mean_rgb, name="u", digest="d", input="uint8"), "")
    np.testing.assert_allclose(as_uint8.encode(images), expected * 255, rtol=1e-6)
    assert seen[-1][0] == torch.uint8
    with pytest.raises(EncoderError, match=r"7 x 9 and 8 x 9"):
        as_float.encode(_images(rng, [(7, 9), (8, 9)]))
    wrong = load_encoder(python_encoder(lambda x: x[:, 0], name="w", digest="d"), "")
    with pytest.raises(EncoderError, match=r"shape \(2, 7, 9\) for 2 images"):
        wrong.encode(images[:2])
    with pytest.raises(EncoderError, match="not a tensor"):
        load_encoder(python_encoder(lambda x: [1], name="l", digest="d"), "").encode(images)


def test_a_python_module_is_never_moved_or_switched():
    net = torch.nn.Linear(3, 2).eval()
    spec = python_encoder(torch.nn.Sequential(torch.nn.Flatten(), net).eval(), size=1)
    encoder = load_encoder(spec, "", device="auto")
    assert encoder.network is spec.module
    assert encoder.device == "cpu"
    with pytest.raises(EncoderError, match=r"«?device='cuda'»?, but .* on cpu"):
        load_encoder(spec, "", device="cuda")
    with pytest.raises(WeightsError, match="the module changed"):
        load_encoder(spec, "", digest="sha256:" + "0" * 64)


# --- hf:MODEL_ID from a local Hugging Face cache ----------------------------------------------


@pytest.fixture
def transformers():
    return importlib.import_module("transformers")


def _hf_cache(tmp_path, monkeypatch, model_id):
    """An empty Hugging Face hub cache, and the snapshot folder ``model_id`` goes in."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    root = cache / ("models--" + model_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("abc")
    return root / "snapshots" / "abc"


def tiny_vit(transformers, folder, seed=0):
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    model = transformers.ViTModel(config).eval()
    model.save_pretrained(folder)
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return model


def _hf_reference(transformers, folder, model, images, key="pooler_output"):
    """The model run directly on its own image processor's (Pillow) output."""
    kwargs = {"backend": "pil"} if transformers.__version__.split(".")[0] >= "5" else {}
    processor = transformers.AutoImageProcessor.from_pretrained(folder, **kwargs)
    x = processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")
    with torch.no_grad():
        return getattr(model(pixel_values=x["pixel_values"]), key).numpy()


def test_hf_model_from_the_local_cache(tmp_path, monkeypatch, rng, transformers):
    snapshot = _hf_cache(tmp_path, monkeypatch, "org/tiny-vit")
    with pytest.raises(WeightsError, match=r"org/tiny-vit.*weights=DIR") as info:
        locate_weights("hf:org/tiny-vit")
    assert "\n" not in str(info.value)
    model = tiny_vit(transformers, snapshot)
    located = locate_weights("hf:org/tiny-vit")
    assert located == str(snapshot)
    encoder = load_encoder("hf:org/tiny-vit", located, digest=weights_digest(located))
    images = _images(rng, [(40, 50), (32, 32), (9, 70)])
    expected = _hf_reference(transformers, snapshot, model, images)
    np.testing.assert_allclose(encoder.encode(images, batch_size=2), expected, atol=1e-5)
    os.remove(snapshot / "preprocessor_config.json")
    with pytest.raises(WeightsError, match=r"preprocessor_config\.json"):
        load_encoder("hf:org/tiny-vit", located)


def test_hf_clip_vision_tower_keeps_its_projection(tmp_path, rng, transformers):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(tmp_path / "clip")
    size = {"shortest_edge": 32}
    transformers.CLIPImageProcessor(
        size=size, crop_size={"height": 32, "width": 32}
    ).save_pretrained(tmp_path / "clip")
    assert json.loads((tmp_path / "clip" / "config.json").read_text())["architectures"]
    encoder = load_encoder("hf:org/clip", str(tmp_path / "clip"))
    images = _images(rng, [(40, 50), (33, 33)])
    expected = _hf_reference(transformers, tmp_path / "clip", model, images, "image_embeds")
    assert expected.shape == (2, 16)
    np.testing.assert_allclose(encoder.encode(images), expected, atol=1e-5)
