"""Block-pair kernels on the GPU: each program computes one (BM × BN) tile of X Yᵀ with fp32
IEEE products and reduces it at once — kernel sums, the k smallest squared distances of each
row, or radius tests — so the m × n product never exists in memory.

Exactness is kept by the launchers in :mod:`shardeval.kernels._triton_path`: a tile reports
what it could not decide within the fp32 error bound, and those rows are redone in float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardeval.kernels._dispatch import launch_guard
from shardeval.kernels._tiling import block


@triton.jit
def _expm1_fp64(z):
    # e^z − 1 in float64 without cancellation near 0 (Triton has no expm1): where |z| < ½ the
    # Taylor series to z^18/18! (truncation below 1e-18 relative), the exponential elsewhere
    # (where e^z − 1 loses at most a factor 1/(1 − e^−½) ≈ 2.5 of one rounding).
    s = 1.0 + z / 18.0
    for k in tl.static_range(17, 1, -1):
        s = 1.0 + z / k * s
    return tl.where(tl.abs(z) < 0.5, z * s, tl.exp(z) - 1.0)


@triton.jit
def _product_tile(
    x_ptr,
    y_ptr,
    rows,
    cols,
    m,
    n,
    d,
    stride_x,
    stride_y,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, d, BK):
        ks = k0 + tl.arange(0, BK)
        a = tl.load(
            x_ptr + rows[:, None] * stride_x + ks[None, :],
            mask=(rows < m)[:, None] & (ks < d)[None, :],
            other=0.0,
        ).to(tl.float32)
        b = tl.load(
            y_ptr + cols[None, :] * stride_y + ks[:, None],
            mask=(ks < d)[:, None] & (cols < n)[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.dot(a, b, input_precision=PRECISION)
    return acc


@triton.jit
def _kernel_sums_kernel(
    a_ptr,  # (m, d) float64 centred rows, row stride stride_a
    b_ptr,  # (n, d) float64 centred rows, row stride stride_b
    ra_ptr,  # (m,) polynomial: α = o·a; RBF: ‖a‖²
    rb_ptr,  # (n,) polynomial: β = o·b; RBF: ‖b‖²
    coeff_ptr,  # (DEGREE,) polynomial: Horner coefficients C(D, k)·P^(D−k), k = 1..D
    rows_ptr,  # (Tn, m) fp64 out: per column tile, each row's partial sum
    cols_ptr,  # (Tm, n) fp64 out: per row tile, each column's partial sum
    tot_ptr,  # (Tm, Tn, 2) fp64 out: squares and diagonal of each tile
    m,
    n,
    d,
    stride_a,
    stride_b,
    scale,  # polynomial: γ; RBF: −1/(2σ²)
    KIND: tl.constexpr,  # 0 polynomial (values − P^D), 1 RBF (complements 1 − k)
    DEGREE: tl.constexpr,
    DIAGONAL: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    cols = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), tl.float64)
    for k0 in range(0, d, BK):
        ks = k0 + tl.arange(0, BK)
        a = tl.load(
            a_ptr + rows[:, None] * stride_a + ks[None, :],
            mask=(rows < m)[:, None] & (ks < d)[None, :],
            other=0.0,
        )
        b = tl.load(
            b_ptr + cols[None, :] * stride_b + ks[:, None],
            mask=(ks < d)[:, None] & (cols < n)[None, :],
            other=0.0,
        )
        acc += tl.dot(a, b, input_precision="ieee")
    valid = (rows < m)[:, None] & (cols < n)[None, :]
    ra = tl.load(ra_ptr + rows, mask=rows < m, other=0.0)
    rb = tl.load(rb_ptr + cols, mask=cols < n, other=0.0)
    if KIND == 0:
        t = ((acc + ra[:, None]) + rb[None, :]) * scale
        vals = t * tl.load(coeff_ptr + DEGREE - 1)
        for k in tl.static_range(DEGREE - 2, -1, -1):
            vals = (vals + tl.load(coeff_ptr + k)) * t
    else:
        t = tl.maximum((acc * -2.0 + ra[:, None]) + rb[None, :], 0.0)
        vals = -_expm1_fp64(t * scale)
    vals = tl.where(valid, vals, 0.0)
    diag_sum = 0.0
    if DIAGONAL:
        on_diag = valid & (rows[:, None] == cols[None, :])
        if KIND == 0:
            diag_sum = tl.sum(tl.sum(tl.where(on_diag, vals, 0.0), axis=1), axis=0)
        vals = tl.where(on_diag, 0.0, vals)  # a row's distance to itself is 0: complement 0
    row_part = tl.sum(vals, axis=1)
    col_part = tl.sum(vals, axis=0)
    tl.store(rows_ptr + pid_n.to(tl.int64) * m + rows, row_part, mask=rows < m)
    tl.store(cols_ptr + pid_m.to(tl.int64) * n + cols, col_part, mask=cols < n)
    base_out = tot_ptr + (pid_m.to(tl.int64) * tl.num_programs(1) + pid_n) * 2
    tl.store(base_out, tl.sum(tl.sum(vals * vals, axis=1), axis=0))
    tl.store(base_out + 1, diag_sum)


@triton.jit
def _pair_knn_kernel(
    x_ptr,  # (m, d)
    y_ptr,  # (n, d)
    xx_ptr,  # (m,) ‖x‖² (fp32)
    yy_ptr,  # (n,) ‖y‖²
    val_ptr,  # (Tn, m, KK) fp32 out: per column tile, each row's KK smallest squared distances
    idx_ptr,  # (Tn, m, KK) int64 out: their column indices
    m,
    n,
    d,
    stride_x,
    stride_y,
    DIAGONAL: tl.constexpr,
    KK: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    cols = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    acc = _product_tile(
        x_ptr, y_ptr, rows, cols, m, n, d, stride_x, stride_y, BM, BN, BK, PRECISION
    )
    xx = tl.load(xx_ptr + rows, mask=rows < m, other=0.0)
    yy = tl.load(yy_ptr + cols, mask=cols < n, other=0.0)
    sq = tl.maximum(xx[:, None] + yy[None, :] - 2.0 * acc, 0.0)
    invalid = (rows >= m)[:, None] | (cols >= n)[None, :]
    if DIAGONAL:
        invalid = invalid | (rows[:, None] == cols[None, :])  # not a neighbour of itself
    sq = tl.where(invalid, float("inf"), sq)
    out = (pid_n.to(tl.int64) * m + rows) * KK
    for r in tl.static_range(KK):
        best = tl.min(sq, axis=1)
        where = tl.argmin(sq, axis=1)
        tl.store(val_ptr + out + r, best, mask=rows < m)
        tl.store(idx_ptr + out + r, where.to(tl.int64) + pid_n.to(tl.int64) * BN, mask=rows < m)
        sq = tl.where(cols[None, :] - pid_n.to(tl.int64) * BN == where[:, None], float("inf"), sq)


@triton.jit
def _pair_radius_kernel(
    x_ptr,  # (m, d)
    y_ptr,  # (n, d)
    xx_ptr,  # (m,) ‖x‖²
    yy_ptr,  # (n,) ‖y‖²
    rle_ptr,  # (m,) squared radius, ≤ test (precision)
    rlt_ptr,  # (m,) squared radius, < test (density, coverage)
    sle_ptr,  # (n,) squared radius of y, ≤ test (recall)
    ex_ptr,  # (m,) margin of each row: fp32 error bound plus the radii's rounding
    ey_ptr,  # (n,) margin of each column (for the recall test)
    ywithin_ptr,  # (Tm, n) int32 out: per row tile, some x with d ≤ r_x
    ycount_ptr,  # (Tm, n) int32 out: per row tile, how many x with d < r'_x
    xwithin_ptr,  # (Tn, m) int32 out: per column tile, some y with d ≤ s_y
    xcover_ptr,  # (Tn, m) int32 out: per column tile, some y with d < r'_x
    near_ptr,  # (Tn, m) int32 out: per column tile, the row's comparisons within the margin
    m,
    n,
    d,
    stride_x,
    stride_y,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    cols = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    acc = _product_tile(
        x_ptr, y_ptr, rows, cols, m, n, d, stride_x, stride_y, BM, BN, BK, PRECISION
    )
    mr, mc = rows < m, cols < n
    valid = mr[:, None] & mc[None, :]
    xx = tl.load(xx_ptr + rows, mask=mr, other=0.0)
    yy = tl.load(yy_ptr + cols, mask=mc, other=0.0)
    sq = tl.maximum(xx[:, None] + yy[None, :] - 2.0 * acc, 0.0)
    rle = tl.load(rle_ptr + rows, mask=mr, other=0.0)[:, None]
    rlt = tl.load(rlt_ptr + rows, mask=mr, other=0.0)[:, None]
    sle = tl.load(sle_ptr + cols, mask=mc, other=0.0)[None, :]
    ex = tl.load(ex_ptr + rows, mask=mr, other=0.0)[:, None]
    ey = tl.load(ey_ptr + cols, mask=mc, other=0.0)[None, :]
    le_x = valid & (sq <= rle)
    lt_x = valid & (sq < rlt)
    le_y = valid & (sq <= sle)
    near = valid & ((tl.abs(sq - rle) <= ex) | (tl.abs(sq - rlt) <= ex) | (tl.abs(sq - sle) <= ey))
    tl.store(
        ywithin_ptr + pid_m.to(tl.int64) * n + cols, tl.max(le_x.to(tl.int32), axis=0), mask=mc
    )
    tl.store(ycount_ptr + pid_m.to(tl.int64) * n + cols, tl.sum(lt_x.to(tl.int32), axis=0), mask=mc)
    tl.store(
        xwithin_ptr + pid_n.to(tl.int64) * m + rows, tl.max(le_y.to(tl.int32), axis=1), mask=mr
    )
    tl.store(xcover_ptr + pid_n.to(tl.int64) * m + rows, tl.max(lt_x.to(tl.int32), axis=1), mask=mr)
    tl.store(near_ptr + pid_n.to(tl.int64) * m + rows, tl.sum(near.to(tl.int32), axis=1), mask=mr)


def _tiles(m: int, n: int, d: int) -> tuple[int, int, int]:
    return block(m, 64), block(n, 64), block(d, 32)


def _prepared(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float32)
    return x if x.stride(1) == 1 else x.contiguous()


def pair_sums_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    row_terms: tuple[torch.Tensor, torch.Tensor],
    kind: str,
    scale: float,
    coeffs: tuple[float, ...],
    diagonal: bool,
) -> tuple[float, torch.Tensor, torch.Tensor, float]:
    """(squares, row sums (m,), column sums (n,), diagonal) of one block pair in float64, from
    centred float64 rows ``a``, ``b`` and their per-row terms (α, β for ``poly``; ‖a‖², ‖b‖²
    for ``rbf``): see :mod:`shardeval.kernels.kernel_sums` for what is summed."""
    a = a if a.stride(1) == 1 else a.contiguous()
    b = b if b.stride(1) == 1 else b.contiguous()
    (m, d), n = a.shape, b.shape[0]
    bm, bn, bk = block(m, 64), block(n, 64), block(d, 16)
    tm, tn = triton.cdiv(m, bm), triton.cdiv(n, bn)
    rows = torch.empty(tn, m, dtype=torch.float64, device=a.device)
    cols = torch.empty(tm, n, dtype=torch.float64, device=a.device)
    tot = torch.empty(tm, tn, 2, dtype=torch.float64, device=a.device)
    coeff = torch.tensor(coeffs or (0.0,), dtype=torch.float64, device=a.device)
    ra, rb = (r.to(torch.float64).contiguous() for r in row_terms)
    with launch_guard():
        _kernel_sums_kernel[(tm, tn)](
            a,
            b,
            ra,
            rb,
            coeff,
            rows,
            cols,
            tot,
            m,
            n,
            d,
            a.stride(0),
            b.stride(0),
            float(scale),
            KIND=0 if kind == "poly" else 1,
            DEGREE=max(1, len(coeffs)),
            DIAGONAL=diagonal,
            BM=bm,
            BN=bn,
            BK=bk,
        )
    total = tot.sum(dim=(0, 1))
    return float(total[0]), rows.sum(0), cols.sum(0), float(total[1])


def pair_knn_triton(
    x: torch.Tensor, y: torch.Tensor, kk: int, diagonal: bool, dot_precision: str = "ieee"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of x and per column tile, the kk smallest fp32 squared distances and their
    column indices: ((m, Tn·kk) values, (m, Tn·kk) indices)."""
    x, y = _prepared(x), _prepared(y)
    (m, d), n = x.shape, y.shape[0]
    bm, bn, bk = _tiles(m, n, d)
    tm, tn = triton.cdiv(m, bm), triton.cdiv(n, bn)
    values = torch.empty(tn, m, kk, dtype=torch.float32, device=x.device)
    index = torch.empty(tn, m, kk, dtype=torch.int64, device=x.device)
    xx, yy = (x * x).sum(1), (y * y).sum(1)
    with launch_guard():
        _pair_knn_kernel[(tm, tn)](
            x,
            y,
            xx,
            yy,
            values,
            index,
            m,
            n,
            d,
            x.stride(0),
            y.stride(0),
            DIAGONAL=diagonal,
            KK=kk,
            BM=bm,
            BN=bn,
            BK=bk,
            PRECISION=dot_precision,
        )
    return values.permute(1, 0, 2).reshape(m, tn * kk), index.permute(1, 0, 2).reshape(m, tn * kk)


