"""The FID Inception: TensorFlow's Inception graph of 2015-12-05 as pytorch-fid ports it, in plain
torch (no torchvision), returning the 2048-d pool3 features.

Module and parameter names are torchvision's ``Inception3`` names, so pytorch-fid's checkpoint
``pt_inception-2015-12-05-6726825d.pth`` loads as it is, strictly. Its ``fc`` (2048 → 1008)
gives the class logits of the Inception Score (:meth:`FIDInception.forward_with_logits`), and
channels 0–6 of Mixed_6d's 1×1 branch, the TF graph's ``mixed_6/conv``, give sFID's spatial
features (:meth:`FIDInception.forward_with_spatial`; the mapping, with its sources, is in
docs/sfid.md). What
makes this graph differ from torchvision's ImageNet Inception, and so from its features:

* the pooling branch of the A, C and first E blocks averages over the valid pixels only
  (TensorFlow's ``avg_pool`` ignores padding: ``count_include_pad=False``);
* the pooling branch of the last E block (Mixed_7c) takes a 3 × 3 max, not an average (a
  quirk of the TF graph that the FID reference numbers carry).

Input: (B, 3, 299, 299) float32 in [0, 1] (see :mod:`shardeval.kernels.encoders.resize`); it is
mapped to [−1, 1] as 2x − 1 inside the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from shardeval.kernels.encoders.checkpoint import read_state_dict
from shardeval.kernels.encoders.errors import WeightsError
from shardeval.kernels.encoders.weights import INCEPTION_FILE

if TYPE_CHECKING:
    import numpy as np

    from shardeval.kernels.encoders.encoder import Encoder
    from shardeval.kernels.encoders.registry import EncoderSpec

#: Feature dimension (pool3).
DIM = 2048

#: Classes of the TF graph's logits layer (1000 ImageNet classes + 8 unused).
CLASSES = 1008

#: sFID's spatial features (Nash et al. 2021, as guided-diffusion's evaluator takes them): the
#: first 7 channels of the TF graph's ``mixed_6/conv`` (the 1×1 branch of Mixed_6d, after
#: batch norm and ReLU) on its 17 × 17 grid, flattened height-width-channel (TF's NHWC order).
SPATIAL_CHANNELS, SPATIAL_GRID = 7, 17

#: Spatial values per image: 17 × 17 × 7.
SPATIAL_DIM = SPATIAL_GRID * SPATIAL_GRID * SPATIAL_CHANNELS

_BN_COUNTER = "num_batches_tracked"


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001, TensorFlow's), ReLU."""

    def __init__(self, cin: int, cout: int, **conv: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **conv)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    """3 × 3 average over valid pixels only (TensorFlow's padding behaviour)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/c/d: 1×1, 5×5, double 3×3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a: the grid reduction 35 → 17."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), b3, pool], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7×7 branches with ``c7`` inner channels."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = (
            {"kernel_size": (1, 7), "padding": (0, 3)},
            {"kernel_size": (7, 1), "padding": (3, 0)},
        )
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = conv(d)
        d = self.branch7x7dbl_5(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a: the grid reduction 17 → 8."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: expanded 3×3 branches; ``pool`` is "avg" (7b) or "max" (7c, the TF graph's)."""

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        row, col = (
            {"kernel_size": (1, 3), "padding": (0, 1)},
            {"kernel_size": (3, 1), "padding": (1, 0)},
        )
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, **row)
        self.branch3x3_2b = BasicConv2d(384, 384, **col)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, **row)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, **col)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.pool == "avg":
            pooled = _avg3(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """The FID Inception up to pool3.

    ``forward`` takes (B, 3, H, W) float32 in [0, 1] (299 × 299 for the reference features;
    the network is fully convolutional, so other sizes run too) and returns (B, 2048).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # The TF graph's logits layer: features stop before it; the Inception Score's logits
        # take its weight (not its bias, see :meth:`logits`).
        self.fc = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_spatial(x)[0]

    def forward_with_spatial(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool3 features and sFID's spatial features of the same pass:
        ((B, 2048), (B, 2023)); the features equal :meth:`forward`'s.

        The spatial features are channels 0–6 of Mixed_6d's output, which are its 1×1
        branch's (``branch1x1``: conv, batch norm with eps 0.001, ReLU), the block
        concatenating that branch first; Mixed_6d is the TF graph's ``mixed_6`` and its 1×1
        branch ``mixed_6/conv`` (docs/sfid.md). They are flattened as guided-diffusion's
        evaluator flattens the TF tensor ``mixed_6/conv:0[..., :7]`` of shape (B, 17, 17, 7):
        height, then width, then channel, so column ``(h·17 + w)·7 + c`` holds channel c at
        (h, w), comparable element-wise with a reference batch's ``mu_s``/``sigma_s``. Other
        input sizes than 299 × 299 give another grid and another width.
        """
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        before: tuple[nn.Module, ...] = (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
            self.Mixed_6c, self.Mixed_6d,
        )  # fmt: skip
        for block in before:
            x = block(x)
        spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1), spatial

    def logits(self, pool: torch.Tensor) -> torch.Tensor:
        """The 1,008 class logits of (B, 2048) pool3 features, WITHOUT the ``fc`` bias:
        pool3 · Wᵀ, (B, 1008) float32.

        This is what the Inception Score is computed from: the original code (Salimans et al.
        2016, improved-gan's ``inception_score.py``) multiplies pool3 by the weight of the TF
        graph's ``softmax/logits/MatMul`` and never adds the bias, and torch-fidelity's
        ``logits_unbiased`` (its ``isc`` default) is the same product, ``x.mm(fc.weight.T)``.
        The biased logits are this plus ``fc.bias``.
        """
        return pool.mm(self.fc.weight.T)

    def forward_with_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool3 features and the logits of the same pass: ((B, 2048), (B, 1008)); the
        features equal :meth:`forward`'s."""
        pool = self.forward(x)
        return pool, self.logits(pool)


