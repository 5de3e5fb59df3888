"""Neighbours and radius tests of a block pair on any device.

Rows are compared in fp32 where their magnitudes allow (scaled by a power of two where that is
exact), else with float64 products; numpy arrays and tensors the dispatcher keeps on the CPU
take the CPU path of :mod:`shardeval.kernels.distances`, other tensors the Triton kernels
(:mod:`shardeval.kernels._triton_path`), each checked on first use against the CPU path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.kernels import _checking
from shardeval.kernels.distances import reduce_numpy
from shardeval.kernels.pair_types import PairRequest, PairResult, RadiusDecisions, to_numpy

if TYPE_CHECKING:
    import torch


#: fp32 products are taken of a block pair whose largest magnitude lies in
#: [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT) as it is; another is first scaled by a power of two
#: (exact), since its products would overflow fp32 (|x| ≈ 1e19) or lose digits to its
#: subnormals (|x| ≈ 1e-22).
SAFE_EXPONENT = 20


def _exponent(x: Any, y: Any) -> int:
    """e with the largest |value| of both blocks in [2^(e−1), 2^e); 0 when all are zero."""
    amax = max(float(abs(b).max()) if b.shape[0] else 0.0 for b in (x, y))
    return math.frexp(amax)[1] if amax > 0 and math.isfinite(amax) else 0


def decide(x: Any, y: Any, request: PairRequest, diagonal_block: bool, backend: str) -> PairResult:
    """Neighbours and radius tests, in fp32 where the magnitudes allow (scaled by a power of
    two where that is exact), else with float64 products."""
    if _is_fp64(x) or _is_fp64(y):
        return _pair_reduce(x, y, request, diagonal_block, backend)
    x, y = _fp32(x), _fp32(y)
    exponent = _exponent(x, y)
    if -SAFE_EXPONENT <= exponent <= SAFE_EXPONENT:
        return _pair_reduce(x, y, request, diagonal_block, backend)
    # Scaled by 2^-e, squared distances and radii scale by 4^-e, exactly, when no value falls
    # below fp32's normal range on the way; rows of too wide a range take float64 products.
    if not _scales_exactly(x, y, exponent):
        return _pair_reduce(_fp64(x), _fp64(y), request, diagonal_block, backend)
    radii = request.radii
    if radii is not None:
        le, lt, y_le = (np.asarray(r, np.float64) * 4.0**-exponent for r in radii)
        radii = (le, lt, y_le)
    realism = request.realism
    if realism is not None:  # ratios of squared lengths: the same in the scaled unit
        realism = np.asarray(realism, np.float64) * 4.0**-exponent
    result = _pair_reduce(
        _times_power_of_two(x, -exponent),
        _times_power_of_two(y, -exponent),
        replace(request, radii=radii, realism=realism),
        diagonal_block,
        backend,
    )
    if result.knn is not None:
        knn_x, knn_y = result.knn
        result = result._replace(knn=(knn_x * 4.0**exponent, knn_y * 4.0**exponent))
    if result.nearest is not None:
        sq, index = result.nearest
        result = result._replace(nearest=(sq * 4.0**exponent, index))
    return result


def _scales_exactly(x: Any, y: Any, exponent: int) -> bool:
    """Whether every nonzero value times 2^-exponent stays a normal fp32 number (the largest
    becomes < 1; the smallest must stay ≥ 2^-126), so that the scaling loses no bit."""
    smallest = math.inf
    for block in (x, y):
        magnitude = abs(block)
        nonzero = magnitude[magnitude > 0]
        if nonzero.shape[0]:
            smallest = min(smallest, float(nonzero.min()))
    return smallest == math.inf or smallest * 2.0**-exponent >= 2.0**-126


def _times_power_of_two(x: Any, k: int) -> Any:
    """x · 2^k in x's precision, in two steps so that neither factor leaves the fp32 range
    (2^k itself may: k = 140 for rows near 1e-42)."""
    return x * 2.0 ** (k // 2) * 2.0 ** (k - k // 2)


def _fp32(x: Any) -> Any:
    """Rows of any other real dtype (integers, float16) in fp32, the working precision."""
    if isinstance(x, np.ndarray):
        return x if x.dtype == np.float32 else x.astype(np.float32)
    return x if str(x.dtype) == "torch.float32" else x.float()


def _is_fp64(x: Any) -> bool:
    return str(x.dtype) in ("float64", "torch.float64")


def _fp64(x: Any) -> Any:
    return x.astype(np.float64) if isinstance(x, np.ndarray) else x.double()


def _pair_reduce(
    x: Any, y: Any, request: PairRequest, diagonal_block: bool, backend: str
) -> PairResult:
    """:func:`decide` on rows whose products are safe in the working precision."""
    if not isinstance(x, np.ndarray):
        from shardeval.kernels._dispatch import resolve_backend

        chosen = resolve_backend(x, backend)
        if chosen == "triton" and x.dtype != _torch().float64:
            return _decide_triton(x, y, request, diagonal_block)
        # float64 products (--precision fp64), or the torch backend: the CPU path.
        x, y = to_numpy(x), to_numpy(y)
    return reduce_numpy(x, y, request, diagonal_block)


def _decide_triton(x: Any, y: Any, request: PairRequest, diagonal_block: bool) -> PairResult:
    """Neighbours and radius tests of tensors by the Triton kernels, each kernel apart so that
    one that failed its check on this device takes the CPU path alone."""
    from shardeval.kernels._selfcheck import launch
    from shardeval.kernels._triton_path import pair_reduce_triton

    def part(kernel: str, asked: PairRequest) -> PairResult:
        return launch(
            kernel,
            x.device,
            lambda: pair_reduce_triton(x, y, asked, diagonal_block),
            lambda: _pair_reduce(to_numpy(x), to_numpy(y), asked, diagonal_block, "torch"),
        )

    knn = radius = nearest = realism = None
    if request.nearest or request.realism is not None:
        # no kernels of their own: the CPU path, on the rows copied to the host
        host = _pair_reduce(
            to_numpy(x),
            to_numpy(y),
            PairRequest(nearest=request.nearest, realism=request.realism),
            diagonal_block,
            "torch",
        )
        nearest, realism = host.nearest, host.realism
    if request.knn is not None:
        knn = part("pair_knn", replace(request, radii=None, nearest=False, realism=None)).knn
    if request.radii is not None:
        radius = part("pair_radius", replace(request, knn=None, nearest=False, realism=None)).radius
    return PairResult(None, None, knn, radius, nearest, realism)


def _torch() -> Any:
    import torch

    return torch


# ---------------------------------------------------------------------------------------------
# the Triton kernels' checks (shardeval.kernels._checking): fp32 products, exact decisions


#: Neighbours per row in the k-NN checks (PRDC's default k).
KNN_K = 5


def _pair_rows(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int
) -> tuple[Any, Any]:
    y = _checking.normal_rows(s.partner, s.d, dtype, dev, seed + 1, 0.5)
    x = y if s.diagonal else _checking.normal_rows(s.rows, s.d, dtype, dev, seed, 0.5)
    return x, y


def exact_sq_distances_torch(x: Any, y: Any) -> Any:
    """‖x_i − y_j‖² in float64 by one GEMM of the raw rows, on their device.

    Exact for fp16 and bf16 rows (their products have at most 22 significant bits, so float64
    sums of 2,048 of them lose none), and within about 1e-14 relative for fp32 rows of the
    checks' magnitudes: the reference the neighbour and radius kernels are held to.
    """
    import torch

    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    xx, yy = (x64 * x64).sum(dim=1), (y64 * y64).sum(dim=1)
    return (xx[:, None] + yy[None, :] - 2.0 * (x64 @ y64.T)).clamp_min(0)


def _smallest(sq: Any, k: int) -> np.ndarray:
    """Each row's k smallest values, ascending, padded with inf (numpy float64)."""
    import torch

    out = np.full((sq.shape[0], k), np.inf)
    take = min(k, sq.shape[1])
    if take and sq.shape[0]:
        out[:, :take] = torch.topk(sq, take, dim=1, largest=False).values.cpu().numpy()
    return out


