"""Per-shard compute on one device: tensors in, small float64 tensors out.

Knows nothing of Dask or Zarr. Each operation has a torch reference, a CPU (torch/BLAS) path and,
for CUDA tensors, a Triton kernel (private ``_triton_*`` modules, imported on first use), chosen
by one dispatcher (:mod:`kernels._dispatch`).
"""

from kernels._dispatch import BACKENDS, Backend
from kernels.density import gaussian_logpdf, gaussian_logpdf_reference, parzen_logpdf, parzen_lse
from kernels.lse import (
    LSEPair,
    WeightSums,
    logsumexp,
    logsumexp_reference,
    merge_pairs,
    weight_stats,
    weight_stats_reference,
)
from kernels.moments import (
    ShardMoments,
    shard_moments,
    shard_moments_blas,
    shard_moments_reference,
    shard_moments_torch,
    shard_moments_triton,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "LSEPair",
    "ShardMoments",
    "WeightSums",
    "gaussian_logpdf",
    "gaussian_logpdf_reference",
    "logsumexp",
    "logsumexp_reference",
    "merge_pairs",
    "parzen_logpdf",
    "parzen_lse",
    "shard_moments",
    "shard_moments_blas",
    "shard_moments_reference",
    "shard_moments_torch",
    "shard_moments_triton",
    "weight_stats",
    "weight_stats_reference",
]
