"""Fused shard moments on the GPU: one pass over a row block gives the shifted column sums and
the shifted co-moment, upper-triangle tiles only, mirrored on store."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardeval.kernels._dispatch import launch_guard
from shardeval.kernels._tiling import block


@triton.jit
def _shard_moments_kernel(
    x_ptr,  # (n, d) input, any float dtype, row stride stride_xn, column stride 1
    shift_ptr,  # (d,) fp32/fp64 shift c (about the mean)
    tiles_ptr,  # (T, 2) int32 upper-triangle tile coordinates (i ≤ j)
    c_ptr,  # (d, d) out: Σ (x − c)(x − c)ᵀ, both triangles written
    s_ptr,  # (d,) out, fp64: Σ (x − c), written by diagonal tiles
    n,
    d,
    stride_xn,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    ti = tl.load(tiles_ptr + 2 * pid).to(tl.int64)
    tj = tl.load(tiles_ptr + 2 * pid + 1).to(tl.int64)
    cols_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    cols_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_i, mask_j = cols_i < d, cols_j < d
    shift_i = tl.load(shift_ptr + cols_i, mask=mask_i, other=0.0).to(ACC_DTYPE)
    shift_j = tl.load(shift_ptr + cols_j, mask=mask_j, other=0.0).to(ACC_DTYPE)
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=ACC_DTYPE)
    col_sum = tl.zeros((BLOCK_D,), dtype=tl.float64)
    for start in range(0, n, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask_r = rows < n
        a = tl.load(
            x_ptr + rows[:, None] * stride_xn + cols_i[None, :],
            mask=mask_r[:, None] & mask_i[None, :],
            other=0.0,
        ).to(ACC_DTYPE)
        b = tl.load(
            x_ptr + rows[:, None] * stride_xn + cols_j[None, :],
            mask=mask_r[:, None] & mask_j[None, :],
            other=0.0,
        ).to(ACC_DTYPE)
        # Masked rows must stay zero after the shift, or they would add shiftᵀshift terms.
        a = tl.where(mask_r[:, None], a - shift_i[None, :], 0.0)
        b = tl.where(mask_r[:, None], b - shift_j[None, :], 0.0)
        acc += tl.dot(tl.trans(a), b, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        col_sum += tl.sum(a, axis=0).to(tl.float64)
    # Each element of C is written by exactly one store: the tile to the upper triangle (with
    # the diagonal), its mirror to the strictly-lower one. On a diagonal tile both stores would
    # otherwise hit the same addresses in no defined order, and acc is not bit-symmetric.
    out_mask = mask_i[:, None] & mask_j[None, :]
    upper = cols_i[:, None] <= cols_j[None, :]
    tl.store(c_ptr + cols_i[:, None] * d + cols_j[None, :], acc, mask=out_mask & upper)
    mirror = out_mask & (cols_i[:, None] < cols_j[None, :])
    tl.store(c_ptr + cols_j[None, :] * d + cols_i[:, None], acc, mask=mirror)
    if ti == tj:
        tl.store(s_ptr + cols_i, col_sum, mask=mask_i)


def _upper_tiles(t: int, device: torch.device) -> torch.Tensor:
    idx = torch.triu_indices(t, t)
    return idx.T.contiguous().to(device=device, dtype=torch.int32)


def shifted_comoment_triton(
    x: torch.Tensor, shift: torch.Tensor, dot_precision: str = "ieee"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel: returns (Σ(x−c)(x−c)ᵀ, Σ(x−c)), in the accumulation dtype and fp64.

    Args:
        x: (n, d) tensor, rows contiguous in the feature axis.
        shift: (d,) vector c.
        dot_precision: ``ieee`` (default) or ``tf32x3`` for ``tl.dot``.
    """
    if dot_precision not in ("ieee", "tf32x3", "tf32"):
        raise ValueError(f"dot_precision must be 'ieee', 'tf32x3' or 'tf32', got {dot_precision!r}")
    n, d = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    block_d = block(d, 64)
    block_n = block(n, 32)
    tiles = _upper_tiles(triton.cdiv(d, block_d), x.device)
    comoment = torch.empty(d, d, dtype=acc_dtype, device=x.device)
    col_sum = torch.empty(d, dtype=torch.float64, device=x.device)
    with launch_guard():
        _shard_moments_kernel[(tiles.shape[0],)](
            x,
            shift.to(acc_dtype).contiguous(),
            tiles,
            comoment,
            col_sum,
            n,
            d,
            x.stride(0),
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            PRECISION="ieee" if acc_dtype == torch.float64 else dot_precision,
            ACC_DTYPE=tl.float64 if acc_dtype == torch.float64 else tl.float32,
        )
    return comoment, col_sum
