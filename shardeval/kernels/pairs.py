"""Block-pair computations: two blocks of rows in, small float64 summaries out.

* Kernel sums (KID's polynomial kernel, CMMD's RBF): float64 products of rows centred on a
  point both sets share, with a bound on the rounding error (:mod:`shardeval.kernels.kernel_sums`).
* :func:`knn_sq_distances`: per row, the k smallest squared distances to the other block
  (self excluded on a diagonal block), exact in float64.
* :func:`radius_decisions`: per row and column, whether (or how many) points lie within given
  radii, decided exactly.

The decisions start from one product G = X Yᵀ of the pair per column tile (fp32 products by
the numerical contract, float64 for float64 input), never keeping more than a column tile of
it. Decisions taken on fp32 products are exact: a squared distance ‖x‖² + ‖y‖² − 2x·y from an
fp32 dot product is off by at most 2γ_d‖x‖‖y‖ (γ_d = d·u/(1 − d·u), u the unit roundoff: a
bound for any summation order); every comparison within that bound of its threshold, and every
candidate within it of the k-th nearest, is recomputed in float64 from the rows themselves.
Self-distances are exactly zero, and no squared distance is negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from shardeval.kernels.kernel_sums import (
    KernelSums,
    PolyKernel,
    RBFKernel,
    kernel_sums_reference,
    poly_sums,
    rbf_sums,
)

#: Columns of the product reduced at a time by the decisions: bounds the temporaries to
#: rows × TILE.
TILE = 1024

__all__ = [
    "TILE",
    "KernelSums",
    "PairRequest",
    "PairResult",
    "PolyKernel",
    "RBFKernel",
    "RadiusDecisions",
    "exact_sq_distances",
    "kernel_sums",
    "kernel_sums_reference",
    "knn_sq_distances",
    "pair_reduce",
    "radius_decisions",
]


def _working(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both blocks in the working precision: float64 if either is, else fp32."""
    dtype = np.float64 if np.float64 in (x.dtype, y.dtype) else np.float32
    return np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(y, dtype=dtype)


def dot_error_bound(d: int, dtype: np.dtype) -> float:
    """γ_d = d·u/(1 − d·u): |fl(x·y) − x·y| ≤ γ_d ‖x‖‖y‖ for a dot product of length d."""
    u = float(np.finfo(dtype).eps) / 2
    return d * u / (1 - d * u)


@dataclass(frozen=True, eq=False)
class PairRequest:
    """What to reduce a block pair to.

    Attributes:
        poly: the polynomial kernel and its centre, for sums of its values, or None.
        rbf: the RBF on unit rows and its centre, for sums of its complements 1 − k, or None.
        knn: k for the per-row k smallest squared distances, or None.
        radii: squared radii (x_le (m,), x_lt (m,), y_le (n,)) for :class:`RadiusDecisions`,
            or None.
    """

    poly: PolyKernel | None = None
    rbf: RBFKernel | None = None
    knn: int | None = None
    radii: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class PairResult(NamedTuple):
    """The reductions a :class:`PairRequest` asked for (None where it asked nothing)."""

    poly: KernelSums | None
    rbf: KernelSums | None
    knn: tuple[np.ndarray, np.ndarray] | None
    radius: RadiusDecisions | None


def _torch() -> Any:
    import torch

    return torch


def _sq_bound(d: int, dtype: np.dtype) -> float:
    """c with |fl(‖x‖² + ‖y‖² − 2x·y) − ‖x − y‖²| ≤ c·(‖x‖ + ‖y‖)² in the working precision:
    each of the three dot products errs by at most γ_d times the product of its norms, and the
    two additions and the doubling by at most 3u of operands no larger than (‖x‖ + ‖y‖)²."""
    u = float(np.finfo(dtype).eps) / 2
    return 2.0 * dot_error_bound(d, dtype) + 4.0 * u


