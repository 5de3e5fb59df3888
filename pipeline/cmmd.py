"""CMMD (Jayasumana et al., "Rethinking FID: Towards a Better Evaluation Metric for Image
Generation", CVPR 2024): the squared MMD between CLIP embeddings under a Gaussian RBF kernel
k(x, y) = exp(−‖x̂ − ŷ‖² / 2σ²), σ = 10, on embeddings scaled to unit norm (x̂ = x/‖x‖: CLIP
image embeddings are normalised; we normalise inside, so raw embeddings give the same value),
reported ×1000.

The reference implementation computes the biased V-statistic (every pair, diagonals
included); that is the default here, over all pairs of the full sets. ``unbiased`` gives the
U-statistic (within-set diagonals left out). Kernel values are all close to 1 (‖x̂ − ŷ‖² ≤ 4, so
k ≥ exp(−0.02)): the block pairs sum the complements 1 − k (computed as −expm1(−t), exact where
k is near 1), in which the three terms do not cancel:

    CMMD_V = 1000 · [2 S̄_xy/(mn) − S̄_xx/m² − S̄_yy/n²],    S̄ = Σ (1 − k).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.pairs import CrossSums, SetSums

#: The reference implementation's bandwidth and scale.
SIGMA = 10.0
SCALE = 1000.0


@dataclass(frozen=True)
class CMMDResult:
    """CMMD and how it was estimated.

    Attributes:
        cmmd: ×``scale`` squared MMD.
        n_real, n_gen: rows of each set.
        sigma: RBF bandwidth (on unit-norm embeddings).
        scale: the factor applied (1000 in the paper).
        estimator: ``V-statistic`` (the reference's) or ``U-statistic``.
        normalised: embeddings were scaled to unit norm before the kernel.
        same_store: both inputs were one store.
    """

    cmmd: float
    n_real: int
    n_gen: int
    sigma: float
    scale: float
    estimator: str
    normalised: bool = True
    same_store: bool = False


def cmmd_from_sums(
    xx: SetSums, yy: SetSums, xy: CrossSums, m: int, n: int, *, unbiased: bool, scale: float
) -> float:
    """×scale MMD² from complement sums (the diagonal complements are exactly 0)."""
    if unbiased:
        within = xx.total / (m * (m - 1)) + yy.total / (n * (n - 1))
    else:
        within = xx.total / (m * m) + yy.total / (n * n)
    return scale * (2.0 * xy.total / (m * n) - within)
