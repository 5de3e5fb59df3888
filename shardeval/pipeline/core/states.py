"""Mergeable states: small frozen objects that hold exactly what a later merge needs.

Each state has a pure, associative ``merge`` (and, where its shape parameters are few, an
``empty(...)`` identity) and a constructor from one block; the result of a reduction therefore
does not depend on shard sizes, tree shape or worker count (up to float64 rounding). States are
float64 and pickle cheaply, since Dask ships them between workers. They are plain numbers:
kernels and devices are the chunk steps' business (:mod:`shardeval.pipeline.core.chunks`).

This module is also where *every* state type is declared, wherever it lives: :class:`State` is
the protocol, and the :func:`state` class decorator is the one registry. Registering a state
gives Dask its true byte size (through ``__sizeof__``, so nothing here imports Dask) and records
its examples, on which ``tests/pipeline/test_state_laws.py`` runs the merge laws (identity,
associativity, order invariance, pickling) for every registered state.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Protocol, Self, TypeAlias, TypeVar, runtime_checkable

import numpy as np

from shardeval.pipeline.errors import StatsFormatError


@runtime_checkable
class State(Protocol):
    """A mergeable statistic: a frozen dataclass whose ``merge`` is pure (returns a new state,
    or one of its operands unchanged; never mutates), associative and, up to float64
    rounding, order invariant, with an identity element (an empty state).

    The identity is no method here, since what it needs differs by state (d, rows, the tail
    kept, bin edges): a state's ``empty(...)`` takes its own, and its registered examples carry
    one. ``__sizeof__`` counts the bytes the state's arrays hold, which is what Dask's ``sizeof``
    reports (through ``sys.getsizeof``) when it places tasks and accounts worker memory;
    :func:`state` installs it."""

    def merge(self, other: Self) -> Self: ...

    def __sizeof__(self) -> int: ...


S = TypeVar("S", bound=State)

#: What a state's examples factory returns: an identity element and three mutually mergeable,
#: non-trivial states built from random data.
Examples: TypeAlias = tuple[S, list[S]]

_REGISTRY: dict[type, Callable[[np.random.Generator], Examples[Any]]] = {}


def _payload_bytes(value: Any) -> int:
    """Bytes a field holds: an array's data, a nested state's own size, a container's items."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple | list):
        return sys.getsizeof(value) + sum(_payload_bytes(v) for v in value)
    if isinstance(value, dict):
        items = sum(_payload_bytes(k) + _payload_bytes(v) for k, v in value.items())
        return sys.getsizeof(value) + items
    return sys.getsizeof(value)  # a nested state lands in its own __sizeof__


def _state_sizeof(self: Any) -> int:
    # Dask sizes objects it does not know by sys.getsizeof, i.e. a few dozen bytes, while a
    # d × d co-moment is megabytes: the truth lets the scheduler place merges and account memory.
    return object.__sizeof__(self) + sum(
        _payload_bytes(getattr(self, f.name)) for f in fields(self)
    )


def state(
    *, examples: Callable[[np.random.Generator], Examples[S]]
) -> Callable[[type[S]], type[S]]:
    """Register a state type (a class decorator, outermost, above ``@dataclass(frozen=True)``).

    Args:
        examples: ``examples(rng)`` returns ``(empty, [a, b, c])``: an identity element and
            three mutually mergeable, non-trivial states from random data, on which the law
            test runs. Write it beside the state, in the same module.

    Raises:
        TypeError: the class is not a frozen dataclass with a ``merge`` method.
    """

    def register(cls: type[S]) -> type[S]:
        params = getattr(cls, "__dataclass_params__", None)
        if not (is_dataclass(cls) and params is not None and params.frozen):
            raise TypeError(f"state {cls.__qualname__} must be a frozen dataclass")
        if not callable(getattr(cls, "merge", None)):
            raise TypeError(f"state {cls.__qualname__} has no merge method")
        cls.__sizeof__ = _state_sizeof
        _REGISTRY[cls] = examples
        return cls

    return register


