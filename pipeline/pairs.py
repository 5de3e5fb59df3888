"""The block-pair engine: sample metrics that sum, or take order statistics, over pairs of rows.

Two feature sets (or one set with itself) are cut into row blocks; each (i, j) block pair is a
task that reads its two blocks, reduces them with :func:`kernels.pairs.pair_reduce` (one product
X Yᵀ per column tile serves every statistic asked for), and returns a small state; the states
merge like shard states (a chain on one machine, a tree on a cluster). A set against itself runs
only i ≤ j. No N × N matrix exists: a task holds two blocks and a column tile of their product.

The states hold per-row arrays over the whole set (kernel row sums, the k nearest squared
distances, the outcome of radius tests), so they are O(N), not O(N²), and merge by addition,
by elementwise or, or by keeping the k smallest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.engine import Engine, Progress
from pipeline.errors import ShapeError
from pipeline.reduce import SHARD_PREFIX, sizeof_fields
from pipeline.sources import FeatureSource
from pipeline.summaries import check_nonfinite, count_finite

#: Target bytes of one row block: two blocks and a column tile of their product per task.
BLOCK_BYTES = 32 * 2**20


class RowBlocks:
    """A feature set cut into row blocks that a task reads by index.

    Deliberately not a dataclass: ``dask.delayed`` looks inside dataclass arguments, and would
    make the source's dask array a dependency of every task that gets the blocks, so each
    task would wait for (and a cluster would ship) the whole set. A plain object is passed
    as it is, and each task reads only its own blocks.

    Attributes:
        source: the opened store.
        bounds: (start, stop) rows of each block.
        precision: ``fp32`` (float32 products; float64 and wide-integer data stay float64) or
            ``fp64`` (every block upcast to float64).
    """

    __slots__ = ("bounds", "precision", "source")

    def __init__(
        self, source: FeatureSource, bounds: tuple[tuple[int, int], ...], precision: str = "fp32"
    ) -> None:
        self.source, self.bounds, self.precision = source, bounds, precision

    @property
    def n(self) -> int:
        return self.source.n

    def read(self, b: int) -> np.ndarray:
        start, stop = self.bounds[b]
        reader = self.source.reader
        if reader is not None:
            block = reader[start:stop]
        else:  # a computed source (benchmarks, tests): its dask array's rows
            block = np.asarray(self.source.array[start:stop].compute(scheduler="sync"))
        wide = block.dtype == np.float64 or (block.dtype.kind in "iu" and block.dtype.itemsize >= 4)
        dtype = np.float64 if self.precision == "fp64" or wide else np.float32
        return np.ascontiguousarray(block, dtype=dtype)


def row_blocks(
    source: FeatureSource, rows: int | None = None, precision: str = "fp32"
) -> RowBlocks:
    """Cut ``source`` into blocks of ``rows`` rows (default: about 32 MiB each)."""
    if rows is None:
        rows = max(256, BLOCK_BYTES // (4 * max(1, source.d)))
    rows = max(1, min(rows, source.n))
    bounds = tuple((s, min(s + rows, source.n)) for s in range(0, source.n, rows))
    return RowBlocks(source, bounds, precision)


def shard_blocks(source: FeatureSource, precision: str = "fp32") -> RowBlocks:
    """The source's own shards as blocks (whole stored chunks; ``--shard-rows`` sets them)."""
    stops = np.cumsum(source.array.chunks[0]).tolist()
    starts = [0, *stops[:-1]]
    return RowBlocks(source, tuple(zip(starts, stops, strict=True)), precision)


def check_finite(sources: Sequence[FeatureSource], engine: Engine, unit_rows: bool = False) -> None:
    """Pair metrics need every row: a cheap pass finds non-finite rows before any pair runs,
    and, for a kernel on rows scaled to unit norm (``unit_rows``), rows of zeros.

    Raises:
        NonFiniteError: naming the store, how many rows and the first of them.
        ZeroRowError: likewise, for rows of zeros.
    """
    from pipeline.errors import ZeroRowError
    from pipeline.reduce import shard_tasks
    from pipeline.summaries import zero_rows

    groups = [shard_tasks(s, count_finite) for s in sources]
    if unit_rows:
        groups += [shard_tasks(s, zero_rows) for s in sources]
    states = engine.reduce(groups)
    counts, zero_counts = states[: len(sources)], states[len(sources) :]
    for source, count in zip(sources, counts, strict=True):
        check_nonfinite(source.location, count.nonfinite, "error")
    for source, zeros in zip(sources, zero_counts, strict=False):  # empty unless unit_rows
        if zeros.count:
            raise ZeroRowError(
                f"{source.location!r} has {zeros.count:,} row(s) of zeros (first at row "
                f"{zeros.first[0]}): the kernel scales each row to unit norm, which a zero row "
                "does not have; remove them"
            )


def same_store(a: FeatureSource, b: FeatureSource) -> bool:
    """Whether two sources are one store (then a metric compares a set with itself)."""
    import os

    def key(s: FeatureSource) -> tuple[str, str]:
        where = s.location if "://" in s.location else os.path.realpath(s.location)
        return where, s.name

    return key(a) == key(b)


