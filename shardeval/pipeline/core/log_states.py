"""States merged as log-sum-exp pairs: :class:`LogSumExp` (one scalar sum), :class:`WeightStats`
(importance log-weights with their largest tail) and :class:`RowLogSumExp` (one pair per query row).
"""

from __future__ import annotations

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
