"""The states of a Gaussian mixture fitted by EM over shards: :class:`MixtureStats` (one
E-step's sufficient statistics, per component weighted moments merged by Chan's update),
:class:`RowSample` (the rows of given indices, for the k-means++ seeding) and the fitted
:class:`Mixture` (weights, means, covariances and their precision Cholesky factors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.mergeable import _frozen
from shardeval.pipeline.core.states import (
    Examples,
    NonFiniteRows,
    ScalarMoments,
    chan_merge,
    state,
)
from shardeval.pipeline.errors import NumericalError

_LOG_2PI = math.log(2 * math.pi)


def _stats_examples(rng: np.random.Generator) -> Examples[MixtureStats]:
    found = []
    for i, n in enumerate((5, 3, 8)):
        x = rng.standard_normal((n, 3)) * [1.0, 10.0, 0.1] + [1e3, -2.0, 0.0]
        r = rng.dirichlet(np.ones(2), size=n)
        r[:, 1] *= i != 1  # an empty component in one of them
        r[:, 0] = 1.0 - r[:, 1]
        ll = rng.standard_normal(n) - 20.0
        found.append(MixtureStats.from_rows(x, r, "full", ll, NonFiniteRows(), 10 * i))
    return MixtureStats.empty(2, 3, "full"), found


@state(examples=_stats_examples)
@dataclass(frozen=True, eq=False)
class MixtureStats:
    """One E-step's sufficient statistics of a set of rows under a K-component mixture.

    Attributes:
        weight: (K,) Σ_i r_ik, the responsibilities' sums.
        mean: (K, d) Σ_i r_ik x_i / Σ_i r_ik (0 where the weight is 0).
        m2: (K, d, d) Σ_i r_ik (x_i − mean_k)(x_i − mean_k)ᵀ, or its diagonal (K, d) for
            ``diag`` components.
        loglik: moments of the rows' log-likelihoods log p(x_i) under the mixture.
        nonfinite: where rows with NaN/inf are (left out of everything else).
        worst: the lowest log-likelihood seen (+inf when no row), at global row
            ``worst_index`` (the first such row), which is ``worst_row`` (d,): where an
            empty component is re-seeded.

    The merge is Chan, Golub & LeVeque's update, component by component, with weights in
    place of counts (:func:`~shardeval.pipeline.core.mergeable.chan_merge`): with
    δ = mean_b − mean_a and w = w_a + w_b, mean = mean_a + δ·w_b/w,
    m2 = m2_a + m2_b + δδᵀ·w_a·w_b/w. Never raw Σ r x xᵀ less W μμᵀ.
    """

    weight: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    loglik: ScalarMoments
    nonfinite: NonFiniteRows
    worst: float
    worst_index: int
    worst_row: np.ndarray

    def __post_init__(self) -> None:
        for name in ("weight", "mean", "m2", "worst_row"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def diagonal(self) -> bool:
        return self.m2.ndim == 2

    @classmethod
    def empty(cls, k: int, d: int, covariance: str) -> MixtureStats:
        m2 = np.zeros((k, d, d) if covariance == "full" else (k, d))
        return cls(
            np.zeros(k), np.zeros((k, d)), m2, ScalarMoments(), NonFiniteRows(), math.inf, -1,
            np.zeros(d),
        )  # fmt: skip

    @classmethod
    def from_rows(
        cls,
        x: np.ndarray,
        resp: np.ndarray,
        covariance: str,
        loglik: np.ndarray,
        nonfinite: NonFiniteRows,
        offset: int,
        index: np.ndarray | None = None,
    ) -> MixtureStats:
        """The statistics of finite rows x (n, d) with responsibilities ``resp`` (n, K) and
        log-likelihoods ``loglik`` (n,), centred on each component's own weighted mean (two
        passes over the shard); ``index``: the rows' global indices (``offset + arange``
        when None)."""
        n, d = x.shape
        k = resp.shape[1]
        weight = resp.sum(axis=0)
        safe = np.where(weight > 0, weight, 1.0)
        mean = (resp.T @ x) / safe[:, None]
        m2 = np.zeros((k, d, d) if covariance == "full" else (k, d))
        for j in range(k):
            if weight[j] == 0:
                mean[j] = 0.0
                continue
            centred = x - mean[j]
            if covariance == "full":
                product = (centred * resp[:, j, None]).T @ centred
                m2[j] = 0.5 * (product + product.T)
            else:
                m2[j] = resp[:, j] @ (centred * centred)
        if n:
            at = int(np.argmin(loglik))
            rows = np.arange(offset, offset + n) if index is None else index
            worst, worst_index, worst_row = float(loglik[at]), int(rows[at]), x[at]
        else:
            worst, worst_index, worst_row = math.inf, -1, np.zeros(d)
        return cls(
            weight, mean, m2, ScalarMoments.from_values(loglik), nonfinite, worst,
            worst_index, worst_row,
        )  # fmt: skip

    def merge(self, other: MixtureStats) -> MixtureStats:
        weight = self.weight + other.weight
        mean = np.array(self.mean)
        m2 = np.array(self.m2)
        for j in range(weight.shape[0]):
            a, b = self.weight[j], other.weight[j]
            if b == 0:
                continue
            if a == 0:
                mean[j], m2[j] = other.mean[j], other.m2[j]
                continue
            mean[j], m2[j] = chan_merge(
                a, self.mean[j], self.m2[j], b, other.mean[j], other.m2[j], self.diagonal
            )
        # The lowest log-likelihood, the first row among equals: independent of merge order.
        if other.worst_index < 0 or self.worst_index < 0:
            first = self if other.worst_index < 0 else other
        else:
            mine = (self.worst, self.worst_index) <= (other.worst, other.worst_index)
            first = self if mine else other
        return MixtureStats(
            weight, mean, m2, self.loglik.merge(other.loglik),
            self.nonfinite.merge(other.nonfinite), first.worst, first.worst_index,
            first.worst_row,
        )  # fmt: skip


def _sample_examples(rng: np.random.Generator) -> Examples[RowSample]:
    found = [
        RowSample(np.array(sorted(rng.choice(100, 3, replace=False))) + 100 * i, rng.random((3, 2)))
        for i in range(3)
    ]
    return RowSample.empty(2), found


@state(examples=_sample_examples)
@dataclass(frozen=True, eq=False)
class RowSample:
    """Rows of a store picked by global index: ``index`` (m,) ascending, ``rows`` (m, d).
    Merged by concatenation in index order, so the sample does not depend on sharding."""

    index: np.ndarray
    rows: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", np.asarray(self.index, dtype=np.int64))
        self.index.setflags(write=False)
        object.__setattr__(self, "rows", _frozen(self.rows))

    @classmethod
    def empty(cls, d: int) -> RowSample:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, d)))

    def merge(self, other: RowSample) -> RowSample:
        index = np.concatenate([self.index, other.index])
        order = np.argsort(index, kind="stable")
        return RowSample(index[order], np.concatenate([self.rows, other.rows])[order])


@dataclass(frozen=True, eq=False)
class Mixture:
    """A Gaussian mixture Σ_k w_k N(μ_k, Σ_k).

    Attributes:
        weights: (K,) mixing weights, summing to 1.
        means: (K, d).
        covariances: (K, d, d) (``full``) or their diagonals (K, d) (``diag``).
        precisions_cholesky: P_k with P_k P_kᵀ = Σ_k⁻¹ (upper triangular, as scikit-learn's
            ``precisions_cholesky_``), or 1/√diag for ``diag``.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    @property
    def covariance(self) -> str:
        return "full" if self.covariances.ndim == 3 else "diag"

    @property
    def k(self) -> int:
        return int(self.weights.shape[0])

    @property
    def d(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def of(cls, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> Mixture:
        """The mixture of these parameters, with its precisions' Cholesky factors.

        Raises:
            NumericalError: a covariance that is not positive definite in float64.
        """
        from scipy.linalg import solve_triangular

        cov = np.asarray(covariances, dtype=np.float64)
        if cov.ndim == 2:
            if not (cov > 0).all():
                raise NumericalError(
                    "a diagonal covariance of the mixture has a variance <= 0: raise «reg_covar»"
                )
            chol = 1.0 / np.sqrt(cov)
        else:
            chol = np.empty_like(cov)
            for j, c in enumerate(cov):
                try:
                    lower = np.linalg.cholesky(c)
                except np.linalg.LinAlgError:
                    raise NumericalError(
                        f"the covariance of mixture component {j} is not positive definite in "
                        "float64: raise «reg_covar», or use «covariance='diag'»"
                    ) from None
                eye = np.eye(c.shape[0])
                chol[j] = solve_triangular(lower, eye, lower=True).T
        return cls(
            _frozen(weights), _frozen(means), _frozen(cov), _frozen(chol)
        )  # fmt: skip

    def log_components(self, x: np.ndarray) -> np.ndarray:
        """log w_k + log N(x_i | μ_k, Σ_k), (n, K), in float64:
        −½(d log 2π + ‖P_kᵀ(x − μ_k)‖²) + Σ log diag P_k + log w_k."""
        n, d = x.shape
        out = np.empty((n, self.k))
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights)
        for j in range(self.k):
            centred = x - self.means[j]
            p = self.precisions_cholesky[j]
            if p.ndim == 2:
                y = centred @ p
                log_det = float(np.log(np.diagonal(p)).sum())
            else:
                y = centred * p
                log_det = float(np.log(p).sum())
            out[:, j] = -0.5 * (d * _LOG_2PI + np.einsum("ij,ij->i", y, y)) + log_det + log_w[j]
        return out

    def parameters(self) -> int:
        """Free parameters: K·d means, K − 1 weights, K·d(d + 1)/2 (full) or K·d (diag)."""
        k, d = self.k, self.d
        cov = k * d * (d + 1) // 2 if self.covariance == "full" else k * d
        return cov + k * d + k - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }
