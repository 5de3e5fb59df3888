"""The block-pair engine: sample metrics that sum, or take order statistics, over pairs of rows.

Two feature sets (or one set with itself) are cut into row blocks. Each task takes one row
block of the first set and streams the other set past it in column chunks, reducing every
(block, chunk) pair with :func:`shardeval.kernels.pairs.pair_reduce` into running per-row arrays
held by the task; it returns one state, and the states merge like shard states (a chain on one
machine, a tree on a cluster). A set against itself takes, for block i, its own pairs and the rows
after it only. No N × N matrix exists: a task holds a block, a chunk and a column tile of their
product.

The states hold per-row arrays over the whole set (kernel row sums, the k nearest squared
distances, the outcome of radius tests), so they are O(N), not O(N²), and merge by addition,
by elementwise or, or by keeping the k smallest. With one task per row block, the merges cost
O(N) per block, so small blocks cost tasks, not N³ (a task per block pair merged N-long arrays
(N/b)² times).

The row blocks are :mod:`shardeval.pipeline.pairwise.row_blocks`, the pass that checks every
row before the pairs :mod:`shardeval.pipeline.pairwise.inspection`, the states
:mod:`shardeval.pipeline.pairwise.pair_states`; this module plans the pairs and makes the
tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import SHARD_PREFIX
from shardeval.pipeline.errors import ShapeError
from shardeval.pipeline.pairwise.inspection import (
    SetInspection,
    inspect_block,
    inspect_sets,
    same_store,
)
from shardeval.pipeline.pairwise.pair_states import (
    CrossState,
    CrossSums,
    Decisions,
    Nearest,
    Neighbours,
    Realism,
    SelfState,
    SetSums,
    k_smallest,
)
from shardeval.pipeline.pairwise.row_blocks import (
    BLOCK_BYTES,
    MAX_ROW_BLOCKS,
    RowBlocks,
    default_block_rows,
    row_blocks,
    shard_blocks,
)

__all__ = [
    "BLOCK_BYTES",
    "MAX_ROW_BLOCKS",
    "CrossState",
    "CrossSums",
    "Decisions",
    "Nearest",
    "Neighbours",
    "PairPlan",
    "Realism",
    "RowBlocks",
    "SelfState",
    "SetInspection",
    "SetSums",
    "cross_statistics",
    "default_block_rows",
    "inspect_block",
    "inspect_sets",
    "row_blocks",
    "same_store",
    "self_statistics",
    "shard_blocks",
]


@dataclass(frozen=True, eq=False)
class PairPlan:
    """The statistics wanted from the pairs.

    Attributes:
        poly: the polynomial kernel and its centre, for kernel sums (KID), or None.
        rbf: the RBF on unit rows and its centre, for complement sums (CMMD), or None.
        knn: k for the k nearest squared distances within a set (PRDC radii), or None.
        radii: squared radii for the cross pass (PRDC): x_le (N,), x_lt (N,), y_le (M,).
        nearest: the cross pass finds each generated row's nearest reference row (its exact
            squared distance and index; the memorization metrics).
        realism: (N,) squared radii of the reference rows that count (0: those that do not)
            for each generated row's largest radius-to-distance ratio in the cross pass
            (the realism score, :func:`shardeval.pipeline.neighbours.prdc.realism_radii`),
            or None.
        device: where the pair kernels run (``auto``: a worker's GPU if it has one).
        backend: ``auto`` (Triton on a GPU, the BLAS path on a CPU), ``triton`` or ``torch``.
        exponent: e ≠ 0: the neighbours and radius tests take every block × 2^-e in float64,
            exactly (see :func:`shardeval.pipeline.neighbours.prdc.distance_exponent`), so
            their squared distances and radii are in units of 4^-e; kernel sums take the
            rows as they are.
        groups: G > 0: the cross pass also records, per row of the first set, which of G
            groups of the second set's rows (:func:`shardeval.pipeline.fid.jackknife.row_groups`
            of their index, seed :data:`~shardeval.pipeline.fid.jackknife.CI_SEED`) fall in its
            strict radius (coverage's jackknife): each column chunk's radius tests run group by
            group; the decisions, exact, are the same. 0: not asked.
    """

    poly: Any = None
    rbf: Any = None
    knn: int | None = None
    radii: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)
    nearest: bool = False
    realism: np.ndarray | None = field(default=None)
    device: str = "cpu"
    backend: str = "auto"
    exponent: int = 0
    groups: int = 0

    def request(self, cross: bool, bx: tuple[int, int], by: tuple[int, int]) -> Any:
        from shardeval.kernels.pairs import PairRequest

        radii = None
        if cross and self.radii is not None:
            x_le, x_lt, y_le = self.radii
            radii = (x_le[slice(*bx)], x_lt[slice(*bx)], y_le[slice(*by)])
        return PairRequest(
            poly=self.poly,
            rbf=self.rbf,
            knn=None if cross else self.knn,
            radii=radii,
            nearest=cross and self.nearest,
            realism=self.realism[slice(*bx)] if cross and self.realism is not None else None,
        )

    def token(self) -> tuple[Any, ...]:
        """What the tasks' keys depend on (the kernels' centres included)."""

        def kernel(k: Any) -> Any:
            return None if k is None else (type(k).__name__, *vars(k).values())

        return (
            kernel(self.poly),
            kernel(self.rbf),
            self.knn,
            self.nearest,
            self.realism is not None,
            self.exponent,
            self.groups,
        )

    def pieces(
        self, bx: tuple[int, int], by: tuple[int, int]
    ) -> list[tuple[Any, np.ndarray | None, int | None]]:
        """The kernel calls of a cross (block, chunk) pair: (request, the chunk's columns or
        None for all, their group or None). With :attr:`groups`, the radius tests run once per
        group of the chunk's columns, and the kernel sums and the nearest rows once over all
        of them (and the realism ratios)."""
        request = self.request(True, bx, by)
        if not self.groups or request.radii is None:
            return [(request, None, None)]
        from shardeval.pipeline.fid.jackknife import CI_SEED, row_groups

        pieces: list[tuple[Any, np.ndarray | None, int | None]] = []
        if (
            request.poly is not None
            or request.rbf is not None
            or request.nearest
            or request.realism is not None
        ):
            pieces.append((replace(request, radii=None), None, None))
        x_le, x_lt, y_le = request.radii
        groups = row_groups(by[0], by[1] - by[0], self.groups, CI_SEED)
        for g in np.unique(groups):
            cols = np.flatnonzero(groups == g)
            radii = (x_le, x_lt, y_le[cols])
            piece = replace(request, poly=None, rbf=None, nearest=False, realism=None, radii=radii)
            pieces.append((piece, cols, int(g)))
        return pieces


def _reduce(x: np.ndarray, y: np.ndarray, plan: PairPlan, request: Any, diagonal: bool) -> Any:
    """One block pair through the kernels, on the worker's device."""
    from shardeval.kernels.pairs import pair_reduce
    from shardeval.pipeline.core.chunks import to_tensor, worker_device

    if plan.exponent and request.decides:
        # Float64 squared distances of rows beyond about 1e154 overflow and below 1e-154
        # underflow: the decisions take the rows × 2^-e (exact, as distance_exponent checked),
        # both sets and every pass alike, so distances and radii compare in one unit.
        plain = replace(plan, exponent=0)
        sums = None
        if request.poly is not None or request.rbf is not None:
            sums = _reduce(
                x,
                y,
                plain,
                replace(request, knn=None, radii=None, nearest=False, realism=None),
                diagonal,
            )
        xs = np.ldexp(x.astype(np.float64), -plan.exponent)
        ys = xs if y is x else np.ldexp(y.astype(np.float64), -plan.exponent)
        decided = _reduce(xs, ys, plain, replace(request, poly=None, rbf=None), diagonal)
        return decided if sums is None else decided._replace(poly=sums.poly, rbf=sums.rbf)

    if worker_device(plan.device) == "cpu" and plan.backend != "triton":
        return pair_reduce(x, y, request, diagonal_block=diagonal)
    xt = to_tensor(x, plan.device)
    yt = xt if y is x else to_tensor(y, plan.device)
    return pair_reduce(xt, yt, request, diagonal_block=diagonal, backend=plan.backend)