# ---------------------------------------------------------------------------------------------
# states


@dataclass(frozen=True, eq=False)
class SetSums:
    """Kernel sums within one set over ordered pairs i ≠ j: the total, the sum of squares, each
    row's sum, and the diagonal Σ_i k(x_i, x_i) apart."""

    total: float
    squares: float
    diagonal: float
    rows: np.ndarray

    def merge(self, other: SetSums) -> SetSums:
        return SetSums(
            self.total + other.total,
            self.squares + other.squares,
            self.diagonal + other.diagonal,
            self.rows + other.rows,
        )


@dataclass(frozen=True, eq=False)
class CrossSums:
    """Kernel sums between two sets over all pairs: the total, the sum of squares, each row's
    sum over the other set (``rows_x`` (N_x,), ``rows_y`` (N_y,))."""

    total: float
    squares: float
    rows_x: np.ndarray
    rows_y: np.ndarray

    def merge(self, other: CrossSums) -> CrossSums:
        return CrossSums(
            self.total + other.total,
            self.squares + other.squares,
            self.rows_x + other.rows_x,
            self.rows_y + other.rows_y,
        )


@dataclass(frozen=True, eq=False)
class Neighbours:
    """Per row of one set, the k smallest exact squared distances to the other rows (N, k)."""

    sq: np.ndarray

    def merge(self, other: Neighbours) -> Neighbours:
        k = self.sq.shape[1]
        return Neighbours(np.sort(np.concatenate([self.sq, other.sq], axis=1), axis=1)[:, :k])


@dataclass(frozen=True, eq=False)
class Decisions:
    """Radius tests between a reference set X (N) and a generated set Y (M), per row.

    Attributes:
        y_within: (M,) some x_i with ‖x_i − y‖ ≤ r_i (precision).
        y_count: (M,) how many x_i with ‖x_i − y‖ < r'_i (density).
        x_within: (N,) some y_j with ‖x − y_j‖ ≤ s_j (recall).
        x_covered: (N,) some y_j with ‖x − y_j‖ < r'_x (coverage).
        uncertain: comparisons re-decided in float64.
    """

    y_within: np.ndarray
    y_count: np.ndarray
    x_within: np.ndarray
    x_covered: np.ndarray
    uncertain: int

    def merge(self, other: Decisions) -> Decisions:
        return Decisions(
            self.y_within | other.y_within,
            self.y_count + other.y_count,
            self.x_within | other.x_within,
            self.x_covered | other.x_covered,
            self.uncertain + other.uncertain,
        )


def _merge_optional(a: Any, b: Any) -> Any:
    return None if a is None else a.merge(b)


@dataclass(frozen=True, eq=False)
class SelfState:
    """What the pairs of one set with itself reduce to (None where not asked)."""

    poly: SetSums | None = None
    rbf: SetSums | None = None
    knn: Neighbours | None = None

    def merge(self, other: SelfState) -> SelfState:
        return SelfState(
            _merge_optional(self.poly, other.poly),
            _merge_optional(self.rbf, other.rbf),
            _merge_optional(self.knn, other.knn),
        )


@dataclass(frozen=True, eq=False)
class CrossState:
    """What the pairs of two sets reduce to (None where not asked)."""

    poly: CrossSums | None = None
    rbf: CrossSums | None = None
    radius: Decisions | None = None

    def merge(self, other: CrossState) -> CrossState:
        return CrossState(
            _merge_optional(self.poly, other.poly),
            _merge_optional(self.rbf, other.rbf),
            _merge_optional(self.radius, other.radius),
        )


# ---------------------------------------------------------------------------------------------
# what to compute, and the pair tasks


@dataclass(frozen=True, eq=False)
class PairPlan:
    """The statistics wanted from the pairs.

    Attributes:
        poly: (γ, c, degree) for polynomial-kernel sums (KID), or None.
        rbf: σ for RBF complement sums on unit rows (CMMD), or None.
        knn: k for the k nearest squared distances within a set (PRDC radii), or None.
        radii: squared radii for the cross pass (PRDC): x_le (N,), x_lt (N,), y_le (M,).
        device: where the pair kernels run (``auto``: a worker's GPU if it has one).
        backend: ``auto`` (Triton on a GPU, the BLAS path on a CPU), ``triton`` or ``torch``.
    """

    poly: tuple[float, float, int] | None = None
    rbf: float | None = None
    knn: int | None = None
    radii: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)
    device: str = "cpu"
    backend: str = "auto"

    def request(self, cross: bool, bx: tuple[int, int], by: tuple[int, int]) -> Any:
        from kernels.pairs import PairRequest

        radii = None
        if cross and self.radii is not None:
            x_le, x_lt, y_le = self.radii
            radii = (x_le[slice(*bx)], x_lt[slice(*bx)], y_le[slice(*by)])
        return PairRequest(
            poly=self.poly, rbf=self.rbf, knn=None if cross else self.knn, radii=radii
        )


