"""Per-shard compute on one device: tensors in, small float64 tensors out.

Knows nothing of Dask or Zarr. Each operation has a torch reference, a CPU (torch/BLAS) path and,
for CUDA tensors, a Triton kernel, chosen by one dispatcher (:mod:`kernels._dispatch`).
"""

from kernels._dispatch import BACKENDS, Backend
from kernels.moments import (
    ShardMoments,
    shard_moments,
    shard_moments_blas,
    shard_moments_reference,
    shard_moments_torch,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "ShardMoments",
    "shard_moments",
    "shard_moments_blas",
    "shard_moments_reference",
    "shard_moments_torch",
]
