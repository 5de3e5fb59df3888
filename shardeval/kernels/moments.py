"""Per-shard first and second moments: ``x (n, d) -> (n, mean (d,), m2 (d, d))``.

``m2`` is the centred co-moment Σ (x_i − mean)(x_i − mean)ᵀ, never the raw Σ x xᵀ: subtracting
n·mean·meanᵀ from raw sums cancels catastrophically when the mean is large against the spread.

Numerical contract (DESIGN.md): centre on the shard's own mean, accumulate the co-moment with
fp32 IEEE products (fp64 for fp64 input), return float64. The centring uses the corrected
two-pass scheme: shift by the fp32-rounded mean ``c``, then with s = Σ (x_i − c) (float64),

    mean = c + s / n,        m2 = Σ (x_i − c)(x_i − c)ᵀ − s sᵀ / n,

which is exact algebra, so rounding ``c`` costs nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from shardeval.kernels import _checking
from shardeval.kernels._blas import syrk_upper

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from shardeval.kernels._dispatch import Backend

#: Rows centred and added per rank-k update on the CPU path.
SUB_ROWS = 2048

#: Rows whose mean shifts the data before the one-pass Triton co-moment.
SHIFT_ROWS = 1024

#: ``tl.dot`` input precisions of the Triton shard moments: IEEE fp32 products (the numerical
#: contract), or TF32 with error compensation (``tf32x3``) or without (``tf32``) when asked.
DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")


class ShardMoments(NamedTuple):
    """What a shard contributes: row count, float64 mean (d,), float64 co-moment (d, d); numpy
    arrays for numpy input, tensors on the input's device for tensor input."""

    n: int
    mean: Any
    m2: Any


#: Per working precision (bytes per value), the magnitudes, as powers of two, inside which
#: products neither overflow (n·x² below the largest float) nor lose digits as subnormals; a
#: shard outside is scaled into range by a power of two, which is exact.
_SAFE_EXPONENT = {4: 40, 8: 300}


def wide_dtype(dtype: np.dtype) -> bool:
    """Values fp32 cannot hold exactly (float64, integers wider than 16 bits): their products
    are taken in float64. By kind and size, not ``dtype == np.float64``, which is False for
    big-endian float64 (``>f8``) and would round it to fp32."""
    dtype = np.dtype(dtype)
    return (dtype.kind == "f" and dtype.itemsize >= 8) or (
        dtype.kind in "iu" and dtype.itemsize >= 4
    )


def _exponent(low: float, high: float, itemsize: int) -> int:
    """e such that values in [low, high] times 2^e have magnitude about 1, or 0 when they lie
    in the safe range already (or are all zero, or not finite: the caller reports those)."""
    amax = max(abs(low), abs(high))
    if amax == 0.0 or not math.isfinite(amax):
        return 0
    _, exponent = math.frexp(amax)
    return -exponent if abs(exponent) > _SAFE_EXPONENT[itemsize] else 0


def _corrected(n: int, shift: Any, product: Any, col_sum: Any) -> tuple[Any, Any]:
    """The corrected two-pass finish, for numpy arrays and tensors alike (all float64): with
    s = Σ(x − c), mean = c + s/n and m2 = Σ(x − c)(x − c)ᵀ − (s/√n)(s/√n)ᵀ; the outer product
    of one vector with itself is exactly symmetric (s sᵀ/n would not be)."""
    root = col_sum / math.sqrt(n)
    return shift + col_sum / n, product - root[:, None] * root[None, :]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    import torch

    wide = x.dtype in (torch.float64, torch.int32, torch.int64)
    return torch.float64 if wide else torch.float32


def _range_exponent(x: torch.Tensor, cdtype: torch.dtype) -> int:
    import torch

    if x.numel() == 0:
        return 0
    low, high = torch.aminmax(x)
    return _exponent(float(low), float(high), cdtype.itemsize)


def _empty(d: int, device: torch.device) -> ShardMoments:
    import torch

    zeros = torch.zeros(d, dtype=torch.float64, device=device)
    return ShardMoments(0, zeros, torch.zeros(d, d, dtype=torch.float64, device=device))


