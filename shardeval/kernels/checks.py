"""What every Triton kernel must agree with, in one table: :data:`KERNELS`.

For each ``@triton.jit`` kernel of :mod:`shardeval.kernels` an entry says how to make its inputs
at a shape and dtype, how to run it (the Triton path the dispatcher takes, launcher and the torch
steps around it), what the dispatcher runs instead (its torch path), its float64 reference, how
far apart two results are (one normalised error), what error is allowed per input dtype, and its
FLOPs and bytes for a roofline. Two users:

* the first-use check (:mod:`shardeval.kernels._selfcheck`): :func:`first_use_check` runs a
  kernel once per process and device on a small fp32 input against its torch path;
* the GPU acceptance run (``make gpu-check``, ``benchmarks/gpu_check.py``): :func:`run_case`
  at the awkward shapes of :func:`awkward_cases` against the float64 reference, and
  :attr:`KernelSpec.timed` against the roofline.

Tolerances. Every kernel loads its input in whatever dtype it has and converts it on load
(fp16/bf16 to fp32, fp32 stays), and the reference is computed from the same, already rounded,
values in float64. So an input dtype changes the data, not the arithmetic, and the tolerance of
fp16 and bf16 input is that of fp32; the table keeps one entry per dtype so that a kernel that
accumulated in the input's precision would need its own, visible entry. The errors of fp32
accumulation grow with the accumulation length L (rows for the co-moment, d for a dot product,
k for a row's log-sum-exp): the allowed error is the table's value times max(1, log2 L), the
growth of blocked pairwise summation. Under the interpreter, at small shapes, no error came
within a fiftieth of its tolerance, while a 0.1% error in a kernel fails by far (the tests);
the errors at the large shapes on a GPU are still to be measured by the first run.
Kernels whose paths are exact or carry their own rigorous bound take no growth: kernel sums
(float64 products) are compared in units of the bound each result carries, neighbour distances
must equal the float64 definition to rounding, radius decisions must be identical.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from shardeval.kernels._selfcheck import describe

#: Input dtypes the acceptance run covers, by name.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

#: Awkward shapes of the acceptance run: one row, a few, a thousand, one past a power of two
#: (int64 offsets, masked last tiles); features below a tile, one tile, one past it, and the
#: Inception's 2,048.
ROWS = (1, 7, 1000, 65537)
DIMS = (3, 64, 129, 2048)

#: The other block of a block-pair kernel has at most this many rows (65,537 × 1,000 × 2,048
#: pairs already exercise every index path; 65,537² would cost minutes of float64 reference).
PAIR_PARTNER = 1000

#: Neighbours per row in the k-NN checks (PRDC's default k).
KNN_K = 5

#: The first-use check's rows and features: past the largest tile of every launcher (64 rows,
#: 32 or 64 features) and no multiple of 16, so that the check compiles the block configuration
#: real shards use, with masked edges. Under the interpreter, whose tiles stop at 32, 37 does
#: the same at a quarter of the cost.
CHECK_SIZE, CHECK_SIZE_INTERPRETED = 67, 37

#: Seed of the first-use check's inputs.
CHECK_SEED = 20260


@dataclass(frozen=True)
class Shape:
    """Rows and features of a case; ``partner``: the other block's rows for a block-pair
    kernel (0 otherwise); ``diagonal``: the block paired with itself (x is y)."""

    rows: int
    d: int
    partner: int = 0
    diagonal: bool = False

    def label(self) -> str:
        if not self.partner:
            return f"{self.rows}x{self.d}"
        pair = f"{self.rows}x{self.partner}" if not self.diagonal else f"{self.rows} (itself)"
        return f"{pair} d={self.d}"


Inputs = dict[str, Any]


@dataclass(frozen=True)
class KernelSpec:
    """One Triton kernel and everything needed to check and time it.

    Attributes:
        name: the kernel's name in warnings, verdicts and reports.
        jit: ``module.function`` of its ``@triton.jit`` kernel.
        inputs: (shape, dtype, device, seed, variant) → the inputs.
        triton: the Triton path on the inputs.
        torch_path: what the dispatcher runs when the kernel fails its check.
        reference: the float64 reference.
        error: (result, expected) → normalised error (inf when not finite where it should be).
        tolerance: allowed error per input dtype, before growth.
        length: accumulation length L of a shape (1: no growth).
        flops: floating-point operations of one launch at a shape (2 per multiply-add).
        bytes: bytes a launch must move at least (inputs read once, outputs written once).
        peak: which peak bounds its arithmetic: ``fp32`` (CUDA cores) or ``fp64``.
        timed: inputs → a closure launching only the kernel (for the roofline).
        bench: the shape it is timed at.
        pair: a block-pair kernel (shapes have a partner).
        diagonal: it has a diagonal-block mode (checked where rows ≤ the partner limit).
        variants: kernel modes checked separately (the polynomial and RBF kernel sums).
    """

    name: str
    jit: str
    inputs: Callable[[Shape, torch.dtype, torch.device, int, str], Inputs]
    triton: Callable[[Inputs], Any]
    torch_path: Callable[[Inputs], Any]
    reference: Callable[[Inputs], Any]
    error: Callable[[Any, Any], float]
    tolerance: Mapping[str, float]
    length: Callable[[Shape], int]
    flops: Callable[[Shape], float]
    bytes: Callable[[Shape, int], float]
    peak: str
    timed: Callable[[Inputs], Callable[[], Any]]
    bench: Shape
    pair: bool = False
    diagonal: bool = False
    variants: tuple[str, ...] = ("",)

    def allowed(self, shape: Shape, dtype: str) -> float:
        """The error allowed at ``shape`` for input ``dtype``."""
        return self.tolerance[dtype] * max(1.0, math.log2(max(1, self.length(shape))))


# ---------------------------------------------------------------------------------------------
# inputs and comparisons shared by several kernels


def _randn(shape: tuple[int, ...], seed: int, device: torch.device, dtype: Any = None) -> Any:
    """Standard normal values from a seeded generator on ``device`` (nothing crosses the bus)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=dtype or torch.float32)


