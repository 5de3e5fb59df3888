"""Image preprocessing: one decoded RGB image (H, W, 3) uint8 → the model's input (3, S, S).

Each function reproduces a reference tool's arithmetic exactly, because FID and its kin move
measurably with the resize (clean-fid's paper):

* ``legacy-pytorch`` (pytorch-fid): ToTensor to [0, 1], then ``F.interpolate`` bilinear with
  ``align_corners=False`` to 299 × 299. pytorch-fid resizes a whole batch inside the model; the
  interpolation treats every image on its own, so resizing each image before stacking gives the
  same numbers and lets one batch hold images of different sizes.
* ``clean`` (clean-fid, ``make_resizer("PIL", False, "bicubic", (299, 299))``): each channel as
  float32 (0..255, unscaled) through PIL's antialiased bicubic in mode ``F``, clipped to
  [0, 255]. clean-fid's Inception then computes (x − 128) / 128, not pytorch-fid's
  2·(x / 255) − 1; our network computes 2·x' − 1, so clean mode gives it x' = x / 256.
* ``legacy-tensorflow`` (the original TensorFlow FID code; torch-fidelity's
  ``inception-v3-compat``, and so StyleGAN, ADM, EDM): TF 1.x ``tf.image.resize_bilinear``
  with ``align_corners=False`` on the unscaled 0..255 values, in float32. Unlike
  ``F.interpolate`` it has no half-pixel centres: output pixel i samples input coordinate
  i · (in / out), the upper neighbour clamped to the last pixel. The network then sees
  (x − 128) / 128, which our 2·x' − 1 computes exactly from x' = x / 256 (see
  :func:`legacy_tensorflow`).
* DINOv2 (dgm-eval): PIL bicubic on the RGB image straight to 224 × 224 (aspect not kept),
  ToTensor, ImageNet mean/std.
* CLIP ViT-L/14-336 (CMMD): centre crop to the largest square, PIL bicubic to 336, / 255, CLIP
  mean/std.
* SigLIP (transformers' ``SiglipImageProcessor`` with its defaults, its Pillow path): PIL
  bicubic on the uint8 RGB image straight to the model's side (aspect not kept, no crop),
  rescale by 1/255, normalise with mean 0.5 and std 0.5 (values in [−1, 1]).
* A user's module (:func:`~shardeval.kernels.encoders.declare.python_encoder`): the image as
  it is (:func:`pixels`), or PIL bicubic to its declared size first (:func:`pil_pixels`).

Which encoder takes which function is declared in :mod:`shardeval.kernels.encoders.registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: Inception's input side.
INCEPTION_SIZE = 299

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: SigLIP's processor: transformers' IMAGENET_STANDARD_MEAN / _STD, (x − 0.5) / 0.5.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def check_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as a C-contiguous (H, W, 3) uint8 array.

    Raises:
        ValueError: another shape or dtype.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"an image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if not image.flags.writeable:  # torch warns on (and may write to) read-only memory
        return image.copy()
    return np.ascontiguousarray(image)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float32 in [0, 1], as torchvision's ToTensor computes it
    (a float32 division by 255)."""
    import torch

    # Contiguous (C, H, W) as ToTensor makes it: convolutions pick their algorithm by memory
    # layout, and a channels-last view would round differently from the reference.
    chw = torch.from_numpy(check_rgb(image)).permute(2, 0, 1).contiguous()
    return chw.to(torch.float32).div(255)


def legacy_pytorch(image: np.ndarray, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """pytorch-fid's input: ToTensor, then bilinear ``F.interpolate`` (align_corners=False) to
    ``size`` × ``size``.

    Args:
        image: (H, W, 3) uint8 RGB.
        size: output side.

    Returns:
        (3, size, size) float32 in [0, 1].
    """
    import torch.nn.functional as F

    x = to_tensor(image)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0]


