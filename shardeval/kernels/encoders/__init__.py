"""Image encoders: decoded RGB images in, float32 feature rows out, on one device.

Per-batch compute that knows nothing of Dask or Zarr. Each encoder is a network plus the exact
preprocessing of the reference tool whose features it reproduces:

===================  ====  ========================================================  =========
name                 d     reference whose features it reproduces                    weights
===================  ====  ========================================================  =========
``inception``        2048  pytorch-fid (``legacy-pytorch``), clean-fid (``clean``),  torch hub
                           torch-fidelity / TF graph (``legacy-tensorflow``)
``dinov2-vitl14``    1024  dgm-eval (DINOv2 ViT-L/14, CLS token)                     HF cache
``clip-vitl14-336``  768   CMMD (CLIP ViT-L/14 at 336 px, unit-norm)                 HF cache
===================  ====  ========================================================  =========

Importing this package imports nothing heavy (the CLI lists the names); torch, Pillow and
``transformers`` are imported when an encoder is loaded.

Example:
    >>> sorted(ENCODERS)
    ['clip-vitl14-336', 'dinov2-vitl14', 'inception']
    >>> ENCODERS["inception"].dim
    2048
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shardeval.kernels.encoders.weights import (
    RANDOM_WEIGHTS,
    EncoderError,
    MissingDependencyError,
    WeightsError,
    check_digest,
    locate_weights,
    random_seed,
    weights_digest,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Resize modes of the Inception: pytorch-fid's (the default), clean-fid's, and TF 1.x's bilinear
#: of the original FID code (torch-fidelity's); see :mod:`shardeval.kernels.encoders.resize`.
INCEPTION_RESIZES = ("legacy-pytorch", "clean", "legacy-tensorflow")

__all__ = [
    "ENCODERS",
    "INCEPTION_RESIZES",
    "RANDOM_WEIGHTS",
    "Encoder",
    "EncoderError",
    "EncoderSpec",
    "MissingDependencyError",
    "WeightsError",
    "check_digest",
    "load_encoder",
    "locate_weights",
    "random_seed",
    "resolve_resize",
    "weights_digest",
]


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is, before anything is loaded.

    Attributes:
        name: the ``--encoder`` name.
        dim: features per image.
        feature_extractor: the label reports carry (the store's ``feature_extractor``).
        resizes: the preprocessing modes it accepts; the first is its default.
        size: the side of the square input the network sees.
    """

    name: str
    dim: int
    feature_extractor: str
    resizes: tuple[str, ...]
    size: int

    @property
    def default_resize(self) -> str:
        return self.resizes[0]


ENCODERS: dict[str, EncoderSpec] = {
    # legacy-pytorch first: with this network it reproduces pytorch-fid end to end, the
    # implementation behind most published FIDs; clean is clean-fid's resize; legacy-tensorflow
    # the TF graph's own (torch-fidelity, StyleGAN, ADM).
    "inception": EncoderSpec(
        "inception", 2048, "inception-2015-12-05/pool3", INCEPTION_RESIZES, 299
    ),
    "dinov2-vitl14": EncoderSpec(
        "dinov2-vitl14", 1024, "dinov2-vitl14/cls", ("pil-bicubic-224",), 224
    ),
    "clip-vitl14-336": EncoderSpec(
        "clip-vitl14-336",
        768,
        "clip-vitl14-336/image-embeds-l2",
        ("center-crop-pil-bicubic-336",),
        336,
    ),
}


def resolve_resize(encoder: str, resize: str | None) -> str:
    """The preprocessing mode an encoder runs with: ``resize``, or the encoder's default.

    Raises:
        EncoderError: an unknown encoder, or a mode it does not have.
    """
    if encoder not in ENCODERS:
        raise EncoderError(f"unknown encoder {encoder!r}; choose one of {sorted(ENCODERS)}")
    spec = ENCODERS[encoder]
    if resize is None:
        return spec.default_resize
    if resize not in spec.resizes:
        raise EncoderError(
            f"«resize='{resize}'» does not apply to «encoder='{encoder}'», whose preprocessing is "
            f"fixed to match its reference ({', '.join(spec.resizes)})"
        )
    return resize


