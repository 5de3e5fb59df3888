"""Pareto-smoothed importance sampling diagnostics: the tail length, the generalized Pareto fit
and its shape k̂ (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance
sampling", JMLR 2024), computed from the largest log-weights, which stream as a mergeable
top-M state.

k̂ < 0.5: good; < 0.7: usable; ≥ 0.7: the importance-sampling estimate is unreliable.
"""

from __future__ import annotations

import math

import numpy as np


def tail_size(n: int, reff: float = 1.0) -> int:
    """PSIS tail length M = ⌈min(N/5, 3√(N/r_eff))⌉ (Vehtari et al., "Pareto smoothed
    importance sampling", JMLR 2024; ArviZ's ``psislw``). ``reff`` < 1 for correlated draws
    (MCMC) lengthens the tail, as ``az.loo`` does with the relative efficiency of the draws."""
    return math.ceil(min(0.2 * n, 3.0 * math.sqrt(n / reff)))


def gpd_khat(exceedances: np.ndarray) -> float:
    """Shape k̂ of a generalized Pareto fit to positive exceedances over a threshold.

    Zhang & Stephens' profile-likelihood-weighted estimate ("A new and efficient estimation
    method for the generalized Pareto distribution", Technometrics 2009) over a grid of
    θ = −k/σ, then the weakly informative prior of Vehtari et al. (2024) that pulls k̂ toward
    0.5 with the weight of 10 observations.
    """
    x = np.sort(np.asarray(exceedances, dtype=np.float64))
    n = x.size
    if n < 5 or x[-1] <= 0:
        return float("nan")
    grid = 30 + int(math.sqrt(n))
    quartile = x[max(0, int(n / 4 + 0.5) - 1)]
    j = np.arange(1, grid + 1)
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(grid / (j - 0.5))) / (3.0 * quartile)
    k = np.log1p(-theta[:, None] * x).mean(axis=1)
    profile = n * (np.log(-theta / k) - k - 1.0)
    # weight_i = 1 / Σ_j exp(profile_j − profile_i): exp of a very negative gap is 0, of a very
    # positive one inf (weight 0); both are the right limits.
    with np.errstate(over="ignore"):
        weights = 1.0 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(np.float64).eps
    weights = weights[keep] / weights[keep].sum()
    theta_hat = float(np.sum(theta[keep] * weights))
    k_hat = float(np.log1p(-theta_hat * x).mean())
    prior_n, prior_k = 10, 0.5
    return (n * k_hat + prior_n * prior_k) / (n + prior_n)


#: Below this a cut-off is raised to it (after shifting by the max), as ArviZ does: weights
#: smaller than the smallest normal float carry nothing a fit could use.
_LOG_TINY = math.log(np.finfo(np.float64).tiny)


def psis_khat(top_log_w: np.ndarray, n: int, reff: float = 1.0) -> float:
    """k̂ from the largest log-weights (descending; at least M + 1 of them, M = tail_size).

    The cut-off is the (M+1)-th largest log-weight (floored at log of the smallest normal
    float after shifting by the max); the tail is the log-weights strictly above it, so values
    tied with the cut-off are left out and the tail can be shorter than M, as in ArviZ's
    ``psislw``. A tail of 4 or fewer gives NaN (ArviZ: inf): no fit is possible.
    """
    m = tail_size(n, reff)
    if top_log_w.size < m + 1 or not math.isfinite(top_log_w[0]):
        return float("nan")
    x = np.asarray(top_log_w[: m + 1], dtype=np.float64) - top_log_w[0]
    cutoff = max(float(x[m]), _LOG_TINY)
    tail = x[:m][x[:m] > cutoff]
    if tail.size <= 4:
        return float("nan")
    return gpd_khat(np.exp(tail) - math.exp(cutoff))


def khat_reading(k: float) -> str:
    """The usual reading of k̂ (Vehtari et al. 2024)."""
    if not math.isfinite(k):
        return "undetermined"
    return "good" if k < 0.5 else "usable" if k < 0.7 else "unreliable"
