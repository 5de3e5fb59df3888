"""Kernel Inception Distance (Bińkowski, Sutherland, Arbel & Gretton, "Demystifying MMD GANs",
ICLR 2018): the squared MMD between two feature sets under the polynomial kernel
k(x, y) = (x·y/d + 1)³.

By default the unbiased estimator over ALL pairs of the full sets, from the block-pair engine
(:mod:`shardeval.pipeline.pairwise.passes`):

    KID = Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(n(n−1)) − 2 Σ_{i,j} k(x_i, y_j)/(mn)

with its standard error from the Hoeffding decomposition of the three U-statistics (plug-in
estimates of their first- and second-order variance terms and of the covariances between
them), all of which follow from the sums, sums of squares and per-row sums that the pairs
return.

Two inputs that hold the same rows take this estimator too, whether they are one store given
twice, a copy of it, or an array and its copy in memory (which one content digest names as one
store): the estimator must not depend on how the rows arrive, and a byte-identical copy cannot
be told from another set without reading both. The two-sample estimator is what two sets
need, and what the peers compute; on identical rows it comes out below zero, by
2/m·(mean k(x_i, x_i) − mean k(x_i, x_j)), because the rows are no two independent samples.
(A paired estimator, the cross term without its pairs (i, i), would give 0 there, and so a
different number for a copy than for the store itself.)

``subsets``: the protocol of the peers (torch-fidelity's ``mmd_est="unbiased"``, also
torchmetrics', clean-fid's, dgm-eval's): ``subsets`` draws of ``subset_size`` rows from each set
without replacement (``numpy.random.RandomState(seed)``, generated set first), the estimator
above on each draw with the cross term's diagonal kept and divided by m², then the mean and the
standard deviation (ddof = 0) over draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardeval.pipeline.errors import ShapeError
from shardeval.pipeline.pairwise.blocks import CrossSums, SetSums

#: Unit roundoff of float64.
_U64 = 2.0**-53


@dataclass(frozen=True)
class KIDResult:
    """KID and how it was estimated.

    Attributes:
        kid: the MMD² estimate (the mean over subsets with ``subsets``).
        standard_error: its standard error (all pairs), or the standard deviation over subsets
            (ddof = 0, as the peers report).
        n_real, n_gen: rows of each set.
        degree, gamma, coef0: the kernel (γ x·y + c)^degree.
        estimator: ``all pairs`` or ``subsets``.
        subsets, subset_size, seed: the subset protocol's parameters (None for all pairs).
        same_store: both inputs were one store (read once; the estimator is the same).
        rounding_bound: bound on |kid − the estimator in exact arithmetic| (float64 products
            of centred rows; see :mod:`shardeval.kernels.kernel_sums`); for subsets, the mean of the
            subsets' bounds.
        sums: the merged pair sums it comes from (all pairs): the reference's own, the
            generated set's own, and the cross sums; what :func:`mmd2_difference_se` reads of
            two sets against one reference. None for subsets.
    """

    kid: float
    standard_error: float
    n_real: int
    n_gen: int
    degree: int
    gamma: float
    coef0: float
    estimator: str
    subsets: int | None = None
    subset_size: int | None = None
    seed: int | None = None
    same_store: bool = False
    rounding_bound: float = 0.0
    sums: tuple[SetSums, SetSums, CrossSums] | None = field(default=None, repr=False, compare=False)


def kernel_params(
    d: int, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> tuple[float, float, int]:
    """The polynomial kernel's (γ, c, degree); γ defaults to 1/d."""
    return (1.0 / d if gamma is None else float(gamma), float(coef0), int(degree))


