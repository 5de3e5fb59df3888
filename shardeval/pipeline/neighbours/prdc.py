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

"Inside" is ≤ for precision and recall (the 2019 definition) and strict < for density and
coverage (the 2020 reference code); they differ only on exact ties. The radii come from one pass
over each set's own block pairs, the tests from one pass over the cross pairs; every distance
and decision is exact in float64 (fp32 products, near-ties re-decided from the rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardeval.pipeline.pairwise.blocks import Decisions, Neighbours

#: Neighbours of density and coverage (Naeem et al.'s 5) and of precision and recall
#: (Kynkäänniemi et al.'s 3).
K = 5
PR_K = 3


@dataclass(frozen=True)
class PRDCResult:
    """Precision, recall, density and coverage.

    Attributes:
        precision, recall: Kynkäänniemi et al. 2019, with ``pr_k`` neighbours.
        density, coverage: Naeem et al. 2020, with ``k`` neighbours.
        n_real, n_gen: rows of each set.
        k, pr_k: the neighbour counts.
        uncertain: comparisons re-decided in float64 (near-ties of fp32 distances).
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


def radii(neighbours: Neighbours, k: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row (exact float64)."""
    return neighbours.sq[:, k - 1]


def prdc_from(decisions: Decisions, n_real: int, n_gen: int, k: int, pr_k: int) -> PRDCResult:
    """The four values from the merged radius tests."""
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
    )
