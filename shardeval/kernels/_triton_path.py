""":func:`shardeval.kernels.pairs.pair_reduce` on tensors: the Triton tile kernels, then float64
torch on the few rows the fp32 bound left undecided, so the results equal the CPU path's exactly.

* Kernel sums: one kernel, float64 products of centred rows, float64 sums.
* k nearest: the kernel keeps each row's ``k + 4`` smallest fp32 distances per column tile;
  every kept candidate within the error bound of the row's k-th is recomputed in float64 from
  the rows; a row whose tile may have held more such candidates than were kept (its last kept
  value is inside the bound) is recomputed against every column.
* Radius tests: the kernel decides what lies outside the error margin and counts, per row,
  what does not; the row tiles holding such rows are recomputed in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from shardeval.kernels._triton_pairs import pair_knn_triton, pair_radius_triton, pair_sums_triton
from shardeval.kernels.distances import sq_bound
from shardeval.kernels.kernel_sums import (
    KernelSums,
    PolyKernel,
    RBFKernel,
    centre_of,
    poly_bound,
    poly_constants,
    rbf_bound,
)
from shardeval.kernels.pair_types import PairRequest, PairResult, RadiusDecisions

#: Candidates kept per row and column tile beyond the k asked for.
_EXTRA = 4


def _exact_rows(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """‖x_i − y_j‖² in float64 for the given rows against every y (the definition)."""
    x64, y64 = x[rows].to(torch.float64), y.to(torch.float64)
    out = torch.empty(rows.numel(), y.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, rows.numel(), 64):
        diff = x64[start : start + 64, None, :] - y64[None, :, :]
        out[start : start + 64] = (diff * diff).sum(-1)
    return out


def _exact_pairs(
    x: torch.Tensor, y: torch.Tensor, i: torch.Tensor, j: torch.Tensor
) -> torch.Tensor:
    diff = x[i].to(torch.float64) - y[j].to(torch.float64)
    return (diff * diff).sum(-1)


def _knn_side(x: torch.Tensor, y: torch.Tensor, k: int, diagonal: bool, c: float) -> torch.Tensor:
    """Each row of x: its k smallest exact squared distances to the rows of y (m, k)."""
    m, n = x.shape[0], y.shape[0]
    kk = min(k + _EXTRA, n)
    values, index = pair_knn_triton(x, y, kk, diagonal)
    norms_x = x.to(torch.float64).norm(dim=1)
    err = c * (norms_x + y.to(torch.float64).norm(dim=1).max()) ** 2
    approx = values.to(torch.float64)
    finite = torch.isfinite(approx)
    kth = torch.where(finite, approx, torch.inf).kthvalue(min(k, approx.shape[1]), dim=1).values
    limit = kth + 2 * err
    # A tile whose last kept value is inside the limit may have had more candidates.
    last = approx.view(m, -1, kk)[:, :, -1]
    overflow = (torch.isfinite(last) & (last <= limit[:, None])).any(dim=1)
    out = torch.full((m, k), torch.inf, dtype=torch.float64, device=x.device)
    cand = finite & (approx <= limit[:, None]) & ~overflow[:, None]
    r, c_pos = torch.nonzero(cand, as_tuple=True)
    if r.numel():
        exact = _exact_pairs(x, y, r, index[r, c_pos])
        table = torch.full_like(approx, torch.inf)
        table[r, c_pos] = exact
        take = min(k, table.shape[1])
        out[:, :take] = torch.sort(table, dim=1).values[:, :take]
    redo = torch.nonzero(overflow, as_tuple=True)[0]
    if redo.numel():
        full = _exact_rows(x, y, redo)
        if diagonal:
            full[torch.arange(redo.numel(), device=x.device), redo] = torch.inf
        take = min(k, n)
        out[redo, :take] = torch.sort(full, dim=1).values[:, :take]
    return out


def kernel_sums_triton(
    x: torch.Tensor, y: torch.Tensor, kernel: PolyKernel | RBFKernel, diagonal_block: bool
) -> KernelSums:
    """:func:`shardeval.kernels.kernel_sums.poly_sums` /
    :func:`~shardeval.kernels.kernel_sums.rbf_sums` on
    tensors: the rows centred in float64 by torch, the products and sums by the Triton kernel,
    the error bound from the rows' norms, exactly as on the CPU."""
    d = x.shape[1]
    centre = centre_of(kernel.centre, d)
    o = torch.as_tensor(centre, dtype=torch.float64, device=x.device)

    def terms(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows64 = rows.to(torch.float64)
        if isinstance(kernel, PolyKernel):
            a = rows64 - o
            return a, a @ o, a.norm(dim=1)
        # As shardeval.kernels.kernel_sums.unit_rows: scaled by a power of two first (exact).
        peak = rows64.abs().amax(dim=1)
        _, exponent = torch.frexp(torch.where(peak > 0, peak, torch.ones_like(peak)))
        scaled = torch.ldexp(rows64, -exponent[:, None].to(torch.float64))
        norms = scaled.norm(dim=1)
        a = scaled / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None] - o
        sq = (a * a).sum(dim=1)
        return a, sq, sq.sqrt()

    a, ra, na = terms(x)
    b, rb, nb = (a, ra, na) if (y is x or diagonal_block) else terms(y)
    if isinstance(kernel, PolyKernel):
        p, coeffs = poly_constants(kernel, centre)
        squares, rows, cols, diagonal = pair_sums_triton(
            a, b, (ra, rb), "poly", kernel.gamma, tuple(coeffs), diagonal_block
        )
        norms_a, alpha, norms_b, beta = (v.cpu().numpy() for v in (na, ra, nb, rb))
        error, magnitude = poly_bound(kernel, centre, d, norms_a, alpha, norms_b, beta)
        shift = p ** int(kernel.degree)
    else:
        scale = -0.5 / kernel.sigma / kernel.sigma
        squares, rows, cols, diagonal = pair_sums_triton(
            a, b, (ra, rb), "rbf", scale, (), diagonal_block
        )
        error, magnitude = rbf_bound(kernel.sigma, d, na.cpu().numpy(), nb.cpu().numpy())
        shift, diagonal = 0.0, 0.0
    return KernelSums(
        float(rows.sum()),
        squares,
        rows.cpu().numpy(),
        cols.cpu().numpy(),
        diagonal,
        shift,
        error,
        magnitude,
    )


