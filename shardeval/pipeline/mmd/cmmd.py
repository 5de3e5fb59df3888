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

Its standard error is the U-statistic's, from the Hoeffding decomposition KID's takes
(:func:`shardeval.pipeline.mmd.kid.mmd2_and_se`) on the same per-row sums: 1 − k is an affine
map of k, which changes the sign of the MMD² formed from the sums and none of its variance
terms. The V-statistic (the default) is not the U-statistic: with ā, b̄ the mean complements
within each set over their pairs i ≠ j,

    CMMD_V = CMMD_U + 1000 · (ā/m + b̄/n),

a bias of O(1/m + 1/n), whose own spread is O(m^(−3/2) + n^(−3/2)); the U-statistic's standard
error is reported for both (for the V-statistic its interval is one about the V-statistic's own
mean, not about the squared MMD).
"""

from __future__ import annotations

from dataclasses import dataclass

from shardeval.pipeline.errors import NumericalError
from shardeval.pipeline.mmd.kid import mmd2_and_se
from shardeval.pipeline.pairwise.blocks import CrossSums, SetSums

#: Unit roundoff of float64.
_U64 = 2.0**-53


@dataclass(frozen=True)
class CMMDResult:
    """CMMD and how it was estimated.

    Attributes:
        cmmd: ×``scale`` squared MMD.
        standard_error: ×``scale`` the standard error of the U-statistic (also given for the
            V-statistic, from which it differs by O(1/n); see the module's text).
        n_real, n_gen: rows of each set.
        sigma: RBF bandwidth (on unit-norm embeddings).
        scale: the factor applied (1000 in the paper).
        estimator: ``V-statistic`` (the reference's) or ``U-statistic``.
        normalised: embeddings were scaled to unit norm before the kernel.
        same_store: both inputs were one store (read once; the estimator is the same, as
            for KID: see :mod:`shardeval.pipeline.mmd.kid`).
        rounding_bound: bound on |cmmd − the estimator in exact arithmetic| (float64
            products of centred unit rows; see :mod:`shardeval.kernels.kernel_sums`).
        clamped: the V-statistic came out below zero by less than its rounding bound and is
            reported as 0 (a squared norm is never negative).
    """

    cmmd: float
    standard_error: float
    n_real: int
    n_gen: int
    sigma: float
    scale: float
    estimator: str
    normalised: bool = True
    same_store: bool = False
    rounding_bound: float = 0.0
    clamped: bool = False


def cmmd_from_sums(
    xx: SetSums, yy: SetSums, xy: CrossSums, m: int, n: int, *, unbiased: bool, scale: float
) -> tuple[float, float, bool]:
    """×scale MMD² from complement sums (the diagonal complements are exactly 0), its
    rounding bound, and whether a V-statistic below zero by rounding was clamped to 0.

    Raises:
        NumericalError: a V-statistic below zero by more than its rounding bound (it is a
            squared norm: that would be a defect, never a result).
    """
    nxx, nyy = (m * (m - 1), n * (n - 1)) if unbiased else (m * m, n * n)
    a, b, c = xx.total / nxx, yy.total / nyy, xy.total / (m * n)
    value = scale * (2.0 * c - a - b)
    bound = scale * (
        xx.total_error() / nxx
        + yy.total_error() / nyy
        + 2 * xy.total_error() / (m * n)
        + 5 * _U64 * (abs(a) + abs(b) + 2 * abs(c))
    )
    if unbiased or value >= 0:
        return value, bound, False
    if value + bound < 0:
        raise NumericalError(
            f"the CMMD V-statistic came out {value:.3g}, below zero by more than its rounding "
            f"bound {bound:.2g}; it is a squared norm and cannot be negative"
        )
    return 0.0, bound, True


def cmmd_standard_error(
    xx: SetSums, yy: SetSums, xy: CrossSums, m: int, n: int, *, scale: float
) -> float:
    """×scale the standard error of the U-statistic of MMD², from complement sums.

    :func:`~shardeval.pipeline.mmd.kid.mmd2_and_se` on the sums of 1 − k: their MMD² is minus
    the kernel's (a + b − 2c of the complements is 2c − a − b of k), and every variance and
    covariance of its Hoeffding decomposition is that of k (a shift and a sign leave a variance
    as it is). The sums hold no diagonal (1 − k(x, x) = 0 exactly), as that function takes.

    Args:
        xx, yy: complement sums within the reference (m rows) and the generated set (n rows).
        xy: complement sums across them.
        m, n: rows of each set (at least 2).
        scale: the factor of the reported CMMD (1000).

    Returns:
        The standard error, ≥ 0 (0 where every row's kernel sums are equal).
    """
    _, error = mmd2_and_se(xx, yy, xy, m, n)
    return scale * error
