"""``timm:NAME`` and ``open_clip:NAME:PRETRAINED`` encoders against the libraries themselves:
random weights written where each library caches its downloads (or a checkpoint file), read
from there without a download, features equal to the model run directly with the library's
own evaluation transform, and end to end into FID with the report naming the encoder.

timm and open_clip are not dependencies of shardeval: where they are not installed these
tests skip, saying so.
"""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import shardeval as se
from shardeval.kernels.encoders import WeightsError, load_encoder, locate_weights, weights_digest
from tests.reference import exact_fid, np_stats

pytestmark = [
    pytest.mark.encoders,
    # 512-d features of a few images: singular covariances, FID still defined
    pytest.mark.filterwarnings("ignore::shardeval.pipeline.errors.SingularCovarianceWarning"),
]


def _pixels(seed, n, shape=(40, 36)):
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 200, (n, 1, 1, 3))
    return (levels + rng.integers(0, 56, (n, *shape, 3))).astype(np.uint8)


def _hf_snapshot(cache, repo):
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("r1")
    snapshot = root / "snapshots" / "r1"
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def timm():
    return pytest.importorskip("timm", reason="timm is not installed (pip install timm)")


def test_timm_model_from_the_hugging_face_cache(tmp_path, monkeypatch, timm):
    name = "resnet18.a1_in1k"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match=r"timm/resnet18\.a1_in1k.*weights=FILE") as info:
        locate_weights(f"timm:{name}")
    assert "\n" not in str(info.value)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    snapshot = _hf_snapshot(tmp_path / "hf", "timm/" + name)
    torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    located = locate_weights(f"timm:{name}")
    assert located == str(snapshot / "pytorch_model.bin")
    encoder = load_encoder(f"timm:{name}", located)
    images = list(_pixels(0, 3))
    # timm itself: the same weights, pooled features, its evaluation transform on PIL images.
    reference = timm.create_model(name, pretrained=False, num_classes=0).eval()
    reference.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    )
    config = timm.data.resolve_data_config({}, model=reference)
    transform = timm.data.create_transform(**config)
    x = torch.stack([transform(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        expected = reference(x).numpy()
    assert expected.shape == (3, 512)
    np.testing.assert_allclose(encoder.encode(images, batch_size=2), expected, rtol=1e-5, atol=1e-5)

    # End to end into FID, the report naming it; features from the store equal timm's.
    real_pixels, gen_pixels = _pixels(1, 10), _pixels(2, 9)
    real, gen = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    np.save(real, real_pixels)
    np.save(gen, gen_pixels)
    out = str(tmp_path / "gen.zarr")
    extracted = se.extract(gen, out, encoder=f"timm:{name}").to_dict()
    assert (extracted["encoder"], extracted["encoder_source"], extracted["dim"]) == (
        f"timm:{name}",
        "timm",
        512,
    )
    report = se.fid(real, out, encoder=f"timm:{name}", cache_root=str(tmp_path / "cache"))
    rows = []
    for pixels in (real_pixels, gen_pixels):
        with torch.no_grad():
            batch = torch.stack([transform(Image.fromarray(im)) for im in pixels])
            rows.append(reference(batch).double().numpy())
    expected_fid = exact_fid(*np_stats(rows[0]), *np_stats(rows[1]))
    assert float(report) == pytest.approx(expected_fid, rel=1e-4)
    made = report.to_dict()["features_made_by"]["real"]
    assert (made["encoder"], made["encoder_source"], made["weights_status"]) == (
        f"timm:{name}",
        "timm",
        "unpinned",
    )
    assert made["weights_digest"] == weights_digest(located)


@pytest.fixture
def open_clip(tmp_path):
    module = pytest.importorskip(
        "open_clip", reason="open_clip is not installed (pip install open_clip_torch)"
    )
    # A tiny architecture of open_clip's own kind, registered as its configs are.
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny-test-clip.json").write_text(
        '{"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,'
        ' "patch_size": 8, "head_width": 16}, "text_cfg": {"context_length": 8,'
        ' "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}'
    )
    module.add_model_config(configs)
    return module


def test_open_clip_model_from_a_checkpoint(tmp_path, open_clip):
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms("tiny-test-clip")
    model.eval()
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    name = f"open_clip:tiny-test-clip:{checkpoint}"
    assert locate_weights(name) == str(checkpoint)
    encoder = load_encoder(name, str(checkpoint))
    images = list(_pixels(3, 4))
    x = torch.stack([transform(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        expected = model.encode_image(x).numpy()
    assert expected.shape == (4, 16)
    np.testing.assert_allclose(encoder.encode(images, batch_size=3), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(WeightsError, match="no weights 'laion-nope'"):
        locate_weights("open_clip:ViT-B-32:laion-nope")
    other = tmp_path / "other.pt"
    torch.save({k: v for k, v in model.state_dict().items() if "visual" not in k}, other)
    with pytest.raises(WeightsError, match="cannot be loaded as open_clip:tiny-test-clip"):
        load_encoder(f"open_clip:tiny-test-clip:{other}", str(other))
    os.remove(other)