def _radius(
    x: torch.Tensor, y: torch.Tensor, radii: tuple[np.ndarray, ...], c: float
) -> RadiusDecisions:
    device = x.device
    x_le, x_lt, y_le = (torch.as_tensor(np.asarray(r, np.float64), device=device) for r in radii)
    xn, yn = x.to(torch.float64).norm(dim=1), y.to(torch.float64).norm(dim=1)
    eps = float(np.finfo(np.float32).eps)

    def slack(r: torch.Tensor) -> torch.Tensor:
        return eps * torch.where(torch.isfinite(r), r, torch.zeros_like(r))

    e_x = c * (xn + yn.max()) ** 2 + torch.maximum(slack(x_le), slack(x_lt))
    e_y = c * (yn + xn.max()) ** 2 + slack(y_le)
    y_within_t, y_count_t, x_within, x_cover, near, bm_t = pair_radius_triton(
        x, y, (x_le, x_lt, y_le), (e_x, e_y)
    )
    bm = int(bm_t)
    uncertain = 0
    tiles = torch.unique(torch.nonzero(near > 0, as_tuple=True)[0] // bm)
    for t in tiles.tolist():
        rows = torch.arange(t * bm, min((t + 1) * bm, x.shape[0]), device=device)
        sq = _exact_rows(x, y, rows)
        le_x, lt_x = sq <= x_le[rows, None], sq < x_lt[rows, None]
        le_y = sq <= y_le[None, :]
        y_within_t[t] = le_x.any(0).to(torch.int32)
        y_count_t[t] = lt_x.sum(0).to(torch.int32)
        x_within[rows] = le_y.any(1)
        x_cover[rows] = lt_x.any(1)
        uncertain += int(near[rows].sum())
    return RadiusDecisions(
        y_within_t.amax(0).bool().cpu().numpy(),
        y_count_t.sum(0).to(torch.int64).cpu().numpy(),
        x_within.cpu().numpy(),
        x_cover.cpu().numpy(),
        uncertain,
    )


def pair_reduce_triton(
    x: torch.Tensor, y: torch.Tensor, request: PairRequest, diagonal_block: bool
) -> PairResult:
    """See :func:`shardeval.kernels.pairs.pair_reduce`."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has d={x.shape[1]} but y has d={y.shape[1]}")
    c = sq_bound(x.shape[1], np.dtype(np.float32))
    knn = radius = None
    if request.knn is not None:
        knn = (
            _knn_side(x, y, request.knn, diagonal_block, c).cpu().numpy(),
            _knn_side(y, x, request.knn, diagonal_block, c).cpu().numpy(),
        )
    if request.radii is not None:
        radius = _radius(x, y, request.radii, c)
    return PairResult(None, None, knn, radius)