def registered_states() -> Mapping[type, Callable[[np.random.Generator], Examples[Any]]]:
    """Every registered state type and its examples factory (read-only; a state module
    registers its states when it is imported)."""
    return MappingProxyType(_REGISTRY)


def examples_of(cls: type[S], rng: np.random.Generator) -> Examples[S]:
    """A registered state's examples (composite states build theirs from their parts').

    Raises:
        TypeError: ``cls`` is not registered.
    """
    factory = _REGISTRY.get(cls)
    if factory is None:
        raise TypeError(f"{cls.__qualname__} is not a registered state; decorate it with @state")
    return factory(rng)


_MAX_REPORTED_ROWS = 5


def chan_merge(
    n_a: int, mean_a: Any, m2_a: Any, n_b: int, mean_b: Any, m2_b: Any
) -> tuple[Any, Any]:
    """Chan, Golub & LeVeque's pairwise update of (mean, m2) for vectors (m2 a d × d co-moment)
    and scalars alike: δ = mean_b − mean_a, n = n_a + n_b, mean = mean_a + δ·n_b/n,
    m2 = m2_a + m2_b + δδᵀ·n_a·n_b/n. Both counts must be positive."""
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + np.multiply.outer(delta, delta) * (n_a * n_b / n)
    return mean, m2


def lse_merge(m_a: Any, s_a: Any, m_b: Any, s_b: Any, power: int = 1) -> tuple[Any, Any]:
    """Merge log-sum-exp pairs (scalars or arrays, element-wise): m = max(m_a, m_b),
    s = s_a·e^(p(m_a − m)) + s_b·e^(p(m_b − m)); where m = −inf (only −inf seen) it scales
    nothing. ``power`` p = 2 merges sums of exp(2(x − m)) kept against the same max."""
    m = np.maximum(m_a, m_b)
    safe = np.where(np.isneginf(m), 0.0, m)
    return m, s_a * np.exp(power * (m_a - safe)) + s_b * np.exp(power * (m_b - safe))


T = TypeVar("T")


def merge_fieldwise(a: T, b: T) -> T:
    """Merge two composite states of one dataclass type field by field: fields that are states
    merge, integer counts add. Shard summaries that bundle several states use it as ``merge``."""
    merged = {}
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        merged[f.name] = x + y if isinstance(x, int) else x.merge(y)
    return type(a)(**merged)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def _moments_examples(rng: np.random.Generator) -> Examples[Moments]:
    # Means far from zero against the spread, as features have.
    blocks = [rng.standard_normal((n, 3)) * [1.0, 10.0, 0.1] + [1e3, -2.0, 0.0] for n in (4, 7, 2)]
    return Moments.empty(3), [Moments.from_rows(b) for b in blocks]