def _knn_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str
) -> _checking.Inputs:
    x, y = _pair_rows(s, dtype, dev, seed)
    return {"x": x, "y": y, "diagonal": s.diagonal}


def _knn_request() -> PairRequest:
    return PairRequest(knn=KNN_K)


def _knn_triton(i: _checking.Inputs) -> Any:
    from shardeval.kernels._triton_path import pair_reduce_triton

    return pair_reduce_triton(i["x"], i["y"], _knn_request(), i["diagonal"]).knn


def _knn_torch(i: _checking.Inputs) -> Any:
    x, y = to_numpy(i["x"]), to_numpy(i["y"])
    return decide(x, y, _knn_request(), i["diagonal"], "auto").knn


def _knn_reference(i: _checking.Inputs) -> Any:
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


def _knn_timed(i: _checking.Inputs) -> Callable[[], Any]:
    from shardeval.kernels._triton_pairs import pair_knn_triton

    x, y = i["x"], i["y"]
    return lambda: pair_knn_triton(x, y, KNN_K + 4, False)


def _midpoints(sq: Any, j: int) -> np.ndarray:
    """Per row, a radius between its j-th and (j+1)-th smallest squared distances (0-based):
    a decision that no rounding of the reference can flip, yet close enough to the data for
    the fp32 margins to send some comparisons to float64."""
    import torch

    j = min(j, sq.shape[1] - 1)
    s = torch.topk(sq, min(j + 2, sq.shape[1]), dim=1, largest=False).values  # ascending
    lower = s[:, j]
    upper = s[:, j + 1] if j + 1 < s.shape[1] else lower * (1 + 2.0**-20) + 2.0**-20
    return (0.5 * (lower + upper)).cpu().numpy()


