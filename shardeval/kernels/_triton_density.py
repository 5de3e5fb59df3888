"""Log-densities on the GPU: Gaussian (whitened row norms) and Parzen window (streamed online
log-sum-exp over sample tiles, never the full distance matrix)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shardeval.kernels._dispatch import launch_guard
from shardeval.kernels._tiling import block
from shardeval.kernels._triton_lse import _rescale


@triton.jit
def _whitened_sq_norm_kernel(
    x_ptr,  # (n, d) rows, row stride stride_xn
    mu_ptr,  # (d,) mean
    linv_ptr,  # (d, d) lower-triangular L⁻¹ with Σ = L Lᵀ, row-major
    out_ptr,  # (n,) out: ‖L⁻¹ (x − μ)‖²
    n,
    d,
    stride_xn,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n
    sq = tl.zeros((BLOCK_R,), tl.float32)
    for j0 in range(0, d, BLOCK_D):
        out_cols = j0 + tl.arange(0, BLOCK_D)
        z = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
        # z_j = Σ_k (x − μ)_k L⁻¹[j, k]; L⁻¹ is lower triangular, so only k ≤ j contribute.
        for k0 in range(0, j0 + BLOCK_D, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            mask_k = ks < d
            xk = tl.load(
                x_ptr + rows[:, None] * stride_xn + ks[None, :],
                mask=mask_r[:, None] & mask_k[None, :],
                other=0.0,
            ).to(tl.float32)
            mu = tl.load(mu_ptr + ks, mask=mask_k, other=0.0).to(tl.float32)
            xk = tl.where(mask_k[None, :], xk - mu[None, :], 0.0)
            lt = tl.load(
                linv_ptr + out_cols[None, :].to(tl.int64) * d + ks[:, None],
                mask=mask_k[:, None] & (out_cols < d)[None, :],
                other=0.0,
            )
            z += tl.dot(xk, lt.to(tl.float32), input_precision=PRECISION)
        sq += tl.sum(z * z, axis=1)
    tl.store(out_ptr + rows, sq, mask=mask_r)


@triton.jit
def _parzen_lse_kernel(
    x_ptr,  # (n, d) centred queries, row-major
    y_ptr,  # (m, d) centred samples, row-major
    xx_ptr,  # (n,) ‖x‖²
    yy_ptr,  # (m,) ‖y‖²
    max_ptr,  # (n,) out: max_j of −‖x − y_j‖² / (2h²)
    sum_ptr,  # (n,) out: Σ_j exp(logit_j − max)
    n,
    m,
    d,
    inv_two_h2,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n
    xx = tl.load(xx_ptr + rows, mask=mask_r, other=0.0)
    run_max = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_R,), tl.float32)
    for m0 in range(0, m, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask_c = cols < m
        dot = tl.zeros((BLOCK_R, BLOCK_M), tl.float32)
        for k0 in range(0, d, BLOCK_D):
            ks = k0 + tl.arange(0, BLOCK_D)
            mask_k = ks < d
            xt = tl.load(
                x_ptr + rows[:, None] * d + ks[None, :],
                mask=mask_r[:, None] & mask_k[None, :],
                other=0.0,
            )
            yt = tl.load(
                y_ptr + cols[None, :] * d + ks[:, None],
                mask=mask_k[:, None] & mask_c[None, :],
                other=0.0,
            )
            dot += tl.dot(xt, yt, input_precision=PRECISION)
        yy = tl.load(yy_ptr + cols, mask=mask_c, other=0.0)
        dist = tl.maximum(xx[:, None] + yy[None, :] - 2.0 * dot, 0.0)
        logit = tl.where(mask_c[None, :], -dist * inv_two_h2, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logit, axis=1))
        scale, safe = _rescale(run_max, new_max)
        run_sum = run_sum * scale + tl.sum(tl.exp(logit - safe[:, None]), axis=1)
        run_max = new_max
    tl.store(max_ptr + rows, run_max, mask=mask_r)
    tl.store(sum_ptr + rows, run_sum, mask=mask_r)


def whitened_sq_norm_triton(
    x: torch.Tensor, mean: torch.Tensor, linv: torch.Tensor, dot_precision: str = "ieee"
) -> torch.Tensor:
    """‖L⁻¹(x_i − μ)‖² per row, fp32."""
    n, d = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    block_r, block_d = block(n, 64), block(d, 64)
    with launch_guard():
        _whitened_sq_norm_kernel[(triton.cdiv(n, block_r),)](
            x,
            mean.to(torch.float32).contiguous(),
            linv.to(torch.float32).contiguous(),
            out,
            n,
            d,
            x.stride(0),
            BLOCK_R=block_r,
            BLOCK_D=block_d,
            PRECISION=dot_precision,
        )
    return out


def parzen_lse_triton(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float, dot_precision: str = "ieee"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row: the (max, scaled sum) pair of −‖x − y_j‖²/(2h²) over all samples y_j.

    Both sets are centred on the samples' mean first, so ‖x‖² + ‖y‖² − 2x·y does not cancel
    the large common offset of real features.
    """
    centre = y.to(torch.float32).mean(dim=0)
    xc = (x.to(torch.float32) - centre).contiguous()
    yc = (y.to(torch.float32) - centre).contiguous()
    n, d = xc.shape
    m = yc.shape[0]
    xx, yy = (xc * xc).sum(dim=1), (yc * yc).sum(dim=1)
    run_max = torch.empty(n, dtype=torch.float32, device=x.device)
    run_sum = torch.empty(n, dtype=torch.float32, device=x.device)
    block_r, block_m, block_d = block(n, 64), block(m, 64), block(d, 32)
    with launch_guard():
        _parzen_lse_kernel[(triton.cdiv(n, block_r),)](
            xc,
            yc,
            xx,
            yy,
            run_max,
            run_sum,
            n,
            m,
            d,
            0.5 / bandwidth / bandwidth,
            BLOCK_R=block_r,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            PRECISION=dot_precision,
        )
    return run_max, run_sum