def clean_resize(
    image: np.ndarray, size: tuple[int, int] = (INCEPTION_SIZE, INCEPTION_SIZE)
) -> np.ndarray:
    """clean-fid's PIL bicubic resize without quantisation, channel by channel in mode ``F``.

    Args:
        image: (H, W, 3) uint8 RGB.
        size: (width, height), PIL's order.

    Returns:
        (height, width, 3) float32 in [0, 255].
    """
    from PIL import Image

    image = check_rgb(image)
    channels = []
    for c in range(3):
        # A 2-D float32 array becomes a mode "F" image (32-bit float pixels), so the bicubic
        # filter sees the 0..255 values unrounded and returns floats.
        plane = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
        resized = plane.resize(size, resample=Image.Resampling.BICUBIC)
        channels.append(np.asarray(resized, dtype=np.float32).clip(0, 255))
    return np.stack(channels, axis=2)


def clean(image: np.ndarray, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """The Inception's input in ``clean`` mode: :func:`clean_resize`, then / 256, so that the
    network's 2x − 1 is clean-fid's (x − 128) / 128 (up to one rounding: x / 128 − 1 there is
    computed as (x − 128) / 128).

    Returns:
        (3, size, size) float32 in [0, 255/256].
    """
    import torch

    resized = clean_resize(image, (size, size))
    return torch.from_numpy(resized).permute(2, 0, 1).contiguous().div(256)


def _tf1_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sampling table of TF 1.x's bilinear resize along one axis (align_corners=False).

    TensorFlow's ``CalculateResizeScale`` divides in float (scale = in / out, one float32
    rounding); output index i samples the float32 product i · scale, truncated to the lower
    neighbour, the upper one clamped to the last pixel, the fraction left over the weight.

    Returns:
        (lower, upper) int64 indices and the float32 weight of ``upper``, each (n_out,).
    """
    import torch

    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    source = torch.arange(n_out, dtype=torch.float32) * scale  # float32 product, as TF's
    lower = source.to(torch.int64)  # truncation: floor, as source >= 0
    upper = (lower + 1).clamp_max(n_in - 1)
    return lower, upper, source - lower.to(torch.float32)


def tf1_bilinear_resize(
    image: np.ndarray, size: tuple[int, int] = (INCEPTION_SIZE, INCEPTION_SIZE)
) -> torch.Tensor:
    """TF 1.x ``tf.image.resize_bilinear(align_corners=False)`` of the 0..255 values, in
    float32, each rounding where TensorFlow's kernel makes it: with x_lerp, y_lerp from
    :func:`_tf1_taps`, top = tl + (tr − tl)·x_lerp, bottom = bl + (br − bl)·x_lerp,
    out = top + (bottom − top)·y_lerp (a product, then a sum; no fused multiply-add).

    Args:
        image: (H, W, 3) uint8 RGB.
        size: (height, width) of the output (torch's order, not PIL's).

    Returns:
        (3, height, width) float32 in [0, 255], contiguous.
    """
    import torch

    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"an output size must be positive, got {size}")
    x = torch.from_numpy(check_rgb(image)).permute(2, 0, 1).to(torch.float32)
    y_lo, y_hi, y_lerp = _tf1_taps(x.shape[1], height)
    x_lo, x_hi, x_lerp = _tf1_taps(x.shape[2], width)
    top_rows, bottom_rows = x.index_select(1, y_lo), x.index_select(1, y_hi)
    top_left, top_right = top_rows.index_select(2, x_lo), top_rows.index_select(2, x_hi)
    bottom_left, bottom_right = bottom_rows.index_select(2, x_lo), bottom_rows.index_select(2, x_hi)
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return (top + (bottom - top) * y_lerp[:, None]).contiguous()


def legacy_tensorflow(image: np.ndarray, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """The Inception's input in ``legacy-tensorflow`` mode: :func:`tf1_bilinear_resize` to
    ``size`` × ``size``, then / 256 (exact: a power of two).

    The TF graph (and torch-fidelity) computes (x − 128) / 128 of the resized x; our network
    computes 2·x' − 1 = x / 128 − 1. Both are the one correctly rounded float32 of the same
    real number (scaling by a power of two commutes with rounding), so the first convolution
    sees bit-identical inputs.

    Returns:
        (3, size, size) float32 in [0, 255/256].
    """
    return tf1_bilinear_resize(image, (size, size)).div_(256)


def pil_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """PIL's (antialiased) bicubic resize of the RGB image to ``size`` × ``size``, quantised to
    uint8 as PIL returns it; the aspect ratio is not kept."""
    from PIL import Image

    out = Image.fromarray(check_rgb(image)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(out)


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square: side l = min(h, w), top = (h − l) // 2, left = (w − l) // 2."""
    image = check_rgb(image)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x − mean) / std per channel of a (3, H, W) tensor, in its dtype."""
    import torch

    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def dinov2(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """dgm-eval's DINOv2 input: PIL bicubic to ``size`` × ``size``, ToTensor, ImageNet
    normalisation. Returns (3, size, size) float32."""
    return normalize(to_tensor(pil_bicubic(image, size)), IMAGENET_MEAN, IMAGENET_STD)


def clip(image: np.ndarray, size: int = 336) -> torch.Tensor:
    """CMMD's CLIP input: centre square crop, PIL bicubic to ``size``, / 255, CLIP
    normalisation. Returns (3, size, size) float32."""
    return normalize(to_tensor(pil_bicubic(center_crop_square(image), size)), CLIP_MEAN, CLIP_STD)


def siglip(image: np.ndarray, size: int = 384) -> torch.Tensor:
    """SigLIP's input (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023)
    as transformers' ``SiglipImageProcessor`` makes it with its defaults at the model's side
    (its Pillow backend, the slow processor of transformers 4.x: ``resample`` bicubic,
    ``rescale_factor`` 1/255, mean and std 0.5, no centre crop).

    PIL's antialiased bicubic to ``size`` × ``size`` on the uint8 image (quantised to uint8 by
    PIL), x' = x / 255 in float32, then (x' − 0.5) / 0.5 in float32 (its ``normalize``):
    y = 2x/255 − 1, in [−1, 1]. transformers' ``rescale`` multiplies by 1/255 in float64 and
    casts to float32; for each of the 256 uint8 values that is the float32 division (tested),
    so the input is bit for bit the processor's.

    Args:
        image: (H, W, 3) uint8 RGB.
        size: output side (the model's ``image_size``: 384 for So400m/14-384).

    Returns:
        (3, size, size) float32, contiguous.

    Example:
        >>> import numpy as np
        >>> x = siglip(np.full((5, 7, 3), 255, np.uint8), size=4)
        >>> tuple(x.shape), float(x.min()), float(x.max())
        ((3, 4, 4), 1.0, 1.0)
    """
    return normalize(to_tensor(pil_bicubic(image, size)), SIGLIP_MEAN, SIGLIP_STD)


def pixels(image: np.ndarray, size: int | None = None, *, uint8: bool = False) -> torch.Tensor:
    """A user's encoder's input, the image as it is: (3, H, W) float32 in [0, 1] (ToTensor's
    division by 255), or uint8 with ``uint8``. ``size`` is unused (no resize)."""
    if uint8:
        import torch

        return torch.from_numpy(check_rgb(image)).permute(2, 0, 1).contiguous()
    return to_tensor(image)


def pil_pixels(image: np.ndarray, size: int | None = None, *, uint8: bool = False) -> torch.Tensor:
    """A user's encoder's input resized to ``size`` × ``size`` by PIL's antialiased bicubic
    (aspect not kept), then as :func:`pixels`."""
    if size is None:
        raise ValueError("pil_pixels needs a size")
    return pixels(pil_bicubic(image, size), uint8=uint8)
