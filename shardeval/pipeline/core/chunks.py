"""Chunk steps: one shard of a store → a small mergeable summary.

This is where blocks meet the kernels (and, on a GPU worker, the device); the states they
return (:mod:`shardeval.pipeline.core.states`) are plain float64 numbers with pure merges. Every
summary also records which rows were not finite, so that the non-finite policy (fail naming the
rows, or drop and count them) is applied the same way by every metric.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.states import (
    Examples,
    Moments,
    NonFiniteRows,
    ScalarMoments,
    examples_of,
    merge_fieldwise,
    state,
)
from shardeval.pipeline.errors import EngineError, NonFiniteError, NumericalError
from shardeval.pipeline.options import BACKENDS, DEVICES, NONFINITE_POLICIES


def check_device(device: str, backend: str, *, local: bool = True) -> None:
    """Refuse, before any compute, a device or kernel backend this machine cannot run.

    On a distributed cluster the workers' devices are not this machine's, so only the names
    are checked; ``auto`` is always valid (a worker without a GPU uses its CPU).

    Raises:
        EngineError: ``cuda`` without a CUDA GPU, or ``triton`` without a GPU to compile for
            (outside the Triton interpreter the tests use).
    """
    if device not in DEVICES:
        raise EngineError(f"device must be one of {DEVICES}, got {device!r}")
    if backend not in BACKENDS:
        raise EngineError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if not local:
        return
    from shardeval.kernels._dispatch import triton_interpreted

    has_cuda = cuda_available()
    if device == "cuda" and not has_cuda:
        raise EngineError(
            "«device='cuda'», but this machine has no CUDA GPU that torch can use; use "
            "«device='auto'» or 'cpu', or run on GPU workers («scheduler» / «cluster»)"
        )
    if backend == "triton" and not (has_cuda and device != "cpu") and not triton_interpreted():
        raise EngineError(
            "«backend='triton'» compiles kernels for a CUDA GPU, and none will be used here; use "
            "«backend='auto'» (BLAS on CPU, Triton on GPU)"
        )


def uses_gpu(device: str) -> bool:
    """Whether chunk steps with this device setting run on a worker's GPU when it has one."""
    return device in ("auto", "cuda")


def check_policy(nonfinite: str) -> None:
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")


def check_nonfinite(location: str, bad: NonFiniteRows, policy: str, what: str = "row(s)") -> None:
    """Under the ``error`` policy, non-finite rows are an error naming how many and where."""
    if bad.count and policy == "error":
        raise NonFiniteError(
            f"{location!r} has {bad.count} {what} with NaN or inf (first at rows "
            f"{', '.join(map(str, bad.first))}); clean them or pass «nonfinite='drop'»"
        )


def finite_rows(block: np.ndarray) -> np.ndarray:
    """Per row of a block (any rank, rows first): are all its values finite?"""
    v = np.asarray(block).reshape(block.shape[0], -1)
    return np.asarray(np.isfinite(v).all(axis=1))


def _gpu_nodes() -> bool:
    """Whether this machine exposes GPU device nodes (NVIDIA or ROCm): a check that needs no
    torch, so CPU-only workers never import it to find out that they have no GPU."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def cuda_available() -> bool:
    """Whether torch can use a CUDA GPU here (without importing torch on a CPU-only machine)."""
    if not _gpu_nodes():
        return False
    import torch

    return bool(torch.cuda.is_available())


def worker_device(device: str) -> str:
    """The device a chunk step runs on: ``auto`` is decided on the worker, so a GPU worker of a
    mixed cluster uses its GPU and a CPU worker its BLAS."""
    if device != "auto":
        return device
    return "cuda" if cuda_available() else "cpu"


def on_cpu(device: str, backend: str) -> bool:
    """Whether a log-sum-exp step with these settings takes its numpy path (no torch): the
    ``auto`` backend on this worker's CPU. ``torch`` and ``triton`` name their own paths."""
    return backend == "auto" and worker_device(device) == "cpu"