class Encoder:
    """A loaded network and its preprocessing.

    Attributes:
        spec: what the encoder is.
        resize: the preprocessing mode in use.
        device: where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        resize: str,
        network: torch.nn.Module,
        preprocess: Callable[[np.ndarray], torch.Tensor],
        device: str,
    ) -> None:
        self.spec, self.resize, self.device = spec, resize, device
        self.network = network.to(device).eval()
        self._preprocess = preprocess

    @property
    def fp32_products(self) -> str:
        """``tf32`` when this process lets the network's fp32 convolutions or matmuls round
        their inputs to TF32 on its device (a CUDA GPU of compute capability 8.0 or later,
        with PyTorch's default cuDNN setting, unless :func:`shardeval.kernels.use_ieee_fp32` ran),
        else ``ieee``. TF32 keeps 10 mantissa bits of each input (up to 2^-11 relative error, fp32
        2^-24)."""
        import torch

        from shardeval.kernels._dispatch import tf32_convolutions, tf32_matmuls

        if not self.device.startswith("cuda"):
            return "ieee"
        if torch.cuda.get_device_capability(torch.device(self.device))[0] < 8:
            return "ieee"  # no TF32 units before Ampere
        return "tf32" if tf32_convolutions() or tf32_matmuls() else "ieee"

    def with_resize(self, resize: str) -> Encoder:
        """The same network (shared, not copied) with another preprocessing mode.

        Raises:
            EncoderError: a mode this encoder does not have.
        """
        mode = resolve_resize(self.spec.name, resize)
        return Encoder(self.spec, mode, self.network, _preprocessor(self.spec, mode), self.device)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB → (3, S, S) float32 on the CPU, the network's input."""
        return self._preprocess(image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 → (B, d) float32 on the network's device, fp32 throughout (no
        autocast), in inference mode."""
        import torch

        with torch.inference_mode():
            out = self.network(batch.to(self.device, non_blocking=True))
        return out.to(torch.float32)

    def encode(self, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Features of decoded images, ``batch_size`` at a time.

        Args:
            images: (H, W, 3) uint8 RGB arrays; sizes may differ (each is resized alone).
            batch_size: images per forward pass.

        Returns:
            (len(images), d) float32.
        """
        import numpy as np
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        parts = []
        for lo in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[lo : lo + batch_size]])
            if self.device != "cpu":
                batch = batch.pin_memory()
            parts.append(self.forward(batch).cpu().numpy())
        if not parts:
            return np.empty((0, self.spec.dim), np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _preprocessor(spec: EncoderSpec, mode: str) -> Callable[[np.ndarray], torch.Tensor]:
    from functools import partial

    from shardeval.kernels.encoders import resize as pre

    if spec.name == "inception":
        return partial(pre.INCEPTION_PREPROCESSING[mode], size=spec.size)
    if spec.name == "dinov2-vitl14":
        return partial(pre.dinov2, size=spec.size)
    return partial(pre.clip, size=spec.size)


def load_encoder(
    name: str,
    weights: str,
    *,
    resize: str | None = None,
    device: str = "cpu",
    digest: str | None = None,
) -> Encoder:
    """Load an encoder's network from its weights and pair it with its preprocessing.

    Args:
        name: an encoder of :data:`ENCODERS`.
        weights: the file or model folder (see :func:`locate_weights`), or ``random:SEED``
            for the Inception with seeded random weights (a smoke test).
        resize: the preprocessing mode (default: the encoder's default).
        device: the torch device the network runs on.
        digest: when given, the weights must have this digest (:func:`weights_digest`).

    Returns:
        The encoder, in eval mode with frozen parameters.

    Raises:
        EncoderError: unknown name or resize mode.
        WeightsError: unreadable weights, weights that do not fit, another digest.
        MissingDependencyError: ``transformers`` is missing for a ViT encoder.
    """
    mode = resolve_resize(name, resize)
    spec = ENCODERS[name]
    check_digest(weights, digest)
    network: torch.nn.Module
    if name == "inception":
        from shardeval.kernels.encoders.inception import load_inception, random_inception

        seed = random_seed(weights)
        network = load_inception(weights) if seed is None else random_inception(seed)
    elif name == "dinov2-vitl14":
        from shardeval.kernels.encoders.vit import load_dinov2

        network = load_dinov2(weights)
    else:
        from shardeval.kernels.encoders.vit import load_clip

        network = load_clip(weights)
    return Encoder(spec, mode, network, _preprocessor(spec, mode), device)