def _rows(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int, offset: float):
    return (_randn((n, d), seed, device) * 1.5 + offset).to(dtype)


def _max_abs(t: Any) -> float:
    t = torch.as_tensor(t)
    return float(t.abs().max()) if t.numel() else 0.0


def _scaled(got: Any, want: Any, scale: float) -> float:
    """max |got − want| / scale; inf where a value is not finite (or differs in finiteness)."""
    g = torch.as_tensor(got, dtype=torch.float64).cpu()
    w = torch.as_tensor(want, dtype=torch.float64).cpu()
    if g.shape != w.shape:
        return math.inf
    if g.numel() == 0:
        return 0.0
    if not (torch.isfinite(g).all() and torch.isfinite(w).all()):
        return math.inf
    diff = float((g - w).abs().max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _log_space(got: Any, want: Any) -> float:
    """max |Δ| / (1 + |want|): for log-densities and log-sum-exps, whose fp32 error is
    relative to the sum inside the logarithm (so absolute in nats) for small values and
    relative for large ones."""
    g = torch.as_tensor(got, dtype=torch.float64).cpu().reshape(-1)
    w = torch.as_tensor(want, dtype=torch.float64).cpu().reshape(-1)
    if g.shape != w.shape:
        return math.inf
    if g.numel() == 0:
        return 0.0
    if not (torch.isfinite(g).all() and torch.isfinite(w).all()):
        return math.inf
    return float(((g - w).abs() / (1.0 + w.abs())).max())


def _lse_value(pair: Any) -> Any:
    return pair[0] + torch.log(pair[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _itemsize(dtype: str) -> int:
    return torch.empty(0, dtype=DTYPES[dtype]).element_size()


# ---------------------------------------------------------------------------------------------
# shard moments


def _moments_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str) -> Inputs:
    return {"x": _rows(s.rows, s.d, dtype, dev, seed, 3.0)}


def _moments_triton(i: Inputs) -> Any:
    from shardeval.kernels.moments import shard_moments_triton

    return shard_moments_triton(i["x"])


def _moments_torch(i: Inputs) -> Any:
    from shardeval.kernels.moments import shard_moments_torch

    return shard_moments_torch(i["x"])


def _moments_reference(i: Inputs) -> Any:
    from shardeval.kernels.moments import shard_moments_reference

    return shard_moments_reference(i["x"])


def _moments_error(got: Any, want: Any) -> float:
    # The mean against its magnitude plus the spread of one row (fp32 rounds the shift at the
    # magnitude), the co-moment against its largest entry (fp32 products round there).
    if got.n != want.n:
        return math.inf
    spread = math.sqrt(max(float(torch.diagonal(want.m2).max()), 0.0) / max(want.n, 1))
    mean = _scaled(got.mean, want.mean, _max_abs(want.mean) + spread)
    return max(mean, _scaled(got.m2, want.m2, _max_abs(want.m2)))


def _moments_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_moments import shifted_comoment_triton

    x = i["x"]
    shift = x[:1024].to(torch.float64).mean(dim=0).to(torch.float32)
    return lambda: shifted_comoment_triton(x, shift)


# ---------------------------------------------------------------------------------------------
# log-sum-exp: per row, and over everything (with the squares, for ESS)


def _row_lse_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str) -> Inputs:
    # Spread 30: the terms span e^±150, so the running max and its rescaling matter.
    return {"x": (_randn((s.rows, s.d), seed, dev) * 30).to(dtype)}


def _row_lse_triton(i: Inputs) -> Any:
    from shardeval.kernels.lse import logsumexp_rows_triton

    return logsumexp_rows_triton(i["x"])


def _row_lse_torch(i: Inputs) -> Any:
    from shardeval.kernels.lse import _lse_torch

    return _lse_torch(i["x"], 1)


def _row_lse_reference(i: Inputs) -> Any:
    from shardeval.kernels.lse import logsumexp_reference

    return logsumexp_reference(i["x"], 1)


def _same(got: Any, want: Any) -> bool:
    g = torch.as_tensor(got, dtype=torch.float64).cpu()
    return bool(torch.equal(g, torch.as_tensor(want, dtype=torch.float64).cpu()))


def _row_lse_error(got: Any, want: Any) -> float:
    # The max is a value of the input: exact, or the kernel picked the wrong one.
    if not _same(got[0], want[0]):
        return math.inf
    return _log_space(_lse_value(got), _lse_value(want))


def _row_lse_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_lse import row_lse_triton

    x = i["x"]
    return lambda: row_lse_triton(x)


def _flat_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str) -> Inputs:
    return {"x": (_randn((s.rows * s.d,), seed, dev) * 20 - 5).to(dtype)}


