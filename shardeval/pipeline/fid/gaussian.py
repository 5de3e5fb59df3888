"""Gaussians fitted to feature sets: the (mean, covariance) container that statistics files and
FID share, and its Cholesky factor with a rank test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import ShapeError


@dataclass(frozen=True, eq=False)
class Gaussian:
    """Mean and covariance of a feature set.

    Attributes:
        mean: (d,) float64.
        cov: (d, d) float64, symmetric.
        n: rows behind it, or None when unknown (a bare ``mu``/``sigma`` file): such
            statistics cannot be merged with others.
        source: where it came from.
    """

    mean: np.ndarray
    cov: np.ndarray
    n: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d < 1 or self.cov.shape != (d, d):
            raise ShapeError(
                f"{self.source or 'statistics'}: mean has shape {self.mean.shape} and covariance "
                f"{self.cov.shape}; expected (d,) and (d, d)"
            )

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    @property
    def mergeable(self) -> bool:
        return self.n is not None

    @classmethod
    def from_moments(cls, moments: Moments, source: str = "") -> Gaussian:
        """Sample mean and unbiased covariance (``np.cov``'s ddof=1)."""
        return cls(moments.mean, moments.covariance(ddof=1), moments.n, source)


def as_gaussian(stats: Moments | Gaussian, source: str = "") -> Gaussian:
    return stats if isinstance(stats, Gaussian) else Gaussian.from_moments(stats, source)


def cholesky_factor(cov: np.ndarray) -> np.ndarray | None:
    """The lower Cholesky factor L of ``cov``, or None when ``cov`` is singular to float64
    working precision: Cholesky fails, or a pivot L_kk² falls below d·ε·max pivot (rounding
    of the factorisation itself lets a singular matrix pass with tiny pivots)."""
    d = cov.shape[0]
    try:
        factor = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    pivots = np.diagonal(factor) ** 2
    if pivots.min() > d * np.finfo(np.float64).eps * pivots.max():
        return factor
    return None
