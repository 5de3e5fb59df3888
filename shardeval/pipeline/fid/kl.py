"""Kullback–Leibler divergences between the Gaussians fitted to two feature sets, both ways,
with the entropies and cross-entropies beside them, in closed form in float64.

With p = N(μ_p, Σ_p) the reference's Gaussian, q = N(μ_q, Σ_q) the generated set's,
δ = μ_q − μ_p and d features,

    KL(p‖q) = ½ [tr(Σ_q⁻¹Σ_p) + δᵀΣ_q⁻¹δ − d + ln det Σ_q − ln det Σ_p]     (forward)
    KL(q‖p) = ½ [tr(Σ_p⁻¹Σ_q) + δᵀΣ_p⁻¹δ − d + ln det Σ_p − ln det Σ_q]     (reverse)
    H(p)    = ½ [d (1 + ln 2π) + ln det Σ_p],   H(p, q) = H(p) + KL(p‖q)   (nats)

(Kullback & Leibler, "On information and sufficiency", 1951; the Gaussian case is e.g.
Duchi, "Derivations for linear algebra and optimization", §9). KL(p‖q) is the mode-covering
direction: it grows where the reference has mass the generated set lacks.

Numerics. The trace and the log-determinants are not formed apart (each of order d, while
the divergence may be far smaller): with Cholesky factors Σ = L Lᵀ and A = L_q⁻¹ L_p (a
triangular solve), the eigenvalues μ_i of Σ_q⁻¹Σ_p are those of the symmetric A Aᵀ (where
they spread over more than four decades, each from A Aᵀ or, the small ones, as reciprocals
of those of its inverse's, whichever keeps more of its digits), those of Σ_p⁻¹Σ_q their
reciprocals (one spectrum serves both directions), and

    tr(Σ_q⁻¹Σ_p) − d + ln det Σ_q − ln det Σ_p = Σ_i (μ_i − 1 − ln μ_i),

each term ≥ 0 and computed as x − log1p(x), x = μ_i − 1, so that a divergence near 0 keeps
its digits and never comes out negative. The Mahalanobis term is ‖L_q⁻¹δ‖² (‖L_p⁻¹δ‖²
reverse).

A covariance of rank below d (n ≤ d rows, repeated or linearly dependent rows) makes both
divergences infinite (a degenerate Gaussian has no density): it is refused, naming the
covariance, its smallest and largest eigenvalue and the relative tolerance
(:data:`SINGULAR_RTOL`) — never a finite number made of rounding. ``ridge`` ε adds εI to both
covariances (in the features' squared units), which makes them definite; it changes the
divergence, and the report says so.

Rounding. The moments' products (fp32 or float64 inside a shard) perturb each covariance by
about e = ``PRODUCTS_RTOL[products]``·‖Σ‖₂, and the divergence moves, to first order, by at
most ½ e_p (tr Σ_p⁻¹ + tr Σ_q⁻¹) + ½ e_q (tr Σ_q⁻¹ + (tr Σ_q⁻¹Σ_p + δᵀΣ_q⁻¹δ)/λ_min(Σ_q))
(the gradients ½(Σ_q⁻¹ − Σ_p⁻¹) and ½(Σ_q⁻¹ − Σ_q⁻¹(Σ_p + δδᵀ)Σ_q⁻¹) against a perturbation
of spectral norm e; the nuclear norms bounded by traces), and likewise the reverse.
:func:`kl_gaussian` returns that bound. The plug-in reads the moments of rows with float64
products (fp32 ones' bound would exceed :data:`ROUNDING_RTOL` of the result but for
well-conditioned covariances), and refuses a result whose bound still exceeds it
(covariances too ill-conditioned for the divergence to have digits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.fid.gaussian import Gaussian

#: A covariance whose smallest eigenvalue is at most this fraction of its largest is singular
#: to float64 working precision (n ≤ d rows leave zeros that rounding puts near ±1e-16 of the
#: largest): the divergence is infinite, and refused.
SINGULAR_RTOL = 1e-12

#: Relative size of the perturbation of a covariance by its moments' products, by their
#: precision (``None``: statistics given as they are, taken as float64 numbers): fp32 products
#: are exact to about 1e-7, with margin (FID's clamping tolerance); float64 ones to ~1e-16.
PRODUCTS_RTOL = {"fp32": 1e-5, "fp64": 1e-13, None: 1e-13}

#: The rounding bound may be at most this fraction of the larger divergence (or of one nat,
#: when both are below one).
ROUNDING_RTOL = 1e-4

#: Below this ratio of the smallest to the largest eigenvalue of Σ_q⁻¹Σ_p, the small
#: eigenvalues come from the reciprocal problem Σ_p⁻¹Σ_q, where they are the large ones.
SPECTRUM_SPREAD = 1e-4

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class GaussianKL:
    """Both divergences between two Gaussians and their parts, in nats.

    Attributes:
        forward: KL(p‖q), p the reference's Gaussian and q the generated set's.
        reverse: KL(q‖p).
        mean_term: ½ δᵀΣ_q⁻¹δ, the forward divergence's part from the means.
        mean_term_reverse: ½ δᵀΣ_p⁻¹δ.
        entropy_real: H(p) = ½ [d (1 + ln 2π) + ln det Σ_p].
        entropy_gen: H(q).
        d: features.
        condition_real, condition_gen: λ_max/λ_min of each covariance (after the ridge).
        rounding_bound: first-order bound on how far the products' rounding moves either
            divergence (see the module's text; 0 when ``products`` were not given).
        ridge: ε added to both covariances' diagonals.
    """

    forward: float
    reverse: float
    mean_term: float
    mean_term_reverse: float
    entropy_real: float
    entropy_gen: float
    d: int
    condition_real: float
    condition_gen: float
    rounding_bound: float = 0.0
    ridge: float = 0.0

    @property
    def cross_entropy(self) -> float:
        """H(p, q) = H(p) + KL(p‖q) = −E_p ln q."""
        return self.entropy_real + self.forward

    @property
    def cross_entropy_reverse(self) -> float:
        """H(q, p) = H(q) + KL(q‖p) = −E_q ln p."""
        return self.entropy_gen + self.reverse

    def rounding_exceeds(self) -> bool:
        """Whether :attr:`rounding_bound` exceeds :data:`ROUNDING_RTOL` of the result."""
        return self.rounding_bound > ROUNDING_RTOL * max(self.forward, self.reverse, 1.0)


@dataclass(frozen=True)
class _Factor:
    """A definite covariance: its Cholesky factor, ln det, extreme eigenvalues, tr Σ⁻¹."""

    lower: np.ndarray
    logdet: float
    smallest: float
    largest: float
    trace_inverse: float


def _factor(cov: np.ndarray, ridge: float, what: str, n: int | None) -> _Factor:
    """Σ + εI factored, or NumericalError when it is singular to working precision."""
    sym = 0.5 * (cov + cov.T)
    if ridge:
        sym = sym + ridge * np.eye(sym.shape[0])
    try:
        eig = np.linalg.eigvalsh(sym)
    except np.linalg.LinAlgError as exc:
        raise NumericalError(f"the eigenvalues of {what} cannot be computed: {exc}") from exc
    smallest, largest = float(eig[0]), float(eig[-1])
    d = sym.shape[0]
    if not largest > 0 or smallest <= SINGULAR_RTOL * largest:
        why = (
            f"n = {n} rows ≤ d = {d} leave it rank ≤ n − 1"
            if n is not None and n <= d
            else "its rows are repeated or linearly dependent"
        )
        raise NumericalError(
            f"{what} is singular: its smallest eigenvalue {smallest:.3g} is at most "
            f"{SINGULAR_RTOL:g} × its largest ({largest:.3g}), the relative tolerance below "
            f"which float64 cannot tell it from 0 ({why}); a Gaussian of rank below d has no "
            "density, and KL both ways is infinite. Give more rows, or «ridge» ε to add εI "
            "(the result then depends on ε)"
        )
    try:
        lower = np.linalg.cholesky(sym)
    except np.linalg.LinAlgError as exc:  # pragma: no cover - eigvalsh said definite
        raise NumericalError(f"{what} has no Cholesky factor: {exc}") from exc
    return _Factor(
        lower,
        2.0 * float(np.log(np.diagonal(lower)).sum()),
        smallest,
        largest,
        float((1.0 / eig).sum()),
    )


def _divergence_terms(mu: np.ndarray) -> float:
    """Σ (μ − 1 − ln μ), each term ≥ 0, as x − log1p(x) with x = μ − 1."""
    x = mu - 1.0
    return float(np.maximum(x - np.log1p(x), 0.0).sum())


def _mahalanobis(factor: _Factor, delta: np.ndarray) -> float:
    """δᵀΣ⁻¹δ = ‖L⁻¹δ‖²."""
    z = solve_triangular(factor.lower, delta, lower=True, check_finite=False)
    return float(z @ z)


def _spectrum(p: _Factor, q: _Factor) -> np.ndarray:
    """The eigenvalues μ of Σ_q⁻¹Σ_p, those of M = A Aᵀ with A = L_q⁻¹L_p. Those of Σ_p⁻¹Σ_q
    are their reciprocals (A⁻¹ = L_p⁻¹L_q), so one spectrum serves both directions.

    A symmetric eigenvalue routine gives each μ to ε·μ_max, so a small one to ε·μ_max/μ
    relative: used alone while μ_max/μ_min stays below 1/:data:`SPECTRUM_SPREAD` (a few
    1e-12 relative at worst). Beyond, the reciprocal problem's too: N = B Bᵀ, B = L_p⁻¹L_q, has
    the eigenvalues 1/μ, each to ε/μ_min, so a small μ is taken as the reciprocal of N's
    eigenvalue, a large one from M, each from the problem where it is large: every μ to
    ε·√(μ_max/μ_min) relative, at the cost of a second eigenvalue problem."""
    a = solve_triangular(q.lower, p.lower, lower=True, check_finite=False)
    m = a @ a.T
    mu = np.asarray(np.linalg.eigvalsh(0.5 * (m + m.T)), dtype=np.float64)
    if mu[0] > SPECTRUM_SPREAD * mu[-1]:
        return mu
    b = solve_triangular(p.lower, q.lower, lower=True, check_finite=False)
    n = b @ b.T
    # ascending, as mu: N's largest eigenvalue is 1/μ_min
    reciprocal = 1.0 / np.asarray(np.linalg.eigvalsh(0.5 * (n + n.T)), dtype=np.float64)[::-1]
    split = math.sqrt(mu[-1] * reciprocal[0])
    return np.where(mu >= split, mu, reciprocal)


def _bound(
    p: _Factor, q: _Factor, e_p: float, e_q: float, trace: float, mahalanobis: float
) -> float:
    """First-order bound on the change of KL(p‖q) when Σ_p, Σ_q move by e_p, e_q (spectral
    norm): see the module's text."""
    grad_p = p.trace_inverse + q.trace_inverse
    grad_q = q.trace_inverse + (trace + mahalanobis) / q.smallest
    return 0.5 * (e_p * grad_p + e_q * grad_q)


def kl_gaussian(
    real: Gaussian,
    gen: Gaussian,
    *,
    ridge: float = 0.0,
    products: tuple[str | None, str | None] | None = None,
) -> GaussianKL:
    """KL divergences both ways between N(μ_r, Σ_r) (p) and N(μ_g, Σ_g) (q), in nats.

    Args:
        real: the reference's mean and covariance (p).
        gen: the generated set's (q).
        ridge: ε ≥ 0 added to both covariances' diagonals (0: none).
        products: the precision of each side's moments' products (``fp32``, ``fp64``, or None
            for statistics given as they are), for the rounding bound; None: no bound.

    Returns:
        :class:`GaussianKL`.

    Raises:
        ShapeError: the two have different feature dimensions.
        NumericalError: non-finite statistics, a negative ridge, or a covariance singular to
            float64 working precision (named, with its extreme eigenvalues; the divergence is
            infinite).

    Example:
        >>> r = Gaussian(np.zeros(2), np.eye(2)); g = Gaussian(np.ones(2), 4 * np.eye(2))
        >>> kl = kl_gaussian(r, g)
        >>> round(kl.forward, 12) == round(0.5 * (2 / 4 + 2 / 4 - 2 + 2 * math.log(4)), 12)
        True
        >>> round(kl.reverse, 12) == round(0.5 * (8 + 2 - 2 - 2 * math.log(4)), 12)
        True
    """
    if real.d != gen.d:
        raise ShapeError(
            f"feature dimensions differ: {real.source or 'real'} has d={real.d}, "
            f"{gen.source or 'generated'} has d={gen.d}"
        )
    if not (math.isfinite(ridge) and ridge >= 0):
        raise NumericalError(f"«ridge» must be a finite number ≥ 0, got {ridge!r}")
    for g, side in ((real, "reference"), (gen, "generated")):
        if not (np.isfinite(g.mean).all() and np.isfinite(g.cov).all()):
            raise NumericalError(f"the {side} statistics {g.source!r} hold NaN or inf")
    sides = []
    for g, side in ((real, "reference"), (gen, "generated")):
        what = f"the {side} covariance" + (f" (of {g.source!r})" if g.source else "")
        sides.append(_factor(np.asarray(g.cov, dtype=np.float64), ridge, what, g.n))
    p, q = sides
    delta = np.asarray(gen.mean, dtype=np.float64) - np.asarray(real.mean, dtype=np.float64)
    mu = _spectrum(p, q)
    mahalanobis_q, mahalanobis_p = _mahalanobis(q, delta), _mahalanobis(p, delta)
    forward = 0.5 * (_divergence_terms(mu) + mahalanobis_q)
    reverse = 0.5 * (_divergence_terms(1.0 / mu) + mahalanobis_p)
    mean_forward, mean_reverse = 0.5 * mahalanobis_q, 0.5 * mahalanobis_p
    trace_forward, trace_reverse = float(mu.sum()), float((1.0 / mu).sum())
    d = real.d
    bound = 0.0
    if products is not None:
        e_p, e_q = (PRODUCTS_RTOL[k] * f.largest for k, f in zip(products, sides, strict=True))
        bound = max(
            _bound(p, q, e_p, e_q, trace_forward, 2 * mean_forward),
            _bound(q, p, e_q, e_p, trace_reverse, 2 * mean_reverse),
        )
    if not (math.isfinite(forward) and math.isfinite(reverse)):
        raise NumericalError(
            f"the divergence overflowed float64 (KL(p‖q) {forward:.3g}, KL(q‖p) {reverse:.3g})"
        )
    return GaussianKL(
        forward=forward,
        reverse=reverse,
        mean_term=mean_forward,
        mean_term_reverse=mean_reverse,
        entropy_real=0.5 * (d * (1.0 + _LOG_2PI) + p.logdet),
        entropy_gen=0.5 * (d * (1.0 + _LOG_2PI) + q.logdet),
        d=d,
        condition_real=p.largest / p.smallest,
        condition_gen=q.largest / q.smallest,
        rounding_bound=bound,
        ridge=ridge,
    )


__all__ = [
    "PRODUCTS_RTOL",
    "ROUNDING_RTOL",
    "SINGULAR_RTOL",
    "SPECTRUM_SPREAD",
    "GaussianKL",
    "kl_gaussian",
]