def _flat_triton(i: Inputs) -> Any:
    from shardeval.kernels.lse import weight_sums_triton

    return weight_sums_triton(i["x"])


def _flat_torch(i: Inputs) -> Any:
    # weight_stats' torch path is its float64 reference.
    from shardeval.kernels.lse import weight_stats_reference

    w = weight_stats_reference(i["x"])
    return w.max, w.sum, w.sum_sq


_flat_reference = _flat_torch


def _flat_error(got: Any, want: Any) -> float:
    m, s, s2 = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in got)
    wm, ws, ws2 = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in want)
    if not _same(m, wm):  # the max is a value of the input
        return math.inf
    lse = _log_space(m + torch.log(s), wm + torch.log(ws))
    lse2 = _log_space(2 * m + torch.log(s2), 2 * wm + torch.log(ws2))
    return max(lse, lse2)


def _flat_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_lse import flat_stats_triton

    x = i["x"]
    return lambda: flat_stats_triton(x, squares=True)


# ---------------------------------------------------------------------------------------------
# Gaussian log-density: whitened squared norms


def _whitened_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str) -> Inputs:
    d = s.d
    a = _randn((d, 2 * d), seed + 1, dev, torch.float64)
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    # Eigenvalues in about [0.5, 3.5]: a well-conditioned covariance, as the pipeline sends
    # to fp32 products (worse ones take float64 there).
    chol = torch.linalg.cholesky(a @ a.T / (2 * d) + 0.5 * eye)
    return {
        "x": _rows(s.rows, d, dtype, dev, seed, 3.0),
        "mean": _randn((d,), seed + 2, dev, torch.float64) + 3.0,
        "chol": chol,
        "linv": torch.linalg.solve_triangular(chol, eye, upper=False),
    }


def _whitened_triton(i: Inputs) -> Any:
    from shardeval.kernels._triton_density import whitened_sq_norm_triton

    return whitened_sq_norm_triton(i["x"], i["mean"], i["linv"]).to(torch.float64)


def _whitened_torch(i: Inputs) -> Any:
    from shardeval.kernels.density import whitened_sq_norm_torch

    return whitened_sq_norm_torch(i["x"], i["mean"], i["linv"])


def _whitened_reference(i: Inputs) -> Any:
    diff = (i["x"].to(torch.float64) - i["mean"]).T
    z = torch.linalg.solve_triangular(i["chol"], diff, upper=False)
    return (z * z).sum(dim=0)


def _whitened_error(got: Any, want: Any) -> float:
    return _scaled(got, want, _max_abs(want))


def _whitened_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_density import whitened_sq_norm_triton

    x, mean, linv = i["x"], i["mean"], i["linv"]
    return lambda: whitened_sq_norm_triton(x, mean, linv)


