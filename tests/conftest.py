import os

# Triton kernels run in the interpreter on CPU-only machines; it is read when a kernel module is
# first imported, so set it before anything imports them.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import zarr


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def write_zarr(path, x, chunk_rows=64, **attrs):
    arr = zarr.create_array(
        str(path),
        shape=x.shape,
        chunks=(chunk_rows, x.shape[1]),
        dtype=x.dtype,
        overwrite=True,
        dimension_names=("sample", "feature"),
    )
    arr[...] = x
    arr.attrs.update(attrs)
    return str(path)


@pytest.fixture
def feature_pair(tmp_path, rng):
    """Two small Zarr feature stores with different means and covariances."""
    d = 24
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    real = (rng.standard_normal((900, d)) @ a + 3.0).astype(np.float32)
    gen = (rng.standard_normal((700, d)) @ (1.2 * a) + 3.1).astype(np.float32)
    return (
        write_zarr(tmp_path / "real.zarr", real, feature_extractor="test-net"),
        real,
        write_zarr(tmp_path / "gen.zarr", gen),
        gen,
    )


@pytest.fixture
def fp32_flags():
    """Restore this process's fp32 product flags (PyTorch's, process-wide) after the test."""
    import torch

    backends = torch.backends
    saved = (
        torch.get_float32_matmul_precision(),
        backends.cudnn.conv.fp32_precision,
        backends.cudnn.rnn.fp32_precision,
        backends.cuda.matmul.fp32_precision,
    )
    yield
    torch.set_float32_matmul_precision(saved[0])
    backends.cudnn.conv.fp32_precision = saved[1]
    backends.cudnn.rnn.fp32_precision = saved[2]
    backends.cuda.matmul.fp32_precision = saved[3]