def mmd2_rounding(
    xx: SetSums, yy: SetSums, xy: CrossSums, m: int, n: int, *, cross_diagonal: bool = False
) -> float:
    """Bound on the rounding of the unbiased MMD² (or, ``cross_diagonal``, the peers' subset
    estimator, whose cross mean is over m² pairs) from the three sums' bounds: each mean errs
    by its sum's bound over its count plus one rounding, and the final a + b − 2c by three
    more."""
    nxx, nyy, nxy = m * (m - 1), n * (n - 1), (m * m if cross_diagonal else m * n)
    a, b, c = xx.total / nxx, yy.total / nyy, xy.total / nxy
    spread = abs(a) + abs(b) + 2 * abs(c)
    return (
        xx.total_error() / nxx + yy.total_error() / nyy + 2 * xy.total_error() / nxy
    ) + 4 * _U64 * spread


@dataclass(frozen=True)
class _SetTerms:
    """What the generated set Y (n rows) adds to the MMD² against the reference X (m rows):
    its within-set mean B, the cross mean C, the parts of their variances, and each reference
    row's cross mean c_i = Σ_j k(x_i, y_j)/n (whose spread over i is ζ₁₀)."""

    b: float
    c: float
    var_b: float
    var_c: float
    cov_bc: float
    cx_i: np.ndarray


def _set_terms(yy: SetSums, xy: CrossSums, m: int, n: int) -> _SetTerms:
    b = yy.total / (n * (n - 1))
    c = xy.total / (m * n)
    b_j = yy.rows / (n - 1)
    cx_i = xy.rows_x / n
    cy_j = xy.rows_y / m
    zeta2_b = max(yy.squares / (n * (n - 1)) - b * b, 0.0)
    zeta11 = max(xy.squares / (m * n) - c * c, 0.0)
    var_b = (4 * (n - 2) * float(np.var(b_j)) + 2 * zeta2_b) / (n * (n - 1))
    var_c = ((n - 1) * float(np.var(cx_i)) + (m - 1) * float(np.var(cy_j)) + zeta11) / (m * n)
    cov_bc = 2.0 / n * float(np.mean((b_j - b_j.mean()) * (cy_j - cy_j.mean())))
    return _SetTerms(b, c, var_b, var_c, cov_bc, cx_i)


def mmd2_and_se(xx: SetSums, yy: SetSums, xy: CrossSums, m: int, n: int) -> tuple[float, float]:
    """The unbiased MMD² over all pairs and its standard error, from merged pair sums.

    Hoeffding's decomposition of each U-statistic U (A within X, B within Y, C across) gives
    Var(A) = [4(m−2)ζ₁ + 2ζ₂] / (m(m−1)), Var(C) = [(n−1)ζ₁₀ + (m−1)ζ₀₁ + ζ₁₁] / (mn), and the
    covariances Cov(A, C) = (2/m)·cov(a_i, c_i), Cov(B, C) = (2/n)·cov(b_j, c_j) through the
    shared rows; ζ's are estimated by their plug-in sample values from the per-row sums and the
    sums of squares. Var(MMD²) = Var(A) + Var(B) + 4Var(C) − 4Cov(A, C) − 4Cov(B, C).
    """
    a = xx.total / (m * (m - 1))
    a_i = xx.rows / (m - 1)
    t = _set_terms(yy, xy, m, n)
    zeta2_a = max(xx.squares / (m * (m - 1)) - a * a, 0.0)
    var_a = (4 * (m - 2) * float(np.var(a_i)) + 2 * zeta2_a) / (m * (m - 1))
    cov_ac = 2.0 / m * float(np.mean((a_i - a_i.mean()) * (t.cx_i - t.cx_i.mean())))
    var = var_a + t.var_b + 4 * t.var_c - 4 * cov_ac - 4 * t.cov_bc
    return a + t.b - 2 * t.c, math.sqrt(max(var, 0.0))