# ---------------------------------------------------------------------------------------------
# Parzen window: streamed log-sum-exp over sample tiles


def _parzen_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str) -> Inputs:
    # An offset of 50 against a spread of 1.5: the centring on the samples' mean must work.
    return {
        "x": _rows(s.rows, s.d, dtype, dev, seed, 50.0),
        "y": _rows(s.partner, s.d, dtype, dev, seed + 1, 50.0),
        "h": 0.7 * math.sqrt(s.d),
    }


def _parzen_triton(i: Inputs) -> Any:
    from shardeval.kernels._triton_density import parzen_lse_triton

    m, s = parzen_lse_triton(i["x"], i["y"], i["h"])
    return m.double(), s.double()


def _parzen_torch(i: Inputs) -> Any:
    from shardeval.kernels.density import parzen_lse_torch

    return parzen_lse_torch(i["x"], i["y"], i["h"])


def _parzen_reference(i: Inputs) -> Any:
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
    return _log_space(_lse_value(got), _lse_value(want))


def _parzen_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_density import parzen_lse_triton

    x, y, h = i["x"], i["y"], i["h"]
    return lambda: parzen_lse_triton(x, y, h)


# ---------------------------------------------------------------------------------------------
# kernel sums (KID's polynomial kernel, CMMD's RBF on unit rows): float64 products


class _Sums(NamedTuple):
    total: float
    squares: float
    rows: np.ndarray
    cols: np.ndarray
    diagonal: float


def _sums_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, kind: str) -> Inputs:
    from shardeval.kernels.kernel_sums import PolyKernel, RBFKernel

    y = _rows(s.partner, s.d, dtype, dev, seed + 1, 3.0)
    x = y if s.diagonal else _rows(s.rows, s.d, dtype, dev, seed, 3.1)
    y64 = y.to(torch.float64)
    kernel: PolyKernel | RBFKernel
    if kind == "rbf":
        unit = y64 / y64.norm(dim=1, keepdim=True).clamp_min(1e-300)
        kernel = RBFKernel(10.0, unit.mean(dim=0).cpu().numpy())
    else:  # KID's kernel about the partner's mean, as the pipeline takes it
        kernel = PolyKernel(1.0 / s.d, 1.0, 3, y64.mean(dim=0).cpu().numpy())
    return {"x": x, "y": y, "kernel": kernel, "diagonal": s.diagonal}


def _sums_triton(i: Inputs) -> Any:
    from shardeval.kernels._triton_path import kernel_sums_triton

    return kernel_sums_triton(i["x"], i["y"], i["kernel"], i["diagonal"])


def _sums_torch(i: Inputs) -> Any:
    from shardeval.kernels.pairs import kernel_sums_cpu

    return kernel_sums_cpu(i["x"], i["y"], i["kernel"], i["diagonal"])


def _sums_reference(i: Inputs) -> _Sums:
    """The sums the kernel forms (see :mod:`shardeval.kernels.kernel_sums`), by torch in
    float64 on the inputs' device, one block of rows at a time."""
    from shardeval.kernels.kernel_sums import PolyKernel, centre_of, poly_constants

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
        _scaled(got.rows, want.rows, 1.0),
        _scaled(got.cols, want.cols, 1.0),
    )
    squares = abs(got.squares - want.squares) / max(1e-9 * abs(want.squares), 1e-300)
    return max(sums / bound, squares)


def _sums_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_pairs import pair_sums_triton
    from shardeval.kernels.kernel_sums import centre_of, poly_constants

    kernel = i["kernel"]
    centre = centre_of(kernel.centre, i["x"].shape[1])
    o = torch.as_tensor(centre, dtype=torch.float64, device=i["x"].device)
    a, b = i["x"].to(torch.float64) - o, i["y"].to(torch.float64) - o
    ra, rb = a @ o, b @ o
    _, coeffs = poly_constants(kernel, centre)
    terms = (ra, rb)
    return lambda: pair_sums_triton(a, b, terms, "poly", kernel.gamma, tuple(coeffs), False)


# ---------------------------------------------------------------------------------------------
# neighbours and radius tests: fp32 products, exact decisions


def _pair_rows(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int) -> tuple[Any, Any]:
    y = _rows(s.partner, s.d, dtype, dev, seed + 1, 0.5)
    x = y if s.diagonal else _rows(s.rows, s.d, dtype, dev, seed, 0.5)
    return x, y


