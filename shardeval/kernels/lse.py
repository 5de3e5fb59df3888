"""Log-sum-exp reductions: the mergeable (max, scaled sum) pair, and importance-weight stats.

Never ``log(sum(exp(x)))``: with m = max x, LSE(x) = m + log Σ exp(x − m), and two pairs merge as
m = max(m_a, m_b), s = s_a·e^(m_a − m) + s_b·e^(m_b − m), with m = −inf (nothing, or only −inf,
seen) guarded so that it scales nothing instead of producing NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from shardeval.kernels import _checking
from shardeval.kernels._dispatch import Backend, resolve_backend


class LSEPair(NamedTuple):
    """max m and s = Σ exp(x − m); LSE = m + log s. All −inf (or empty): (−inf, 0)."""

    max: torch.Tensor
    sum: torch.Tensor


class WeightSums(NamedTuple):
    """For log-weights lw: n, m = max lw, Σ exp(lw − m), Σ exp(2(lw − m)), the ``top`` largest
    lw (descending), and, when asked, Σ exp(3(lw − m)) and Σ exp(4(lw − m)); all float64."""

    n: int
    max: torch.Tensor
    sum: torch.Tensor
    sum_sq: torch.Tensor
    top: torch.Tensor
    sum_cube: torch.Tensor | None = None
    sum_fourth: torch.Tensor | None = None


def _safe(m: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def merge_pairs(
    m: torch.Tensor, s: torch.Tensor, dim: int = -1, power: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial pairs along ``dim``; ``power=2`` for sums of exp(2(x − m))."""
    top = m.max(dim=dim, keepdim=True).values
    scaled = s * torch.exp(power * (m - _safe(top)))
    return top.squeeze(dim), scaled.sum(dim=dim)