class _Sums:
    """A task's running kernel sums over its block pairs (task-local, then frozen)."""

    def __init__(self, n_x: int, n_y: int | None = None) -> None:
        self.rows_x = np.zeros(n_x)
        self.rows_y = self.rows_x if n_y is None else np.zeros(n_y)
        self.total = self.squares = self.diagonal = self.error = self.magnitude = 0.0
        self.additions = -1  # the first pair's total is not an addition

    def add(self, s: Any, bx: tuple[int, int], by: tuple[int, int] | None, weight: float) -> None:
        """One block pair's sums; ``by`` None for a diagonal block (its column sums are its
        row sums); ``weight`` 2 for an off-diagonal pair of one set, which stands for both
        (i, j) and (j, i)."""
        self.rows_x[slice(*bx)] += s.rows
        if by is not None:
            self.rows_y[slice(*by)] += s.cols
        self.total += weight * s.total
        self.squares += weight * s.squares
        self.diagonal += s.diagonal
        self.error += weight * s.error
        self.magnitude += weight * s.magnitude
        self.additions += 1

    def own(self) -> SetSums:
        return SetSums(
            self.total,
            self.squares,
            self.diagonal,
            self.rows_x,
            self.error,
            self.magnitude,
            max(self.additions, 0),
        )

    def cross(self) -> CrossSums:
        return CrossSums(
            self.total,
            self.squares,
            self.rows_x,
            self.rows_y,
            self.error,
            self.magnitude,
            max(self.additions, 0),
        )


