"""Precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila, "Improved Precision and
Recall Metric for Assessing Generative Models", NeurIPS 2019) and density and coverage (Naeem,
Oh, Uh, Choi & Yoo, "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020),
exact over the full sets.

With real rows X (N), generated rows Y (M), NND_k(z) the distance from z to its k-th nearest
other point of its own set:

* precision = (1/M) Σ_j 1[∃i: ‖x_i − y_j‖ ≤ NND_k'(x_i)]      (k' = ``pr_k``, 3)
* recall    = (1/N) Σ_i 1[∃j: ‖x_i − y_j‖ ≤ NND_k'(y_j)]
* density   = 1/(kM) Σ_j Σ_i 1[‖x_i − y_j‖ < NND_k(x_i)]     (k = ``k``, 5)
* coverage  = (1/N) Σ_i 1[∃j: ‖x_i − y_j‖ < NND_k(x_i)]

and, per generated row y, the realism score of Kynkäänniemi et al. (Sec. 5):

* R(y) = max_{x_i ∈ X'} NND_k'(x_i) / ‖x_i − y‖, where X' keeps the reference rows whose
  radius is at most the median radius (the half with the largest radii discarded:
  :func:`realism_radii`)

"Inside" is ≤ for precision and recall (the 2019 definition) and strict < for density and
coverage (the 2020 reference code); they differ only on exact ties. The radii come from one pass
over each set's own block pairs, the tests from one pass over the cross pairs; every distance
and decision is exact in float64 (fp32 products, near-ties re-decided from the rows).

All four compare distances with radii, so they do not change when both sets are scaled by one
factor. Float64 squared distances of rows beyond about 1e154 overflow, and below about 1e-154
they underflow: float64 rows that far out are scaled by a common power of two first
(:func:`distance_exponent`), which is exact, so the decisions are those of the rows as given.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shardeval.pipeline.core.states import Magnitudes
from shardeval.pipeline.errors import NumericalError
from shardeval.pipeline.neighbours.intervals import PRDCErrors, standard_errors
from shardeval.pipeline.pairwise.blocks import Decisions, Neighbours

#: Float64 rows whose largest magnitude lies in [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT] are
#: compared as they are: their squared distances neither overflow (d·4·2^128 is far below
#: 1.8e308) nor lose digits to subnormals on the scale of the rows.
SAFE_EXPONENT = 64


@dataclass(frozen=True)
class PRDCResult:
    """Precision, recall, density and coverage.

    Attributes:
        precision, recall: Kynkäänniemi et al. 2019, with ``pr_k`` neighbours.
        density, coverage: Naeem et al. 2020, with ``k`` neighbours.
        n_real, n_gen: rows of each set.
        k, pr_k: the neighbour counts.
        uncertain: comparisons re-decided in float64 (near-ties of fp32 distances).
        errors: their conditional standard errors
            (:mod:`shardeval.pipeline.neighbours.intervals`), or None where not asked.
        realism: (M,) each generated row's realism score (:func:`realism_from`), or None
            where not asked.
    """

    precision: float
    recall: float
    density: float
    coverage: float
    n_real: int
    n_gen: int
    k: int
    pr_k: int
    uncertain: int
    errors: PRDCErrors | None = None
    realism: np.ndarray | None = None


def radii(neighbours: Neighbours, k: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row (exact float64)."""
    return neighbours.sq[:, k - 1]


