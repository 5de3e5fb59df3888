"""Online log-sum-exp on the GPU (flash-attention style running max and rescaled sum).

Every reduction returns the mergeable pair (max m, s = Σ exp(x − m)); all −inf gives
(−inf, 0). Partial pairs from several programs are merged on the host side of the launcher.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardeval.kernels._dispatch import launch_guard
from shardeval.kernels._tiling import block


@triton.jit
def _rescale(m_old, m_new):
    # exp(m_old − m_new) with the −inf guard: a running max still at −inf scales nothing.
    safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return tl.exp(m_old - safe), safe


@triton.jit
def _row_lse_kernel(
    x_ptr,  # (n, k) input, row stride stride_xn, column stride 1
    max_ptr,  # (n,) out: row max
    sum_ptr,  # (n,) out: Σ_k exp(x − max)
    n,
    k,
    stride_xn,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n
    m = tl.full((BLOCK_R,), float("-inf"), ACC_DTYPE)
    s = tl.zeros((BLOCK_R,), ACC_DTYPE)
    for start in range(0, k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        mask = mask_r[:, None] & (cols < k)[None, :]
        v = tl.load(
            x_ptr + rows[:, None] * stride_xn + cols[None, :], mask=mask, other=float("-inf")
        ).to(ACC_DTYPE)
        m_new = tl.maximum(m, tl.max(v, axis=1))
        scale, safe = _rescale(m, m_new)
        s = s * scale + tl.sum(tl.exp(v - safe[:, None]), axis=1)
        m = m_new
    tl.store(max_ptr + rows, m, mask=mask_r)
    tl.store(sum_ptr + rows, s, mask=mask_r)


@triton.jit
def _flat_stats_kernel(
    x_ptr,  # (n,) input
    max_ptr,  # (P,) out: per-program max
    sum_ptr,  # (P,) out: per-program Σ exp(x − max)
    sum2_ptr,  # (P,) out: per-program Σ exp(2(x − max)); written when SQUARES
    n,
    chunk,
    BLOCK: tl.constexpr,
    SQUARES: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    m = tl.full((BLOCK,), float("-inf"), ACC_DTYPE)
    s = tl.zeros((BLOCK,), ACC_DTYPE)
    s2 = tl.zeros((BLOCK,), ACC_DTYPE)
    for start in range(0, chunk, BLOCK):
        offs = pid * chunk + start + tl.arange(0, BLOCK)
        mask = (offs < n) & (start + tl.arange(0, BLOCK) < chunk)
        v = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(ACC_DTYPE)
        # Lane-wise running max: each lane keeps its own pair, folded once at the end.
        m_new = tl.maximum(m, v)
        scale, safe = _rescale(m, m_new)
        s = s * scale + tl.exp(v - safe)
        if SQUARES:
            s2 = s2 * scale * scale + tl.exp(2.0 * (v - safe))
        m = m_new
    m_all = tl.max(m, axis=0)
    scale, _ = _rescale(m, tl.zeros_like(m) + m_all)
    tl.store(max_ptr + pid, m_all)
    tl.store(sum_ptr + pid, tl.sum(s * scale, axis=0))
    if SQUARES:
        tl.store(sum2_ptr + pid, tl.sum(s2 * scale * scale, axis=0))


def _acc(x: torch.Tensor) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def row_lse_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (max, Σ exp(x − max)) of an (n, k) tensor."""
    n, k = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    dtype, acc = _acc(x)
    m = torch.empty(n, dtype=dtype, device=x.device)
    s = torch.empty(n, dtype=dtype, device=x.device)
    block_r, block_k = block(n, 32, floor=1), block(k, 256, floor=1)
    with launch_guard():
        _row_lse_kernel[(triton.cdiv(n, block_r),)](
            x, m, s, n, k, x.stride(0), BLOCK_R=block_r, BLOCK_K=block_k, ACC_DTYPE=acc
        )
    return m, s


def flat_stats_triton(
    x: torch.Tensor, squares: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-program partial (max, Σ exp(x − max), Σ exp(2(x − max))) over a 1-D tensor."""
    x = x.contiguous().reshape(-1)
    n = x.numel()
    dtype, acc = _acc(x)
    blk = block(n, 1024, floor=1)
    chunk = max(blk, triton.cdiv(n, 4 * 132) // blk * blk or blk)  # ~4 programs per SM
    programs = max(1, triton.cdiv(n, chunk))
    m = torch.empty(programs, dtype=dtype, device=x.device)
    s = torch.empty(programs, dtype=dtype, device=x.device)
    s2 = torch.zeros(programs, dtype=dtype, device=x.device)
    with launch_guard():
        _flat_stats_kernel[(programs,)](
            x, m, s, s2, n, chunk, BLOCK=blk, SQUARES=squares, ACC_DTYPE=acc
        )
    return m, s, s2