def exact_sq_distances_torch(x: Any, y: Any) -> Any:
    """‖x_i − y_j‖² in float64 by one GEMM of the raw rows, on their device.

    Exact for fp16 and bf16 rows (their products have at most 22 significant bits, so float64
    sums of 2,048 of them lose none), and within about 1e-14 relative for fp32 rows of the
    checks' magnitudes: the reference the neighbour and radius kernels are held to.
    """
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    xx, yy = (x64 * x64).sum(dim=1), (y64 * y64).sum(dim=1)
    return (xx[:, None] + yy[None, :] - 2.0 * (x64 @ y64.T)).clamp_min(0)


def _smallest(sq: Any, k: int) -> np.ndarray:
    """Each row's k smallest values, ascending, padded with inf (numpy float64)."""
    out = np.full((sq.shape[0], k), np.inf)
    take = min(k, sq.shape[1])
    if take and sq.shape[0]:
        out[:, :take] = torch.topk(sq, take, dim=1, largest=False).values.cpu().numpy()
    return out


def _knn_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str) -> Inputs:
    x, y = _pair_rows(s, dtype, dev, seed)
    return {"x": x, "y": y, "diagonal": s.diagonal}


def _knn_request() -> Any:
    from shardeval.kernels.pairs import PairRequest

    return PairRequest(knn=KNN_K)


def _knn_triton(i: Inputs) -> Any:
    from shardeval.kernels._triton_path import pair_reduce_triton

    return pair_reduce_triton(i["x"], i["y"], _knn_request(), i["diagonal"]).knn


def _knn_torch(i: Inputs) -> Any:
    from shardeval.kernels.pairs import pair_reduce, to_numpy

    x, y = to_numpy(i["x"]), to_numpy(i["y"])
    return pair_reduce(x, y, _knn_request(), diagonal_block=i["diagonal"]).knn


def _knn_reference(i: Inputs) -> Any:
    sq = exact_sq_distances_torch(i["x"], i["y"])
    if i["diagonal"]:
        sq.fill_diagonal_(math.inf)  # not a neighbour of itself
    return _smallest(sq, KNN_K), _smallest(sq.T, KNN_K)


def _knn_error(got: Any, want: Any) -> float:
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape or not np.array_equal(np.isinf(g), np.isinf(w)):
            return math.inf
        finite = np.isfinite(w)
        if finite.any():
            scale = float(np.abs(w[finite]).max()) or 1.0
            worst = max(worst, float(np.abs(g[finite] - w[finite]).max()) / scale)
    return worst


def _knn_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_pairs import pair_knn_triton

    x, y = i["x"], i["y"]
    return lambda: pair_knn_triton(x, y, KNN_K + 4, False)


def _midpoints(sq: Any, j: int) -> np.ndarray:
    """Per row, a radius between its j-th and (j+1)-th smallest squared distances (0-based):
    a decision that no rounding of the reference can flip, yet close enough to the data for
    the fp32 margins to send some comparisons to float64."""
    j = min(j, sq.shape[1] - 1)
    s = torch.topk(sq, min(j + 2, sq.shape[1]), dim=1, largest=False).values  # ascending
    lower = s[:, j]
    upper = s[:, j + 1] if j + 1 < s.shape[1] else lower * (1 + 2.0**-20) + 2.0**-20
    return (0.5 * (lower + upper)).cpu().numpy()


def _radius_inputs(s: Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str) -> Inputs:
    x, y = _pair_rows(Shape(s.rows, s.d, s.partner, False), dtype, dev, seed)
    sq = exact_sq_distances_torch(x, y)
    radii = (_midpoints(sq, 2), _midpoints(sq, 4), _midpoints(sq.T, 3))
    return {"x": x, "y": y, "radii": radii}


def _radius_request(i: Inputs) -> Any:
    from shardeval.kernels.pairs import PairRequest

    return PairRequest(radii=i["radii"])


def _radius_triton(i: Inputs) -> Any:
    from shardeval.kernels._triton_path import pair_reduce_triton

    return pair_reduce_triton(i["x"], i["y"], _radius_request(i), False).radius


def _radius_torch(i: Inputs) -> Any:
    from shardeval.kernels.pairs import pair_reduce, to_numpy

    return pair_reduce(to_numpy(i["x"]), to_numpy(i["y"]), _radius_request(i)).radius


def _radius_reference(i: Inputs) -> Any:
    from shardeval.kernels.pairs import RadiusDecisions

    sq = exact_sq_distances_torch(i["x"], i["y"])
    x_le, x_lt, y_le = (torch.as_tensor(r, device=sq.device) for r in i["radii"])
    le_x, lt_x, le_y = sq <= x_le[:, None], sq < x_lt[:, None], sq <= y_le[None, :]
    y_within, y_count, x_within, x_cover = (
        t.cpu().numpy() for t in (le_x.any(0), lt_x.sum(0), le_y.any(1), lt_x.any(1))
    )
    return RadiusDecisions(y_within, y_count, x_within, x_cover, 0)