def _radius_inputs(
    s: _checking.Shape, dtype: torch.dtype, dev: torch.device, seed: int, _: str
) -> _checking.Inputs:
    x, y = _pair_rows(_checking.Shape(s.rows, s.d, s.partner, False), dtype, dev, seed)
    sq = exact_sq_distances_torch(x, y)
    radii = (_midpoints(sq, 2), _midpoints(sq, 4), _midpoints(sq.T, 3))
    return {"x": x, "y": y, "radii": radii}


def _radius_request(i: _checking.Inputs) -> PairRequest:
    return PairRequest(radii=i["radii"])


def _radius_triton(i: _checking.Inputs) -> Any:
    from shardeval.kernels._triton_path import pair_reduce_triton

    return pair_reduce_triton(i["x"], i["y"], _radius_request(i), False).radius


def _radius_torch(i: _checking.Inputs) -> Any:
    return decide(to_numpy(i["x"]), to_numpy(i["y"]), _radius_request(i), False, "auto").radius


def _radius_reference(i: _checking.Inputs) -> Any:
    import torch

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


def _radius_timed(i: _checking.Inputs) -> Callable[[], Any]:
    import torch

    from shardeval.kernels._triton_pairs import pair_radius_triton

    x, y = i["x"], i["y"]
    dev = x.device
    x_le, x_lt, y_le = (torch.as_tensor(r, dtype=torch.float64, device=dev) for r in i["radii"])
    margins = (torch.full_like(x_le, 1e-3), torch.full_like(y_le, 1e-3))
    return lambda: pair_radius_triton(x, y, (x_le, x_lt, y_le), margins)


PAIR_KNN_CHECK = _checking.declare(
    _checking.KernelSpec(
        name="pair_knn",
        jit="_triton_pairs._pair_knn_kernel",
        inputs=_knn_inputs,
        triton=_knn_triton,
        torch_path=_knn_torch,
        reference=_knn_reference,
        error=_knn_error,
        tolerance=_checking.per_dtype(1e-10),  # float64 values of the definition, to rounding
        length=lambda s: 1,
        flops=_checking.pair_flops,
        # Each row keeps k + 4 (value, index) pairs per 64-column tile.
        bytes=lambda s, item: float(
            (s.rows + s.partner) * s.d * 4 + s.rows * math.ceil(s.partner / 64) * (KNN_K + 4) * 12
        ),
        peak="fp32",
        timed=_knn_timed,
        bench=_checking.Shape(4096, 2048, 4096),
        pair=True,
        diagonal=True,
    )
)

PAIR_RADIUS_CHECK = _checking.declare(
    _checking.KernelSpec(
        name="pair_radius",
        jit="_triton_pairs._pair_radius_kernel",
        inputs=_radius_inputs,
        triton=_radius_triton,
        torch_path=_radius_torch,
        reference=_radius_reference,
        error=_radius_error,
        tolerance=_checking.per_dtype(0.0),  # exact decisions
        length=lambda s: 1,
        flops=_checking.pair_flops,
        bytes=lambda s, item: float(
            (s.rows + s.partner) * s.d * 4
            + 4 * (2 * s.partner * math.ceil(s.rows / 64) + 3 * s.rows * math.ceil(s.partner / 64))
        ),
        peak="fp32",
        timed=_radius_timed,
        bench=_checking.Shape(4096, 2048, 4096),
        pair=True,
    )
)