def shard_moments_reference(x: torch.Tensor) -> ShardMoments:
    """Float64 two-pass reference: the definition, for tests.

    Args:
        x: (n, d) real tensor on any device.

    Returns:
        ShardMoments with float64 ``mean`` and ``m2``.
    """
    import torch

    from shardeval.kernels._dispatch import check_matrix

    check_matrix(x)
    n, d = x.shape
    if n == 0:
        return _empty(d, x.device)
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=0)
    centred = x64 - mean
    m2 = centred.T @ centred
    return ShardMoments(n, mean, 0.5 * (m2 + m2.T))


def shard_moments_torch(x: torch.Tensor) -> ShardMoments:
    """Torch path on any device: fp32 IEEE products, float64 result.

    Computes the full (d, d) product, twice the multiplications of a symmetric rank-k update;
    used on CUDA tensors when the Triton kernel is not chosen.
    """
    import torch

    from shardeval.kernels._dispatch import check_matrix, tf32_matmuls

    check_matrix(x)
    n, d = x.shape
    if n == 0:
        return _empty(d, x.device)
    cdtype = _compute_dtype(x)
    xc = x.to(cdtype)
    shift = xc.mean(dim=0, dtype=torch.float64).to(cdtype)
    centred = xc - shift
    col_sum = centred.sum(dim=0, dtype=torch.float64)
    if centred.is_cuda and cdtype == torch.float32 and tf32_matmuls():
        # The process has TF32 matmuls on (its owner's choice, a global flag that a worker
        # thread must not flip): keep the IEEE-product contract by multiplying in float64.
        centred = centred.to(torch.float64)
    product = (centred.T @ centred).to(torch.float64)
    mean, m2 = _corrected(n, shift.to(torch.float64), product, col_sum)
    return ShardMoments(n, mean, 0.5 * (m2 + m2.T))


def _blas_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, m2) of an (n ≥ 1, d) float32/float64 array by BLAS ``?syrk``, in float64."""
    n, d = values.shape
    shift = values.mean(axis=0, dtype=np.float64).astype(values.dtype)
    col_sum = np.zeros(d)
    upper = np.zeros((d, d), dtype=values.dtype, order="F")
    # Centre and accumulate SUB_ROWS rows at a time: the centred copy stays small whatever the
    # shard size, and C += AᵢᵀAᵢ in the working precision is what one big syrk does internally.
    for start in range(0, n, SUB_ROWS):
        centred = values[start : start + SUB_ROWS] - shift
        col_sum += centred.sum(axis=0, dtype=np.float64)
        # centred.T is (d, rows) Fortran-ordered: syrk reads it without a copy, GIL released.
        syrk_upper(centred.T, upper, beta=1.0)
    product = upper + upper.T  # exact mirror: the strictly-lower part of `upper` is zero
    product.ravel()[:: d + 1] *= 0.5  # the diagonal was doubled; halving is exact
    m2 = product.astype(np.float64)
    return _corrected(n, shift.astype(np.float64), m2, col_sum)


def shard_moments_numpy(x: np.ndarray) -> ShardMoments:
    """CPU path on a numpy array, without torch: BLAS ``?syrk`` computes only the upper
    triangle, half the products of a GEMM.

    Args:
        x: (n, d) real array; float16 and integers up to 16 bits are multiplied in fp32,
            float64 and wider integers in float64 (fp32 cannot hold their digits). A shard
            whose magnitudes would overflow or underflow fp32 products is first scaled by a
            power of two (exact), and the result scaled back.

    Returns:
        ShardMoments with float64 numpy ``mean`` (d,) and ``m2`` (d, d), exactly symmetric.

    Raises:
        ValueError: ``x`` is not 2-D.
        TypeError: ``x`` does not hold real numbers.

    Example:
        >>> import numpy as np
        >>> n, mean, m2 = shard_moments_numpy(np.array([[1.0, 2.0], [3.0, 6.0]], np.float32))
        >>> n, mean.tolist(), m2.tolist()
        (2, [2.0, 4.0], [[2.0, 4.0], [4.0, 8.0]])
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows x features), got shape {x.shape}")
    if x.dtype == np.bool_ or x.dtype.kind not in "iuf":
        raise TypeError(f"x must hold real numbers, got dtype {x.dtype}")
    n, d = x.shape
    if n == 0:
        return ShardMoments(0, np.zeros(d), np.zeros((d, d)))
    values = x.astype(np.float64 if wide_dtype(x.dtype) else np.float32, copy=False)
    exponent = _exponent(float(values.min()), float(values.max()), values.itemsize)
    if exponent:
        # Features of magnitude 1e18 or 1e-25 would overflow or underflow fp32 products:
        # scale by 2^e (exact), compute, and undo the scale in float64 (exact again).
        values = np.ldexp(values, exponent).astype(values.dtype, copy=False)
    mean, m2 = _blas_moments(np.ascontiguousarray(values))
    if exponent:
        mean, m2 = np.ldexp(mean, -exponent), np.ldexp(m2, -2 * exponent)
    return ShardMoments(n, mean, m2)