def _self_row(blocks: RowBlocks, i: int, plan: PairPlan) -> SelfState:
    """Block i of a set against itself and against every row after it."""
    bx = blocks.bounds[i]
    x = blocks.read(i)
    n = blocks.n
    poly = _Sums(n) if plan.poly is not None else None
    rbf = _Sums(n) if plan.rbf is not None else None
    knn = np.full((n, plan.knn), np.inf) if plan.knn else None
    for by in [bx, *blocks.chunks(bx[1])]:
        diagonal = by == bx
        y = x if diagonal else blocks.read_rows(*by)
        result = _reduce(x, y, plan, plan.request(False, bx, by), diagonal)
        weight = 1.0 if diagonal else 2.0
        for sums, got in ((poly, result.poly), (rbf, result.rbf)):
            if sums is not None:
                sums.add(got, bx, None if diagonal else by, weight)
        if knn is not None and result.knn is not None:
            knn[slice(*bx)] = k_smallest(knn[slice(*bx)], result.knn[0])
            if not diagonal:
                knn[slice(*by)] = k_smallest(knn[slice(*by)], result.knn[1])
    return SelfState(
        poly.own() if poly is not None else None,
        rbf.own() if rbf is not None else None,
        Neighbours(knn) if knn is not None else None,
    )