def mmd2_difference_se(
    a: tuple[SetSums, CrossSums], b: tuple[SetSums, CrossSums], m: int, n_a: int, n_b: int
) -> float:
    """The standard error of MMD²(X, Y) − MMD²(X, Z): two generated sets Y (``n_a`` rows) and
    Z (``n_b`` rows), independent of each other, against one reference X (m rows), from each
    set's own pair sums and its cross sums with X (``a``, ``b``: (own, cross)).

    With A the U-statistic within X, B_Y and B_Z those within Y and Z, and C_XY, C_XZ the
    cross means, MMD²(X, Y) − MMD²(X, Z) = (A + B_Y − 2C_XY) − (A + B_Z − 2C_XZ)
    = B_Y − B_Z − 2C_XY + 2C_XZ: the term within the reference cancels exactly, and with it
    Var(A) and Cov(A, C). Y and Z are independent of each other, so Cov(B_Y, B_Z) =
    Cov(B_Y, C_XZ) = Cov(B_Z, C_XY) = 0, and

        Var = [Var(B_Y) + 4Var(C_XY) − 4Cov(B_Y, C_XY)]
            + [Var(B_Z) + 4Var(C_XZ) − 4Cov(B_Z, C_XZ)] − 8Cov(C_XY, C_XZ),

    each bracket as in :func:`mmd2_and_se`. The two cross means covary through the reference's
    rows alone: Cov(C_XY, C_XZ) = (1/(m² n_a n_b)) Σ_{i,j,i',l} Cov(k(x_i, y_j), k(x_i', z_l)),
    whose terms vanish unless i = i', where Cov(k(x, y), k(x, z)) = Cov(h_Y(x), h_Z(x)) for
    y, z independent, h_Y(x) = E_y k(x, y) (Hoeffding's first projection onto X); the m·n_a·n_b
    such terms give exactly

        Cov(C_XY, C_XZ) = (1/m)·Cov_x(h_Y(x), h_Z(x)),

    estimated by the plug-in covariance over i of the reference rows' cross means
    c^Y_i = Σ_j k(x_i, y_j)/n_a and c^Z_i = Σ_l k(x_i, z_l)/n_b (the per-row sums ``rows_x`` of
    the two cross passes; their errors about h_Y(x_i) and h_Z(x_i) are independent, so they
    add no bias to it). Without the covariance (the two KIDs as independent) the variance
    would count Var(A) twice, less 8Cov(A, C), and miss −8Cov(C_XY, C_XZ).

    Raises:
        ShapeError: the two cross passes are against references of different rows.
    """
    (yy, xy), (zz, xz) = a, b
    if len(xy.rows_x) != m or len(xz.rows_x) != m:
        raise ShapeError(
            f"the cross sums hold {len(xy.rows_x)} and {len(xz.rows_x)} reference rows, not "
            f"{m}: the two sets were not measured against one reference"
        )
    ty, tz = _set_terms(yy, xy, m, n_a), _set_terms(zz, xz, m, n_b)
    cov_cc = float(np.mean((ty.cx_i - ty.cx_i.mean()) * (tz.cx_i - tz.cx_i.mean()))) / m
    var = (
        (ty.var_b + 4 * ty.var_c - 4 * ty.cov_bc)
        + (tz.var_b + 4 * tz.var_c - 4 * tz.cov_bc)
        - 8 * cov_cc
    )
    return math.sqrt(max(var, 0.0))


def subset_mmd2(xx: Any, yy: Any, xy: Any, m: int) -> float:
    """The peers' unbiased estimator on one subset of m rows per set: within-set sums without
    the diagonal over m(m−1), the cross sum with its diagonal over m²."""
    return (xx.total + yy.total) / (m * (m - 1)) - 2.0 * xy.total / (m * m)


def subset_indices(
    n_real: int, n_gen: int, subsets: int, size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows each subset draws, as torch-fidelity draws them: one ``RandomState(seed)``, and
    for each subset the generated set's rows, then the reference's, without replacement.
    Returns (real rows, generated rows) per subset."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(subsets):
        gen_rows = rng.choice(n_gen, size, replace=False)
        real_rows = rng.choice(n_real, size, replace=False)
        out.append((real_rows, gen_rows))
    return out
