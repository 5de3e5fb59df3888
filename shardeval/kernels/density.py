"""Log-densities of feature rows: under a Gaussian, and under a Gaussian kernel density (Parzen
window) of sample rows. Used for NLL of features."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from shardeval.kernels import _checking
from shardeval.kernels._dispatch import Backend, check_matrix, resolve_backend
from shardeval.kernels.lse import _lse_torch, merge_pairs

_LOG_2PI = math.log(2 * math.pi)

#: Sample rows per tile on the CPU Parzen path: bounds the (n, tile) distance block.
PARZEN_TILE = 4096


def _gaussian_checks(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> None:
    check_matrix(x)
    d = x.shape[1]
    if mean.shape != (d,) or chol.shape != (d, d):
        raise ValueError(
            f"x has d={d}; mean must be ({d},) and chol ({d}, {d}), got "
            f"{tuple(mean.shape)} and {tuple(chol.shape)}"
        )


def _log_det_term(chol: torch.Tensor) -> torch.Tensor:
    diag = torch.diagonal(chol).to(torch.float64)
    if not bool((diag > 0).all()):
        raise ValueError("chol must be a Cholesky factor with a positive diagonal")
    return torch.log(diag).sum()


def gaussian_logpdf_reference(
    x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor
) -> torch.Tensor:
    """Float64 reference of :func:`gaussian_logpdf` (triangular solve)."""
    _gaussian_checks(x, mean, chol)
    diff = (x.to(torch.float64) - mean.to(torch.float64)).T
    z = torch.linalg.solve_triangular(chol.to(torch.float64), diff, upper=False)
    d = x.shape[1]
    return -0.5 * (z * z).sum(dim=0) - _log_det_term(chol) - 0.5 * d * _LOG_2PI


def gaussian_logpdf(
    x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor, *, backend: Backend = "auto"
) -> torch.Tensor:
    """log N(x_i | μ, Σ) for every row, with Σ = L Lᵀ given by its Cholesky factor L.

    .. math:: \\log N(x|\\mu,\\Sigma) = -\\tfrac12 \\|L^{-1}(x-\\mu)\\|^2 - \\sum_k \\log L_{kk}
              - \\tfrac d2 \\log 2\\pi

    Args:
        x: (n, d) rows.
        mean: (d,) μ.
        chol: (d, d) lower-triangular L with positive diagonal.
        backend: ``auto``, ``triton`` or ``torch``.

    Returns:
        (n,) float64 log-densities.

    Raises:
        ValueError: shapes do not match, or ``chol`` has a non-positive diagonal.

    Example:
        >>> import torch
        >>> lp = gaussian_logpdf(torch.zeros(1, 2), torch.zeros(2), torch.eye(2))
        >>> round(float(lp[0]), 6)   # −log 2π
        -1.837877
    """
    _gaussian_checks(x, mean, chol)
    if x.shape[0] == 0:
        return gaussian_logpdf_reference(x, mean, chol)
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=chol.device)
    linv = torch.linalg.solve_triangular(chol.to(torch.float64), eye, upper=False)
    if x.dtype in (torch.float64, torch.int32, torch.int64):
        # Values fp32 cannot hold: the whole computation in float64.
        z = (x.to(torch.float64) - mean.to(torch.float64)) @ linv.T
        sq = z.square().sum(dim=1)
    elif resolve_backend(x, backend) == "torch":
        sq = whitened_sq_norm_torch(x, mean, linv)
    else:
        from shardeval.kernels._selfcheck import launch
        from shardeval.kernels._triton_density import whitened_sq_norm_triton

        sq = launch(
            "whitened_sq_norm",
            x.device,
            lambda: whitened_sq_norm_triton(x, mean, linv).to(torch.float64),
            lambda: whitened_sq_norm_torch(x, mean, linv),
        )
    return -0.5 * sq - _log_det_term(chol) - 0.5 * x.shape[1] * _LOG_2PI


def whitened_sq_norm_torch(x: torch.Tensor, mean: torch.Tensor, linv: torch.Tensor) -> torch.Tensor:
    """‖L⁻¹(x_i − μ)‖² per row by torch on any device: an fp32 GEMM against the inverse
    factor, the squares summed in float64 (the Triton kernel's torch path).

    The mean is subtracted as two fp32 terms (its rounding, then the rest), so that a large
    common offset does not cost the spread its digits.
    """
    mean_hi = mean.to(torch.float32)
    mean_lo = (mean.to(torch.float64) - mean_hi.to(torch.float64)).to(torch.float32)
    centred = (x.to(torch.float32) - mean_hi) - mean_lo
    z = centred @ linv.to(torch.float32).T
    return z.square().sum(dim=1, dtype=torch.float64)


def _parzen_checks(x: torch.Tensor, samples: torch.Tensor, bandwidth: float) -> None:
    check_matrix(x)
    check_matrix(samples, "samples")
    if x.shape[1] != samples.shape[1]:
        raise ValueError(f"x has d={x.shape[1]} but samples have d={samples.shape[1]}")
    if samples.shape[0] == 0:
        raise ValueError("samples must hold at least one row")
    if not (bandwidth > 0 and math.isfinite(bandwidth)):
        raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth}")


def parzen_lse(
    x: torch.Tensor, samples: torch.Tensor, bandwidth: float, *, backend: Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row, the mergeable pair (max, Σ exp(· − max)) of −‖x − y_j‖²/(2h²) over the
    sample rows: pairs from several sample shards merge with
    :func:`shardeval.kernels.lse.merge_pairs`. Float64 results."""
    _parzen_checks(x, samples, bandwidth)
    wide = torch.float64 in (x.dtype, samples.dtype)
    if x.shape[0] and not wide and resolve_backend(x, backend) == "triton":
        from shardeval.kernels._selfcheck import launch
        from shardeval.kernels._triton_density import parzen_lse_triton

        def triton_path() -> tuple[torch.Tensor, torch.Tensor]:
            m, s = parzen_lse_triton(x, samples, bandwidth)
            return m.double(), s.double()

        return launch(
            "parzen_lse", x.device, triton_path, lambda: parzen_lse_torch(x, samples, bandwidth)
        )
    return parzen_lse_torch(x, samples, bandwidth)


def parzen_lse_torch(
    x: torch.Tensor, samples: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`parzen_lse` by torch on any device (the CPU path, float64 input anywhere, and
    the Parzen kernel's torch path); arguments checked by the caller."""
    # Centre both sets on the samples' mean (so ‖x‖² + ‖y‖² − 2x·y does not cancel a large
    # common offset), a GEMM per tile of samples in the working precision (fp32, or float64
    # for float64 input), online LSE merge.
    wide = torch.float64 in (x.dtype, samples.dtype)
    dtype = torch.float64 if wide else torch.float32
    centre = samples.to(torch.float64).mean(dim=0).to(dtype)
    xc = x.to(dtype) - centre
    xx = xc.square().sum(dim=1)
    run_max = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    run_sum = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    scale = 0.5 / bandwidth / bandwidth  # never h² itself: it overflows for h near 1e155
    for start in range(0, samples.shape[0], PARZEN_TILE):
        yc = samples[start : start + PARZEN_TILE].to(dtype) - centre
        dist = (xx[:, None] + yc.square().sum(dim=1)[None, :] - 2.0 * (xc @ yc.T)).clamp_min_(0)
        tile = _lse_torch(dist.mul_(-scale), dim=1)
        run_max, run_sum = merge_pairs(
            torch.stack([run_max, tile.max], 1), torch.stack([run_sum, tile.sum], 1), dim=1
        )
    return run_max, run_sum


def parzen_logpdf(
    x: torch.Tensor, samples: torch.Tensor, bandwidth: float, *, backend: Backend = "auto"
) -> torch.Tensor:
    """Log-density of each query row under a Gaussian KDE of ``samples`` (bandwidth h).

    .. math:: \\log p(x_i) = \\mathrm{LSE}_j\\Big(-\\frac{\\|x_i - y_j\\|^2}{2h^2}\\Big) - \\log M
              - \\frac d2 \\log(2\\pi h^2)

    (Parzen, 1962; the estimator of Breuleux et al. 2011 / Goodfellow et al. 2014 for implicit
    models.) The Triton path streams sample tiles with an online LSE and never materialises the
    n × M distance matrix.

    Args:
        x: (n, d) query rows.
        samples: (M, d) kernel centres.
        bandwidth: h > 0.
        backend: ``auto``, ``triton`` or ``torch``.

    Returns:
        (n,) float64 log-densities.

    Example:
        >>> import torch
        >>> lp = parzen_logpdf(torch.zeros(1, 1), torch.zeros(1, 1), 1.0)
        >>> round(float(lp[0]), 6)   # −½ log 2π
        -0.918939
    """
    m, s = parzen_lse(x, samples, bandwidth, backend=backend)
    d, count = x.shape[1], samples.shape[0]
    return m + torch.log(s) - math.log(count) - 0.5 * d * (_LOG_2PI + 2.0 * math.log(bandwidth))


# ---------------------------------------------------------------------------------------------
# the Triton kernels' checks (shardeval.kernels._checking)


def _whitened_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str
) -> _checking.Inputs:
    d = s.d
    a = _checking.randn((d, 2 * d), seed + 1, dev, torch.float64)
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    # Eigenvalues in about [0.5, 3.5]: a well-conditioned covariance, as the pipeline sends
    # to fp32 products (worse ones take float64 there).
    chol = torch.linalg.cholesky(a @ a.T / (2 * d) + 0.5 * eye)
    return {
        "x": _checking.normal_rows(s.rows, d, dtype, dev, seed, 3.0),
        "mean": _checking.randn((d,), seed + 2, dev, torch.float64) + 3.0,
        "chol": chol,
        "linv": torch.linalg.solve_triangular(chol, eye, upper=False),
    }


def _whitened_triton(i: _checking.Inputs) -> Any:
    from shardeval.kernels._triton_density import whitened_sq_norm_triton

    return whitened_sq_norm_triton(i["x"], i["mean"], i["linv"]).to(torch.float64)


def _whitened_reference(i: _checking.Inputs) -> Any:
    diff = (i["x"].to(torch.float64) - i["mean"]).T
    z = torch.linalg.solve_triangular(i["chol"], diff, upper=False)
    return (z * z).sum(dim=0)


def _whitened_timed(i: _checking.Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_density import whitened_sq_norm_triton

    x, mean, linv = i["x"], i["mean"], i["linv"]
    return lambda: whitened_sq_norm_triton(x, mean, linv)


WHITENED_SQ_NORM_CHECK = _checking.declare(
    _checking.KernelSpec(
        name="whitened_sq_norm",
        jit="_triton_density._whitened_sq_norm_kernel",
        inputs=_whitened_inputs,
        triton=_whitened_triton,
        torch_path=lambda i: whitened_sq_norm_torch(i["x"], i["mean"], i["linv"]),
        reference=_whitened_reference,
        error=lambda got, want: _checking.scaled(got, want, _checking.max_abs(want)),
        tolerance=_checking.per_dtype(2e-5),
        length=lambda s: s.d,
        # L⁻¹ is lower triangular: d(d+1)/2 multiply-adds per row.
        flops=lambda s: float(s.rows) * s.d * (s.d + 1),
        bytes=lambda s, item: float(s.rows * s.d * item + s.d * s.d * 4 + s.rows * 4),
        peak="fp32",
        timed=_whitened_timed,
        bench=_checking.Shape(50_000, 2048),
    )
)


def _parzen_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str
) -> _checking.Inputs:
    # An offset of 50 against a spread of 1.5: the centring on the samples' mean must work.
    return {
        "x": _checking.normal_rows(s.rows, s.d, dtype, dev, seed, 50.0),
        "y": _checking.normal_rows(s.partner, s.d, dtype, dev, seed + 1, 50.0),
        "h": 0.7 * math.sqrt(s.d),
    }


def _parzen_triton(i: _checking.Inputs) -> Any:
    from shardeval.kernels._triton_density import parzen_lse_triton

    m, s = parzen_lse_triton(i["x"], i["y"], i["h"])
    return m.double(), s.double()


def _parzen_reference(i: _checking.Inputs) -> Any:
    y = i["y"].to(torch.float64)
    centre = y.mean(dim=0)
    yc = y - centre
    yy = (yc * yc).sum(dim=1)
    scale = 0.5 / i["h"] / i["h"]
    maxes, sums = [], []
    for start in range(0, i["x"].shape[0], 4096):
        xc = i["x"][start : start + 4096].to(torch.float64) - centre
        sq = ((xc * xc).sum(dim=1)[:, None] + yy[None, :] - 2.0 * (xc @ yc.T)).clamp_min(0)
        logits = -sq * scale
        top = logits.amax(dim=1)
        maxes.append(top)
        sums.append(torch.exp(logits - top[:, None]).sum(dim=1))
    return torch.cat(maxes), torch.cat(sums)


def _parzen_error(got: Any, want: Any) -> float:
    return _checking.log_space(_checking.lse_value(got), _checking.lse_value(want))


def _parzen_timed(i: _checking.Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_density import parzen_lse_triton

    x, y, h = i["x"], i["y"], i["h"]
    return lambda: parzen_lse_triton(x, y, h)


PARZEN_LSE_CHECK = _checking.declare(
    _checking.KernelSpec(
        name="parzen_lse",
        jit="_triton_density._parzen_lse_kernel",
        inputs=_parzen_inputs,
        triton=_parzen_triton,
        torch_path=lambda i: parzen_lse_torch(i["x"], i["y"], i["h"]),
        reference=_parzen_reference,
        error=_parzen_error,
        tolerance=_checking.per_dtype(2e-5),
        length=lambda s: s.d,
        flops=lambda s: _checking.pair_flops(s) + 6.0 * s.rows * s.partner,
        bytes=lambda s, item: float((s.rows + s.partner) * (s.d + 1) * 4 + 2 * s.rows * 4),
        peak="fp32",
        timed=_parzen_timed,
        bench=_checking.Shape(16_384, 2048, 16_384),
        pair=True,
    )
)
