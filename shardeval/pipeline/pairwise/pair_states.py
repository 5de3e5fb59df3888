"""The states the block pairs reduce to: per-row arrays over a whole set (kernel row sums, the
k nearest squared distances, the outcome of radius tests, the nearest row of the other set,
the largest radius-to-distance ratio), O(N) each, merged by addition, by elementwise or, by
keeping the k smallest, by the least (distance, index), or by the elementwise maximum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.states import Examples, examples_of, state

#: Unit roundoff of float64 (the merges' additions).
_U64 = 2.0**-53


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
        return Neighbours(k_smallest(self.sq, other.sq))


def k_smallest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
            rng.integers(0, 2**6, 5).astype(np.uint64),
        )

    return Decisions.empty(5, 4, groups=6), [drawn() for _ in range(3)]


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
        x_groups: (N,) uint64, bit g set where some y_j of group g (of at most 64, rows
            assigned by :func:`shardeval.pipeline.fid.jackknife.row_groups`) has
            ‖x − y_j‖ < r'_x: coverage's jackknife; None where not asked.
    """

    y_within: np.ndarray
    y_count: np.ndarray
    x_within: np.ndarray
    x_covered: np.ndarray
    uncertain: int
    x_groups: np.ndarray | None = None

    @classmethod
    def empty(cls, x_rows: int, y_rows: int, groups: int = 0) -> Decisions:
        """No radius tests yet, between a reference set of ``x_rows`` rows and a generated set
        of ``y_rows`` (``groups`` > 0: with the groups' coverage masks)."""
        return cls(
            np.zeros(y_rows, bool),
            np.zeros(y_rows, np.int64),
            np.zeros(x_rows, bool),
            np.zeros(x_rows, bool),
            0,
            np.zeros(x_rows, np.uint64) if groups else None,
        )

    def merge(self, other: Decisions) -> Decisions:
        groups = None
        if self.x_groups is not None and other.x_groups is not None:
            groups = self.x_groups | other.x_groups
        return Decisions(
            self.y_within | other.y_within,
            self.y_count + other.y_count,
            self.x_within | other.x_within,
            self.x_covered | other.x_covered,
            self.uncertain + other.uncertain,
            groups,
        )


def _nearest_examples(rng: np.random.Generator) -> Examples[Nearest]:
    def drawn() -> Nearest:
        # few distinct distances, so that merges meet ties and decide them by index
        sq = rng.integers(0, 3, 6).astype(np.float64)
        index = rng.integers(0, 4, 6)
        unseen = rng.integers(6)  # a row no row of X was compared with yet
        sq[unseen], index[unseen] = np.inf, Nearest.NONE
        return Nearest(sq, index)

    return Nearest.empty(6), [drawn() for _ in range(3)]


@state(examples=_nearest_examples)
@dataclass(frozen=True, eq=False)
class Nearest:
    """Per row of a generated set Y (M), its nearest row of the reference X: the exact squared
    distance (M,) and the row's index in X (M,), int64. Of rows of X at one exact distance the
    first is kept, so the merge (the least (distance, index) per row) is associative and
    commutative, and the result does not depend on how X was cut.

    Attributes:
        sq: squared distances (inf: no row of X seen yet).
        index: indices in X (:attr:`NONE`: no row seen yet).
    """

    sq: np.ndarray
    index: np.ndarray

    #: The index of no row (larger than any, so that a row seen is always taken).
    NONE = np.iinfo(np.int64).max

    @classmethod
    def empty(cls, rows: int) -> Nearest:
        return cls(np.full(rows, np.inf), np.full(rows, cls.NONE, dtype=np.int64))

    def merge(self, other: Nearest) -> Nearest:
        take = (other.sq < self.sq) | ((other.sq == self.sq) & (other.index < self.index))
        return Nearest(np.where(take, other.sq, self.sq), np.where(take, other.index, self.index))


def _realism_examples(rng: np.random.Generator) -> Examples[Realism]:
    def drawn() -> Realism:
        # few distinct ratios, so that merges meet ties; inf: a copy of a reference row
        ratio = rng.integers(0, 3, 6).astype(np.float64)
        ratio[rng.integers(6)] = np.inf
        return Realism(ratio)

    return Realism.empty(6), [drawn() for _ in range(3)]


@state(examples=_realism_examples)
@dataclass(frozen=True, eq=False)
class Realism:
    """Per row y of a generated set (M,), the largest ratio r_i / ‖x_i − y‖² over the rows of
    the reference X that count (squared radius r_i > 0): the square of the realism score
    (:func:`shardeval.pipeline.neighbours.prdc.realism_radii`). 0 where no row that counts
    was seen; inf where one equals y. Merged by the elementwise maximum (associative,
    commutative, with 0 as identity: ratios are never negative).

    Attributes:
        ratio: (M,) float64, exact (each ratio from the float64 squared distance).
    """

    ratio: np.ndarray

    @classmethod
    def empty(cls, rows: int) -> Realism:
        return cls(np.zeros(rows))

    def merge(self, other: Realism) -> Realism:
        return Realism(np.maximum(self.ratio, other.ratio))


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
    empty_nearest, nearest = examples_of(Nearest, rng)
    empty_realism, realism = examples_of(Realism, rng)
    found = [
        CrossState(rbf=s, radius=r, nearest=n, realism=q)
        for s, r, n, q in zip(sums, radius, nearest, realism, strict=True)
    ]
    empty = CrossState(
        rbf=empty_sums, radius=empty_radius, nearest=empty_nearest, realism=empty_realism
    )
    return empty, found


@state(examples=_cross_state_examples)
@dataclass(frozen=True, eq=False)
class CrossState:
    """What the pairs of two sets reduce to (None where not asked)."""

    poly: CrossSums | None = None
    rbf: CrossSums | None = None
    radius: Decisions | None = None
    nearest: Nearest | None = None
    realism: Realism | None = None

    def merge(self, other: CrossState) -> CrossState:
        return CrossState(
            _merge_optional(self.poly, other.poly),
            _merge_optional(self.rbf, other.rbf),
            _merge_optional(self.radius, other.radius),
            _merge_optional(self.nearest, other.nearest),
            _merge_optional(self.realism, other.realism),
        )