#: fp32 products are taken of a block pair whose largest magnitude lies in
#: [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT) as it is; another is first scaled by a power of two
#: (exact), since its products would overflow fp32 (|x| ≈ 1e19) or lose digits to its
#: subnormals (|x| ≈ 1e-22).
SAFE_EXPONENT = 20


def _exponent(x: Any, y: Any) -> int:
    """e with the largest |value| of both blocks in [2^(e−1), 2^e); 0 when all are zero."""
    amax = max(float(abs(b).max()) if b.shape[0] else 0.0 for b in (x, y))
    return math.frexp(amax)[1] if amax > 0 and math.isfinite(amax) else 0


#: A block pair whose first tile leaves more fp32 decisions than this fraction of its pairs
#: undecided (distances concentrated within the fp32 error bound, as in high-dimensional,
#: nearly isotropic data) is redone with float64 products: one float64 product is cheaper
#: than recomputing that many distances one by one.
UNDECIDED_FRACTION = 1e-3


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
    poly, rbf = _kernel_sums(x, y, request, diagonal_block, backend)
    if request.knn is None and request.radii is None:
        return PairResult(poly, rbf, None, None)
    decided = _decide(x, y, replace(request, poly=None, rbf=None), diagonal_block, backend)
    return decided._replace(poly=poly, rbf=rbf)


def _kernel_sums(
    x: Any, y: Any, request: PairRequest, diagonal_block: bool, backend: str
) -> tuple[KernelSums | None, KernelSums | None]:
    """The kernel sums a request asks for: Triton on CUDA tensors, else the CPU path."""
    if request.poly is None and request.rbf is None:
        return None, None
    if not isinstance(x, np.ndarray):
        from shardeval.kernels._dispatch import resolve_backend

        if resolve_backend(x, backend) == "triton":
            from shardeval.kernels._selfcheck import launch
            from shardeval.kernels._triton_path import kernel_sums_triton

            def sums(kernel: PolyKernel | RBFKernel | None) -> KernelSums | None:
                if kernel is None:
                    return None
                return launch(
                    "kernel_sums",
                    x.device,
                    lambda: kernel_sums_triton(x, y, kernel, diagonal_block),
                    lambda: kernel_sums_cpu(x, y, kernel, diagonal_block),
                )

            return sums(request.poly), sums(request.rbf)
    return (
        kernel_sums_cpu(x, y, request.poly, diagonal_block) if request.poly else None,
        kernel_sums_cpu(x, y, request.rbf, diagonal_block) if request.rbf else None,
    )


def to_numpy(x: Any) -> np.ndarray:
    """A block as a numpy array for the CPU path: tensors copied to the host, bfloat16 (which
    numpy lacks) as float32, exactly."""
    if isinstance(x, np.ndarray):
        return x
    if str(x.dtype) == "torch.bfloat16":
        x = x.float()
    return np.asarray(x.detach().cpu().numpy())


def kernel_sums_cpu(
    x: Any, y: Any, kernel: PolyKernel | RBFKernel, diagonal_block: bool
) -> KernelSums:
    """:func:`kernel_sums` by the CPU path on arrays or tensors of any device (the Triton
    kernel's torch path)."""
    a = to_numpy(x)
    b = a if (diagonal_block or y is x) else to_numpy(y)  # one block: expanded once
    if isinstance(kernel, PolyKernel):
        return poly_sums(a, b, kernel, diagonal_block=diagonal_block)
    return rbf_sums(a, b, kernel, diagonal_block=diagonal_block)


