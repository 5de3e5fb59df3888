"""The ``legacy-tensorflow`` resize (TF 1.x ``resize_bilinear``, align_corners=False) against a
float64 reference of TensorFlow's formula written here, at awkward sizes; the comparison with
torch-fidelity itself is in tests/encoders (its own environment).

The reference takes every source position exactly (i · in / out as a fraction of integers) and
interpolates in float64. Ours rounds as TensorFlow's float32 kernel does: scale = in / out
(one rounding), position = i · scale (another), three lerps. Each position is then off by at
most (2^-24 + 2^-24)(1 + 2^-24) · in ≤ in · 2^-23 · 1.01 pixels, and bilinear interpolation of
0..255 data is 255-Lipschitz in each coordinate (also across a truncation that flips, where the
two sides meet), so that part is ≤ 255 · 1.01 · 2^-23 · (H + W); the three lerps add at most
a few roundings of values ≤ 255, bounded here by 16 · 255 · 2^-24. The test asserts that bound
and that the bound is small (so a half-pixel or align-corners resize, off by far more, fails).
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shardeval.kernels.encoders import (
    ENCODERS,
    INCEPTION_RESIZES,
    load_encoder,
    locate_weights,
    resolve_resize,
)
from shardeval.kernels.encoders import resize as pre
from shardeval.kernels.encoders.inception import random_state_dict


def _taps(n_in: int, n_out: int):
    """Lower and upper source index and the upper's weight, from exact source positions."""
    lower, upper, frac = [], [], []
    for i in range(n_out):
        pos = Fraction(i * n_in, n_out)
        lo = pos.numerator // pos.denominator
        lower.append(lo)
        upper.append(min(lo + 1, n_in - 1))
        frac.append(float(pos - lo))
    return np.array(lower), np.array(upper), np.array(frac)