def _check_real(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")


def logsumexp_reference(x: torch.Tensor, dim: int | None = None) -> LSEPair:
    """Float64 torch reference of :func:`logsumexp`."""
    _check_real(x, "x")
    v = x.to(torch.float64)
    if dim is None:
        v = v.reshape(-1)
        dim = 0
    if v.shape[dim] == 0:
        shape = list(v.shape)
        del shape[dim]
        return LSEPair(
            torch.full(shape, -math.inf, dtype=torch.float64, device=v.device),
            torch.zeros(shape, dtype=torch.float64, device=v.device),
        )
    m = v.max(dim=dim).values
    return LSEPair(m, torch.exp(v - _safe(m).unsqueeze(dim)).sum(dim=dim))


def _lse_torch(x: torch.Tensor, dim: int | None) -> LSEPair:
    """CPU path: max and exp in the input's working precision (fp32 unless fp64), the sum
    accumulated in float64; no float64 copy of the input."""
    v = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if dim is None:
        v, dim = v.reshape(-1), 0
    m = v.amax(dim=dim)
    shifted = v - _safe(m).unsqueeze(dim)
    s = shifted.exp_().sum(dim=dim, dtype=torch.float64)
    return LSEPair(m.to(torch.float64), s)


def logsumexp(x: torch.Tensor, *, dim: int | None = None, backend: Backend = "auto") -> LSEPair:
    """The mergeable log-sum-exp pair of ``x``, over everything or along the rows of (n, k).

    .. math:: \\mathrm{LSE}(x) = m + \\log \\sum_i e^{x_i - m}, \\quad m = \\max_i x_i

    Args:
        x: floating tensor; 1-D or any shape with ``dim=None``, (n, k) with ``dim=1``.
        dim: ``None`` (whole array) or 1 (per row of a 2-D tensor).
        backend: ``auto``, ``triton`` or ``torch``.

    Returns:
        LSEPair(max, sum) in float64: scalars for ``dim=None``, (n,) for ``dim=1``.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``dim`` is not None or 1 on a 2-D tensor.

    Example:
        >>> import torch
        >>> m, s = logsumexp(torch.tensor([0.0, 1000.0, float("-inf")]))
        >>> float(m), float(s)
        (1000.0, 1.0)
    """
    _check_real(x, "x")
    if dim not in (None, 1) or (dim == 1 and x.ndim != 2):
        raise ValueError(
            f"dim must be None, or 1 for a 2-D tensor; got dim={dim}, shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        return logsumexp_reference(x, dim)
    if resolve_backend(x, backend) == "torch":
        return _lse_torch(x, dim)
    from shardeval.kernels._selfcheck import launch

    if dim == 1:
        return launch(
            "row_lse", x.device, lambda: logsumexp_rows_triton(x), lambda: _lse_torch(x, 1)
        )
    return launch(
        "flat_stats", x.device, lambda: logsumexp_flat_triton(x), lambda: _lse_torch(x, None)
    )


def logsumexp_rows_triton(x: torch.Tensor) -> LSEPair:
    """The Triton path of :func:`logsumexp` along the rows of (n, k): float64 pairs."""
    from shardeval.kernels._triton_lse import row_lse_triton

    m, s = row_lse_triton(x)
    return LSEPair(m.double(), s.double())


def logsumexp_flat_triton(x: torch.Tensor) -> LSEPair:
    """The Triton path of :func:`logsumexp` over everything: the per-program partial pairs,
    merged in float64."""
    from shardeval.kernels._triton_lse import flat_stats_triton

    m, s, _ = flat_stats_triton(x, squares=False)
    top, total = merge_pairs(m.double(), s.double(), dim=0)
    return LSEPair(top, total)


def weight_sums_triton(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton path of :func:`weight_stats` without the top values: (max, Σ exp(lw − max),
    Σ exp(2(lw − max))), float64 scalars, from the per-program partial pairs."""
    from shardeval.kernels._triton_lse import flat_stats_triton

    m, s, s2 = flat_stats_triton(log_w, squares=True)
    m, s, s2 = m.double(), s.double(), s2.double()
    top_m, total = merge_pairs(m, s, dim=0)
    _, total_sq = merge_pairs(m, s2, dim=0, power=2)
    return top_m, total, total_sq


def weight_stats_reference(log_w: torch.Tensor, top: int = 0, higher: bool = False) -> WeightSums:
    """Float64 torch reference of :func:`weight_stats`."""
    _check_real(log_w, "log_w")
    v = log_w.to(torch.float64).reshape(-1)
    m, s = logsumexp_reference(v)

    def power_sum(p: int) -> torch.Tensor:
        if not v.numel():
            return torch.zeros((), dtype=v.dtype, device=v.device)
        return torch.exp(p * (v - _safe(m))).sum()

    more = (power_sum(3), power_sum(4)) if higher else (None, None)
    return WeightSums(v.numel(), m, s, power_sum(2), _top(v, top), *more)


def _top(v: torch.Tensor, top: int) -> torch.Tensor:
    k = min(top, v.numel())
    return torch.topk(v.to(torch.float64), k).values if k else v.new_zeros(0, dtype=torch.float64)


def weight_stats(
    log_w: torch.Tensor, *, top: int = 0, backend: Backend = "auto", higher: bool = False
) -> WeightSums:
    """Sufficient statistics of a block of importance log-weights, for ESS and tail fits.

    ESS = (Σw)² / Σw² = exp(2·LSE(lw) − LSE(2·lw)) = s² / s₂ with the returned sums (the max
    cancels), and the ``top`` largest log-weights feed the Pareto tail fit (PSIS).

    Args:
        log_w: floating tensor of log-weights (any shape; flattened).
        top: how many of the largest log-weights to keep.
        backend: ``auto``, ``triton`` or ``torch``.
        higher: also Σ exp(3(lw − m)) and Σ exp(4(lw − m)), for ESS's standard error. All
            four sums are then taken in float64 on the tensor's device by torch (not the
            Triton kernel, whose fp32 partial sums would cancel in the standard error).

    Returns:
        WeightSums(n, max, sum, sum_sq, top, sum_cube, sum_fourth), float64 (the last two
        None unless ``higher``).

    Example:
        >>> import torch
        >>> w = weight_stats(torch.log(torch.tensor([1.0, 1.0, 2.0])), top=1)
        >>> round(float(w.sum) ** 2 / float(w.sum_sq), 6)   # ESS = 16 / 6
        2.666667
    """
    _check_real(log_w, "log_w")
    if higher or log_w.numel() == 0 or resolve_backend(log_w, backend) == "torch":
        return weight_stats_reference(log_w, top, higher)
    from shardeval.kernels._selfcheck import launch

    return launch(
        "flat_stats",
        log_w.device,
        lambda: WeightSums(log_w.numel(), *weight_sums_triton(log_w), _top(log_w.reshape(-1), top)),
        lambda: weight_stats_reference(log_w, top),
    )


# ---------------------------------------------------------------------------------------------
# the Triton kernels' checks (shardeval.kernels._checking)


def _row_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str
) -> _checking.Inputs:
    # Spread 30: the terms span e^±150, so the running max and its rescaling matter.
    return {"x": (_checking.randn((s.rows, s.d), seed, dev) * 30).to(dtype)}


def _row_error(got: Any, want: Any) -> float:
    # The max is a value of the input: exact, or the kernel picked the wrong one.
    if not _checking.same(got[0], want[0]):
        return math.inf
    return _checking.log_space(_checking.lse_value(got), _checking.lse_value(want))


def _row_timed(i: _checking.Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_lse import row_lse_triton

    x = i["x"]
    return lambda: row_lse_triton(x)


ROW_LSE_CHECK = _checking.declare(
    _checking.KernelSpec(
        name="row_lse",
        jit="_triton_lse._row_lse_kernel",
        inputs=_row_inputs,
        triton=lambda i: logsumexp_rows_triton(i["x"]),
        torch_path=lambda i: _lse_torch(i["x"], 1),
        reference=lambda i: logsumexp_reference(i["x"], 1),
        error=_row_error,
        tolerance=_checking.per_dtype(2e-6),
        length=lambda s: s.d,
        flops=lambda s: 4.0 * s.rows * s.d,  # max, subtract, exp, add per value
        bytes=lambda s, item: float(s.rows * s.d * item + 2 * s.rows * 4),
        peak="fp32",
        timed=_row_timed,
        bench=_checking.Shape(1_000_000, 64),
    )
)


def _flat_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str
) -> _checking.Inputs:
    return {"x": (_checking.randn((s.rows * s.d,), seed, dev) * 20 - 5).to(dtype)}


def _flat_torch(i: _checking.Inputs) -> Any:
    # weight_stats' torch path is its float64 reference.
    w = weight_stats_reference(i["x"])
    return w.max, w.sum, w.sum_sq


def _flat_error(got: Any, want: Any) -> float:
    m, s, s2 = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in got)
    wm, ws, ws2 = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in want)
    if not _checking.same(m, wm):  # the max is a value of the input
        return math.inf
    lse = _checking.log_space(m + torch.log(s), wm + torch.log(ws))
    lse2 = _checking.log_space(2 * m + torch.log(s2), 2 * wm + torch.log(ws2))
    return max(lse, lse2)


def _flat_timed(i: _checking.Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_lse import flat_stats_triton

    x = i["x"]
    return lambda: flat_stats_triton(x, squares=True)


FLAT_STATS_CHECK = _checking.declare(
    _checking.KernelSpec(
        name="flat_stats",
        jit="_triton_lse._flat_stats_kernel",
        inputs=_flat_inputs,
        triton=lambda i: weight_sums_triton(i["x"]),
        torch_path=_flat_torch,
        reference=_flat_torch,
        error=_flat_error,
        tolerance=_checking.per_dtype(2e-6),
        length=lambda s: s.rows * s.d,
        flops=lambda s: 8.0 * s.rows * s.d,  # a running pair and its square
        bytes=lambda s, item: float(s.rows * s.d * item),
        peak="fp32",
        timed=_flat_timed,
        bench=_checking.Shape(10_000_000, 1),
    )
)
