"""Block-pair kernels on the GPU: each program computes one (BM × BN) tile of X Yᵀ with fp32
IEEE products and reduces it at once — kernel sums, the k smallest squared distances of each
row, or radius tests — so the m × n product never exists in memory.

Exactness is kept by the launchers in :mod:`kernels.pairs`: a tile reports what it could not
decide within the fp32 error bound, and those rows are redone in float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._dispatch import launch_guard
from kernels._tiling import block


@triton.jit
def _expm1(z):
    # e^z − 1 without cancellation near 0 (Triton has no expm1): a Taylor series where |z| < ½
    # (truncation below 2e-8 relative), the exponential elsewhere.
    series = z * (1 + z / 2 * (1 + z / 3 * (1 + z / 4 * (1 + z / 5 * (1 + z / 6 * (1 + z / 7))))))
    return tl.where(tl.abs(z) < 0.5, series, tl.exp(z) - 1)


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
def _pair_sums_kernel(
    x_ptr,  # (m, d) rows, row stride stride_x
    y_ptr,  # (n, d) rows, row stride stride_y
    xs_ptr,  # (m,) 1/‖x‖ (RBF on unit rows), unused for the polynomial kernel
    ys_ptr,  # (n,) 1/‖y‖
    rows_ptr,  # (Tn, m) fp64 out: per column tile, each row's partial sum
    cols_ptr,  # (Tm, n) fp64 out: per row tile, each column's partial sum
    tot_ptr,  # (Tm, Tn, 3) fp64 out: total, squares, diagonal of each tile
    m,
    n,
    d,
    stride_x,
    stride_y,
    p0,  # polynomial: γ; RBF: −1/(2σ²)
    p1,  # polynomial: c
    KIND: tl.constexpr,  # 0 polynomial (values), 1 RBF (complements 1 − k)
    DEGREE: tl.constexpr,
    DIAGONAL: tl.constexpr,
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
    valid = (rows < m)[:, None] & (cols < n)[None, :]
    if KIND == 0:
        base = acc * p0 + p1
        vals = base
        for _ in tl.static_range(DEGREE - 1):
            vals = vals * base
    else:
        xs = tl.load(xs_ptr + rows, mask=rows < m, other=0.0)
        ys = tl.load(ys_ptr + cols, mask=cols < n, other=0.0)
        t = tl.maximum(2.0 - 2.0 * (acc * xs[:, None] * ys[None, :]), 0.0)
        vals = -_expm1(t * p0)
    vals = tl.where(valid, vals, 0.0)
    diag_sum = 0.0
    if DIAGONAL:
        on_diag = valid & (rows[:, None] == cols[None, :])
        if KIND == 0:
            diag_sum = tl.sum(tl.sum(tl.where(on_diag, vals, 0.0).to(tl.float64), axis=1), axis=0)
        vals = tl.where(on_diag, 0.0, vals)  # a row's distance to itself is 0: complement 0
    v64 = vals.to(tl.float64)
    row_part = tl.sum(v64, axis=1)
    col_part = tl.sum(v64, axis=0)
    tl.store(rows_ptr + pid_n.to(tl.int64) * m + rows, row_part, mask=rows < m)
    tl.store(cols_ptr + pid_m.to(tl.int64) * n + cols, col_part, mask=cols < n)
    base_out = tot_ptr + (pid_m.to(tl.int64) * tl.num_programs(1) + pid_n) * 3
    tl.store(base_out, tl.sum(row_part, axis=0))
    tl.store(base_out + 1, tl.sum(tl.sum(v64 * v64, axis=1), axis=0))
    tl.store(base_out + 2, diag_sum)


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
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    params: tuple[float, ...],
    diagonal: bool,
    dot_precision: str = "ieee",
) -> tuple[float, float, torch.Tensor, torch.Tensor, float]:
    """(total, squares, row sums (m,), column sums (n,), diagonal) in float64; RBF sums are of
    the complements 1 − k on unit rows."""
    x, y = _prepared(x), _prepared(y)
    (m, d), n = x.shape, y.shape[0]
    bm, bn, bk = _tiles(m, n, d)
    tm, tn = triton.cdiv(m, bm), triton.cdiv(n, bn)
    rows = torch.empty(tn, m, dtype=torch.float64, device=x.device)
    cols = torch.empty(tm, n, dtype=torch.float64, device=x.device)
    tot = torch.empty(tm, tn, 3, dtype=torch.float64, device=x.device)
    if kind == "poly":
        gamma, coef0, degree = params
        p0, p1, kind_id, deg = float(gamma), float(coef0), 0, int(degree)
        xs = ys = torch.empty(1, dtype=torch.float32, device=x.device)
    else:
        (sigma,) = params
        p0, p1, kind_id, deg = -0.5 / (sigma * sigma), 0.0, 1, 1
        xs = 1.0 / x.to(torch.float64).norm(dim=1).clamp_min(1e-300).to(torch.float32)
        ys = 1.0 / y.to(torch.float64).norm(dim=1).clamp_min(1e-300).to(torch.float32)
    with launch_guard():
        _pair_sums_kernel[(tm, tn)](
            x,
            y,
            xs,
            ys,
            rows,
            cols,
            tot,
            m,
            n,
            d,
            x.stride(0),
            y.stride(0),
            p0,
            p1,
            KIND=kind_id,
            DEGREE=deg,
            DIAGONAL=diagonal,
            BM=bm,
            BN=bn,
            BK=bk,
            PRECISION=dot_precision,
        )
    total = tot.sum(dim=(0, 1))
    return float(total[0]), float(total[1]), rows.sum(0), cols.sum(0), float(total[2])


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
