"""Independent float64 references the tests compare against: the definitions on the
concatenated data, and the peers' published FID formulas."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def np_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass float64 mean and np.cov (ddof=1) of all rows."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def exact_trace_sqrt(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^½ via Σ1^½ Σ2 Σ1^½ (a different factorisation from the library's)."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum())


def exact_fid(mu1, s1, mu2, s2) -> float:
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * exact_trace_sqrt(s1, s2))


def pytorch_fid_formula(mu1, s1, mu2, s2, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance as published: scipy sqrtm, real part."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def eigvals_formula(mu1, s1, mu2, s2) -> float:
    """torchmetrics' form: complex eigenvalues of Σ1 Σ2, square roots, real part."""
    diff = mu1 - mu2
    c = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * c)


def high_precision_fid(mu1, s1, mu2, s2, digits: int = 40) -> float:
    """FID in ``digits``-digit arithmetic (mpmath) from the float64 inputs taken as exact.

    For singular covariances, where float64 leaves √(rounding) ~ 1e-8 terms in any method.
    """
    import mpmath

    with mpmath.workdps(digits):
        a, b = mpmath.matrix(s1.tolist()), mpmath.matrix(s2.tolist())
        w, v = mpmath.eigsy(a)
        d = len(w)
        root = mpmath.matrix(d, d)
        for k in range(d):
            if w[k] > 0:
                col = v[:, k]
                root += mpmath.sqrt(w[k]) * (col * col.T)
        lam = mpmath.eigsy(root * b * root, eigvals_only=True)
        tr = sum(mpmath.sqrt(x) for x in lam if x > 0)
        diff = sum((mpmath.mpf(p) - mpmath.mpf(q)) ** 2 for p, q in zip(mu1, mu2, strict=True))
        return float(diff + sum(a[i, i] + b[i, i] for i in range(d)) - 2 * tr)


def gaussian_nll_in_sample(x: np.ndarray) -> float:
    """Mean NLL of the rows of ``x`` under their own Gaussian (np.cov, ddof = 1), in closed
    form: the mean Mahalanobis term is tr(Σ⁻¹ Σ_mle) = d(n−1)/n, so
    NLL = ½·d(n−1)/n + ½ log det Σ + (d/2) log 2π."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    _, logdet = np.linalg.slogdet(np.cov(x, rowvar=False))
    return 0.5 * d * (n - 1) / n + 0.5 * logdet + 0.5 * d * np.log(2 * np.pi)


# --- exact arithmetic for the estimators that cancel (KID, CMMD) ---------------------------


def _dyadic_ints(*arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The arrays' float values as Python integers times 2^-shift, exactly (floats are
    dyadic rationals), with one shift for all."""
    values = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    nonzero = values[values != 0]
    shift = 0
    if nonzero.size:
        _, exponents = np.frexp(nonzero)
        shift = int(53 - exponents.min())
    out = []
    for a in arrays:
        flat = [int(np.ldexp(v, shift)) for v in np.asarray(a, np.float64).ravel()]
        out.append(np.array(flat, dtype=object).reshape(np.shape(a)))
    return out, shift


def exact_poly_sums(x, y, gamma, coef0, degree, centre=None, diagonal=False):
    """(Σ over pairs of (γ x·y + c)^D − P^D, the same for the diagonal alone), exactly, as
    Fractions: P = γ o·o + c for the centre o, γ and c the floats given, taken exactly.

    Integer arithmetic throughout: with every float an integer times 2^-shift and γ, c
    fractions of powers of two, γ x·y + c = N / Q for integers N (per pair) and Q."""
    from fractions import Fraction

    centre = np.zeros(np.shape(x)[1]) if centre is None else np.asarray(centre, np.float64)
    (xi, yi, oi), shift = _dyadic_ints(x, y, centre)
    g, c = Fraction(float(gamma)), Fraction(float(coef0))
    unit = 2 ** (2 * shift)
    q = g.denominator * c.denominator * unit

    def numerator(dot):
        return g.numerator * c.denominator * dot + c.numerator * g.denominator * unit

    powers = numerator(xi @ yi.T) ** degree
    p_power = numerator(int(oi @ oi)) ** degree
    diag = 0
    if diagonal:
        diag = int(sum(powers[i, i] - p_power for i in range(min(powers.shape))))
    total = int(powers.sum()) - powers.size * p_power - diag
    return Fraction(total, q**degree), Fraction(diag, q**degree)


def exact_kid(x, y, degree=3, gamma=None, coef0=1.0):
    """The unbiased MMD² over all pairs under (γ x·y + c)^D, in exact rational arithmetic."""
    d, m, n = np.shape(x)[1], len(x), len(y)
    gamma = 1.0 / d if gamma is None else gamma
    kxx, _ = exact_poly_sums(x, x, gamma, coef0, degree, diagonal=True)
    kyy, _ = exact_poly_sums(y, y, gamma, coef0, degree, diagonal=True)
    kxy, _ = exact_poly_sums(x, y, gamma, coef0, degree)
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2 * kxy / (m * n)


def mp_rbf_sums(x, y, sigma, diagonal=False, digits=40):
    """Σ over pairs of 1 − exp(−‖x̂ − ŷ‖²/2σ²) on the exactly normalised rows, in
    ``digits``-digit arithmetic (mpmath), the diagonal left out when ``diagonal``."""
    import mpmath

    with mpmath.workdps(digits):

        def unit(rows):
            out = []
            for r in np.asarray(rows, np.float64):
                v = [mpmath.mpf(float(t)) for t in r]
                norm = mpmath.sqrt(mpmath.fsum(t * t for t in v))
                out.append([t / norm for t in v])
            return out

        ux, uy = unit(x), unit(y)
        inv = 1 / (2 * mpmath.mpf(float(sigma)) ** 2)
        total = mpmath.mpf(0)
        for i, a in enumerate(ux):
            for j, b in enumerate(uy):
                if diagonal and i == j:
                    continue
                sq = mpmath.fsum((p - q) ** 2 for p, q in zip(a, b, strict=True))
                total += -mpmath.expm1(-sq * inv)
        return total


def mp_cmmd(x, y, sigma=10.0, unbiased=False, digits=40):
    """CMMD (×1000 MMD² under the RBF on unit rows) in ``digits``-digit arithmetic."""
    import mpmath

    with mpmath.workdps(digits):
        m, n = len(x), len(y)
        sxx = mp_rbf_sums(x, x, sigma, diagonal=True, digits=digits)
        syy = mp_rbf_sums(y, y, sigma, diagonal=True, digits=digits)
        sxy = mp_rbf_sums(x, y, sigma, digits=digits)
        if unbiased:
            within = sxx / (m * (m - 1)) + syy / (n * (n - 1))
        else:
            within = sxx / (m * m) + syy / (n * n)
        return 1000 * (2 * sxy / (m * n) - within)
