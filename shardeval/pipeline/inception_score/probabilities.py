"""Rows of logits (or probabilities) as the Inception Score reads them: which rows have a
softmax (:func:`valid_rows`), which rows already are probability vectors
(:func:`probability_rows`), the softmax and log-softmax in float64 without overflow, and
p·log p with its limit 0 at p = 0 (:func:`p_log_p`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LOWEST = float(np.finfo(np.float64).min)

#: Unit roundoff of float64.
_U64 = 2.0**-53

#: How far from 1 a row of non-negative values may sum and still be a probability vector: its
#: dtype's rounding over C values (C·eps), and at least the rounding of 16-bit storage.
PROBABILITY_SUM_FLOOR = 1e-3


def valid_rows(block: np.ndarray) -> np.ndarray:
    """Per row of logits: has it a softmax? No NaN, no +inf, and at least one finite logit
    (−inf is a class of probability 0; a row of only −inf has none)."""
    x = np.asarray(block)
    finite = np.isfinite(x)
    if finite.all():  # the common case: one pass
        return np.ones(len(x), bool)
    bad = np.isnan(x) | (x == np.inf)
    return np.asarray(~bad.any(axis=1) & finite.any(axis=1))


def probability_rows(block: np.ndarray) -> int:
    """How many rows of ``block`` (rows with a softmax) are probability vectors: no negative
    value, and a sum within max(C·eps, :data:`PROBABILITY_SUM_FLOOR`) of 1, eps the rounding
    of the block's dtype (float64's for integers)."""
    x = np.asarray(block)
    if not len(x):
        return 0
    eps = float(np.finfo(x.dtype if x.dtype.kind == "f" else np.float64).eps)
    tolerance = min(0.5, max(x.shape[1] * eps, PROBABILITY_SUM_FLOOR))
    with np.errstate(invalid="ignore"):  # a −inf logit: the row is not a probability vector
        total = x.sum(axis=1, dtype=np.float64)
        return int(np.count_nonzero((x.min(axis=1) >= 0) & (np.abs(total - 1.0) <= tolerance)))


def nonnegative_rows(block: np.ndarray) -> int:
    """How many rows of ``block`` (rows with a softmax) have no value below 0, as features
    after a ReLU have (a −inf logit is below 0)."""
    x = np.asarray(block)
    return int(np.count_nonzero(x.min(axis=1) >= 0)) if x.size else 0


def _finite(tile: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The rows of ``tile`` that ``keep`` marks (the tile itself, uncopied, when all are)."""
    return tile if keep.all() else tile[keep]


def _softmax(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p = e^z / s, z = x − max_y x and s = Σ_y e^z of rows with a softmax, in float64."""
    z = np.array(x, dtype=np.float64)  # a copy: the block is never written
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        z -= z.max(axis=1, keepdims=True)
        np.maximum(z, _LOWEST, out=z)
        p = np.exp(z)
        s = p.sum(axis=1, keepdims=True)
        p /= s
    return p, z, s


def softmax_terms(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise softmax of logits (rows with a softmax: see :func:`valid_rows`) in float64 by
    log-sum-exp: p, log p and a_i = Σ_y p_iy log p_iy, with p · log p = 0 where p = 0.

    z = x − max_y x ≤ 0 (−inf, a masked class or a difference that overflows, is held at
    float64's lowest, so that its p is 0 and its log p finite: 0 · log p = 0, never NaN),
    s = Σ_y e^z ∈ [1, C], p = e^z / s, log p = z − log s. One exponential per value, in place
    where it can be.
    """
    p, z, s = _softmax(x)
    z -= np.log(s)
    return p, z, np.einsum("ij,ij->i", p, z)


def log_softmax(x: Any) -> np.ndarray:
    """Row-wise log-softmax in float64 by log-sum-exp (rows with a softmax)."""
    return softmax_terms(x)[1]


def p_log_p(p: np.ndarray) -> np.ndarray:
    """f(p) = p log p elementwise, 0 where p = 0. The one function both f(p_iy) and f(q_y)
    are computed with: equal probabilities give equal values, bit for bit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.log(p)
        f *= p
    zero = p == 0  # 0 · log 0 = 0 · −inf: NaN, where the limit is 0
    if zero.any():
        f[zero] = 0.0
    return np.asarray(f)
