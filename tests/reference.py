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