def _radius_error(got: Any, want: Any) -> float:
    """How many decisions differ (counts by how much): exact decisions allow none."""
    wrong = 0
    for g, w in zip(got[:4], want[:4], strict=True):
        g, w = np.asarray(g, np.int64), np.asarray(w, np.int64)
        if g.shape != w.shape:
            return math.inf
        wrong += int(np.abs(g - w).sum())
    return float(wrong)


def _radius_timed(i: Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_pairs import pair_radius_triton

    x, y = i["x"], i["y"]
    dev = x.device
    x_le, x_lt, y_le = (torch.as_tensor(r, dtype=torch.float64, device=dev) for r in i["radii"])
    margins = (torch.full_like(x_le, 1e-3), torch.full_like(y_le, 1e-3))
    return lambda: pair_radius_triton(x, y, (x_le, x_lt, y_le), margins)


# ---------------------------------------------------------------------------------------------
# the table


def _per_dtype(value: float) -> dict[str, float]:
    """One tolerance for every input dtype (the kernels convert on load: see the module)."""
    return dict.fromkeys(DTYPES, value)


def _pair_flops(s: Shape) -> float:
    return 2.0 * s.rows * s.partner * s.d


KERNELS: tuple[KernelSpec, ...] = (
    KernelSpec(
        name="shard_moments",
        jit="_triton_moments._shard_moments_kernel",
        inputs=_moments_inputs,
        triton=_moments_triton,
        torch_path=_moments_torch,
        reference=_moments_reference,
        error=_moments_error,
        tolerance=_per_dtype(2e-6),
        length=lambda s: s.rows,
        # The upper triangle of Σ xxᵀ with its diagonal: n·d(d+1)/2 multiply-adds.
        flops=lambda s: float(s.rows) * s.d * (s.d + 1),
        bytes=lambda s, item: float(s.rows * s.d * item + s.d * s.d * 4 + s.d * 8),
        peak="fp32",
        timed=_moments_timed,
        bench=Shape(50_000, 2048),
    ),
    KernelSpec(
        name="row_lse",
        jit="_triton_lse._row_lse_kernel",
        inputs=_row_lse_inputs,
        triton=_row_lse_triton,
        torch_path=_row_lse_torch,
        reference=_row_lse_reference,
        error=_row_lse_error,
        tolerance=_per_dtype(2e-6),
        length=lambda s: s.d,
        flops=lambda s: 4.0 * s.rows * s.d,  # max, subtract, exp, add per value
        bytes=lambda s, item: float(s.rows * s.d * item + 2 * s.rows * 4),
        peak="fp32",
        timed=_row_lse_timed,
        bench=Shape(1_000_000, 64),
    ),
    KernelSpec(
        name="flat_stats",
        jit="_triton_lse._flat_stats_kernel",
        inputs=_flat_inputs,
        triton=_flat_triton,
        torch_path=_flat_torch,
        reference=_flat_reference,
        error=_flat_error,
        tolerance=_per_dtype(2e-6),
        length=lambda s: s.rows * s.d,
        flops=lambda s: 8.0 * s.rows * s.d,  # a running pair and its square
        bytes=lambda s, item: float(s.rows * s.d * item),
        peak="fp32",
        timed=_flat_timed,
        bench=Shape(10_000_000, 1),
    ),
    KernelSpec(
        name="whitened_sq_norm",
        jit="_triton_density._whitened_sq_norm_kernel",
        inputs=_whitened_inputs,
        triton=_whitened_triton,
        torch_path=_whitened_torch,
        reference=_whitened_reference,
        error=_whitened_error,
        tolerance=_per_dtype(2e-5),
        length=lambda s: s.d,
        # L⁻¹ is lower triangular: d(d+1)/2 multiply-adds per row.
        flops=lambda s: float(s.rows) * s.d * (s.d + 1),
        bytes=lambda s, item: float(s.rows * s.d * item + s.d * s.d * 4 + s.rows * 4),
        peak="fp32",
        timed=_whitened_timed,
        bench=Shape(50_000, 2048),
    ),
    KernelSpec(
        name="parzen_lse",
        jit="_triton_density._parzen_lse_kernel",
        inputs=_parzen_inputs,
        triton=_parzen_triton,
        torch_path=_parzen_torch,
        reference=_parzen_reference,
        error=_parzen_error,
        tolerance=_per_dtype(2e-5),
        length=lambda s: s.d,
        flops=lambda s: _pair_flops(s) + 6.0 * s.rows * s.partner,
        bytes=lambda s, item: float((s.rows + s.partner) * (s.d + 1) * 4 + 2 * s.rows * 4),
        peak="fp32",
        timed=_parzen_timed,
        bench=Shape(16_384, 2048, 16_384),
        pair=True,
    ),
    KernelSpec(
        name="kernel_sums",
        jit="_triton_pairs._kernel_sums_kernel",
        inputs=_sums_inputs,
        triton=_sums_triton,
        torch_path=_sums_torch,
        reference=_sums_reference,
        error=_sums_error,
        tolerance=_per_dtype(2.0),  # units of the result's own rigorous bound
        length=lambda s: 1,
        flops=_pair_flops,  # float64 products
        bytes=lambda s, item: float((s.rows + s.partner) * (s.d + 1) * 8),
        peak="fp64",
        timed=_sums_timed,
        bench=Shape(4096, 2048, 4096),
        pair=True,
        diagonal=True,
        variants=("poly", "rbf"),
    ),
    KernelSpec(
        name="pair_knn",
        jit="_triton_pairs._pair_knn_kernel",
        inputs=_knn_inputs,
        triton=_knn_triton,
        torch_path=_knn_torch,
        reference=_knn_reference,
        error=_knn_error,
        tolerance=_per_dtype(1e-10),  # float64 values of the definition, to rounding
        length=lambda s: 1,
        flops=_pair_flops,
        # Each row keeps k + 4 (value, index) pairs per 64-column tile.
        bytes=lambda s, item: float(
            (s.rows + s.partner) * s.d * 4 + s.rows * math.ceil(s.partner / 64) * (KNN_K + 4) * 12
        ),
        peak="fp32",
        timed=_knn_timed,
        bench=Shape(4096, 2048, 4096),
        pair=True,
        diagonal=True,
    ),
    KernelSpec(
        name="pair_radius",
        jit="_triton_pairs._pair_radius_kernel",
        inputs=_radius_inputs,
        triton=_radius_triton,
        torch_path=_radius_torch,
        reference=_radius_reference,
        error=_radius_error,
        tolerance=_per_dtype(0.0),  # exact decisions
        length=lambda s: 1,
        flops=_pair_flops,
        bytes=lambda s, item: float(
            (s.rows + s.partner) * s.d * 4
            + 4 * (2 * s.partner * math.ceil(s.rows / 64) + 3 * s.rows * math.ceil(s.partner / 64))
        ),
        peak="fp32",
        timed=_radius_timed,
        bench=Shape(4096, 2048, 4096),
        pair=True,
    ),
)

KERNELS_BY_NAME: dict[str, KernelSpec] = {spec.name: spec for spec in KERNELS}


def spec(name: str) -> KernelSpec:
    """The entry of kernel ``name``.

    Raises:
        KeyError: no such kernel (the message lists them).
    """
    try:
        return KERNELS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no Triton kernel {name!r}; known: {', '.join(KERNELS_BY_NAME)}") from None


# ---------------------------------------------------------------------------------------------
# running a case


@dataclass(frozen=True)
class Outcome:
    """One kernel at one shape, dtype and variant, against the reference or its torch path.

    Attributes:
        failure: empty when it passed; else what went wrong, in one line.
        error: the normalised error (None when the kernel did not run).
        tolerance: what the error was allowed.
        seconds: wall time of the Triton call (compilation included on a first call).
    """

    kernel: str
    variant: str
    shape: Shape
    dtype: str
    error: float | None
    tolerance: float
    failure: str = ""
    seconds: float = 0.0
    against: str = "reference"

    @property
    def ok(self) -> bool:
        return not self.failure

    def label(self) -> str:
        name = f"{self.kernel}[{self.variant}]" if self.variant else self.kernel
        return f"{name} {self.shape.label()} {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "variant": self.variant,
            "rows": self.shape.rows,
            "d": self.shape.d,
            "partner": self.shape.partner,
            "diagonal": self.shape.diagonal,
            "dtype": self.dtype,
            "error": self.error,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "failure": self.failure,
            "seconds": self.seconds,
            "against": self.against,
        }