@state(examples=_moments_examples)
@dataclass(frozen=True, eq=False)
class Moments:
    """Count, mean and centred co-moment of a set of d-dimensional rows.

    Attributes:
        n: number of rows, an int (a numpy integer is taken as one; anything else, a float
            among them, is refused: StatsFormatError).
        mean: (d,) float64 mean.
        m2: (d, d) float64 co-moment Σ (x − mean)(x − mean)ᵀ.

    The merge is Chan, Golub & LeVeque's pairwise update ("Updating formulae and a pairwise
    algorithm for computing sample variances", 1979): with δ = mean_b − mean_a and n = n_a + n_b,

        mean = mean_a + δ·n_b/n,   m2 = m2_a + m2_b + δδᵀ·n_a·n_b/n.

    Example:
        >>> import numpy as np
        >>> x = np.arange(12.0).reshape(6, 2)
        >>> m = Moments.from_rows(x[:2]).merge(Moments.from_rows(x[2:]))
        >>> m.n, m.mean.tolist(), np.allclose(m.covariance(), np.cov(x, rowvar=False))
        (6, [5.0, 6.0], True)
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    def __post_init__(self) -> None:
        n = self.n
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise StatsFormatError(
                f"Moments(n={n!r}, ...): n is a count of rows and must be an integer (got "
                f"{type(n).__name__}); pass int(n) for a whole number held as a float"
            )
        object.__setattr__(self, "n", int(n))  # numpy's integers too: a plain int pickles small
        object.__setattr__(self, "mean", _frozen(self.mean))
        object.__setattr__(self, "m2", _frozen(self.m2))
        d = self.mean.shape[0]
        if self.mean.ndim != 1 or self.m2.shape != (d, d):
            raise ValueError(
                f"Moments needs mean (d,) and m2 (d, d); got {self.mean.shape}, {self.m2.shape}"
            )
        if self.n < 0:
            raise ValueError(f"Moments.n must be >= 0, got {self.n}")

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    def __getstate__(self) -> tuple[int, np.ndarray, np.ndarray]:
        # m2 is symmetric: ship only its upper triangle, row by row — half the bytes that
        # cross the network in a merge tree (16 MiB instead of 32 at d = 2048), exactly.
        rows = [self.m2[i, i:] for i in range(self.d)]
        return self.n, self.mean, np.concatenate(rows) if rows else np.zeros(0)

    def __setstate__(self, state: tuple[int, np.ndarray, np.ndarray]) -> None:
        n, mean, packed = state
        d = mean.shape[0]
        m2 = np.empty((d, d))
        start = 0
        for i in range(d):
            row = packed[start : start + d - i]
            m2[i, i:] = row
            m2[i:, i] = row
            start += d - i
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "mean", _frozen(mean))
        object.__setattr__(self, "m2", _frozen(m2))

    @classmethod
    def empty(cls, d: int) -> Moments:
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @classmethod
    def from_rows(cls, rows: Any) -> Moments:
        """Moments of (n, d) rows in float64 numpy, by the definition (two passes)."""
        x = np.asarray(rows, dtype=np.float64)
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        centred = x - mean
        m2 = centred.T @ centred
        return cls(x.shape[0], mean, 0.5 * (m2 + m2.T))

    def merge(self, other: Moments) -> Moments:
        if self.d != other.d:
            raise ValueError(f"cannot merge Moments of d={self.d} and d={other.d}")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        mean, m2 = chan_merge(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        return Moments(self.n + other.n, mean, m2)

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Sample covariance m2 / (n − ddof); ``ddof=1`` matches ``np.cov``."""
        if self.n - ddof <= 0:
            raise ValueError(f"covariance needs n > ddof, got n={self.n}, ddof={ddof}")
        return self.m2 / (self.n - ddof)


def _row_mean_examples(rng: np.random.Generator) -> Examples[RowMean]:
    return RowMean.empty(3), [RowMean.from_rows(rng.standard_normal((n, 3)) + 5) for n in (3, 1, 5)]


@state(examples=_row_mean_examples)
@dataclass(frozen=True, eq=False)
class RowMean:
    """Count and mean of a set of d-dimensional rows (a point to centre them on).

    Example:
        >>> a = RowMean.from_rows(np.array([[0.0, 2.0]]))
        >>> b = RowMean.from_rows(np.array([[3.0, 2.0], [3.0, 8.0]]))
        >>> a.merge(b).n, a.merge(b).mean.tolist()
        (3, [2.0, 4.0])
    """

    n: int
    mean: np.ndarray

    @classmethod
    def empty(cls, d: int) -> RowMean:
        return cls(0, np.zeros(d))

    @classmethod
    def from_rows(cls, rows: Any) -> RowMean:
        x = np.asarray(rows, dtype=np.float64)
        return cls(x.shape[0], x.mean(axis=0) if x.shape[0] else np.zeros(x.shape[1]))

    def merge(self, other: RowMean) -> RowMean:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        return RowMean(n, self.mean + (other.mean - self.mean) * (other.n / n))