def _cross_row(a: RowBlocks, i: int, b: RowBlocks, plan: PairPlan) -> CrossState:
    """Block i of one set against every row of the other."""
    bx = a.bounds[i]
    x = a.read(i)
    poly = _Sums(a.n, b.n) if plan.poly is not None else None
    rbf = _Sums(a.n, b.n) if plan.rbf is not None else None
    radius: dict[str, Any] | None = None
    if plan.radii is not None:
        radius = {
            "y_within": np.zeros(b.n, bool),
            "y_count": np.zeros(b.n, np.int64),
            "x_within": np.zeros(a.n, bool),
            "x_covered": np.zeros(a.n, bool),
            "uncertain": 0,
            "x_groups": np.zeros(a.n, np.uint64) if plan.groups else None,
        }
    nearest = Nearest.empty(b.n) if plan.nearest else None
    realism = Realism.empty(b.n) if plan.realism is not None else None
    for by in b.chunks(0):
        y = b.read_rows(*by)
        for request, cols, group in plan.pieces(bx, by):
            result = _reduce(x, y if cols is None else y[cols], plan, request, False)
            for sums, got in ((poly, result.poly), (rbf, result.rbf)):
                if sums is not None and got is not None:
                    sums.add(got, bx, by, 1.0)
            if nearest is not None and result.nearest is not None:
                sq, index = result.nearest  # block i holds the nearest of its rows: in X, bx[0] on
                nearest.sq[slice(*by)], nearest.index[slice(*by)] = sq, index + bx[0]
            if realism is not None and result.realism is not None:
                realism.ratio[slice(*by)] = result.realism  # block i's rows: one chunk each
            if radius is None or result.radius is None:
                continue
            r = result.radius
            at = slice(*by) if cols is None else cols + by[0]
            radius["y_within"][at] |= r.y_within_x_radius
            radius["y_count"][at] += r.y_count_x_radius
            radius["x_within"][slice(*bx)] |= r.x_within_y_radius
            radius["x_covered"][slice(*bx)] |= r.x_covered
            radius["uncertain"] += r.uncertain
            if group is not None:
                bit = np.uint64(1) << np.uint64(group)
                radius["x_groups"][slice(*bx)] |= np.where(r.x_covered, bit, np.uint64(0))
    return CrossState(
        poly.cross() if poly is not None else None,
        rbf.cross() if rbf is not None else None,
        Decisions(**radius) if radius is not None else None,
        nearest,
        realism,
    )


def _tasks(a: RowBlocks, b: RowBlocks | None, plan: PairPlan, name: str) -> list[Any]:
    from dask.base import tokenize
    from dask.delayed import delayed

    token = tokenize(
        a.source.location,
        a.bounds,
        b.source.location if b else "",
        plan.token(),
        a.precision,
        name,
    )
    if b is None:
        return [
            delayed(_self_row, pure=True)(
                a, i, plan, dask_key_name=f"{SHARD_PREFIX}{name}-{token}-{i}"
            )
            for i in range(len(a.bounds))
        ]
    return [
        delayed(_cross_row, pure=True)(
            a, i, b, plan, dask_key_name=f"{SHARD_PREFIX}{name}-{token}-{i}"
        )
        for i in range(len(a.bounds))
    ]


def self_statistics(
    sets: Sequence[RowBlocks],
    plan: PairPlan,
    *,
    engine: Engine,
    split_every: int | None = None,
    progress: Progress | None = None,
) -> list[SelfState]:
    """Each set against itself (block i with itself and the rows after it), all sets in one
    graph."""
    for s in sets:
        if plan.knn is not None and plan.knn >= s.n:
            raise ShapeError(
                f"{s.source.location!r} has {s.n} rows: k = {plan.knn} nearest neighbours "
                "need more rows than k"
            )
    from shardeval.pipeline.core.chunks import uses_gpu

    groups = [_tasks(s, None, plan, "self") for s in sets]
    return engine.reduce(
        groups, split_every=split_every, progress=progress, gpu=uses_gpu(plan.device)
    )


def cross_statistics(
    a: RowBlocks,
    b: RowBlocks,
    plan: PairPlan,
    *,
    engine: Engine,
    split_every: int | None = None,
    progress: Progress | None = None,
) -> CrossState:
    """Every pair of a row of ``a`` with a row of ``b``."""
    from shardeval.pipeline.core.chunks import uses_gpu

    (state,) = engine.reduce(
        [_tasks(a, b, plan, "cross")],
        split_every=split_every,
        progress=progress,
        gpu=uses_gpu(plan.device),
    )
    return state