def run_case(
    kernel: KernelSpec,
    shape: Shape,
    dtype: str,
    device: torch.device | str,
    *,
    variant: str = "",
    against: str = "reference",
    seed: int = 0,
    slack: float = 1.0,
) -> Outcome:
    """Run ``kernel`` at ``shape`` and compare it with its float64 reference (``against=
    "reference"``) or with its torch path (``"torch"``).

    Never raises for the kernel's own failures: a compile or launch error, a non-finite result
    or an error beyond ``slack`` × the allowed one is an :class:`Outcome` whose ``failure``
    names it. Running out of device memory propagates (it says nothing about the kernel).
    """
    if against not in ("reference", "torch"):
        raise ValueError(f"against must be 'reference' or 'torch', got {against!r}")
    device = torch.device(device)
    allowed = slack * kernel.allowed(shape, dtype)
    inputs = kernel.inputs(shape, DTYPES[dtype], device, seed, variant)
    start = time.perf_counter()
    try:
        got = kernel.triton(inputs)
        _sync(device)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # any failure of the kernel: compile, PTX, launch, assertion
        seconds = time.perf_counter() - start
        return Outcome(
            kernel.name,
            variant,
            shape,
            dtype,
            None,
            allowed,
            f"did not compile or run: {describe(err)}",
            seconds,
            against,
        )
    seconds = time.perf_counter() - start
    want = kernel.reference(inputs) if against == "reference" else kernel.torch_path(inputs)
    error = float(kernel.error(got, want))
    failure = ""
    if not error <= allowed:  # NaN and inf fail too
        what = "the float64 reference" if against == "reference" else "its torch path"
        failure = f"disagrees with {what}: error {error:.3g} > tolerance {allowed:.3g}"
    return Outcome(kernel.name, variant, shape, dtype, error, allowed, failure, seconds, against)