def _reduce(x: np.ndarray, y: np.ndarray, plan: PairPlan, request: Any, diagonal: bool) -> Any:
    """One block pair through the kernels, on the worker's device."""
    from kernels.pairs import pair_reduce
    from pipeline.summaries import to_tensor, worker_device

    if worker_device(plan.device) == "cpu" and plan.backend != "triton":
        return pair_reduce(x, y, request, diagonal_block=diagonal)
    xt = to_tensor(x, plan.device)
    yt = xt if y is x else to_tensor(y, plan.device)
    return pair_reduce(xt, yt, request, diagonal_block=diagonal, backend=plan.backend)


def _self_pair(blocks: RowBlocks, i: int, j: int, plan: PairPlan) -> SelfState:
    x = blocks.read(i)
    y = x if i == j else blocks.read(j)
    bx, by = blocks.bounds[i], blocks.bounds[j]
    result = _reduce(x, y, plan, plan.request(False, bx, by), i == j)
    n = blocks.n

    def sums(s: Any) -> SetSums | None:
        if s is None:
            return None
        rows = np.zeros(n)
        rows[slice(*bx)] += s.rows
        if i == j:
            return SetSums(s.total, s.squares, s.diagonal, rows)
        # Off the diagonal a block pair stands for both (i, j) and (j, i).
        rows[slice(*by)] += s.cols
        return SetSums(2.0 * s.total, 2.0 * s.squares, 0.0, rows)

    knn = None
    if result.knn is not None and plan.knn:
        sq = np.full((n, plan.knn), np.inf)
        sq[slice(*bx)] = result.knn[0]
        if i != j:
            sq[slice(*by)] = result.knn[1]  # the blocks are disjoint
        knn = Neighbours(sq)
    return SelfState(sums(result.poly), sums(result.rbf), knn)


def _cross_pair(a: RowBlocks, i: int, b: RowBlocks, j: int, plan: PairPlan) -> CrossState:
    x, y = a.read(i), b.read(j)
    bx, by = a.bounds[i], b.bounds[j]
    result = _reduce(x, y, plan, plan.request(True, bx, by), False)

    def sums(s: Any) -> CrossSums | None:
        if s is None:
            return None
        rows_x, rows_y = np.zeros(a.n), np.zeros(b.n)
        rows_x[slice(*bx)] = s.rows
        rows_y[slice(*by)] = s.cols
        return CrossSums(s.total, s.squares, rows_x, rows_y)

    radius = None
    if result.radius is not None:
        r = result.radius
        y_within, y_count = np.zeros(b.n, bool), np.zeros(b.n, np.int64)
        x_within, x_covered = np.zeros(a.n, bool), np.zeros(a.n, bool)
        y_within[slice(*by)], y_count[slice(*by)] = r.y_within_x_radius, r.y_count_x_radius
        x_within[slice(*bx)], x_covered[slice(*bx)] = r.x_within_y_radius, r.x_covered
        radius = Decisions(y_within, y_count, x_within, x_covered, r.uncertain)
    return CrossState(sums(result.poly), sums(result.rbf), radius)


def _tasks(a: RowBlocks, b: RowBlocks | None, plan: PairPlan, name: str) -> list[Any]:
    from dask.base import tokenize
    from dask.delayed import delayed

    token = tokenize(
        a.source.location,
        a.bounds,
        b.source.location if b else "",
        plan.poly,
        plan.rbf,
        plan.knn,
        a.precision,
        name,
    )
    if b is None:
        return [
            delayed(_self_pair, pure=True)(
                a, i, j, plan, dask_key_name=f"{SHARD_PREFIX}{name}-{token}-{i}-{j}"
            )
            for i in range(len(a.bounds))
            for j in range(i, len(a.bounds))
        ]
    return [
        delayed(_cross_pair, pure=True)(
            a, i, b, j, plan, dask_key_name=f"{SHARD_PREFIX}{name}-{token}-{i}-{j}"
        )
        for i in range(len(a.bounds))
        for j in range(len(b.bounds))
    ]


def self_statistics(
    sets: Sequence[RowBlocks],
    plan: PairPlan,
    *,
    engine: Engine,
    split_every: int | None = None,
    progress: Progress | None = None,
) -> list[SelfState]:
    """Each set against itself (pairs i ≤ j), all sets in one graph."""
    if plan.knn is not None:
        for s in sets:
            if plan.knn >= s.n:
                raise ShapeError(
                    f"{s.source.location!r} has {s.n} rows: k = {plan.knn} nearest neighbours "
                    "need more rows than k"
                )
    from pipeline.summaries import uses_gpu

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
    from pipeline.summaries import uses_gpu

    (state,) = engine.reduce(
        [_tasks(a, b, plan, "cross")],
        split_every=split_every,
        progress=progress,
        gpu=uses_gpu(plan.device),
    )
    return state


def _register_sizes() -> None:
    from dask.sizeof import sizeof

    for state in (SetSums, CrossSums, Neighbours, Decisions, SelfState, CrossState):
        sizeof.register(state)(sizeof_fields)


_register_sizes()
