"""Fréchet distance between Gaussians fitted to two feature sets (FID).

    d² = ‖μ_r − μ_g‖² + tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^½

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017; the Fréchet distance of Gaussians is Dowson & Landau, 1982.

The trace term is computed without a matrix square root and without complex numbers: with any
factor F, Σ_g = F Fᵀ (Cholesky, or a symmetric eigendecomposition when Σ_g is singular),
M = Fᵀ Σ_r F is symmetric positive semi-definite and has the eigenvalues of Σ_r Σ_g, so
tr (Σ_r Σ_g)^½ = Σ_i √λ_i(M), with λ from a float64 symmetric eigenvalue routine. Cost: one
Cholesky and one symmetric eigenvalue problem of size d, against the Schur decomposition of a
non-symmetric matrix (``scipy.linalg.sqrtm``) or its complex eigenvalues.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas

from shardeval.pipeline.errors import (
    NumericalError,
    RoundingWarning,
    ShapeError,
    SingularCovarianceWarning,
)
from shardeval.pipeline.fid.gaussian import Gaussian, cholesky_factor

#: Eigenvalues of M below zero are rounding, and are clamped to zero, while they lie within
#: ``rtol × ‖Σ_r‖_F × ‖Σ_g‖_F``: covariances accumulated with fp32 products are exact to about
#: 1e-7 relative, and the perturbation of M is bounded by ‖δΣ_r‖‖Σ_g‖. Anything more negative
#: means a covariance that is not positive semi-definite, and is an error.
DEFAULT_CLAMP_RTOL = 1e-5


@dataclass(frozen=True)
class FrechetDistance:
    """The Fréchet distance and its parts.

    Attributes:
        fid: mean_term + trace_term.
        mean_term: ‖μ_r − μ_g‖².
        trace_real, trace_gen: tr Σ_r, tr Σ_g.
        trace_sqrt: tr (Σ_r Σ_g)^½.
        clamped_count: eigenvalues of M below zero set to zero.
        clamped_max: the largest magnitude among them (0.0 when none).
        warnings: conditions the caller should see (singular covariance).
    """

    fid: float
    mean_term: float
    trace_real: float
    trace_gen: float
    trace_sqrt: float
    clamped_count: int
    clamped_max: float
    warnings: tuple[str, ...] = ()

    def __float__(self) -> float:
        return float(self.fid)

    @property
    def trace_term(self) -> float:
        """tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^½."""
        return self.trace_real + self.trace_gen - 2.0 * self.trace_sqrt


def _psd_factor(cov: np.ndarray, clamp_tol: float) -> tuple[np.ndarray, bool, int, float]:
    """F with F Fᵀ = cov, whether F is the (lower-triangular) Cholesky factor, and the count
    and largest magnitude of negative eigenvalues clamped.

    Cholesky when cov is comfortably positive definite. Otherwise (singular, N ≤ d) F spans only
    the numerical range of cov, from ``eigh``: directions where cov has no variance contribute
    nothing to tr (A cov)^½, and leaving them out keeps their rounding noise (√ of ~1e-16 is
    ~1e-8) out of the trace. Negative eigenvalues within ``clamp_tol`` are counted as clamped.
    """
    factor = cholesky_factor(cov)
    if factor is not None:
        return factor, True, 0, 0.0
    rank_tol = cov.shape[0] * np.finfo(np.float64).eps
    w, v = np.linalg.eigh(cov)
    _, worst = _clamp(w, clamp_tol, "covariance")
    keep = w > rank_tol * max(w.max(), 0.0)
    return v[:, keep] * np.sqrt(w[keep]), False, int(np.count_nonzero(w < 0)), worst


def _congruence(a: np.ndarray, factor: np.ndarray, lower_triangular: bool) -> np.ndarray:
    """Fᵀ A F, symmetrised. A lower-triangular F (Cholesky) takes two triangular products
    (``dtrmm``), half the multiplications of two general ones."""
    if lower_triangular:
        af = blas.dtrmm(1.0, factor, a, side=1, lower=1)  # A L
        m = blas.dtrmm(1.0, factor, af, side=0, lower=1, trans_a=1, overwrite_b=1)  # Lᵀ (A L)
    else:
        m = factor.T @ a @ factor
    return 0.5 * (m + m.T)


def _clamp(eigenvalues: np.ndarray, tol: float, what: str) -> tuple[np.ndarray, float]:
    smallest = float(eigenvalues.min()) if eigenvalues.size else 0.0
    if smallest < -tol:
        raise NumericalError(
            f"{what} is not positive semi-definite: eigenvalue {smallest:.6g} is below the "
            f"rounding tolerance -{tol:.3g}; check the statistics it was built from"
        )
    return np.maximum(eigenvalues, 0.0), max(0.0, -smallest)


def trace_sqrt_product(
    cov_a: np.ndarray, cov_b: np.ndarray, *, clamp_rtol: float = DEFAULT_CLAMP_RTOL
) -> tuple[float, int, float]:
    """tr (A B)^½ for symmetric positive semi-definite A, B, in float64 real arithmetic.

    Args:
        cov_a, cov_b: (d, d) covariances.
        clamp_rtol: relative tolerance for clamping negative eigenvalues (see
            :data:`DEFAULT_CLAMP_RTOL`).

    Returns:
        (trace, number of eigenvalues clamped to zero, largest clamped magnitude).

    Raises:
        NumericalError: an eigenvalue is more negative than the tolerance.

    Example:
        >>> import numpy as np
        >>> a = np.diag([4.0, 9.0]); b = np.diag([1.0, 4.0])
        >>> trace_sqrt_product(a, b)[0]   # √4 + √36
        8.0
    """
    # Each covariance × 4^-e, its largest entry brought near 1 (exact: a power of two), so
    # that Lᵀ A L neither overflows (covariances of features beyond about 1e77: the
    # eigenvalue routine did not converge on inf) nor underflows (below about 1e-150: the
    # trace came out 0); tr (A B)^½ scales back by 2^(e_a + e_b).
    e_a, a = _near_one(np.asarray(cov_a, dtype=np.float64))
    e_b, b = _near_one(np.asarray(cov_b, dtype=np.float64))
    tol = clamp_rtol * float(np.linalg.norm(a)) * float(np.linalg.norm(b))
    factor, triangular, count_b, worst_b = _psd_factor(b, clamp_rtol * float(np.linalg.norm(b)))
    m = _congruence(a, factor, triangular)
    eig = np.linalg.eigvalsh(m)
    clamped, worst = _clamp(eig, tol, "the product of the covariances")
    count = int(np.count_nonzero(eig < 0)) + count_b
    # The clamped magnitudes in the covariances' own units (an eigenvalue of M is of A's
    # units times B's, one of B's factor of B's); beyond float64 they are inf.
    worst = max(_times_two_to(worst, 2 * (e_a + e_b)), _times_two_to(worst_b, 2 * e_b))
    return _times_two_to(float(np.sqrt(clamped).sum()), e_a + e_b), count, worst


def _times_two_to(value: float, exponent: int) -> float:
    """value · 2^exponent: exact, rounded below float64's normal range, inf beyond its largest
    number (where ``math.ldexp`` raises)."""
    with np.errstate(over="ignore"):
        return float(np.ldexp(value, exponent))


def _near_one(cov: np.ndarray) -> tuple[int, np.ndarray]:
    """e and cov × 4^-e with its largest magnitude in [1/4, 1) (e = 0 for a zero matrix)."""
    largest = float(np.abs(cov).max()) if cov.size else 0.0
    if not (0 < largest < math.inf):
        return 0, cov
    exponent = (math.frexp(largest)[1] + 1) // 2
    return exponent, np.ldexp(cov, -2 * exponent)


def frechet_distance(
    real: Gaussian, gen: Gaussian, *, clamp_rtol: float = DEFAULT_CLAMP_RTOL
) -> FrechetDistance:
    """Fréchet distance between N(μ_r, Σ_r) and N(μ_g, Σ_g).

    Args:
        real: reference statistics.
        gen: statistics of the generated set.
        clamp_rtol: see :data:`DEFAULT_CLAMP_RTOL`.

    Returns:
        :class:`FrechetDistance` with the value, its terms and what was clamped.

    Raises:
        ShapeError: the two have different feature dimensions.
        NumericalError: a covariance is not positive semi-definite beyond rounding.

    Example:
        >>> import numpy as np
        >>> r = Gaussian(np.zeros(2), np.eye(2)); g = Gaussian(np.ones(2), 4 * np.eye(2))
        >>> round(frechet_distance(r, g).fid, 12)   # 2 + (2 + 8 − 2·4)
        4.0
    """
    if real.d != gen.d:
        raise ShapeError(
            f"feature dimensions differ: {real.source or 'real'} has d={real.d}, "
            f"{gen.source or 'generated'} has d={gen.d}"
        )
    for g, side in ((real, "real"), (gen, "generated")):
        if not (np.isfinite(g.mean).all() and np.isfinite(g.cov).all()):
            raise NumericalError(
                f"the {side} statistics {g.source!r} hold NaN or inf; recompute them (from "
                "features scaled down, if theirs are of magnitude 1e154 or more: the "
                "covariance of such features is beyond float64)"
            )
    for g, side in ((real, "real"), (gen, "generated")):
        largest = float(np.diagonal(g.cov).max())
        if 0 < largest < sys.float_info.min:
            raise NumericalError(
                f"the {side} statistics {g.source!r} have variances below float64's normal "
                f"range (the largest {largest:.3g}, beneath 2.2e-308), which keep only a few of "
                "their digits: scale the features up (FID scales by the square of the factor)"
            )
    notes = []
    for g, side in ((real, "real"), (gen, "generated")):
        if g.n is not None and g.n <= g.d:
            msg = (
                f"{side} set has n={g.n} <= d={g.d}: its covariance is singular; "
                "FID is still defined but has high variance"
            )
            warnings.warn(msg, SingularCovarianceWarning, stacklevel=2)
            notes.append(msg)
    diff = real.mean - gen.mean
    trace_sqrt, count, worst = trace_sqrt_product(real.cov, gen.cov, clamp_rtol=clamp_rtol)
    # ‖δ‖² of δ brought near 1 by a power of two: neither its squares' underflow nor their
    # overflow decides the term's digits, only whether the term itself is within float64.
    exponent = math.frexp(float(np.abs(diff).max()))[1] if np.any(diff) else 0
    unit = np.ldexp(diff, -exponent)
    mean_term = _times_two_to(float(unit @ unit), 2 * exponent)
    tr_r, tr_g = float(np.trace(real.cov)), float(np.trace(gen.cov))
    fid = mean_term + tr_r + tr_g - 2.0 * trace_sqrt
    if -1e-12 * (mean_term + tr_r + tr_g) <= fid < 0.0:
        # FID ≥ 0: a negative sum this small is the rounding of the traces it cancels
        # (identical sets give ±1e-14 of traces ~1): report the distance, 0.
        fid = 0.0
    if not np.isfinite(fid):
        raise NumericalError(
            f"FID overflowed float64 (mean term {mean_term:.3g}, traces {tr_r:.3g} and "
            f"{tr_g:.3g}); rescale the features"
        )
    return FrechetDistance(fid, mean_term, tr_r, tr_g, trace_sqrt, count, worst, tuple(notes))


def warn_if_rounding_reached_spectrum(result: FrechetDistance, fp32_products: bool) -> None:
    """Warn when fp32 products left eigenvalues below zero: the covariances have directions
    of (near) zero variance that fp32 rounding cannot resolve, and FID can be off by ~1e-3
    (``shardeval fid`` recomputes with float64 products; elsewhere pass fp64 precision).
    ``fp32_products``: either side's moments took fp32 products (sides of n ≤ d take float64
    whatever was asked, and their clamped eigenvalues are true zeros)."""
    if result.clamped_count and fp32_products:
        warnings.warn(
            f"with fp32 products {result.clamped_count} eigenvalues fell below zero (a "
            "covariance of lower rank than d, as a set of repeated rows has): FID may be off by "
            "about 1e-3; compute with «precision='fp64'»",
            RoundingWarning,
            stacklevel=2,
        )
