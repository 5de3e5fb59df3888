"""Block-pair computations: two blocks of rows in, small float64 summaries out.

* Kernel sums (KID's polynomial kernel, CMMD's RBF): float64 products of rows centred on a
  point both sets share, with a bound on the rounding error (:mod:`shardeval.kernels.kernel_sums`;
  on a device: :mod:`shardeval.kernels.pair_sums`).
* :func:`knn_sq_distances`: per row, the k smallest squared distances to the other block
  (self excluded on a diagonal block), exact in float64.
* :func:`radius_decisions`: per row and column, whether (or how many) points lie within given
  radii, decided exactly.

The decisions (:mod:`shardeval.kernels.pair_decisions` on a device, the CPU path and the error
bounds in :mod:`shardeval.kernels.distances`) take fp32 products by the numerical contract and
redo in float64 every comparison within the error bound of its threshold, so each is exact.
This module is the entry: :func:`pair_reduce` and the one-reduction functions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from shardeval.kernels.distances import (
    TILE,
    UNDECIDED_FRACTION,
    dot_error_bound,
    exact_sq_distances,
    knn_sq_distances_reference,
    radius_decisions_reference,
)
from shardeval.kernels.kernel_sums import (
    KernelSums,
    PolyKernel,
    RBFKernel,
    kernel_sums_reference,
)
from shardeval.kernels.pair_decisions import SAFE_EXPONENT, decide
from shardeval.kernels.pair_sums import kernel_sums_cpu, pair_sums
from shardeval.kernels.pair_types import PairRequest, PairResult, RadiusDecisions, to_numpy

__all__ = [
    "SAFE_EXPONENT",
    "TILE",
    "UNDECIDED_FRACTION",
    "KernelSums",
    "PairRequest",
    "PairResult",
    "PolyKernel",
    "RBFKernel",
    "RadiusDecisions",
    "dot_error_bound",
    "exact_sq_distances",
    "kernel_sums",
    "kernel_sums_cpu",
    "kernel_sums_reference",
    "knn_sq_distances",
    "knn_sq_distances_reference",
    "pair_reduce",
    "radius_decisions",
    "radius_decisions_reference",
    "to_numpy",
]


def pair_reduce(
    x: Any,
    y: Any,
    request: PairRequest,
    *,
    diagonal_block: bool = False,
    backend: str = "auto",
) -> PairResult:
    """Everything a :class:`PairRequest` asks of a block pair.

    Kernel sums take float64 products of centred rows, with a bound on their rounding
    (:mod:`shardeval.kernels.kernel_sums`). Decisions (neighbours, radius tests) take one product
    per column tile in the working precision (fp32 for fp32 input, by the numerical contract;
    float64 for float64 input), and every one is exact: comparisons within the error bound of
    the working precision are redone in float64 from the rows. When too many are (more than
    :data:`UNDECIDED_FRACTION` of the first tile's pairs), the pair is redone with float64
    products, whose error bound is 10⁹ times smaller.

    Args:
        x: (m, d) rows: a numpy array (the CPU path) or a torch tensor (CUDA: the Triton
            kernels of :mod:`shardeval.kernels._triton_pairs`).
        y: (n, d) rows (the same block as ``x`` when ``diagonal_block``).
        request: the reductions wanted.
        diagonal_block: ``x`` and ``y`` are one block of one set: the pairs (i, i) are left
            out of the sums (their kernel values summed apart), of the neighbours and of
            nothing else.
        backend: for tensors, ``auto`` (Triton on CUDA), ``triton`` (also on CPU tensors under
            the interpreter) or ``torch`` (the CPU path on the tensors' values).

    Returns:
        :class:`PairResult` (numpy arrays).

    Raises:
        ValueError: the blocks' feature dimensions differ.
    """
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has d={x.shape[1]} but y has d={y.shape[1]}")
    poly, rbf = pair_sums(x, y, request, diagonal_block, backend)
    if not request.decides:
        return PairResult(poly, rbf, None, None)
    decided = decide(x, y, replace(request, poly=None, rbf=None), diagonal_block, backend)
    return decided._replace(poly=poly, rbf=rbf)


def kernel_sums(
    x: np.ndarray,
    y: np.ndarray,
    kernel: PolyKernel | RBFKernel,
    *,
    diagonal_block: bool = False,
) -> KernelSums:
    """Sums of a kernel between the rows of two blocks (see :mod:`shardeval.kernels.kernel_sums`).

    .. math:: k_{poly}(x, y) - P^D = (\\gamma\\, x^\\top y + c)^{D} - P^D,\\qquad
              1 - k_{rbf}(x, y) = 1 - e^{-\\|\\hat x-\\hat y\\|^2/2\\sigma^2}

    Args:
        x: (m, d) rows.
        y: (n, d) rows (the same block as ``x`` when ``diagonal_block``).
        kernel: a :class:`PolyKernel` (sums of k − P^D, P = γ o·o + c for the kernel's centre
            o) or an :class:`RBFKernel` (on the rows scaled to unit norm, as CMMD uses it;
            sums of 1 − k).
        diagonal_block: ``x`` and ``y`` are one block of one set: the diagonal (i = j) is
            summed apart (and its RBF complement is exactly 0, a self-distance).

    Returns:
        :class:`KernelSums` in float64, with a bound on the total's rounding error.

    Example:
        >>> import numpy as np
        >>> s = kernel_sums(np.ones((2, 2)), np.ones((3, 2)), PolyKernel(0.5, 1.0, 3))
        >>> s.total + 6 * s.shift   # (0.5·2 + 1)³ = 8, over 2 × 3 pairs
        48.0
    """
    poly = isinstance(kernel, PolyKernel)
    request = PairRequest(poly=kernel) if poly else PairRequest(rbf=kernel)  # type: ignore[arg-type]
    result = pair_reduce(x, y, request, diagonal_block=diagonal_block)
    sums = result.poly if poly else result.rbf
    if sums is None:  # unreachable: the request asked for it
        raise ValueError(f"no sums of {kernel!r}")
    return sums


def knn_sq_distances(
    x: np.ndarray, y: np.ndarray, k: int, *, diagonal_block: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``x`` and per row of ``y``, the k smallest squared distances to the other block,
    exact in float64, ascending (padded with +inf when the other block has fewer rows).

    On a diagonal block (``x`` and ``y`` one block of one set) a row's distance to itself is left
    out; duplicates of it, at distance 0, count as neighbours.

    Args:
        x: (m, d) rows.
        y: (n, d) rows.
        k: neighbours kept per row.
        diagonal_block: leave out the pairs (i, i).

    Returns:
        ((m, k), (n, k)) float64 arrays.

    Example:
        >>> import numpy as np
        >>> pts = np.array([[0.0], [1.0], [3.0]])
        >>> rows, _ = knn_sq_distances(pts, pts, 1, diagonal_block=True)
        >>> rows.ravel().tolist()
        [1.0, 1.0, 4.0]
    """
    result = pair_reduce(x, y, PairRequest(knn=k), diagonal_block=diagonal_block).knn
    if result is None:  # unreachable: the request asked for it
        raise ValueError("no neighbours")
    return result


def radius_decisions(
    x: np.ndarray,
    y: np.ndarray,
    x_radius: np.ndarray,
    x_radius_strict: np.ndarray,
    y_radius: np.ndarray,
) -> RadiusDecisions:
    """Compare every distance of a block pair with per-row radii, exactly.

    Radii are given squared (float64): ``x_radius`` (≤, the precision test),
    ``x_radius_strict`` (<, density and coverage) for the rows of ``x``, ``y_radius`` (≤, the
    recall test) for the rows of ``y``. A comparison whose fp32 squared distance lies within the
    error bound of its radius is recomputed in float64.

    Example:
        >>> import numpy as np
        >>> x, y = np.array([[0.0]]), np.array([[1.0], [2.0]])
        >>> r = radius_decisions(x, y, np.array([1.0]), np.array([1.0]), np.array([0.5, 4.0]))
        >>> r.y_within_x_radius.tolist(), r.y_count_x_radius.tolist(), r.x_covered.tolist()
        ([True, False], [0, 0], [False])
    """
    radii = (np.asarray(x_radius), np.asarray(x_radius_strict), np.asarray(y_radius))
    result = pair_reduce(x, y, PairRequest(radii=radii)).radius
    if result is None:  # unreachable: the request asked for it
        raise ValueError("no decisions")
    return result
