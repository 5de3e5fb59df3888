"""Authenticity, AuthPct (Alaa, van Breugel, Saveliev & van der Schaar, "How Faithful is your
Synthetic Data? Sample-level Metrics for Evaluating and Auditing Generative Models", ICML 2022),
as dgm-eval computes it (Stein et al., "Exposing flaws of generative model evaluation metrics
and their unfair treatment of diffusion models", NeurIPS 2023: ``dgm_eval/metrics/authpct.py``),
exact over the full sets.

The reference is the training set T (N rows); the generated set is G (M rows). For each g in G,
t*(g) is its nearest training row, and g is *authentic* when it lies farther from t* than t*
lies from its own nearest other training row:

* t*(g) = argmin_t ‖g − t‖, the first (smallest index) of training rows at one exact distance
  (torch's ``min(dim)``, which dgm-eval takes, returns the first of equal minima)
* r(t) = min_{t' ≠ t} ‖t − t'‖ (another row equal to t counts: r(t) = 0)
* authentic(g) = ‖g − t*(g)‖ > r(t*(g))   (strict: dgm-eval's ``real_min < gen_min``)
* AuthPct = 100 · (1/M) Σ_g authentic(g)

A generated row equal to a training row (distance 0) is never authentic; one at any positive
distance from a duplicated training row (r = 0) always is. Distances are compared squared, in
float64, each exact (fp32 products, close calls recomputed from the rows, as PRDC's radii):
no decision depends on fp32 rounding, on how the sets were cut, or on the order of merges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardeval.pipeline.pairwise.pair_states import Nearest


@dataclass(frozen=True)
class MemorizationResult:
    """AuthPct and each generated row's nearest training row.

    Attributes:
        authpct: percentage of authentic generated rows (0 to 100).
        copies: generated rows equal to some training row (distance exactly 0).
        n_train, n_gen: rows of the training and the generated set.
        nearest_distance: (M,) each generated row's distance to its nearest training row.
        nearest_index: (M,) that training row's index (the first of rows at one distance).
        authentic: (M,) whether each generated row is authentic.
    """

    authpct: float
    copies: int
    n_train: int
    n_gen: int
    nearest_distance: np.ndarray
    nearest_index: np.ndarray
    authentic: np.ndarray


def memorization_from(
    nearest: Nearest, train_sq_radius: np.ndarray, exponent: int = 0
) -> MemorizationResult:
    """AuthPct from the merged nearest rows and the training rows' squared radii.

    Args:
        nearest: per generated row, the exact squared distance to its nearest training row
            and that row's index.
        train_sq_radius: (N,) each training row's exact squared distance to its nearest other
            training row.
        exponent: the rows were compared × 2^-exponent (see
            :func:`shardeval.pipeline.neighbours.prdc.distance_exponent`): the distances
            reported are scaled back, exactly.

    Returns:
        :class:`MemorizationResult`.

    Raises:
        ValueError: a generated row without a nearest training row (an empty pass).

    Example:
        >>> sq = np.array([0.0, 4.0, 1.0])   # three generated rows
        >>> index = np.array([0, 0, 1])
        >>> r = memorization_from(Nearest(sq, index), np.array([1.0, 9.0]))
        >>> r.authpct, r.copies, r.nearest_distance.tolist()
        (33.333333333333336, 1, [0.0, 2.0, 1.0])
    """
    if nearest.index.size and int(nearest.index.max()) >= train_sq_radius.size:
        raise ValueError("a generated row was compared with no training row")
    authentic = nearest.sq > train_sq_radius[nearest.index]
    m = int(authentic.size)
    return MemorizationResult(
        authpct=100.0 * float(np.count_nonzero(authentic)) / m if m else float("nan"),
        copies=int(np.count_nonzero(nearest.sq == 0)),
        n_train=int(train_sq_radius.size),
        n_gen=m,
        nearest_distance=np.ldexp(np.sqrt(nearest.sq), exponent),
        nearest_index=nearest.index.copy(),
        authentic=authentic,
    )