def awkward_shape(kernel: KernelSpec, rows: int, d: int) -> Shape:
    """The shape a kernel is checked at for ``rows`` and ``d``: a block-pair kernel pairs the
    rows with at most :data:`PAIR_PARTNER` others, with themselves where they are no more
    (and the kernel has a diagonal mode)."""
    if not kernel.pair:
        return Shape(rows, d)
    partner = min(rows, PAIR_PARTNER)
    return Shape(rows, d, partner, kernel.diagonal and rows <= PAIR_PARTNER)


@dataclass(frozen=True)
class Case:
    """One kernel, variant, shape and dtype to check."""

    kernel: KernelSpec = field(repr=False)
    variant: str
    shape: Shape
    dtype: str


def awkward_cases(
    kernels: tuple[KernelSpec, ...] = KERNELS,
    rows: tuple[int, ...] = ROWS,
    dims: tuple[int, ...] = DIMS,
    dtypes: tuple[str, ...] = tuple(DTYPES),
) -> Iterator[Case]:
    """Every kernel × variant × rows × d × dtype, kernel by kernel."""
    for kernel in kernels:
        for variant in kernel.variants:
            for n in rows:
                for d in dims:
                    for dtype in dtypes:
                        yield Case(kernel, variant, awkward_shape(kernel, n, d), dtype)


def first_use_check(name: str, device: torch.device) -> Any:
    """The first-use check of kernel ``name`` on ``device``: :data:`CHECK_SIZE` rows and
    features in fp32 (partner blocks 6 rows fewer), every variant (and the diagonal mode of a
    block-pair kernel that has one), against its torch path, allowing twice the kernel's
    tolerance (both paths are within it of the exact values).

    Returns:
        :class:`shardeval.kernels._selfcheck.Verdict`.
    """
    from shardeval.kernels._dispatch import triton_interpreted
    from shardeval.kernels._selfcheck import Verdict

    kernel = spec(name)
    size = CHECK_SIZE_INTERPRETED if triton_interpreted() else CHECK_SIZE
    shapes = [Shape(size, size, size - 6 if kernel.pair else 0)]
    if kernel.diagonal:
        shapes.append(Shape(size, size, size, True))
    worst: tuple[float, float] = (0.0, 0.0)
    for shape in shapes:
        for variant in kernel.variants:
            outcome = run_case(
                kernel,
                shape,
                "fp32",
                device,
                variant=variant,
                against="torch",
                seed=CHECK_SEED,
                slack=2.0,
            )
            if not outcome.ok:
                return Verdict(
                    False,
                    f"{outcome.failure} (at {outcome.label()})",
                    outcome.error,
                    outcome.tolerance,
                )
            if outcome.error is not None and outcome.error >= worst[0]:
                worst = (outcome.error, outcome.tolerance)
    return Verdict(True, "", worst[0], worst[1])
