"""Mergeable states: small frozen objects that hold exactly what a later merge needs.

Each state has ``empty()``, a constructor from one block, and a pure, associative ``merge``; the
result of a reduction therefore does not depend on shard sizes, tree shape or worker count (up to
float64 rounding). States are float64 and pickle cheaply, since Dask ships them between workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kernels import Backend, shard_moments

_MAX_REPORTED_ROWS = 5


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Moments:
    """Count, mean and centred co-moment of a set of d-dimensional rows.

    Attributes:
        n: number of rows.
        mean: (d,) float64 mean.
        m2: (d, d) float64 co-moment Σ (x − mean)(x − mean)ᵀ.

    The merge is Chan, Golub & LeVeque's pairwise update ("Updating formulae and a pairwise
    algorithm for computing sample variances", 1979): with δ = mean_b − mean_a and n = n_a + n_b,

        mean = mean_a + δ·n_b/n,   m2 = m2_a + m2_b + δδᵀ·n_a·n_b/n.

    Example:
        >>> import numpy as np
        >>> x = np.arange(12.0).reshape(6, 2)
        >>> m = Moments.from_block(x[:2]).merge(Moments.from_block(x[2:]))
        >>> m.n, m.mean.tolist(), np.allclose(m.covariance(), np.cov(x, rowvar=False))
        (6, [5.0, 6.0], True)
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    def __post_init__(self) -> None:
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

    @classmethod
    def empty(cls, d: int) -> Moments:
        return cls(0, np.zeros(d), np.zeros((d, d)))

    @classmethod
    def from_block(cls, block: Any, *, device: str = "cpu", backend: Backend = "auto") -> Moments:
        """Moments of one (n, d) block (numpy array or tensor), computed by the kernels."""
        x = torch.as_tensor(block)
        if device == "auto":  # decided on the worker: a GPU worker uses its GPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device != "cpu":
            # Page-locked staging lets the copy run as a DMA transfer.
            x = x.pin_memory().to(device, non_blocking=True)
        n, mean, m2 = shard_moments(x, backend=backend)
        return cls(n, mean.cpu().numpy(), m2.cpu().numpy())

    def merge(self, other: Moments) -> Moments:
        if self.d != other.d:
            raise ValueError(f"cannot merge Moments of d={self.d} and d={other.d}")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2)

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Sample covariance m2 / (n − ddof); ``ddof=1`` matches ``np.cov``."""
        if self.n - ddof <= 0:
            raise ValueError(f"covariance needs n > ddof, got n={self.n}, ddof={ddof}")
        return self.m2 / (self.n - ddof)


@dataclass(frozen=True)
class NonFiniteRows:
    """How many rows held NaN/±inf, and the first few of their global indices."""

    count: int = 0
    first: tuple[int, ...] = ()

    @classmethod
    def empty(cls) -> NonFiniteRows:
        return cls()

    @classmethod
    def from_mask(cls, bad: np.ndarray, offset: int) -> NonFiniteRows:
        """From a boolean per-row mask of one block whose first row is global row ``offset``."""
        idx = np.flatnonzero(bad)
        return cls(int(idx.size), tuple(int(i) + offset for i in idx[:_MAX_REPORTED_ROWS]))

    def merge(self, other: NonFiniteRows) -> NonFiniteRows:
        first = tuple(sorted(self.first + other.first)[:_MAX_REPORTED_ROWS])
        return NonFiniteRows(self.count + other.count, first)


@dataclass(frozen=True, eq=False)
class FeatureSummary:
    """What one shard of a feature store reduces to: moments of its finite rows, and the count
    and positions of the rows that were not finite."""

    moments: Moments
    nonfinite: NonFiniteRows

    @classmethod
    def empty(cls, d: int) -> FeatureSummary:
        return cls(Moments.empty(d), NonFiniteRows.empty())

    def merge(self, other: FeatureSummary) -> FeatureSummary:
        return FeatureSummary(
            self.moments.merge(other.moments), self.nonfinite.merge(other.nonfinite)
        )