def to_tensor(block: np.ndarray, device: str = "cpu") -> Any:
    """A block as a torch tensor on ``device`` (see :func:`worker_device`). The copy to a GPU
    goes through page-locked memory, so that it runs as a DMA transfer."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(block))
    device = worker_device(device)
    if device != "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    return x


def block_moments(block: np.ndarray, device: str = "cpu", backend: str = "auto") -> Moments:
    """Moments of one (n, d) block, computed by :func:`shardeval.kernels.shard_moments`: on a CPU
    the numpy BLAS path (no torch), on a GPU the Triton kernel."""
    from shardeval.kernels import shard_moments

    if worker_device(device) == "cpu" and backend != "triton":
        n, mean, m2 = shard_moments(np.asarray(block))
        return Moments(n, mean, m2)
    n, mean, m2 = shard_moments(to_tensor(block, device), backend=backend)  # type: ignore[arg-type]
    return Moments(n, mean.cpu().numpy(), m2.cpu().numpy())


def _feature_summary_examples(rng: np.random.Generator) -> Examples[FeatureSummary]:
    empty_moments, moments = examples_of(Moments, rng)
    empty_rows, rows = examples_of(NonFiniteRows, rng)
    found = [FeatureSummary(m, r) for m, r in zip(moments, rows, strict=True)]
    return FeatureSummary(empty_moments, empty_rows), found


@state(examples=_feature_summary_examples)
@dataclass(frozen=True, eq=False)
class FeatureSummary:
    """What one shard of a feature store reduces to: moments of its finite rows, and the count
    and positions of the rows that were not finite."""

    moments: Moments
    nonfinite: NonFiniteRows

    @classmethod
    def empty(cls, d: int) -> FeatureSummary:
        return cls(Moments.empty(d), NonFiniteRows.empty())

    merge = merge_fieldwise


#: Integers of larger magnitude are not all float64 numbers: products would round the data.
EXACT_INTEGERS = 2**53


def inexact_integer_rows(block: np.ndarray) -> np.ndarray:
    """Per row, whether it holds an integer beyond 2^53 (not every such integer is a float64
    number, so products in float64 would round the data)."""
    if block.dtype.kind not in "iu" or block.dtype.itemsize < 8:
        return np.zeros(block.shape[0], dtype=bool)
    limit = block.dtype.type(EXACT_INTEGERS)
    beyond = block > limit if block.dtype.kind == "u" else (block > limit) | (block < -limit)
    return beyond.reshape(block.shape[0], -1).any(axis=1)


def product_rows(block: np.ndarray, offset: int, precision: str) -> np.ndarray:
    """A block's rows in the dtype of their products: float64 for ``precision='fp64'`` and for
    unsigned integers of 32 bits or more (no exact torch kernel dtype holds them), else as
    stored (fp32 products of floats; integers of 16 bits or less are exact in fp32).

    Raises:
        NumericalError: integers beyond 2^53, which float64 cannot hold exactly.
    """
    block = np.asarray(block)
    inexact = np.flatnonzero(inexact_integer_rows(block))
    if inexact.size:
        raise NumericalError(
            f"{inexact.size:,} row(s) of integers beyond 2^53 (first at row "
            f"{offset + int(inexact[0])}), which float64 cannot hold exactly; store them as "
            "floats if rounding them is acceptable"
        )
    if precision == "fp64" or (block.dtype.kind == "u" and block.dtype.itemsize >= 4):
        return block.astype(np.float64, copy=False)
    return block


def summarize_block(
    block: np.ndarray,
    offset: int,
    device: str = "cpu",
    backend: str = "auto",
    precision: str = "fp32",
) -> FeatureSummary:
    """The chunk step for features: moments of the finite rows, and where the others are.

    Args:
        block: (n, d) rows of one shard.
        offset: global index of the block's first row (to report non-finite rows).
        device: where the kernel runs (``cpu``, ``cuda`` or ``auto``).
        backend: kernel backend, see :func:`shardeval.kernels.shard_moments`.
        precision: ``fp32`` products (the kernels' contract; float64 input and integers wider
            than 16 bits are multiplied in float64, since fp32 cannot hold their digits) or
            ``fp64`` (upcast first: twice the time, and results independent of shard sizes to
            ~1e-12 instead of the ~1e-7 that fp32 rounding inside each shard leaves).
    """
    block = product_rows(block, offset, precision)
    with np.errstate(invalid="ignore"):  # NaN rows are found and handled just below
        moments = block_moments(block, device, backend)
    # NaN and ±inf propagate into the float64 mean (a float64 sum of float32 values cannot
    # overflow), so a finite mean proves every value finite without another pass over the block.
    if np.isfinite(moments.mean).all():
        return FeatureSummary(moments, NonFiniteRows.empty())
    finite = finite_rows(block)
    return FeatureSummary(
        block_moments(block[finite], device, backend),
        NonFiniteRows.from_mask(~finite, offset),
    )


def _value_summary_examples(rng: np.random.Generator) -> Examples[ValueSummary]:
    _, values = examples_of(ScalarMoments, rng)
    _, rows = examples_of(NonFiniteRows, rng)
    return ValueSummary.empty(), [ValueSummary(v, r) for v, r in zip(values, rows, strict=True)]


@state(examples=_value_summary_examples)
@dataclass(frozen=True, eq=False)
class ValueSummary:
    """A shard of per-sample values: moments of the finite ones, and where the others are."""

    values: ScalarMoments
    nonfinite: NonFiniteRows

    @classmethod
    def empty(cls) -> ValueSummary:
        return cls(ScalarMoments.empty(), NonFiniteRows.empty())

    merge = merge_fieldwise


def _finite_count_examples(rng: np.random.Generator) -> Examples[FiniteCount]:
    _, rows = examples_of(NonFiniteRows, rng)
    found = [FiniteCount(int(n), r) for n, r in zip(rng.integers(1, 100, 3), rows, strict=True)]
    return FiniteCount.empty(), found


@state(examples=_finite_count_examples)
@dataclass(frozen=True)
class FiniteCount:
    """Rows of a shard that are finite, and where the others are."""

    n: int
    nonfinite: NonFiniteRows

    @classmethod
    def empty(cls) -> FiniteCount:
        return cls(0, NonFiniteRows.empty())

    merge = merge_fieldwise


def count_finite(block: np.ndarray, offset: int) -> FiniteCount:
    """The chunk step that only counts: a cheap pass that finds non-finite rows."""
    ok = finite_rows(block)
    return FiniteCount(int(ok.sum()), NonFiniteRows.from_mask(~ok, offset))


def zero_rows(block: np.ndarray, offset: int) -> NonFiniteRows:
    """The chunk step that finds rows of zeros (in the :class:`NonFiniteRows` record)."""
    return NonFiniteRows.from_mask(~np.any(block != 0, axis=1), offset)
