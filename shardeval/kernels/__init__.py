"""Per-shard compute on one device: arrays in, small float64 arrays out.

Knows nothing of Dask or Zarr. Each operation has a torch reference, a CPU path and, for CUDA
tensors, a Triton kernel (private ``_triton_*`` modules, imported on first use), chosen by one
dispatcher (:mod:`shardeval.kernels._dispatch`). The CPU shard-moments path also takes numpy arrays
and then needs no torch at all. Names are imported on first use, so importing :mod:`kernels` costs
nothing until a kernel is needed.

On a GPU each Triton kernel is checked once per process against its torch path on first use
(:mod:`shardeval.kernels._selfcheck`, with the check its launcher module declares beside it;
:mod:`shardeval.kernels.checks` assembles them into one table); one that fails gives a
:class:`KernelCheckWarning` and the torch path takes over for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BACKENDS": "shardeval.kernels._dispatch",
    "KernelCheckError": "shardeval.kernels._selfcheck",
    "KernelCheckWarning": "shardeval.kernels._selfcheck",
    "Backend": "shardeval.kernels._dispatch",
    "use_ieee_fp32": "shardeval.kernels._dispatch",
    "gaussian_logpdf": "shardeval.kernels.density",
    "gaussian_logpdf_reference": "shardeval.kernels.density",
    "parzen_logpdf": "shardeval.kernels.density",
    "parzen_lse": "shardeval.kernels.density",
    "LSEPair": "shardeval.kernels.lse",
    "WeightSums": "shardeval.kernels.lse",
    "logsumexp": "shardeval.kernels.lse",
    "logsumexp_reference": "shardeval.kernels.lse",
    "merge_pairs": "shardeval.kernels.lse",
    "weight_stats": "shardeval.kernels.lse",
    "weight_stats_reference": "shardeval.kernels.lse",
    "ShardMoments": "shardeval.kernels.moments",
    "shard_moments": "shardeval.kernels.moments",
    "shard_moments_blas": "shardeval.kernels.moments",
    "shard_moments_numpy": "shardeval.kernels.moments",
    "shard_moments_reference": "shardeval.kernels.moments",
    "shard_moments_torch": "shardeval.kernels.moments",
    "shard_moments_triton": "shardeval.kernels.moments",
}

__all__ = [
    "BACKENDS",
    "Backend",
    "KernelCheckError",
    "KernelCheckWarning",
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
    "shard_moments_numpy",
    "shard_moments_reference",
    "shard_moments_torch",
    "shard_moments_triton",
    "use_ieee_fp32",
    "weight_stats",
    "weight_stats_reference",
]

if TYPE_CHECKING:
    from shardeval.kernels._dispatch import BACKENDS, Backend, use_ieee_fp32
    from shardeval.kernels._selfcheck import KernelCheckError, KernelCheckWarning
    from shardeval.kernels.density import (
        gaussian_logpdf,
        gaussian_logpdf_reference,
        parzen_logpdf,
        parzen_lse,
    )
    from shardeval.kernels.lse import (
        LSEPair,
        WeightSums,
        logsumexp,
        logsumexp_reference,
        merge_pairs,
        weight_stats,
        weight_stats_reference,
    )
    from shardeval.kernels.moments import (
        ShardMoments,
        shard_moments,
        shard_moments_blas,
        shard_moments_numpy,
        shard_moments_reference,
        shard_moments_torch,
        shard_moments_triton,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardeval.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