def pair_radius_triton(
    x: torch.Tensor,
    y: torch.Tensor,
    radii: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    margins: tuple[torch.Tensor, torch.Tensor],
    dot_precision: str = "ieee",
) -> tuple[torch.Tensor, ...]:
    """Per row tile / column tile partial radius tests and per-row near counts (see the kernel);
    returns (y_within (Tm, n), y_count (Tm, n), x_within (m,), x_cover (m,), near (m,)) and the
    row-tile height."""
    x, y = _prepared(x), _prepared(y)
    (m, d), n = x.shape, y.shape[0]
    bm, bn, bk = _tiles(m, n, d)
    tm, tn = triton.cdiv(m, bm), triton.cdiv(n, bn)
    y_within, y_count = (torch.empty(tm, n, dtype=torch.int32, device=x.device) for _ in range(2))
    x_within, x_cover, near = (
        torch.empty(tn, m, dtype=torch.int32, device=x.device) for _ in range(3)
    )
    xx, yy = (x * x).sum(1), (y * y).sum(1)
    r_le, r_lt, s_le = (r.to(torch.float32).contiguous() for r in radii)
    e_x, e_y = (e.to(torch.float32).contiguous() for e in margins)
    with launch_guard():
        _pair_radius_kernel[(tm, tn)](
            x,
            y,
            xx,
            yy,
            r_le,
            r_lt,
            s_le,
            e_x,
            e_y,
            y_within,
            y_count,
            x_within,
            x_cover,
            near,
            m,
            n,
            d,
            x.stride(0),
            y.stride(0),
            BM=bm,
            BN=bn,
            BK=bk,
            PRECISION=dot_precision,
        )
    return (
        y_within,
        y_count,
        x_within.amax(0).bool(),
        x_cover.amax(0).bool(),
        near.sum(0),
        torch.tensor(bm),
    )