def tf1_reference(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(3, h, w) float64: TF 1.x bilinear (no half-pixel centres, align_corners=False)."""
    x = image.astype(np.float64).transpose(2, 0, 1)
    y_lo, y_hi, dy = _taps(x.shape[1], size[0])
    x_lo, x_hi, dx = _taps(x.shape[2], size[1])
    top, bottom = x[:, y_lo, :], x[:, y_hi, :]
    tl, tr, bl, br = top[:, :, x_lo], top[:, :, x_hi], bottom[:, :, x_lo], bottom[:, :, x_hi]
    upper = tl + (tr - tl) * dx
    lower = bl + (br - bl) * dx
    return upper + (lower - upper) * dy[:, None]


def _bound(height: int, width: int) -> float:
    return 255 * 1.01 * 2.0**-23 * (height + width) + 16 * 255 * 2.0**-24


SIZES = [
    ((1, 1), (299, 299)),  # one pixel, upsampled
    ((1, 7), (299, 299)),
    ((6, 1), (299, 299)),
    ((2, 3), (299, 299)),
    ((17, 23), (299, 299)),
    ((64, 64), (299, 299)),
    ((300, 298), (299, 299)),  # nearly the identity: one side down, one up
    ((512, 384), (299, 299)),
    ((1000, 7), (299, 299)),
    ((2048, 1536), (299, 299)),
    ((37, 53), (13, 40)),  # other output sizes: down in one axis, up in the other
    ((23, 29), (1, 1)),
    ((5, 4), (300, 7)),
    ((6, 9), (4, 6)),  # positions i · 3/2 land on integers every other sample
]


@pytest.mark.parametrize(("shape", "size"), SIZES)
def test_tf_resize_equals_the_float64_formula(rng, shape, size):
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = pre.tf1_bilinear_resize(image, size)
    assert ours.dtype == torch.float32
    assert ours.shape == (3, *size)
    assert ours.is_contiguous()
    expected = tf1_reference(image, size)
    error = float(np.abs(ours.numpy().astype(np.float64) - expected).max())
    assert error <= _bound(*shape), (error, _bound(*shape))
    assert float(ours.min()) >= 0
    assert float(ours.max()) <= 255


def test_exact_cases(rng):
    """Where TensorFlow's float32 arithmetic is exact: the same size (the identity), an integer
    downsampling factor (every k-th pixel), a one-pixel image (that pixel everywhere)."""
    image = rng.integers(0, 256, (299, 299, 3), dtype=np.uint8)
    same = pre.tf1_bilinear_resize(image)
    np.testing.assert_array_equal(same.numpy(), image.transpose(2, 0, 1).astype(np.float32))
    big = rng.integers(0, 256, (598, 897, 3), dtype=np.uint8)  # 2 × and 3 × 299
    picked = big[::2, ::3].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(pre.tf1_bilinear_resize(big).numpy(), picked)
    pixel = rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)
    out = pre.tf1_bilinear_resize(pixel, (5, 8)).numpy()
    np.testing.assert_array_equal(out, np.broadcast_to(pixel[0, 0][:, None, None], (3, 5, 8)))


def test_no_half_pixel_centres(rng):
    """TF 1.x samples output pixel i at i · in / out: the first output pixel is the first input
    pixel, and upsampling shifts the image against ``F.interpolate``'s half-pixel centres by
    well over the tolerance above."""
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    ours = pre.tf1_bilinear_resize(image)
    np.testing.assert_array_equal(ours[:, 0, 0].numpy(), image[0, 0].astype(np.float32))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float32)
    half_pixel = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)[0]
    corners = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)[0]
    for other in (half_pixel, corners):
        assert float((ours - other).abs().max()) > 1000 * _bound(17, 23)


def test_network_input_mapping():
    """x / 256 then 2x − 1 (our network) equals (x − 128) / 128 (the TF graph) bit for bit, for
    every float32 the resize can give in [0, 255] (a dense sample of them)."""
    values = torch.linspace(0, 255, 2_000_003, dtype=torch.float32)
    values = torch.cat([values, torch.arange(256, dtype=torch.float32), torch.tensor([2.0**-20])])
    assert torch.equal(2 * (values / 256) - 1, (values - 128) / 128)


def test_legacy_tensorflow_mode(tmp_path, rng):
    assert "legacy-tensorflow" in INCEPTION_RESIZES
    assert ENCODERS["inception"].default_resize == "legacy-pytorch"
    assert resolve_resize("inception", "legacy-tensorflow") == "legacy-tensorflow"
    image = rng.integers(0, 256, (45, 31, 3), dtype=np.uint8)
    x = pre.legacy_tensorflow(image)
    assert x.shape == (3, 299, 299)
    assert float(x.min()) >= 0
    assert float(x.max()) <= 255 / 256
    torch.testing.assert_close(x, pre.tf1_bilinear_resize(image) / 256, rtol=0, atol=0)
    weights = tmp_path / "inception.pth"
    torch.save(random_state_dict(0), weights)
    encoder = load_encoder(
        "inception", locate_weights("inception", weights), resize="legacy-tensorflow"
    )
    assert encoder.resize == "legacy-tensorflow"
    torch.testing.assert_close(encoder.preprocess(image), x, rtol=0, atol=0)
    legacy = encoder.with_resize("legacy-pytorch")
    assert float((legacy.preprocess(image) - x).abs().max()) > 1e-3


def tf1_float32_reference(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(3, h, w) float32: TF 1.x ``ResizeBilinear`` (align_corners=False) transcribed in numpy,
    every operation rounded to float32 where TensorFlow's CPU kernel rounds it.

    ``CalculateResizeScale``: scale = float(in) / float(out), one float32 division.
    ``compute_interpolation_weights``: in = i · scale, one float32 product (the scale is not
    re-derived per tap); lower = floor(in), upper = min(ceil(in), in_size − 1) (TF's own
    choice; ours takes lower + 1, which differs only where lerp is 0), lerp = in − floor(in)
    (float32). ``compute_lerp``: top = tl + (tr − tl)·x_lerp, bottom likewise,
    out = top + (bottom − top)·y_lerp, each operation rounded (no fused multiply-add)."""
    f32 = np.float32

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = f32(n_in) / f32(n_out)
        source = np.arange(n_out, dtype=f32) * scale
        assert source.dtype == f32
        lower = np.floor(source).astype(np.int64)
        upper = np.minimum(np.ceil(source).astype(np.int64), n_in - 1)
        return lower, upper, (source - np.floor(source)).astype(f32)

    x = image.astype(f32).transpose(2, 0, 1)
    y_lo, y_hi, dy = taps(x.shape[1], size[0])
    x_lo, x_hi, dx = taps(x.shape[2], size[1])
    top, bottom = x[:, y_lo, :], x[:, y_hi, :]
    tl, tr, bl, br = top[:, :, x_lo], top[:, :, x_hi], bottom[:, :, x_lo], bottom[:, :, x_hi]
    upper = tl + (tr - tl) * dx
    lower = bl + (br - bl) * dx
    out = upper + (lower - upper) * dy[:, None]
    assert out.dtype == f32
    return out


@pytest.mark.parametrize(
    ("shape", "size"),
    [((512, 384), (299, 299)), ((37, 53), (299, 299)), ((1000, 7), (299, 299)),
     ((300, 298), (299, 299)), ((37, 53), (13, 40)), ((6, 9), (4, 6))],
)  # fmt: skip
def test_tf_resize_is_tensorflows_float32_arithmetic_exactly(rng, shape, size):
    """Bit for bit against the float32 transcription above. The float64 comparison above
    bounds the error of any float32 arithmetic; this one fixes which: a source position
    computed as i · in / out (two roundings of another product) instead of i · float32(in/out)
    moves 117,219 of the 268,203 outputs of a 512 × 384 image by up to 0.01, within that
    bound, and fails here."""
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = pre.tf1_bilinear_resize(image, size).numpy()
    expected = tf1_float32_reference(image, size)
    differ = int((ours != expected).sum())
    assert differ == 0, f"{differ} of {expected.size} values differ"


def test_the_float32_transcription_follows_the_exact_formula(rng):
    """The transcription itself, against the exact rational formula: within the float32
    bound of the float64 test (so it is TF's resize, not merely equal to ours)."""
    for shape, size in (((512, 384), (299, 299)), ((17, 23), (299, 299)), ((6, 9), (4, 6))):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        got = tf1_float32_reference(image, size).astype(np.float64)
        assert float(np.abs(got - tf1_reference(image, size)).max()) <= _bound(*shape)