def _nonfinite_rows_examples(rng: np.random.Generator) -> Examples[NonFiniteRows]:
    # Together more than the reported first rows, so that the merges must choose which to keep.
    masks = [rng.random(6) < 0.5 for _ in range(3)]
    for mask in masks:
        mask[rng.integers(6)] = True
    found = [
        NonFiniteRows.from_mask(m, offset) for m, offset in zip(masks, (40, 0, 20), strict=True)
    ]
    return NonFiniteRows.empty(), found


@state(examples=_nonfinite_rows_examples)
@dataclass(frozen=True)
class NonFiniteRows:
    """How many rows held NaN/±inf, and the first few of their global indices."""

    count: int = 0
    first: tuple[int, ...] = ()

    @classmethod
    def empty(cls) -> NonFiniteRows:
        return cls()

    @classmethod
    def from_mask(cls, bad: Any, offset: int) -> NonFiniteRows:
        """From a boolean per-row mask of one block whose first row is global row ``offset``."""
        idx = np.flatnonzero(np.asarray(bad))
        return cls(int(idx.size), tuple(int(i) + offset for i in idx[:_MAX_REPORTED_ROWS]))

    def merge(self, other: NonFiniteRows) -> NonFiniteRows:
        first = tuple(sorted(self.first + other.first)[:_MAX_REPORTED_ROWS])
        return NonFiniteRows(self.count + other.count, first)


def _magnitudes_examples(rng: np.random.Generator) -> Examples[Magnitudes]:
    blocks = [rng.standard_normal((4, 3)) * 10.0 ** rng.integers(-5, 5) for _ in range(3)]
    blocks[1][0, 0] = 0.0  # a zero is no magnitude
    return Magnitudes.empty(), [Magnitudes.from_values(b) for b in blocks]


@state(examples=_magnitudes_examples)
@dataclass(frozen=True)
class Magnitudes:
    """The largest and the smallest nonzero magnitude of a set's values (0 and inf before any
    nonzero value): how far a power of two must scale the set, and whether it can exactly.

    Example:
        >>> a = Magnitudes.from_values(np.array([[0.0, -3.0], [0.5, 1.0]]))
        >>> a.merge(Magnitudes.from_values(np.array([[1e-3]]))).smallest
        0.001
    """

    largest: float = 0.0
    smallest: float = math.inf

    @classmethod
    def empty(cls) -> Magnitudes:
        return cls()

    @classmethod
    def from_values(cls, values: Any) -> Magnitudes:
        """Of an array's finite values."""
        size = np.abs(np.asarray(values, dtype=np.float64))
        size = size[np.isfinite(size) & (size > 0)]
        return cls(float(size.max()), float(size.min())) if size.size else cls()

    def merge(self, other: Magnitudes) -> Magnitudes:
        return Magnitudes(max(self.largest, other.largest), min(self.smallest, other.smallest))


def _scalar_moments_examples(rng: np.random.Generator) -> Examples[ScalarMoments]:
    values = [rng.standard_normal(n) * 3 - 50 for n in (5, 2, 8)]
    return ScalarMoments.empty(), [ScalarMoments.from_values(v) for v in values]