def realism_radii(sq_radii: np.ndarray) -> np.ndarray:
    """The reference rows' squared radii that count for the realism score, 0 for the others:
    the half with the largest radii is discarded.

    Kynkäänniemi et al. (NeurIPS 2019, Sec. 5) discard "half of the hyperspheres with the
    largest radii"; their code (``ManifoldEstimator(..., clamp_to_percentile=50)``) sets to 0
    every radius above ``np.percentile(radii, 50)``, the median (for an even N, the mean of
    the two middle radii). The rows kept are therefore those whose radius is at most the
    ⌈N/2⌉-th smallest radius: for an odd N that is the median; for an even N every radius
    above the lower middle one is at least the upper middle one, which exceeds the median
    unless the two are equal (then both are kept). Ties at the threshold are all kept. Taken
    as an order statistic, the rule is exact: no mean of two radii is rounded.

    A row that counts but has radius 0 (k copies of it in the reference) would give 0/0 for
    a generated row equal to it; it is left out, as in the reference code, where its ratio
    0 / (0 + 1e-5) is 0.

    Args:
        sq_radii: (N,) squared distances of each reference row to its k-th nearest other row.

    Returns:
        (N,) float64: the squared radius where the row counts, else 0.

    Example:
        >>> realism_radii(np.array([4.0, 1.0, 9.0, 1.0])).tolist()   # ⌈4/2⌉-th smallest: 1
        [0.0, 1.0, 0.0, 1.0]
        >>> realism_radii(np.array([4.0, 1.0, 9.0])).tolist()        # the median, 4
        [4.0, 1.0, 0.0]
    """
    r = np.asarray(sq_radii, dtype=np.float64)
    if r.size == 0:
        return r.copy()
    threshold = np.partition(r, (r.size + 1) // 2 - 1)[(r.size + 1) // 2 - 1]
    return np.where(r <= threshold, r, 0.0)


def realism_from(ratio: np.ndarray) -> np.ndarray:
    """Realism scores from the merged largest squared ratios r_i / ‖x_i − y‖²
    (:class:`~shardeval.pipeline.pairwise.pair_states.Realism`): their square roots.

    R(y) = max_i NND_k(x_i) / ‖x_i − y‖ over the rows that count
    (:func:`realism_radii`); a square root is monotone, so it is √ of the largest ratio of
    squares, and the same whatever unit the rows were compared in. inf: y equals a row that
    counts; 0: every row that counts has radius 0 (or none counts).

    The reference code (``precision_recall.py``) reports the ratio of *squared* distances
    with 1e-5 added to the denominator, max_i NND_k(x_i)² / (‖x_i − y‖² + 1e-5): about R²,
    which ranks the rows alike.

    Example:
        >>> realism_from(np.array([4.0, 0.25, np.inf])).tolist()
        [2.0, 0.5, inf]
    """
    return np.sqrt(np.asarray(ratio, dtype=np.float64))


def prdc_from(
    decisions: Decisions,
    n_real: int,
    n_gen: int,
    k: int,
    pr_k: int,
    groups: int = 0,
    realism: np.ndarray | None = None,
) -> PRDCResult:
    """The four values from the merged radius tests, and with ``groups`` (coverage's
    jackknife groups, which the tests recorded) their standard errors; ``realism``: the
    merged squared ratios of the realism score (:func:`realism_from`)."""
    return PRDCResult(
        precision=float(decisions.y_within.mean()),
        recall=float(decisions.x_within.mean()),
        density=float(decisions.y_count.sum()) / (k * n_gen),
        coverage=float(decisions.x_covered.mean()),
        n_real=n_real,
        n_gen=n_gen,
        k=k,
        pr_k=pr_k,
        uncertain=decisions.uncertain,
        errors=standard_errors(decisions, k, groups) if groups else None,
        realism=None if realism is None else realism_from(realism),
    )


def sets_exponent(magnitudes: Sequence[Magnitudes], locations: Sequence[str]) -> int:
    """:func:`distance_exponent` of several sets' values together (one factor for all of
    them), the sets named by their locations."""
    spread = magnitudes[0]
    for more in magnitudes[1:]:
        spread = spread.merge(more)
    return distance_exponent(spread, " and ".join(repr(location) for location in locations))


def distance_exponent(magnitudes: Magnitudes, names: str) -> int:
    """e such that rows × 2^-e have their largest magnitude in [1/2, 1), or 0 when the rows
    are within :data:`SAFE_EXPONENT` of 1 already (or all zero).

    Scaling by 2^-e is exact while no nonzero value falls below float64's normal range
    (2^-1022) on the way; scaling up always is.

    Args:
        magnitudes: the range of both sets' values together (one factor for both: radii and
            distances are compared).
        names: the sets, as messages name them.

    Returns:
        The exponent (0: compare the rows as they are).

    Raises:
        NumericalError: the values span more than float64's normal range can hold after any
            one scaling (nonzero magnitudes more than 2^1021 apart, with the largest beyond
            2^64).

    Example:
        >>> distance_exponent(Magnitudes(3e300, 1e290), "x")   # 3e300 = 0.56 · 2^999
        999
        >>> distance_exponent(Magnitudes(4.0, 1e-9), "x")
        0
    """
    largest, smallest = magnitudes.largest, magnitudes.smallest
    if not (0 < largest < math.inf):
        return 0
    exponent = math.frexp(largest)[1]
    if abs(exponent) <= SAFE_EXPONENT:
        return 0
    if math.ldexp(smallest, -exponent) < sys.float_info.min:
        raise NumericalError(
            f"{names} hold values from {smallest:.3g} to {largest:.3g}: float64 squared "
            "distances need rows within float64's range after one scaling by a power of two, "
            f"and values below {math.ldexp(sys.float_info.min, exponent):.3g} would be rounded "
            "on the way; set the smallest to 0 if they are noise, or compare features of a "
            "narrower range"
        )
    return exponent
