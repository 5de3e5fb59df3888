"""sFID's spatial features of the FID Inception against a float64 transcription of the TF
graph's arithmetic for ``mixed_6/conv`` (random weights, on the CPU).

The transcription works as the TF graph does, in NHWC with the weights in TF's layout: a 1×1
``Conv2D`` with HWIO weights (``conv2d_params``; torch-fidelity's converter maps them to torch's
OIHW by ``permute(3, 2, 0, 1)``), ``BatchNormWithGlobalNormalization`` with
``scale_after_normalization`` ((t − mean) / √(var + 0.001) · gamma + beta), ReLU; then what
guided-diffusion's evaluator does: ``[..., :7]`` and a reshape to (N, −1).
"""

import numpy as np
import pytest
import torch

from shardeval.kernels.encoders.inception import (
    SPATIAL_CHANNELS,
    SPATIAL_DIM,
    random_inception,
)

TF_BN_EPSILON = 0.001


def _tf_mixed_6_conv(inputs_nchw: np.ndarray, branch: torch.nn.Module) -> np.ndarray:
    """``mixed_6/conv:0[..., :7]`` reshaped to (N, −1), in float64, from the module's input."""
    t = np.transpose(inputs_nchw.astype(np.float64), (0, 2, 3, 1))  # NHWC, as TF holds it
    oihw = branch.conv.weight.detach().numpy().astype(np.float64)
    hwio = np.transpose(oihw, (2, 3, 1, 0))  # TF's conv2d_params layout
    conv = np.einsum("nhwi,io->nhwo", t, hwio[0, 0])
    bn = branch.bn
    mean, var, beta, gamma = (
        v.detach().numpy().astype(np.float64)
        for v in (bn.running_mean, bn.running_var, bn.bias, bn.weight)
    )
    normed = (conv - mean) / np.sqrt(var + TF_BN_EPSILON) * gamma + beta
    relu = np.maximum(normed, 0.0)
    return relu[..., :SPATIAL_CHANNELS].reshape(relu.shape[0], -1)


@pytest.fixture(scope="module")
def model():
    return random_inception(3)


def test_spatial_features_are_the_tf_graphs_mixed_6_conv(model):
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 299, 299), dtype=np.float32))
    seen = {}
    handle = model.Mixed_6d.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    try:
        with torch.no_grad():
            pool, spatial = model.forward_with_spatial(x)
            plain = model(x)
    finally:
        handle.remove()
    assert spatial.shape == (2, SPATIAL_DIM) == (2, 17 * 17 * 7)
    assert pool.shape == (2, 2048)
    torch.testing.assert_close(pool, plain, rtol=0, atol=0)  # the same pass, the same features
    assert seen["x"].shape == (2, 768, 17, 17)  # mixed_6's input: the 17 × 17 grid
    expected = _tf_mixed_6_conv(seen["x"].numpy(), model.Mixed_6d.branch1x1)
    assert (expected > 0).mean() > 0.2  # ReLU is exercised: values on both sides of it
    assert (expected == 0).mean() > 0.05
    np.testing.assert_allclose(spatial.numpy(), expected, rtol=1e-4, atol=1e-4 * expected.std())


def test_spatial_order_is_height_width_channel(model):
    """Column (h·17 + w)·7 + c holds channel c at (h, w) of the 1×1 branch's (N, C, H, W)
    output: the corners and an inner position, first and last channel."""
    x = torch.from_numpy(np.random.default_rng(1).random((1, 3, 299, 299), dtype=np.float32))
    seen = {}
    handle = model.Mixed_6d.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    try:
        with torch.no_grad():
            _, spatial = model.forward_with_spatial(x)
    finally:
        handle.remove()
    inner = seen["x"]
    with torch.no_grad():
        branch = model.Mixed_6d.branch1x1(inner)[0, :SPATIAL_CHANNELS]  # (7, 17, 17), NCHW
    for h, w, c in ((0, 0, 0), (0, 1, 0), (1, 0, 0), (3, 5, 6), (16, 16, 6)):
        assert spatial[0, (h * 17 + w) * 7 + c] == branch[c, h, w]
