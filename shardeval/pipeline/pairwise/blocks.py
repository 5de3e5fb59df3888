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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shardeval.kernels.moments import wide_dtype
from shardeval.pipeline.core.chunks import check_nonfinite, finite_rows, inexact_integer_rows
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import SHARD_PREFIX
from shardeval.pipeline.core.states import (
    Examples,
    Magnitudes,
    NonFiniteRows,
    RowMean,
    examples_of,
    merge_fieldwise,
    state,
)
from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.io.stores import FeatureSource

#: Target bytes of one row block (and of one column chunk streamed past it).
BLOCK_BYTES = 32 * 2**20

#: Row blocks of one set, i.e. tasks of one pass: each task streams the whole other set, so
#: the reads grow with the number of blocks (and every task costs the scheduler about a
#: millisecond). More are refused, naming the smallest block that fits.
MAX_ROW_BLOCKS = 4096

#: Unit roundoff of float64 (the merges' additions).
_U64 = 2.0**-53


def default_block_rows(d: int) -> int:
    """Rows of about :data:`BLOCK_BYTES` of fp32 features (at least 256)."""
    return max(256, BLOCK_BYTES // (4 * max(1, d)))


class RowBlocks:
    """A feature set cut into row blocks that a task reads by index.

    Deliberately not a dataclass: ``dask.delayed`` looks inside dataclass arguments, and would
    make the source's dask array a dependency of every task that gets the blocks, so each
    task would wait for (and a cluster would ship) the whole set. A plain object is passed
    as it is, and each task reads only its own rows.

    Attributes:
        source: the opened store.
        bounds: (start, stop) rows of each block.
        precision: ``fp32`` (float32 products; float64 and wide-integer data stay float64) or
            ``fp64`` (every block upcast to float64).
        chunk_rows: rows per column chunk streamed past a block (about 32 MiB).
    """

    __slots__ = ("bounds", "chunk_rows", "precision", "source")

    def __init__(
        self, source: FeatureSource, bounds: tuple[tuple[int, int], ...], precision: str = "fp32"
    ) -> None:
        self.source, self.bounds, self.precision = source, bounds, precision
        self.chunk_rows = default_block_rows(source.d)

    @property
    def n(self) -> int:
        return self.source.n

    def read(self, b: int) -> np.ndarray:
        """Block ``b``'s rows in their working precision."""
        return self.read_rows(*self.bounds[b])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        reader = self.source.reader
        if reader is not None:
            block = reader[start:stop]
        else:  # a computed source (benchmarks, tests): its dask array's rows
            block = np.asarray(self.source.array[start:stop].compute(scheduler="sync"))
        wide = wide_dtype(block.dtype)  # by kind and size: '>f8' is float64 too
        dtype = np.float64 if self.precision == "fp64" or wide else np.float32
        return np.ascontiguousarray(block, dtype=dtype)

    @property
    def float64(self) -> bool:
        """Whether its blocks are read in float64 (``fp64``, or values fp32 cannot hold)."""
        return self.precision == "fp64" or wide_dtype(self.source.dtype)

    def chunks(self, start: int) -> list[tuple[int, int]]:
        """Column chunks covering rows [start, n)."""
        step = max(1, self.chunk_rows)
        return [(s, min(s + step, self.n)) for s in range(start, self.n, step)]


def row_blocks(
    source: FeatureSource, rows: int | None = None, precision: str = "fp32"
) -> RowBlocks:
    """Cut ``source`` into blocks of ``rows`` rows (default: about 32 MiB each).

    Raises:
        ShapeError: the blocks would be more than :data:`MAX_ROW_BLOCKS`.
    """
    if rows is None:
        rows = default_block_rows(source.d)
    rows = max(1, min(rows, source.n))
    count = -(-source.n // rows)
    if count > MAX_ROW_BLOCKS:
        fewest = -(-source.n // MAX_ROW_BLOCKS)
        raise ShapeError(
            f"block_rows={rows} cuts the {source.n:,} rows of {source.location!r} into {count:,} "
            f"blocks; each block is a task that reads the whole other set, so at most "
            f"{MAX_ROW_BLOCKS:,} are allowed: use at least {fewest:,} rows per block (or the "
            "default, about 32 MiB a block)"
        )
    bounds = tuple((s, min(s + rows, source.n)) for s in range(0, source.n, rows))
    return RowBlocks(source, bounds, precision)


def shard_blocks(source: FeatureSource, precision: str = "fp32") -> RowBlocks:
    """The source's own shards as blocks (whole stored chunks; ``--shard-rows`` sets them)."""
    stops = np.cumsum(source.array.chunks[0]).tolist()
    starts = [0, *stops[:-1]]
    return RowBlocks(source, tuple(zip(starts, stops, strict=True)), precision)


# ---------------------------------------------------------------------------------------------
# the pass before the pairs


def _set_inspection_examples(rng: np.random.Generator) -> Examples[SetInspection]:
    found = [
        SetInspection(*parts)
        for parts in zip(
            examples_of(NonFiniteRows, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            examples_of(RowMean, rng)[1],
            examples_of(RowMean, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            examples_of(Magnitudes, rng)[1],
            strict=True,
        )
    ]
    return SetInspection.empty(found[0].rows.mean.shape[0]), found


@state(examples=_set_inspection_examples)
@dataclass(frozen=True, eq=False)
class SetInspection:
    """One read of a set before its pairs: where its non-finite rows and its rows of zeros
    are, the means of its rows and of its rows scaled to unit norm (the centres the kernel
    sums expand about), and the range of its magnitudes (the scale of its distances)."""

    nonfinite: NonFiniteRows
    zeros: NonFiniteRows
    rows: RowMean
    units: RowMean
    inexact: NonFiniteRows
    magnitudes: Magnitudes

    @classmethod
    def empty(cls, d: int) -> SetInspection:
        nothing = NonFiniteRows.empty()
        return cls(
            nothing, nothing, RowMean.empty(d), RowMean.empty(d), nothing, Magnitudes.empty()
        )

    merge = merge_fieldwise


def inspect_block(block: np.ndarray, offset: int) -> SetInspection:
    """The chunk step of :func:`inspect_sets`."""
    from shardeval.kernels.kernel_sums import unit_rows

    ok = finite_rows(block)
    inexact = inexact_integer_rows(block)
    x = np.asarray(block[ok], dtype=np.float64)
    nonzero = np.any(x != 0, axis=1)
    return SetInspection(
        NonFiniteRows.from_mask(~ok, offset),
        NonFiniteRows.from_mask(~np.any(block != 0, axis=1), offset),
        RowMean.from_rows(x),
        RowMean.from_rows(unit_rows(x[nonzero])),
        NonFiniteRows.from_mask(inexact, offset),
        Magnitudes.from_values(x),
    )


def inspect_sets(
    sources: Sequence[FeatureSource], engine: Engine, unit_rows: bool = False
) -> list[SetInspection]:
    """Pair metrics need every row: one cheap pass finds non-finite rows before any pair runs,
    and, for a kernel on rows scaled to unit norm (``unit_rows``), rows of zeros; it also
    takes the sets' means.

    Raises:
        NonFiniteError: naming the store, how many rows and the first of them.
        ZeroRowError: likewise, for rows of zeros.
        NumericalError: likewise, for integers beyond 2^53.
    """
    from shardeval.pipeline.core.reduce import shard_tasks
    from shardeval.pipeline.errors import ZeroRowError

    found: list[SetInspection] = engine.reduce([shard_tasks(s, inspect_block) for s in sources])
    for source, seen in zip(sources, found, strict=True):
        check_nonfinite(source.location, seen.nonfinite, "error")
        if seen.inexact.count:
            raise NumericalError(
                f"{source.location!r} has {seen.inexact.count:,} row(s) of integers beyond "
                f"2^53 (first at row {seen.inexact.first[0]}), which float64 cannot hold "
                "exactly; store them as floats if rounding them is acceptable"
            )
        if unit_rows and seen.zeros.count:
            raise ZeroRowError(
                f"{source.location!r} has {seen.zeros.count:,} row(s) of zeros (first at row "
                f"{seen.zeros.first[0]}): the kernel scales each row to unit norm, which a zero "
                "row does not have; remove them"
            )
    return found


def same_store(a: FeatureSource, b: FeatureSource) -> bool:
    """Whether two sources are one store (read once, its blocks serving as both sets)."""
    import os

    def key(s: FeatureSource) -> tuple[str, str]:
        where = s.location.removeprefix("file://")  # a local URL is its path
        where = where if "://" in where else os.path.realpath(where)
        return where, s.name

    return key(a) == key(b)


# ---------------------------------------------------------------------------------------------
# states


def _additions(a: SetSums | CrossSums, b: SetSums | CrossSums) -> int:
    """Float64 additions of block-pair totals in a ⊕ b: both operands', and one for their sum,
    unless an operand is an exact zero (no magnitude, total 0.0), to which adding is exact.
    Testing the magnitude too keeps the count associative: a sum of magnitudes is zero only
    if every one is, where totals can cancel."""
    exact = any(s.magnitude == 0.0 and s.total == 0.0 for s in (a, b))
    return a.additions + b.additions + (0 if exact else 1)


def _set_sums_examples(rng: np.random.Generator) -> Examples[SetSums]:
    def drawn() -> SetSums:
        total = float(rng.standard_normal()) * 100
        return SetSums(
            total,
            float(rng.random()) * 1e4,
            float(rng.standard_normal()),
            rng.standard_normal(5),
            error=float(rng.random()) * 1e-12,
            magnitude=abs(total) + float(rng.random()) * 100,
            additions=int(rng.integers(0, 4)),
        )

    return SetSums.empty(5), [drawn() for _ in range(3)]


@state(examples=_set_sums_examples)
@dataclass(frozen=True, eq=False)
class SetSums:
    """Kernel sums within one set over ordered pairs i ≠ j: the total, the sum of squares, each
    row's sum, and the diagonal Σ_i k(x_i, x_i) apart (values minus the kernel's shift, see
    :class:`shardeval.kernels.kernel_sums.KernelSums`).

    Attributes:
        error: bound on the total's rounding inside the block pairs.
        magnitude: bound on Σ |value| over the pairs in the total.
        additions: float64 additions of block-pair totals into this one (each rounds by at
            most u × the magnitude; adding an empty state's exact zero does not round, and is
            not counted, so the empty state is an identity).
    """

    total: float
    squares: float
    diagonal: float
    rows: np.ndarray
    error: float = 0.0
    magnitude: float = 0.0
    additions: int = 0

    @classmethod
    def empty(cls, rows: int) -> SetSums:
        """No pairs yet, in a set of ``rows`` rows."""
        return cls(0.0, 0.0, 0.0, np.zeros(rows))

    def merge(self, other: SetSums) -> SetSums:
        return SetSums(
            self.total + other.total,
            self.squares + other.squares,
            self.diagonal + other.diagonal,
            self.rows + other.rows,
            self.error + other.error,
            self.magnitude + other.magnitude,
            _additions(self, other),
        )

    def total_error(self) -> float:
        """Bound on |total − exact total|: the pairs' own, and the additions'."""
        return self.error + self.additions * _U64 * self.magnitude


def _cross_sums_examples(rng: np.random.Generator) -> Examples[CrossSums]:
    def drawn() -> CrossSums:
        total = float(rng.standard_normal()) * 100
        return CrossSums(
            total,
            float(rng.random()) * 1e4,
            rng.standard_normal(5),
            rng.standard_normal(4),
            error=float(rng.random()) * 1e-12,
            magnitude=abs(total) + float(rng.random()) * 100,
            additions=int(rng.integers(0, 4)),
        )

    return CrossSums.empty(5, 4), [drawn() for _ in range(3)]


@state(examples=_cross_sums_examples)
@dataclass(frozen=True, eq=False)
class CrossSums:
    """Kernel sums between two sets over all pairs: the total, the sum of squares, each row's
    sum over the other set (``rows_x`` (N_x,), ``rows_y`` (N_y,)), and the rounding bounds of
    :class:`SetSums`."""

    total: float
    squares: float
    rows_x: np.ndarray
    rows_y: np.ndarray
    error: float = 0.0
    magnitude: float = 0.0
    additions: int = 0

    @classmethod
    def empty(cls, rows_x: int, rows_y: int) -> CrossSums:
        """No pairs yet, between sets of ``rows_x`` and ``rows_y`` rows."""
        return cls(0.0, 0.0, np.zeros(rows_x), np.zeros(rows_y))

    def merge(self, other: CrossSums) -> CrossSums:
        return CrossSums(
            self.total + other.total,
            self.squares + other.squares,
            self.rows_x + other.rows_x,
            self.rows_y + other.rows_y,
            self.error + other.error,
            self.magnitude + other.magnitude,
            _additions(self, other),
        )

    def total_error(self) -> float:
        """Bound on |total − exact total|: the pairs' own, and the additions'."""
        return self.error + self.additions * _U64 * self.magnitude


def _neighbours_examples(rng: np.random.Generator) -> Examples[Neighbours]:
    def drawn() -> Neighbours:
        sq = rng.random((5, 3)) * 10
        sq[rng.integers(5), -1] = np.inf  # a row with fewer than k rows seen yet
        return Neighbours(np.sort(sq, axis=1))

    return Neighbours.empty(5, 3), [drawn() for _ in range(3)]


@state(examples=_neighbours_examples)
@dataclass(frozen=True, eq=False)
class Neighbours:
    """Per row of one set, the k smallest exact squared distances to the other rows (N, k),
    ascending (inf where fewer than k rows were seen)."""

    sq: np.ndarray

    @classmethod
    def empty(cls, rows: int, k: int) -> Neighbours:
        return cls(np.full((rows, k), np.inf))

    def merge(self, other: Neighbours) -> Neighbours:
        return Neighbours(_k_smallest(self.sq, other.sq))


def _k_smallest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, the k smallest of two (rows, k) arrays, ascending."""
    return np.sort(np.concatenate([a, b], axis=1), axis=1)[:, : a.shape[1]]


def _decisions_examples(rng: np.random.Generator) -> Examples[Decisions]:
    def drawn() -> Decisions:
        return Decisions(
            rng.random(4) < 0.3,
            rng.integers(0, 3, 4),
            rng.random(5) < 0.3,
            rng.random(5) < 0.3,
            int(rng.integers(0, 3)),
        )

    return Decisions.empty(5, 4), [drawn() for _ in range(3)]


@state(examples=_decisions_examples)
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

    @classmethod
    def empty(cls, x_rows: int, y_rows: int) -> Decisions:
        """No radius tests yet, between a reference set of ``x_rows`` rows and a generated set
        of ``y_rows``."""
        return cls(
            np.zeros(y_rows, bool),
            np.zeros(y_rows, np.int64),
            np.zeros(x_rows, bool),
            np.zeros(x_rows, bool),
            0,
        )

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


def _self_state_examples(rng: np.random.Generator) -> Examples[SelfState]:
    # Only some statistics asked for: the others stay None through every merge.
    empty_sums, sums = examples_of(SetSums, rng)
    empty_knn, knn = examples_of(Neighbours, rng)
    found = [SelfState(poly=s, knn=k) for s, k in zip(sums, knn, strict=True)]
    return SelfState(poly=empty_sums, knn=empty_knn), found


@state(examples=_self_state_examples)
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


def _cross_state_examples(rng: np.random.Generator) -> Examples[CrossState]:
    empty_sums, sums = examples_of(CrossSums, rng)
    empty_radius, radius = examples_of(Decisions, rng)
    found = [CrossState(rbf=s, radius=r) for s, r in zip(sums, radius, strict=True)]
    return CrossState(rbf=empty_sums, radius=empty_radius), found


@state(examples=_cross_state_examples)
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
# what to compute, and the tasks


@dataclass(frozen=True, eq=False)
class PairPlan:
    """The statistics wanted from the pairs.

    Attributes:
        poly: the polynomial kernel and its centre, for kernel sums (KID), or None.
        rbf: the RBF on unit rows and its centre, for complement sums (CMMD), or None.
        knn: k for the k nearest squared distances within a set (PRDC radii), or None.
        radii: squared radii for the cross pass (PRDC): x_le (N,), x_lt (N,), y_le (M,).
        device: where the pair kernels run (``auto``: a worker's GPU if it has one).
        backend: ``auto`` (Triton on a GPU, the BLAS path on a CPU), ``triton`` or ``torch``.
        exponent: e ≠ 0: the neighbours and radius tests take every block × 2^-e in float64,
            exactly (see :func:`shardeval.pipeline.neighbours.prdc.distance_exponent`), so
            their squared distances and radii are in units of 4^-e; kernel sums take the
            rows as they are.
    """

    poly: Any = None
    rbf: Any = None
    knn: int | None = None
    radii: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)
    device: str = "cpu"
    backend: str = "auto"
    exponent: int = 0

    def request(self, cross: bool, bx: tuple[int, int], by: tuple[int, int]) -> Any:
        from shardeval.kernels.pairs import PairRequest

        radii = None
        if cross and self.radii is not None:
            x_le, x_lt, y_le = self.radii
            radii = (x_le[slice(*bx)], x_lt[slice(*bx)], y_le[slice(*by)])
        return PairRequest(
            poly=self.poly, rbf=self.rbf, knn=None if cross else self.knn, radii=radii
        )

    def token(self) -> tuple[Any, ...]:
        """What the tasks' keys depend on (the kernels' centres included)."""

        def kernel(k: Any) -> Any:
            return None if k is None else (type(k).__name__, *vars(k).values())

        return kernel(self.poly), kernel(self.rbf), self.knn, self.exponent


def _reduce(x: np.ndarray, y: np.ndarray, plan: PairPlan, request: Any, diagonal: bool) -> Any:
    """One block pair through the kernels, on the worker's device."""
    from shardeval.kernels.pairs import pair_reduce
    from shardeval.pipeline.core.chunks import to_tensor, worker_device

    if plan.exponent and (request.knn is not None or request.radii is not None):
        # Float64 squared distances of rows beyond about 1e154 overflow and below 1e-154
        # underflow: the decisions take the rows × 2^-e (exact, as distance_exponent checked),
        # both sets and every pass alike, so distances and radii compare in one unit.
        plain = replace(plan, exponent=0)
        sums = None
        if request.poly is not None or request.rbf is not None:
            sums = _reduce(x, y, plain, replace(request, knn=None, radii=None), diagonal)
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
            knn[slice(*bx)] = _k_smallest(knn[slice(*bx)], result.knn[0])
            if not diagonal:
                knn[slice(*by)] = _k_smallest(knn[slice(*by)], result.knn[1])
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
        }
    for by in b.chunks(0):
        result = _reduce(x, b.read_rows(*by), plan, plan.request(True, bx, by), False)
        for sums, got in ((poly, result.poly), (rbf, result.rbf)):
            if sums is not None:
                sums.add(got, bx, by, 1.0)
        if radius is not None and result.radius is not None:
            r = result.radius
            radius["y_within"][slice(*by)] |= r.y_within_x_radius
            radius["y_count"][slice(*by)] += r.y_count_x_radius
            radius["x_within"][slice(*bx)] |= r.x_within_y_radius
            radius["x_covered"][slice(*bx)] |= r.x_covered
            radius["uncertain"] += r.uncertain
    return CrossState(
        poly.cross() if poly is not None else None,
        rbf.cross() if rbf is not None else None,
        Decisions(**radius) if radius is not None else None,
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