def shard_moments_blas(x: torch.Tensor) -> ShardMoments:
    """CPU path on a tensor: :func:`shard_moments_numpy` on its values, tensors out.

    Args:
        x: (n, d) real CPU tensor; fp16/bf16 and small integers are multiplied in fp32,
            float64 and wide integers in float64.

    Returns:
        ShardMoments with float64 ``mean`` and ``m2`` (full symmetric matrix).
    """
    import torch

    from shardeval.kernels._dispatch import check_matrix

    check_matrix(x)
    if x.is_cuda:
        raise ValueError("shard_moments_blas takes CPU tensors; use the dispatcher for CUDA")
    values = x.to(_compute_dtype(x)).numpy()
    n, mean, m2 = shard_moments_numpy(values)
    return ShardMoments(n, torch.from_numpy(mean), torch.from_numpy(m2))


def shard_moments_triton(x: torch.Tensor, *, dot_precision: str = "ieee") -> ShardMoments:
    """Triton path (CUDA, or CPU under the interpreter): one fused pass over the rows.

    The shift c is the mean of the first SHIFT_ROWS rows, close enough to the shard mean that
    Σ(x − c)(x − c)ᵀ does not cancel, without a second pass over the shard.

    Args:
        x: (n, d) tensor.
        dot_precision: ``ieee`` fp32 products (default), or ``tf32x3`` (faster on tensor cores;
            error measured in ``benchmarks/shardeval.kernels.py``).
    """
    import torch

    from shardeval.kernels._dispatch import check_matrix
    from shardeval.kernels._triton_moments import shifted_comoment_triton

    check_matrix(x)
    n, d = x.shape
    if n == 0:
        return _empty(d, x.device)
    cdtype = _compute_dtype(x)
    shift = x[:SHIFT_ROWS].to(torch.float64).mean(dim=0).to(cdtype)
    comoment, col_sum = shifted_comoment_triton(x, shift, dot_precision)
    mean, m2 = _corrected(n, shift.to(torch.float64), comoment.to(torch.float64), col_sum)
    return ShardMoments(n, mean, m2)