def load_inception(path: str) -> FIDInception:
    """The FID Inception with the weights of a pytorch-fid checkpoint, on the CPU, in eval mode.

    Loading is strict: every parameter and BN statistic must be in the file with its shape;
    only the BN batch counters (``num_batches_tracked``, which older checkpoints lack and which
    inference never reads) may be absent.

    Args:
        path: the checkpoint (``pt_inception-2015-12-05-6726825d.pth`` or a file of the same
            layout).

    Returns:
        The model, parameters frozen.

    Raises:
        WeightsError: the file is unreadable or does not fit the model; the message names the
            first keys that differ.
    """
    state = read_state_dict(
        path, "a state dict of the FID Inception's tensors, as pytorch-fid's " + INCEPTION_FILE
    )
    model = FIDInception()
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith(_BN_COUNTER) and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape of", wrong),
            )
            if keys
        ]
        raise WeightsError(
            f"weights {path!r} are not the FID Inception's ({'; '.join(parts)}); give "
            f"pytorch-fid's {INCEPTION_FILE}"
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


def random_inception(seed: int = 0) -> FIDInception:
    """The FID Inception with the random weights of :func:`random_state_dict` (``seed``), on the
    CPU, in eval mode, parameters frozen: a smoke test of the image path where the published
    weights are absent (its features measure nothing)."""
    model = FIDInception()
    model.load_state_dict(random_state_dict(seed), strict=True)
    model.eval()
    model.requires_grad_(False)
    return model


def load_network(spec: EncoderSpec, path: str) -> FIDInception:
    """The loader :data:`~shardeval.kernels.encoders.registry.ENCODERS` names for the
    Inception: :func:`load_inception`."""
    return load_inception(path)


def encode_with_logits(
    encoder: Encoder, images: Sequence[np.ndarray], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Features and logits of decoded images from one forward pass per batch
    (:meth:`~shardeval.kernels.encoders.encoder.Encoder.encode_with_logits`).

    Returns:
        (len(images), 2048) pool3 features and (len(images), 1008) logits without the bias
        (:meth:`FIDInception.logits`), both float32.

    Raises:
        EncoderError: the encoder has no class logits.
    """
    return encoder.encode_with_logits(images, batch_size)


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the FID Inception's layout with random values, for tests and benchmarks
    where the real weights are absent. BN statistics are plausible (positive variances near 1,
    small means), so activations neither vanish nor blow up through the 90-odd layers.

    Args:
        seed: seeds a private generator (the global torch RNG is untouched).

    Returns:
        Name → tensor, including ``num_batches_tracked`` counters.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, ref in FIDInception().state_dict().items():
        if key.endswith(_BN_COUNTER):
            out[key] = torch.zeros_like(ref)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(ref.shape, generator=gen)
        elif key.endswith(("running_mean", "bn.bias")):
            out[key] = 0.1 * torch.randn(ref.shape, generator=gen)
        elif key.endswith("bn.weight"):
            out[key] = 0.5 + torch.rand(ref.shape, generator=gen)
        else:  # conv / fc weights and fc bias: He-style scale keeps activations O(1)
            fan_in = max(1, ref[0].numel()) if ref.ndim > 1 else 1
            out[key] = torch.randn(ref.shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return out
