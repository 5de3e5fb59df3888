"""A user's encoder end to end: a torch module given in Python, and a Hugging Face model from
the local cache (``hf:MODEL_ID``), through the feature cache into FID, the training-loop FID
and ``extract``; the reports name the encoder, its source and its weights' digest. Every FID
is checked against the float64 definition on features computed by running the model
directly."""

import json
import os

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

import shardeval as se
from shardeval.kernels.encoders import Encoder, weights_digest
from shardeval.workflows.cli import main
from tests.kernels.test_encoder_registry import _hf_cache, _hf_reference, tiny_vit
from tests.reference import exact_fid, np_stats


class TinyNet(torch.nn.Module):
    """(B, 3, H, W) floats in [0, 1] → (B, 4): a convolution, ReLU, global mean, a linear map."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _pixels(seed, n, shape=(20, 24)):
    """Images of different colours (a level per image and channel) with some noise, so that
    features spread from image to image as a real set's do."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 200, (n, 1, 1, 3))
    return (levels + rng.integers(0, 56, (n, *shape, 3))).astype(np.uint8)


def _folder(root, pixels):
    root.mkdir(parents=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(root / f"{i:02d}.png")
    return str(root)


def _rows(net, pixels):
    """The module run directly on the images as ToTensor makes them, in float64 after."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return net(x).double().numpy()


def _fid(a, b):
    return exact_fid(*np_stats(a), *np_stats(b))


@pytest.fixture
def net():
    return TinyNet().eval()


def test_a_torch_module_into_fid_and_the_report_names_it(tmp_path, net, monkeypatch):
    real_pixels, gen_pixels = _pixels(1, 12), _pixels(2, 10)
    real = _folder(tmp_path / "real", real_pixels)
    gen = _folder(tmp_path / "gen", gen_pixels)
    cache = str(tmp_path / "cache")
    spec = se.encoder(net, name="tiny-net")
    report = se.fid(real, gen, encoder=spec, cache_root=cache, precision="fp64")
    expected = _fid(_rows(net, real_pixels), _rows(net, gen_pixels))
    assert float(report) == pytest.approx(expected, rel=1e-6)
    made = report.to_dict()["features_made_by"]
    for role in ("real", "gen"):
        assert made[role]["encoder"] == "python:tiny-net"
        assert made[role]["encoder_source"] == "python"
        assert made[role]["feature_extractor"] == "python:tiny-net"
        assert made[role]["weights_digest"] == spec.digest
        assert made[role]["weights_status"] == "unpinned"
    assert "python:tiny-net" in report.summary()
    assert not [w for w in report.to_dict()["warnings"] if "weights" in w]

    # Again: both from the cache, no forward pass; the module given as it is keys alike.
    def no_forward(*args, **kwargs):
        raise AssertionError("an encoder ran for features already in the cache")

    with monkeypatch.context() as patched:
        patched.setattr(Encoder, "forward", no_forward)
        again = se.fid(real, gen, encoder=spec, cache_root=cache, precision="fp64")
        assert float(again) == float(report)
    # Other weights are another digest, so other entries: never the old features.
    other = TinyNet(seed=1).eval()
    changed = se.fid(real, gen, encoder=se.encoder(other, name="tiny-net"), cache_root=cache)
    want = _fid(_rows(other, real_pixels), _rows(other, gen_pixels))
    assert float(changed) == pytest.approx(want, rel=1e-5)
    assert len([e for e in os.listdir(cache) if e.endswith(".zarr")]) == 4
    # A bare module is declared at the call: its class names it.
    bare = se.fid(real, gen, encoder=net, cache_root=cache, precision="fp64")
    assert float(bare) == pytest.approx(expected, rel=1e-6)
    name = bare.to_dict()["features_made_by"]["gen"]["encoder"]
    assert name == f"python:{__name__}.TinyNet"


def test_extract_with_a_module_records_it(tmp_path, net):
    pixels = _pixels(3, 5, (17, 19))
    out = str(tmp_path / "gen.zarr")
    spec = se.encoder(net, name="tiny-net")
    report = se.extract(pixels, out, encoder=spec, batch_size=2)
    data = report.to_dict()
    assert (data["encoder"], data["encoder_source"], data["dim"]) == (
        "python:tiny-net",
        "python",
        4,
    )
    assert data["weights_digest"] == spec.digest
    assert data["weights_status"] == "unpinned"
    group = zarr.open_group(out, mode="r")
    assert group.attrs["encoder"] == "python:tiny-net"
    assert group.attrs["encoder_source"] == "python"
    assert group.attrs["weights_digest"] == spec.digest
    np.testing.assert_allclose(group["features"][:], _rows(net, pixels), rtol=1e-5, atol=1e-6)
    again = se.extract(pixels, out, encoder=spec).to_dict()
    assert again["already_complete"]
    assert again["dim"] == 4
    with pytest.raises(se.ShardevalError, match="training mode"):
        se.extract(pixels, str(tmp_path / "x.zarr"), encoder=TinyNet())
    with pytest.raises(se.ShardevalError, match="holds its weights"):
        se.extract(pixels, str(tmp_path / "y.zarr"), encoder=spec, weights=str(tmp_path))


def test_training_loop_fid_with_a_module(tmp_path, net):
    real_pixels, gen_pixels = _pixels(4, 11), _pixels(5, 9)
    metric_spec = se.encoder(net, name="tiny-net")
    metric = se.FID(encoder=metric_spec, batch_size=4, precision="fp64")
    for pixels, real in ((real_pixels, True), (gen_pixels, False)):
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        metric.update(batch[:5], real=real)
        metric.update(batch[5:], real=real)
    expected = _fid(_rows(net, real_pixels), _rows(net, gen_pixels))
    report = metric.compute()
    assert float(report) == pytest.approx(expected, rel=1e-6)
    # Its report says how the rows were made as the extracted features' reports say it.
    for role, made in report.to_dict()["features_made_by"].items():
        assert made["encoder"] == made["feature_extractor"] == "python:tiny-net", role
        assert made["encoder_source"] == "python", role
        assert made["weights_status"] == "unpinned", role
    once = se.fid(real_pixels, gen_pixels, encoder=metric_spec, cache_root=str(tmp_path))
    assert report.to_dict()["features_made_by"] == once.to_dict()["features_made_by"]


@pytest.fixture
def hf_vit(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    snapshot = _hf_cache(tmp_path, monkeypatch, "org/tiny-vit")
    return transformers, snapshot, tiny_vit(transformers, snapshot)


def test_an_hf_model_from_the_local_cache_into_fid(tmp_path, hf_vit, capsys):
    transformers, snapshot, model = hf_vit
    real_pixels, gen_pixels = _pixels(6, 40, (30, 26)), _pixels(7, 36, (30, 26))
    real, gen = str(tmp_path / "real.npy"), str(tmp_path / "gen.npy")
    np.save(real, real_pixels)
    np.save(gen, gen_pixels)
    cache = str(tmp_path / "cache")
    report = se.fid(real, gen, encoder="hf:org/tiny-vit", cache_root=cache, precision="fp64")
    rows = [
        _hf_reference(transformers, snapshot, model, list(p)) for p in (real_pixels, gen_pixels)
    ]
    assert rows[0].shape == (40, 32)
    expected = _fid(*(r.astype(np.float64) for r in rows))
    assert float(report) == pytest.approx(expected, rel=1e-4)
    made = report.to_dict()["features_made_by"]["real"]
    assert (made["encoder"], made["encoder_source"], made["weights_status"]) == (
        "hf:org/tiny-vit",
        "hf",
        "unpinned",
    )
    assert made["weights_digest"] == weights_digest(snapshot)
    assert made["weights_file"] == str(snapshot)
    # The command line takes the same name, and finds the same entries.
    argv = ["fid", real, gen, "--encoder", "hf:org/tiny-vit", "--cache-root", cache]
    capsys.readouterr()
    assert main([*argv, "--precision", "fp64", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"]["fid"] == float(report)


def test_the_command_line_refuses_an_unknown_encoder_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "a.npy", _pixels(8, 3))
    with pytest.raises(SystemExit) as info:
        main(
            ["extract", str(tmp_path / "a.npy"), "-o", str(tmp_path / "a.zarr"), "--encoder", "vgg"]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown encoder 'vgg'" in err
    for name in ("inception", "dinov2-vitl14", "clip-vitl14-336", "timm:NAME", "hf:MODEL_ID"):
        assert name in err
