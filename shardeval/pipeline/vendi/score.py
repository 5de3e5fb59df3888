"""The Vendi score (Friedman & Dieng, "The Vendi Score: A Diversity Evaluation Metric for
Machine Learning", TMLR 2023) of a set of N rows with the cosine kernel, exact for any N from
one pass over the shards.

With x̂_i = x_i/‖x_i‖ the unit rows, X̂ their (N, d) matrix and K = X̂X̂ᵀ the cosine kernel
(K_ii = 1), the score is the exponential of the Shannon entropy of the eigenvalues λ of K/N
(non-negative, summing to tr K/N = 1):

    VS = exp(−Σ_i λ_i ln λ_i),    and of order q ≠ 1,  VS_q = (Σ_i λ_i^q)^{1/(1−q)}

(the exponential of the Rényi entropy; VS_q → VS as q → 1). It is 1 when every row has one
direction and N when the rows are orthogonal: the effective number of distinct rows.

K/N = X̂X̂ᵀ/N and S/N = X̂ᵀX̂/N, with S = Σ_i x̂_i x̂_iᵀ the d × d second moment of the unit rows,
have the same nonzero eigenvalues (those of a matrix and its transpose's product), so the
score needs S alone: a sum over rows, which a shard computes from its own rows and shards
merge by adding (:class:`UnitSecondMoment`). No N × N matrix exists, and the result does not
depend on sharding or merge order beyond float64 rounding. S is a sum of positive
semi-definite terms, not a difference, so keeping the raw sum cancels nothing (unlike a
covariance made of Σxxᵀ − Nμμᵀ).

Numerics: each row is scaled by a power of two before its norm is taken (exact), so rows near
1e±200 are normalised like any other; S is summed in float64; its eigenvalues come from a
float64 symmetric eigenvalue routine. Eigenvalues within d·ε of the largest's magnitude of 0
(rounding of zero eigenvalues: N < d, or rows of few directions) are set to 0 and counted;
one below −that tolerance would mean S is not positive semi-definite, an error. 0·ln 0 = 0.
A row of zeros has no direction and is refused, naming it; non-finite rows are refused or
dropped and counted (``nonfinite``). N = 1 gives 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.chunks import check_nonfinite, check_policy, finite_rows
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.core.states import Examples, NonFiniteRows, examples_of, state
from shardeval.pipeline.errors import NumericalError, OptionError, ShapeError, ZeroRowError
from shardeval.pipeline.io.stores import FeatureSource

#: Eigenvalues of S/N within this many d·ε of the largest are rounding of 0 and set to 0.
RANK_RTOL = 1.0


def _unit_second_moment_examples(rng: np.random.Generator) -> Examples[UnitSecondMoment]:
    _, rows = examples_of(NonFiniteRows, rng)
    found = []
    for n, bad in zip((5, 1, 8), rows, strict=True):
        block = rng.standard_normal((n, 3)) * 10.0 ** rng.integers(-3, 3) + [2.0, 0.0, -1.0]
        found.append(UnitSecondMoment.from_rows(block, 0)._replace_nonfinite(bad))
    return UnitSecondMoment.empty(3), found


@state(examples=_unit_second_moment_examples)
@dataclass(frozen=True, eq=False)
class UnitSecondMoment:
    """The second moment of a set's unit rows: what the Vendi score with the cosine kernel
    needs of it.

    Attributes:
        n: rows summed (finite and nonzero).
        s: (d, d) float64, Σ_i x̂_i x̂_iᵀ over those rows, x̂ = x/‖x‖.
        nonfinite: rows with NaN or ±inf (left out of ``s``).
        zeros: finite rows of zeros, which have no direction (left out of ``s``).

    The merge adds: counts, sums and the rows' records.

    Example:
        >>> x = np.array([[3.0, 4.0], [0.0, 2.0], [0.0, -5.0]])
        >>> m = UnitSecondMoment.from_rows(x[:1], 0).merge(UnitSecondMoment.from_rows(x[1:], 1))
        >>> m.n, m.s.round(2).tolist()
        (3, [[0.36, 0.48], [0.48, 2.64]])
    """

    n: int
    s: np.ndarray
    nonfinite: NonFiniteRows
    zeros: NonFiniteRows

    def __post_init__(self) -> None:
        s = np.ascontiguousarray(self.s, dtype=np.float64)
        if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
            raise ValueError(f"UnitSecondMoment needs s of shape (d, d), got {s.shape}")
        if self.n < 0:
            raise ValueError(f"UnitSecondMoment.n must be >= 0, got {self.n}")
        s.setflags(write=False)
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "s", s)

    @property
    def d(self) -> int:
        return int(self.s.shape[0])

    @classmethod
    def empty(cls, d: int) -> UnitSecondMoment:
        return cls(0, np.zeros((d, d)), NonFiniteRows.empty(), NonFiniteRows.empty())

    @classmethod
    def from_rows(cls, block: Any, offset: int) -> UnitSecondMoment:
        """Of one (n, d) block whose first row is global row ``offset`` (the chunk step)."""
        from shardeval.kernels.kernel_sums import unit_rows

        x = np.asarray(block)
        x = x.reshape(x.shape[0], -1)
        finite = finite_rows(x)
        nonzero = (x != 0).any(axis=1)
        units = unit_rows(x[finite & nonzero])
        s = units.T @ units
        return cls(
            int(units.shape[0]),
            0.5 * (s + s.T),
            NonFiniteRows.from_mask(~finite, offset),
            NonFiniteRows.from_mask(finite & ~nonzero, offset),
        )

    def _replace_nonfinite(self, nonfinite: NonFiniteRows) -> UnitSecondMoment:
        return UnitSecondMoment(self.n, self.s, nonfinite, self.zeros)

    def merge(self, other: UnitSecondMoment) -> UnitSecondMoment:
        if self.d != other.d:
            raise ValueError(f"cannot merge UnitSecondMoment of d={self.d} and d={other.d}")
        return UnitSecondMoment(
            self.n + other.n,
            self.s + other.s,
            self.nonfinite.merge(other.nonfinite),
            self.zeros.merge(other.zeros),
        )


def unit_second_moment(block: np.ndarray, offset: int) -> UnitSecondMoment:
    """The chunk step: :meth:`UnitSecondMoment.from_rows` of one shard."""
    return UnitSecondMoment.from_rows(block, offset)


@dataclass(frozen=True)
class VendiScore:
    """The Vendi score of a set and what it was made of.

    Attributes:
        score: VS_q, the exponential of the order-q entropy of the spectrum.
        entropy: its logarithm in nats (Shannon's for q = 1, Rényi's of order q otherwise).
        q: the order.
        n: rows.
        d: features.
        spectrum: the eigenvalues of S/N (those of K/N that can be nonzero), largest first,
            after the rounding of zeros was set to 0.
        clamped: eigenvalues set to 0 as rounding.
        nonfinite: rows left out as non-finite.
    """

    score: float
    entropy: float
    q: float
    n: int
    d: int
    spectrum: np.ndarray
    clamped: int
    nonfinite: int


def order_entropy(weights: np.ndarray, q: float) -> float:
    """The order-q (Rényi; Shannon's for q = 1) entropy of non-negative ``weights`` summing to
    about 1, in nats: −Σ w ln w, or ln(Σ w^q)/(1 − q) formed as q ln w_max + ln Σ (w/w_max)^q
    so that large q neither underflows nor overflows. Zero weights count for nothing.

    Example:
        >>> w = np.array([0.5, 0.25, 0.25, 0.0])
        >>> round(order_entropy(w, 1.0), 12) == round(1.5 * math.log(2), 12)
        True
        >>> round(order_entropy(w, 2.0), 12) == round(math.log(1 / 0.375), 12)
        True
    """
    w = weights[weights > 0]
    if q == 1.0:
        return float(-(w * np.log(w)).sum())
    top = float(w.max())
    log_sum = q * math.log(top) + math.log(float(((w / top) ** q).sum()))
    return log_sum / (1.0 - q)


def vendi_from_state(
    state: UnitSecondMoment, q: float = 1.0, *, location: str = "", nonfinite: str = "error"
) -> VendiScore:
    """The Vendi score of a set's merged :class:`UnitSecondMoment`.

    Args:
        state: the merged state of every shard.
        q: the order (> 0; 1: Shannon's).
        location: the set, as messages name it.
        nonfinite: ``error`` (refuse rows with NaN/inf) or ``drop`` (leave them out, counted).

    Returns:
        :class:`VendiScore`.

    Raises:
        OptionError: q not a finite number above 0.
        NonFiniteError: non-finite rows under ``error``.
        ZeroRowError: a row of zeros (no direction to normalise).
        ShapeError: no row left.
        NumericalError: S is not positive semi-definite beyond rounding, or the eigenvalues do
            not converge.
    """
    if not (isinstance(q, int | float) and math.isfinite(q) and q > 0):
        raise OptionError(f"«q» must be a finite number above 0, got {q!r}")
    check_policy(nonfinite)
    check_nonfinite(location, state.nonfinite, nonfinite)
    if state.zeros.count:
        raise ZeroRowError(
            f"{location!r} has {state.zeros.count:,} row(s) of zeros (first at row "
            f"{state.zeros.first[0]}): the cosine kernel scales each row to unit norm, which a "
            "zero row does not have; remove them"
        )
    n, d = state.n, state.d
    if n < 1:
        raise ShapeError(f"{location!r} has no finite row; the Vendi score needs at least one")
    try:
        eig = np.linalg.eigvalsh(state.s / n)[::-1]
    except np.linalg.LinAlgError as exc:
        raise NumericalError(f"the eigenvalues of {location!r}'s S/N do not converge") from exc
    tol = RANK_RTOL * d * np.finfo(np.float64).eps * max(float(eig[0]), 0.0)
    if eig[-1] < -tol or not eig[0] > 0:
        raise NumericalError(
            f"{location!r}: the second moment of its unit rows has eigenvalue {eig[-1]:.3g}, "
            f"below the rounding tolerance −{tol:.3g}: it is not positive semi-definite"
        )
    rounding = np.abs(eig) <= tol
    spectrum = np.where(rounding, 0.0, eig)
    entropy = max(order_entropy(spectrum, float(q)), 0.0)  # ≥ 0: at most one unit of weight
    return VendiScore(
        score=math.exp(entropy),
        entropy=entropy,
        q=float(q),
        n=n,
        d=d,
        spectrum=spectrum,
        clamped=int(np.count_nonzero(rounding & (eig != 0))),
        nonfinite=state.nonfinite.count,
    )


def vendi_score(
    source: FeatureSource,
    *,
    q: float = 1.0,
    nonfinite: str = "error",
    engine: Engine | None = None,
    split_every: int | None = None,
    progress: Progress | None = None,
) -> VendiScore:
    """The Vendi score of a feature store's rows with the cosine kernel, from one pass over
    its shards (each shard's :class:`UnitSecondMoment`, merged by the engine).

    Args:
        source: the rows (N, d).
        q: the order (> 0; 1, the paper's score, is Shannon's).
        nonfinite: ``error`` or ``drop``.
        engine: where to run (default: the threaded scheduler).
        split_every: fan-in of the merge tree (see :meth:`Engine.reduce`).
        progress: called with (shards done, shards total).

    Returns:
        :class:`VendiScore`.

    Raises:
        See :func:`vendi_from_state`; ShapeError for an array that is not 2-D.

    Example:
        >>> import dask.array as da
        >>> rows = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]] * 5.0
        >>> src = FeatureSource("rows", da.from_array(rows, chunks=(3, 4)))
        >>> round(vendi_score(src).score, 12)   # four orthogonal directions, equally often
        4.0
    """
    if source.array.ndim != 2:
        raise ShapeError(
            f"{source.location!r} has shape {tuple(source.array.shape)}; the Vendi score takes "
            "features (N, d)"
        )
    engine = engine or Engine()
    (merged,) = engine.reduce(
        [shard_tasks(source, unit_second_moment)], split_every=split_every, progress=progress
    )
    return vendi_from_state(merged, q, location=source.location, nonfinite=nonfinite)


__all__ = [
    "RANK_RTOL",
    "UnitSecondMoment",
    "VendiScore",
    "order_entropy",
    "unit_second_moment",
    "vendi_from_state",
    "vendi_score",
]