def _decide(x: Any, y: Any, request: PairRequest, diagonal_block: bool, backend: str) -> PairResult:
    """Neighbours and radius tests, in fp32 where the magnitudes allow (scaled by a power of
    two where that is exact), else with float64 products."""
    if _is_fp64(x) or _is_fp64(y):
        return _pair_reduce(x, y, request, diagonal_block, backend)
    x, y = _fp32(x), _fp32(y)
    exponent = _exponent(x, y)
    if -SAFE_EXPONENT <= exponent <= SAFE_EXPONENT:
        return _pair_reduce(x, y, request, diagonal_block, backend)
    # Scaled by 2^-e, squared distances and radii scale by 4^-e, exactly, when no value falls
    # below fp32's normal range on the way; rows of too wide a range take float64 products.
    if not _scales_exactly(x, y, exponent):
        return _pair_reduce(_fp64(x), _fp64(y), request, diagonal_block, backend)
    radii = request.radii
    if radii is not None:
        le, lt, y_le = (np.asarray(r, np.float64) * 4.0**-exponent for r in radii)
        radii = (le, lt, y_le)
    result = _pair_reduce(
        _times_power_of_two(x, -exponent),
        _times_power_of_two(y, -exponent),
        replace(request, radii=radii),
        diagonal_block,
        backend,
    )
    if result.knn is None:
        return result
    knn_x, knn_y = result.knn
    return result._replace(knn=(knn_x * 4.0**exponent, knn_y * 4.0**exponent))


def _scales_exactly(x: Any, y: Any, exponent: int) -> bool:
    """Whether every nonzero value times 2^-exponent stays a normal fp32 number (the largest
    becomes < 1; the smallest must stay ≥ 2^-126), so that the scaling loses no bit."""
    smallest = math.inf
    for block in (x, y):
        magnitude = abs(block)
        nonzero = magnitude[magnitude > 0]
        if nonzero.shape[0]:
            smallest = min(smallest, float(nonzero.min()))
    return smallest == math.inf or smallest * 2.0**-exponent >= 2.0**-126


def _times_power_of_two(x: Any, k: int) -> Any:
    """x · 2^k in x's precision, in two steps so that neither factor leaves the fp32 range
    (2^k itself may: k = 140 for rows near 1e-42)."""
    return x * 2.0 ** (k // 2) * 2.0 ** (k - k // 2)


def _fp32(x: Any) -> Any:
    """Rows of any other real dtype (integers, float16) in fp32, the working precision."""
    if isinstance(x, np.ndarray):
        return x if x.dtype == np.float32 else x.astype(np.float32)
    return x if str(x.dtype) == "torch.float32" else x.float()


def _is_fp64(x: Any) -> bool:
    return str(x.dtype) in ("float64", "torch.float64")


def _fp64(x: Any) -> Any:
    return x.astype(np.float64) if isinstance(x, np.ndarray) else x.double()


def _pair_reduce(
    x: Any, y: Any, request: PairRequest, diagonal_block: bool, backend: str
) -> PairResult:
    """:func:`pair_reduce` on rows whose products are safe in the working precision."""
    if not isinstance(x, np.ndarray):
        from shardeval.kernels._dispatch import resolve_backend

        chosen = resolve_backend(x, backend)
        if chosen == "triton" and x.dtype != _torch().float64:
            return _decide_triton(x, y, request, diagonal_block)
        # float64 products (--precision fp64), or the torch backend: the CPU path.
        x, y = to_numpy(x), to_numpy(y)
    x, y = _working(x, y)
    decides = request.knn is not None or request.radii is not None
    if decides and x.dtype == np.float32:
        result = _reduce(x, y, request, diagonal_block, probe=True)
        if result is not None:
            return result
        x, y = x.astype(np.float64), y.astype(np.float64)
    result = _reduce(x, y, request, diagonal_block, probe=False)
    if result is None:  # unreachable: no probe, no abort
        raise ValueError("the pair was not reduced")
    return result


def _decide_triton(x: Any, y: Any, request: PairRequest, diagonal_block: bool) -> PairResult:
    """Neighbours and radius tests of tensors by the Triton kernels, each kernel apart so that
    one that failed its check on this device takes the CPU path alone."""
    from shardeval.kernels._selfcheck import launch
    from shardeval.kernels._triton_path import pair_reduce_triton

    def part(kernel: str, asked: PairRequest) -> PairResult:
        return launch(
            kernel,
            x.device,
            lambda: pair_reduce_triton(x, y, asked, diagonal_block),
            lambda: _pair_reduce(to_numpy(x), to_numpy(y), asked, diagonal_block, "torch"),
        )

    knn = radius = None
    if request.knn is not None:
        knn = part("pair_knn", replace(request, radii=None)).knn
    if request.radii is not None:
        radius = part("pair_radius", replace(request, knn=None)).radius
    return PairResult(None, None, knn, radius)


def _reduce(
    x: np.ndarray, y: np.ndarray, request: PairRequest, diagonal_block: bool, probe: bool
) -> PairResult | None:
    """:func:`pair_reduce` in the working precision of ``x`` and ``y``; with ``probe``, None
    when the first tile leaves too many decisions to float64 recomputation."""
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if y.shape[1] != d:
        raise ValueError(f"x has d={d} but y has d={y.shape[1]}")
    dtype = x.dtype
    xx, xn = _norms(x)
    yy, yn = _norms(y)
    xx_w, yy_w = xx.astype(dtype), yy.astype(dtype)
    c = _sq_bound(d, dtype)
    k = request.knn
    best_x = np.full((m, k), np.inf) if k else None
    best_y = np.full((n, k), np.inf) if k else None
    radius = _Radius(m, n, request.radii, dtype) if request.radii is not None else None
    for start in range(0, n, TILE):
        stop = min(start + TILE, n)
        g = x @ y[start:stop].T
        diag_i = np.arange(start, min(stop, m)) if diagonal_block else np.zeros(0, np.int64)
        diag_j = diag_i - start
        if best_x is None and radius is None:
            continue
        sq = xx_w[:, None] + yy_w[None, start:stop] - 2 * g
        np.maximum(sq, 0, out=sq)
        # Per-row bounds (the largest norm of the other side stands in for each one).
        err_x = c * (xn + yn[start:stop].max()) ** 2
        err_y = c * (yn[start:stop] + xn.max()) ** 2
        recomputed = 0
        if best_x is not None and best_y is not None and k is not None:
            sq[diag_i, diag_j] = np.inf  # not a neighbour of itself
            best_x, count_x = _merge_candidates(best_x, sq, err_x, k, x, y, start)
            best_y[start:stop], count_y = _merge_candidates(
                best_y[start:stop], sq.T, err_y, k, y[start:stop], x, 0
            )
            recomputed += count_x + count_y - k * (m + stop - start)
        if radius is not None:
            before = radius.uncertain
            radius.add(sq, err_x, err_y, x, y, start)
            recomputed += radius.uncertain - before
        if probe and start == 0 and recomputed > UNDECIDED_FRACTION * m * (stop - start):
            return None
    return PairResult(
        None,
        None,
        (best_x, best_y) if best_x is not None and best_y is not None else None,
        radius.result() if radius is not None else None,
    )


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


#: Pairs recomputed per chunk: their rows stay in cache while they are differenced.
_EXACT_CHUNK = 256


def _exact_sq(x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """‖x_i − y_j‖² in float64 for pairs (i, j), from the rows themselves: the definition every
    decision of this module is exact against. (The difference of two fp32 numbers is exact in
    float64.)"""
    out = np.empty(i.size)
    for start in range(0, i.size, _EXACT_CHUNK):
        a, b = i[start : start + _EXACT_CHUNK], j[start : start + _EXACT_CHUNK]
        diff = np.subtract(x[a], y[b], dtype=np.float64)
        out[start : start + a.size] = np.einsum("ij,ij->i", diff, diff)
    return out


def exact_sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """All squared distances ‖x_i − y_j‖² in float64, by the same definition as the decisions
    (for references and tests: it builds the whole m × n matrix)."""
    i, j = np.meshgrid(np.arange(x.shape[0]), np.arange(y.shape[0]), indexing="ij")
    return _exact_sq(x, y, i.ravel(), j.ravel()).reshape(x.shape[0], y.shape[0])


def _norms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared norms in float64 and the norms of the rows."""
    sq = np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64))
    return sq, np.sqrt(sq)


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


def _kth_smallest(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest value of each row (k small: k − 1 rounds of a row-wise argmin on a
    contiguous copy, several times faster than a partition)."""
    if k > 8:
        return np.partition(a, k - 1, axis=1)[:, k - 1]
    b = np.array(a, order="C")  # row-wise argmin is vectorised only along contiguous rows
    rows = np.arange(b.shape[0])
    for _ in range(k - 1):
        b[rows, b.argmin(axis=1)] = np.inf
    return b.min(axis=1)


def _merge_candidates(
    best: np.ndarray,
    sq: np.ndarray,
    err: np.ndarray,
    k: int,
    rows: np.ndarray,
    others: np.ndarray,
    offset: int,
) -> tuple[np.ndarray, int]:
    """Merge a tile's approximate squared distances into each row's exact k smallest; also
    return how many distances were recomputed exactly.

    The k-th smallest exact distance of the union is at most T = min(previous k-th, the tile's
    k-th approximate + err); a column can be below T only if its approximate distance is within
    err of it. Those candidates are recomputed exactly and merged with the row's previous best.
    (``err`` (m,) bounds each row's approximation; columns of the tile are rows of ``others``
    starting at ``offset``.)
    """
    m, width = sq.shape
    if width == 0:
        return best, 0
    limit = best[:, -1] + err
    todo = ~np.isfinite(limit)
    if todo.any():  # rows without k exact neighbours yet: the tile's own k-th bounds them
        part = sq if todo.all() else sq[todo]
        kth = _kth_smallest(part, min(k, width)).astype(np.float64)
        limit[todo] = np.minimum(kth + err[todo], best[todo, -1])
        limit[todo] += err[todo]
    # The threshold rounded to the working precision may fall by one ulp: widen it by that.
    threshold = (limit * (1 + 4 * float(np.finfo(sq.dtype).eps))).astype(sq.dtype)
    cand_r, cand_c = np.nonzero((sq <= threshold[:, None]) & np.isfinite(sq))
    exact = _exact_sq(rows, others, cand_r, cand_c + offset)
    # Gather candidates per row into a (m, width_max) array padded with inf, then keep k.
    counts = np.bincount(cand_r, minlength=m)
    width_max = int(counts.max()) if counts.size else 0
    padded = np.full((m, width_max + best.shape[1]), np.inf)
    padded[:, : best.shape[1]] = best
    if width_max:
        order = np.argsort(cand_r, kind="stable")
        slot = np.arange(cand_r.size) - np.repeat(np.cumsum(counts) - counts, counts)
        padded[cand_r[order], best.shape[1] + slot] = exact[order]
    return np.sort(padded, axis=1)[:, :k], int(cand_r.size)


def knn_sq_distances_reference(
    x: np.ndarray, y: np.ndarray, k: int, *, diagonal_block: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference of :func:`knn_sq_distances`."""
    sq = exact_sq_distances(x, y)
    if diagonal_block:
        np.fill_diagonal(sq, np.inf)

    def smallest(a: np.ndarray) -> np.ndarray:
        out = np.full((a.shape[0], k), np.inf)
        s = np.sort(a, axis=1)[:, :k]
        out[:, : s.shape[1]] = s
        return out

    return smallest(sq), smallest(sq.T)


class RadiusDecisions(NamedTuple):
    """Per-row outcomes of comparing a block pair's distances with radii.

    Attributes:
        y_within_x_radius: (n,) for each y, whether some x_i has ‖x_i − y‖ ≤ r_x,i (``le``).
        y_count_x_radius: (n,) for each y, how many x_i have ‖x_i − y‖ < r2_x,i (strict).
        x_within_y_radius: (m,) for each x, whether some y_j has ‖x − y_j‖ ≤ r_y,j.
        x_covered: (m,) for each x, whether some y_j has ‖x − y_j‖ < r2_x,i (strict).
        uncertain: pairs that were re-decided in float64.
    """

    y_within_x_radius: np.ndarray
    y_count_x_radius: np.ndarray
    x_within_y_radius: np.ndarray
    x_covered: np.ndarray
    uncertain: int


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


class _Radius:
    """Accumulates :class:`RadiusDecisions` tile by tile.

    Comparisons run in the working precision against the radii rounded to it; those within
    the error bound (plus the radius' own rounding) of the threshold are redone in float64.
    """

    def __init__(
        self, m: int, n: int, radii: tuple[np.ndarray, np.ndarray, np.ndarray], dtype: np.dtype
    ) -> None:
        self.exact = tuple(np.asarray(r, dtype=np.float64) for r in radii)
        self.rounded = tuple(r.astype(dtype) for r in self.exact)
        eps = float(np.finfo(dtype).eps)
        self.slack = tuple(eps * np.where(np.isfinite(r), r, 0.0) for r in self.exact)
        self.y_within = np.zeros(n, dtype=bool)
        self.y_count = np.zeros(n, dtype=np.int64)
        self.x_within = np.zeros(m, dtype=bool)
        self.x_covered = np.zeros(m, dtype=bool)
        self.uncertain = 0

    def add(
        self,
        sq: np.ndarray,
        err_x: np.ndarray,
        err_y: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        start: int,
    ) -> None:
        stop = start + sq.shape[1]
        (x_le, x_lt, y_le), (x_le_w, x_lt_w, y_le_w) = self.exact, self.rounded
        s_le, s_lt, s_y = self.slack
        tests = (  # (exact radii, rounded, margin (broadcast), strict)
            (x_le[:, None], x_le_w[:, None], (err_x + s_le)[:, None], False),  # precision
            (x_lt[:, None], x_lt_w[:, None], (err_x + s_lt)[:, None], True),  # density, coverage
            (  # recall
                y_le[None, start:stop],
                y_le_w[None, start:stop],
                (err_y + s_y[start:stop])[None, :],
                False,
            ),
        )
        results = []
        for exact_r, rounded, margin, strict in tests:
            inside = sq < rounded if strict else sq <= rounded
            near = np.abs(sq - rounded) <= margin.astype(sq.dtype)
            if near.any():
                i, j = np.nonzero(near)
                exact = _exact_sq(x, y, i, j + start)
                r = np.broadcast_to(exact_r, sq.shape)[i, j]
                inside[i, j] = exact < r if strict else exact <= r
                self.uncertain += int(i.size)
            results.append(inside)
        le_x, lt_x, le_y = results
        self.y_within[start:stop] = le_x.any(axis=0)
        self.y_count[start:stop] = lt_x.sum(axis=0)
        self.x_within |= le_y.any(axis=1)
        self.x_covered |= lt_x.any(axis=1)

    def result(self) -> RadiusDecisions:
        return RadiusDecisions(
            np.asarray(self.y_within),
            self.y_count,
            np.asarray(self.x_within),
            np.asarray(self.x_covered),
            self.uncertain,
        )


def radius_decisions_reference(
    x: np.ndarray,
    y: np.ndarray,
    x_radius: np.ndarray,
    x_radius_strict: np.ndarray,
    y_radius: np.ndarray,
) -> RadiusDecisions:
    """Float64 reference of :func:`radius_decisions`."""
    sq = exact_sq_distances(x, y)
    le_x = sq <= x_radius[:, None]
    lt_x = sq < x_radius_strict[:, None]
    le_y = sq <= y_radius[None, :]
    return RadiusDecisions(
        np.asarray(le_x.any(0)), lt_x.sum(0), np.asarray(le_y.any(1)), np.asarray(lt_x.any(1)), 0
    )
