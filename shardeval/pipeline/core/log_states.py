"""States merged as log-sum-exp pairs: :class:`LogSumExp` (one scalar sum), :class:`WeightStats`
(importance log-weights with their largest tail) and :class:`RowLogSumExp` (one pair per query row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shardeval.pipeline.core.mergeable import Examples, lse_merge, state


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
    # Each shorter than the kept tail and together longer, so that the merges truncate it; with
    # the sums of the third and fourth powers, so that the laws cover their merges too.
    values = [rng.standard_normal(n) * 5 for n in (3, 4, 2)]
    return WeightStats.empty(keep=5, higher=True), [
        WeightStats.from_values(v, keep=5, higher=True) for v in values
    ]


@state(examples=_weight_stats_examples)
@dataclass(frozen=True, eq=False)
class WeightStats:
    """Importance log-weights: n, m = max log w, s = Σ exp(log w − m), s₂ = Σ exp(2(log w − m)),
    the ``keep`` largest log w, and, kept only for ESS's standard error, s₃ and s₄ (the sums of
    exp(3(log w − m)) and exp(4(log w − m)); None when not kept).

    Every sum is taken relative to the one max, so ESS = (Σw)²/Σw² = s²/s₂ and the largest
    normalised weight is 1/s, with nothing that overflows even when log w is near 1e308 (where
    2·log w is not a float). The kept tail feeds the Pareto k̂ fit (PSIS). States with and
    without s₃, s₄ merge to a state without them.

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
    sum_cube: float | None = None
    sum_fourth: float | None = None

    @classmethod
    def empty(cls, keep: int, higher: bool = False) -> WeightStats:
        """No weights; ``higher``: keeping s₃ and s₄ (both 0)."""
        more = 0.0 if higher else None
        return cls(0, float("-inf"), 0.0, 0.0, np.zeros(0), keep, more, more)

    @classmethod
    def from_values(cls, log_w: np.ndarray, keep: int, higher: bool = False) -> WeightStats:
        """From log-weights in float64 numpy (the kernels' :func:`shardeval.kernels.weight_stats` is
        the fast path; see :mod:`shardeval.pipeline.core.chunks`); ``higher`` keeps s₃, s₄."""
        v = np.asarray(log_w, dtype=np.float64).reshape(-1)
        if v.size == 0:
            return cls.empty(keep, higher)
        m = float(v.max())
        shifted = v - (0.0 if m == float("-inf") else m)
        top = -np.sort(-v)[:keep]
        more = (
            (float(np.exp(3 * shifted).sum()), float(np.exp(4 * shifted).sum()))
            if higher
            else (None, None)
        )
        return cls(
            v.size,
            m,
            float(np.exp(shifted).sum()),
            float(np.exp(2 * shifted).sum()),
            top,
            keep,
            *more,
        )

    def merge(self, other: WeightStats) -> WeightStats:
        m, s = lse_merge(self.max, self.sum, other.max, other.sum)
        _, s2 = lse_merge(self.max, self.sum_sq, other.max, other.sum_sq, power=2)
        union = np.concatenate([self.top, other.top])
        top = -np.sort(-union)[: self.keep]
        s3 = s4 = None
        if self.sum_cube is not None and other.sum_cube is not None:
            s3 = float(lse_merge(self.max, self.sum_cube, other.max, other.sum_cube, power=3)[1])
        if self.sum_fourth is not None and other.sum_fourth is not None:
            s4 = float(
                lse_merge(self.max, self.sum_fourth, other.max, other.sum_fourth, power=4)[1]
            )
        return WeightStats(self.n + other.n, float(m), float(s), float(s2), top, self.keep, s3, s4)

    @property
    def has_higher(self) -> bool:
        """s₃ and s₄ are kept (ESS's standard error needs them)."""
        return self.sum_cube is not None and self.sum_fourth is not None

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

    def fourth_power_count(self) -> float:
        """Σw⁴ / max w⁴ = s₄ (the sum is against the max): how many weights' worth of w⁴ the
        fourth moment rests on, 1 when the largest weight makes up all of it, N when every
        weight is equal (an ESS∞ of w⁴). NaN without s₄."""
        return float("nan") if self.sum_fourth is None else self.sum_fourth

    def ess_fraction_relative_variance(self) -> float:
        """N·Var(ÊSS/N)/(ESS/N)², the delta method's asymptotic relative variance of
        ESS/N = m₁²/m₂ (m_k = E w^k), from the four sums:

            4·m₂/m₁² − 4·m₃/(m₁m₂) + m₄/m₂² − 1,   m₂/m₁² = N·s₂/s₁², m₃/(m₁m₂) = N·s₃/(s₁s₂),
                                                   m₄/m₂² = N·s₄/s₂²

        (each ratio is free of the max). NaN without s₃, s₄ or with no positive weight; never
        below 0 (nearly equal weights' terms cancel to within rounding of 0).
        """
        s1, s2, s3, s4, n = self.sum, self.sum_sq, self.sum_cube, self.sum_fourth, self.n
        if s3 is None or s4 is None or s1 <= 0:
            return float("nan")
        value = n * (4 * s2 / (s1 * s1) - 4 * s3 / (s1 * s2) + s4 / (s2 * s2)) - 1.0
        return max(0.0, value)

    def ess_fraction_rounding(self) -> float:
        """A bound on the rounding of :meth:`ess_fraction_relative_variance`: its four terms'
        magnitudes times 4·(log₂ N + 1)·ε, the relative error of pairwise float64 sums of N
        terms carried through the ratios. The terms are each near 1 and cancel to about
        2·CV⁴ (CV the weights' coefficient of variation), so weights equal to within a CV of
        about 1e-4 leave nothing above this bound. NaN without s₃, s₄."""
        s1, s2, s3, s4, n = self.sum, self.sum_sq, self.sum_cube, self.sum_fourth, self.n
        if s3 is None or s4 is None or s1 <= 0:
            return float("nan")
        terms = n * (4 * s2 / (s1 * s1) + 4 * s3 / (s1 * s2) + s4 / (s2 * s2)) + 1.0
        return terms * 4 * (math.log2(max(n, 1)) + 1) * float(np.finfo(np.float64).eps)


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