@state(examples=_scalar_moments_examples)
@dataclass(frozen=True)
class ScalarMoments:
    """Welford/Chan moments of a scalar per sample (e.g. log-likelihoods), with min and max.

    Attributes:
        n: values seen.
        mean: their mean.
        m2: Σ (v − mean)².
        min, max: extremes (+inf / −inf when n = 0).

    Example:
        >>> s = ScalarMoments.from_values(np.array([1.0, 2.0])).merge(
        ...     ScalarMoments.from_values(np.array([3.0, 6.0])))
        >>> s.n, s.mean, s.variance(), s.min, s.max
        (4, 3.0, 4.666666666666667, 1.0, 6.0)
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")

    @classmethod
    def empty(cls) -> ScalarMoments:
        return cls()

    @classmethod
    def from_values(cls, values: np.ndarray) -> ScalarMoments:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return cls()
        # Shifted by one of the values, so that a sum of values near the float64 limit does
        # not overflow on the way to their mean.
        mean = float(v[0] + (v - v[0]).mean())
        return cls(
            int(v.size), mean, float(np.square(v - mean).sum()), float(v.min()), float(v.max())
        )

    def merge(self, other: ScalarMoments) -> ScalarMoments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        mean, m2 = chan_merge(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        return ScalarMoments(
            self.n + other.n,
            float(mean),
            float(m2),
            min(self.min, other.min),
            max(self.max, other.max),
        )

    def variance(self, ddof: int = 1) -> float:
        return self.m2 / (self.n - ddof) if self.n > ddof else float("nan")

    def standard_error(self) -> float:
        """Standard error of the mean, √(var / n)."""
        return float(np.sqrt(self.variance() / self.n)) if self.n > 1 else float("nan")


def _log_sum_exp_examples(rng: np.random.Generator) -> Examples[LogSumExp]:
    values = [rng.standard_normal(n) * 20 for n in (4, 6, 3)]
    return LogSumExp.empty(), [LogSumExp.from_values(v) for v in values]


@state(examples=_log_sum_exp_examples)
@dataclass(frozen=True)
class LogSumExp:
    """Mergeable log-sum-exp: max m, s = Σ exp(x − m), and the count n. LSE = m + log s.

    Example:
        >>> a = LogSumExp.from_values(np.array([0.0, 1000.0]))
        >>> b = LogSumExp.from_values(np.array([-np.inf]))
        >>> round(a.merge(b).value, 6), a.merge(b).n
        (1000.0, 3)
    """

    max: float = float("-inf")
    sum: float = 0.0
    n: int = 0

    @classmethod
    def empty(cls) -> LogSumExp:
        return cls()

    @classmethod
    def from_values(cls, values: np.ndarray) -> LogSumExp:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return cls()
        m = float(v.max())
        safe = 0.0 if m == float("-inf") else m
        return cls(m, float(np.exp(v - safe).sum()), int(v.size))

    def merge(self, other: LogSumExp) -> LogSumExp:
        m, s = lse_merge(self.max, self.sum, other.max, other.sum)
        return LogSumExp(float(m), float(s), self.n + other.n)

    @property
    def value(self) -> float:
        return self.max + float(np.log(self.sum)) if self.sum > 0 else float("-inf")


def _weight_stats_examples(rng: np.random.Generator) -> Examples[WeightStats]:
    # Each shorter than the kept tail and together longer, so that the merges truncate it.
    values = [rng.standard_normal(n) * 5 for n in (3, 4, 2)]
    return WeightStats.empty(keep=5), [WeightStats.from_values(v, keep=5) for v in values]


@state(examples=_weight_stats_examples)
@dataclass(frozen=True, eq=False)
class WeightStats:
    """Importance log-weights: n, m = max log w, s = Σ exp(log w − m), s₂ = Σ exp(2(log w − m)),
    and the ``keep`` largest log w.

    Both sums are taken relative to the one max, so ESS = (Σw)²/Σw² = s²/s₂ and the largest
    normalised weight is 1/s, with nothing that overflows even when log w is near 1e308 (where
    2·log w is not a float). The kept tail feeds the Pareto k̂ fit (PSIS).

    Example:
        >>> w = WeightStats.from_values(np.log([1.0, 1.0, 2.0]), keep=1)
        >>> round(w.ess(), 6), w.top.tolist() == [np.log(2.0)]   # ESS = 4² / 6
        (2.666667, True)
    """

    n: int
    max: float
    sum: float
    sum_sq: float
    top: np.ndarray  # descending, at most ``keep`` values
    keep: int

    @classmethod
    def empty(cls, keep: int) -> WeightStats:
        return cls(0, float("-inf"), 0.0, 0.0, np.zeros(0), keep)

    @classmethod
    def from_values(cls, log_w: np.ndarray, keep: int) -> WeightStats:
        """From log-weights in float64 numpy (the kernels' :func:`shardeval.kernels.weight_stats` is
        the fast path; see :mod:`shardeval.pipeline.core.chunks`)."""
        v = np.asarray(log_w, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return cls.empty(keep)
        m = float(v.max())
        shifted = v - (0.0 if m == float("-inf") else m)
        top = -np.sort(-v)[:keep]
        return cls(
            v.size, m, float(np.exp(shifted).sum()), float(np.exp(2 * shifted).sum()), top, keep
        )

    def merge(self, other: WeightStats) -> WeightStats:
        m, s = lse_merge(self.max, self.sum, other.max, other.sum)
        _, s2 = lse_merge(self.max, self.sum_sq, other.max, other.sum_sq, power=2)
        union = np.concatenate([self.top, other.top])
        top = -np.sort(-union)[: self.keep]
        return WeightStats(self.n + other.n, float(m), float(s), float(s2), top, self.keep)

    @property
    def all_zero(self) -> bool:
        """Every weight is zero (every log-weight −inf): ESS and k̂ are undefined."""
        return self.sum == 0.0

    def ess(self) -> float:
        """(Σw)² / Σw² = s² / s₂ (the max cancels)."""
        return self.sum**2 / self.sum_sq if self.sum_sq > 0 else float("nan")

    def max_normalized_weight(self) -> float:
        """max w / Σw = 1 / s."""
        return 1.0 / self.sum if self.sum > 0 else float("nan")


def _histogram_examples(rng: np.random.Generator) -> Examples[Histogram]:
    edges = np.linspace(-2.0, 2.0, 9)
    values = [rng.standard_normal(n) for n in (10, 4, 7)]
    return Histogram.empty(edges), [Histogram.from_values(v, edges) for v in values]


@state(examples=_histogram_examples)
@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts over fixed bin edges (mergeable quantiles of per-row quantities)."""

    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, edges: np.ndarray) -> Histogram:
        return cls(edges, np.zeros(len(edges) - 1, dtype=np.int64))

    @classmethod
    def from_values(cls, values: np.ndarray, edges: np.ndarray) -> Histogram:
        clipped = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
        return cls(edges, np.histogram(clipped, bins=edges)[0].astype(np.int64))

    def merge(self, other: Histogram) -> Histogram:
        return Histogram(self.edges, self.counts + other.counts)

    def quantile(self, q: float) -> float:
        """Upper edge of the bin holding the q-quantile (resolution: one bin)."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        idx = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.edges[min(idx + 1, len(self.edges) - 1)])


def _row_log_sum_exp_examples(rng: np.random.Generator) -> Examples[RowLogSumExp]:
    found = []
    for k in (3, 1, 4):
        v = rng.standard_normal((5, k)) * 10
        v[rng.integers(5)] = -np.inf  # a row with nothing in reach yet: max −inf, sum 0
        found.append(RowLogSumExp.from_values(v))
    return RowLogSumExp.empty(5), found


@state(examples=_row_log_sum_exp_examples)
@dataclass(frozen=True, eq=False)
class RowLogSumExp:
    """Per query row, the (max, Σ exp(· − max)) pair: one test shard's Parzen sums over some
    sample shards; merges across sample shards element-wise."""

    max: np.ndarray
    sum: np.ndarray

    @classmethod
    def empty(cls, rows: int) -> RowLogSumExp:
        """Nothing seen for any of ``rows`` rows: max −inf, sum 0."""
        return cls(np.full(rows, -np.inf), np.zeros(rows))

    @classmethod
    def from_values(cls, values: np.ndarray) -> RowLogSumExp:
        """Per row of (rows, k) values, the pair (max, Σ exp(· − max)) (max −inf, sum 0 for
        a row of −inf)."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape[1] == 0:
            return cls.empty(v.shape[0])
        m = v.max(axis=1)
        safe = np.where(np.isneginf(m), 0.0, m)
        return cls(m, np.exp(v - safe[:, None]).sum(axis=1))

    def merge(self, other: RowLogSumExp) -> RowLogSumExp:
        return RowLogSumExp(*lse_merge(self.max, self.sum, other.max, other.sum))

    def values(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return self.max + np.log(self.sum)
