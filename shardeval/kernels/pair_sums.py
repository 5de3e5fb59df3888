"""Kernel sums of a block pair on any device: the CPU path (float64 products of centred rows,
:mod:`shardeval.kernels.kernel_sums`) on arrays or tensors, and the Triton kernel on tensors
where the dispatcher picks it, checked on first use against the CPU path."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from shardeval.kernels import _checking
from shardeval.kernels.kernel_sums import (
    KernelSums,
    PolyKernel,
    RBFKernel,
    centre_of,
    poly_constants,
    poly_sums,
    rbf_sums,
)
from shardeval.kernels.pair_types import PairRequest, to_numpy

if TYPE_CHECKING:
    import torch


def pair_sums(
    x: Any, y: Any, request: PairRequest, diagonal_block: bool, backend: str
) -> tuple[KernelSums | None, KernelSums | None]:
    """The kernel sums a request asks for: the Triton kernel on tensors where the backend
    resolves to it (CUDA, or the interpreter), each kernel through its first-use check; else
    the CPU path."""
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


def kernel_sums_cpu(
    x: Any, y: Any, kernel: PolyKernel | RBFKernel, diagonal_block: bool
) -> KernelSums:
    """:func:`shardeval.kernels.pairs.kernel_sums` by the CPU path on arrays or tensors of any
    device (the Triton kernel's torch path)."""
    a = to_numpy(x)
    b = a if (diagonal_block or y is x) else to_numpy(y)  # one block: expanded once
    if isinstance(kernel, PolyKernel):
        return poly_sums(a, b, kernel, diagonal_block=diagonal_block)
    return rbf_sums(a, b, kernel, diagonal_block=diagonal_block)


# ---------------------------------------------------------------------------------------------
# the Triton kernel's check (shardeval.kernels._checking)


class _Sums(NamedTuple):
    total: float
    squares: float
    rows: np.ndarray
    cols: np.ndarray
    diagonal: float


def _sums_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, kind: str
) -> _checking.Inputs:
    import torch

    y = _checking.normal_rows(s.partner, s.d, dtype, dev, seed + 1, 3.0)
    x = y if s.diagonal else _checking.normal_rows(s.rows, s.d, dtype, dev, seed, 3.1)
    y64 = y.to(torch.float64)
    kernel: PolyKernel | RBFKernel
    if kind == "rbf":
        unit = y64 / y64.norm(dim=1, keepdim=True).clamp_min(1e-300)
        kernel = RBFKernel(10.0, unit.mean(dim=0).cpu().numpy())
    else:  # KID's kernel about the partner's mean, as the pipeline takes it
        kernel = PolyKernel(1.0 / s.d, 1.0, 3, y64.mean(dim=0).cpu().numpy())
    return {"x": x, "y": y, "kernel": kernel, "diagonal": s.diagonal}


def _sums_reference(i: _checking.Inputs) -> _Sums:
    """The sums the kernel forms (see :mod:`shardeval.kernels.kernel_sums`), by torch in
    float64 on the inputs' device, one block of rows at a time."""
    import torch

    kernel, diagonal = i["kernel"], i["diagonal"]
    x, y = i["x"].to(torch.float64), i["y"].to(torch.float64)
    o = torch.as_tensor(kernel.centre, dtype=torch.float64, device=x.device)
    if isinstance(kernel, PolyKernel):
        _, coeffs = poly_constants(kernel, centre_of(kernel.centre, x.shape[1]))
        a, b = x - o, y - o
        ra, rb = a @ o, b @ o
    else:
        a = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300) - o
        b = y / y.norm(dim=1, keepdim=True).clamp_min(1e-300) - o
        ra, rb = (a * a).sum(dim=1), (b * b).sum(dim=1)
    m, n = a.shape[0], b.shape[0]
    rows = torch.zeros(m, dtype=torch.float64, device=x.device)
    cols = torch.zeros(n, dtype=torch.float64, device=x.device)
    squares = diag_sum = 0.0
    for start in range(0, m, 8192):
        stop = min(start + 8192, m)
        dot = a[start:stop] @ b.T
        if isinstance(kernel, PolyKernel):
            t = ((dot + ra[start:stop, None]) + rb[None, :]) * kernel.gamma
            vals = torch.zeros_like(t)
            for c in reversed(coeffs):  # Σ_k C(D, k) P^(D−k) t^k, as the kernel's Horner
                vals = (vals + c) * t
        else:
            t = ((dot * -2.0 + ra[start:stop, None]) + rb[None, :]).clamp_min(0)
            vals = -torch.expm1(t * (-0.5 / kernel.sigma / kernel.sigma))
        if diagonal:
            idx = torch.arange(start, stop, device=x.device)
            on = vals[idx - start, idx]
            if isinstance(kernel, PolyKernel):
                diag_sum += float(on.sum())
            vals[idx - start, idx] = 0.0
        rows[start:stop] = vals.sum(dim=1)
        cols += vals.sum(dim=0)
        squares += float((vals * vals).sum())
    total = float(rows.sum())
    return _Sums(total, squares, rows.cpu().numpy(), cols.cpu().numpy(), diag_sum)


def _sums_error(got: Any, want: Any) -> float:
    # In units of the rigorous bound the result carries (|total − exact| ≤ error, and so is
    # every row's and column's sum): two results each within it of the exact sums differ by at
    # most twice it. The squares carry no bound: 1e-9 relative is one unit.
    bound = max(float(got.error), 1e-300)
    sums = max(
        abs(got.total - want.total),
        abs(got.diagonal - want.diagonal),
        _checking.scaled(got.rows, want.rows, 1.0),
        _checking.scaled(got.cols, want.cols, 1.0),
    )
    squares = abs(got.squares - want.squares) / max(1e-9 * abs(want.squares), 1e-300)
    return max(sums / bound, squares)


def _sums_timed(i: _checking.Inputs) -> Callable[[], Any]:
    import torch

    from shardeval.kernels._triton_pairs import pair_sums_triton

    kernel = i["kernel"]
    centre = centre_of(kernel.centre, i["x"].shape[1])
    o = torch.as_tensor(centre, dtype=torch.float64, device=i["x"].device)
    a, b = i["x"].to(torch.float64) - o, i["y"].to(torch.float64) - o
    ra, rb = a @ o, b @ o
    _, coeffs = poly_constants(kernel, centre)
    terms = (ra, rb)
    return lambda: pair_sums_triton(a, b, terms, "poly", kernel.gamma, tuple(coeffs), False)


def _sums_triton(i: _checking.Inputs) -> Any:
    from shardeval.kernels._triton_path import kernel_sums_triton

    return kernel_sums_triton(i["x"], i["y"], i["kernel"], i["diagonal"])


CHECK = _checking.declare(
    _checking.KernelSpec(
        name="kernel_sums",
        jit="_triton_pairs._kernel_sums_kernel",
        inputs=_sums_inputs,
        triton=_sums_triton,
        torch_path=lambda i: kernel_sums_cpu(i["x"], i["y"], i["kernel"], i["diagonal"]),
        reference=_sums_reference,
        error=_sums_error,
        tolerance=_checking.per_dtype(2.0),  # units of the result's own rigorous bound
        length=lambda s: 1,
        flops=_checking.pair_flops,  # float64 products
        bytes=lambda s, item: float((s.rows + s.partner) * (s.d + 1) * 8),
        peak="fp64",
        timed=_sums_timed,
        bench=_checking.Shape(4096, 2048, 4096),
        pair=True,
        diagonal=True,
        variants=("poly", "rbf"),
    )
)
