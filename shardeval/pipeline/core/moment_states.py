"""States of moments merged by Chan, Golub & LeVeque's update: :class:`Moments` (count, mean and
co-moment of d-dimensional rows), :class:`RowMean` (count and mean, a point to centre on) and
:class:`ScalarMoments` (count, mean, m2, min and max of a scalar per sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.mergeable import Examples, _frozen, chan_merge, state
from shardeval.pipeline.errors import StatsFormatError


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