def shard_moments(
    x: Any, *, backend: Backend = "auto", dot_precision: str = "ieee"
) -> ShardMoments:
    """Row count, mean and centred co-moment of one shard of features.

    .. math::
        \\bar x = \\frac1n \\sum_i x_i, \\qquad M_2 = \\sum_i (x_i - \\bar x)(x_i - \\bar x)^\\top

    Args:
        x: (n, d) features, rows are samples, any real dtype: a numpy array (CPU, no torch
            needed) or a torch tensor on any device.
        backend: ``auto`` (Triton on CUDA, BLAS on CPU), ``triton`` or ``torch``.
        dot_precision: Triton ``tl.dot`` input precision, ``ieee`` (default) or ``tf32x3``.

    Returns:
        ShardMoments(n, mean, m2), float64, of the input's kind (numpy or tensors on ``x``'s
        device).

    Raises:
        ValueError: ``x`` is not 2-D, or the backend cannot run on ``x``'s device.
        TypeError: ``x`` is not real.

    Example:
        >>> import torch
        >>> from shardeval.kernels import shard_moments
        >>> n, mean, m2 = shard_moments(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> n, mean.tolist(), m2.tolist()
        (2, [2.0, 4.0], [[2.0, 4.0], [4.0, 8.0]])
    """
    if dot_precision not in DOT_PRECISIONS:
        # Checked here, not by the launcher: a wrong argument must be an error, never taken
        # for a kernel that fails on this GPU (which falls back to the torch path).
        raise ValueError(
            f"dot_precision must be one of {', '.join(DOT_PRECISIONS)}, got {dot_precision!r}"
        )
    if isinstance(x, np.ndarray):
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"unknown kernel backend {backend!r}")
        if backend != "triton":
            return shard_moments_numpy(x)
        import torch  # the interpreter tests run the Triton kernel on numpy input too

        n, mean, m2 = shard_moments(
            torch.from_numpy(x), backend=backend, dot_precision=dot_precision
        )
        return ShardMoments(n, mean.numpy(), m2.numpy())
    import torch

    from shardeval.kernels._dispatch import check_matrix, resolve_backend

    check_matrix(x)
    chosen = resolve_backend(x, backend)
    if chosen == "torch" and not x.is_cuda:
        return shard_moments_blas(x)
    cdtype = _compute_dtype(x)
    exponent = _range_exponent(x, cdtype)
    if exponent:
        x = torch.ldexp(x.to(cdtype), torch.tensor(exponent, device=x.device))
    if chosen == "triton":
        from shardeval.kernels._selfcheck import launch

        # The torch path of this device, should the kernel fail its check here.
        fallback = shard_moments_torch if x.is_cuda else shard_moments_blas
        result = launch(
            "shard_moments",
            x.device,
            lambda: shard_moments_triton(x, dot_precision=dot_precision),
            lambda: fallback(x),
        )
    else:
        result = shard_moments_torch(x)
    if not exponent:
        return result
    return ShardMoments(
        result.n,
        torch.ldexp(result.mean, torch.tensor(-exponent, device=x.device)),
        torch.ldexp(result.m2, torch.tensor(-2 * exponent, device=x.device)),
    )


# ---------------------------------------------------------------------------------------------
# the Triton kernel's check (shardeval.kernels._checking)


def _check_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str
) -> _checking.Inputs:
    return {"x": _checking.normal_rows(s.rows, s.d, dtype, dev, seed, 3.0)}


def _check_error(got: Any, want: Any) -> float:
    # The mean against its magnitude plus the spread of one row (fp32 rounds the shift at the
    # magnitude), the co-moment against its largest entry (fp32 products round there).
    if got.n != want.n:
        return math.inf
    spread = math.sqrt(max(float(want.m2.diagonal().max()), 0.0) / max(want.n, 1))
    mean = _checking.scaled(got.mean, want.mean, _checking.max_abs(want.mean) + spread)
    return max(mean, _checking.scaled(got.m2, want.m2, _checking.max_abs(want.m2)))


def _check_timed(i: _checking.Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_moments import shifted_comoment_triton

    x = i["x"]
    shift = x[:SHIFT_ROWS].double().mean(dim=0).float()
    return lambda: shifted_comoment_triton(x, shift)


CHECK = _checking.declare(
    _checking.KernelSpec(
        name="shard_moments",
        jit="_triton_moments._shard_moments_kernel",
        inputs=_check_inputs,
        triton=lambda i: shard_moments_triton(i["x"]),
        torch_path=lambda i: shard_moments_torch(i["x"]),
        reference=lambda i: shard_moments_reference(i["x"]),
        error=_check_error,
        tolerance=_checking.per_dtype(2e-6),
        length=lambda s: s.rows,
        # The upper triangle of Σ xxᵀ with its diagonal: n·d(d+1)/2 multiply-adds.
        flops=lambda s: float(s.rows) * s.d * (s.d + 1),
        bytes=lambda s, item: float(s.rows * s.d * item + s.d * s.d * 4 + s.d * 8),
        peak="fp32",
        timed=_check_timed,
        bench=_checking.Shape(50_000, 2048),
    )
)
