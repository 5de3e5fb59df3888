"""A standard error and interval for FID∞, from FID's delete-a-group jackknife and the
weights of the least-squares line, without the band × group states an exact jackknife of FID∞
would need (15·G·d² float64: about 5 GB at d = 2,048, G = 10).

FID∞ is linear in the 15 distances it is fitted to: FID∞ = Σ_k c_k FID_k, with c the
intercept's least-squares weights (the first row of the design's pseudo-inverse; Σ c_k = 1 and
Σ c_k/N_k = 0). To first order (the delta method: FID a smooth function of the moments, and the
distance away from 0 against its noise), FID_N moves with the mean of its rows' influence,
so for nested subsets of one hashed order, Cov(FID_j, FID_k) = v/max(N_j, N_k), v = N·Var(FID_N)
for the generated side; the reference enters every FID_k alike and, Σ c_k = 1, with its whole
variance. Hence

    Var(FID∞) ≈ κ · Var_g(FID_N) + Var_r(FID_N),   κ = N · Σ_jk c_j c_k / max(N_j, N_k),

with Var_g and Var_r the generated and reference sides' shares of the variance of FID over
every row, each from FID's delete-a-group jackknife over G groups of that side's rows, the
other side held fixed (:mod:`shardeval.pipeline.fid.jackknife`): G·d² float64 per side
beyond FID∞'s own bands. For the paper's 15 sizes from N/10 to N, κ ≈ 1.457 (from 5,000 to
N at N = 200,000: 1.62). The interval is FID∞ ∓ t_{G−1, (1+level)/2} · SE, as FID's.

Equivalently, each generated row carries the weight w_b = Σ_{k ≥ b} c_k/N_k of its band b
(Σ_rows w = 1; w = 0 on the first band, which every subset holds), and κ = N · Σ_rows w².
A reference given as statistics is held fixed: the interval is then conditional on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shardeval.pipeline.fid.jackknife import fid_replicates, jackknife

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.fid.jackknife import GroupedMoments

#: The method, in words, for reports.
METHOD = (
    "FID∞ = Σ c_k FID_k (the least-squares intercept's weights); its variance κ·Var_g + Var_r, "
    "κ = N·Σ c_j c_k / max(N_j, N_k) for nested subsets, Var_g and Var_r FID's delete-a-group "
    "jackknife of each side"
)


def intercept_weights(sizes: np.ndarray) -> np.ndarray:
    """The weights c with FID∞ = Σ c_k FID_k for the least-squares line FID_N = a + b/N
    through the subsets' ``sizes``: the first row of the design's pseudo-inverse.

    Example:
        >>> c = intercept_weights(np.array([100, 550, 1000]))
        >>> round(float(c.sum()), 12), abs(round(float((c / [100, 550, 1000]).sum()), 12))
        (1.0, 0.0)
    """
    x = 1.0 / np.asarray(sizes, dtype=np.float64)
    design = np.stack([np.ones_like(x), x], axis=1)
    return np.linalg.pinv(design)[0]


def variance_factor(sizes: np.ndarray) -> float:
    """κ = N · Σ_jk c_j c_k / max(N_j, N_k): Var(FID∞)/Var(FID_N) for the generated side's
    share, to first order, for nested subsets of ``sizes`` (N the largest, the last).

    Example:
        >>> from shardeval.pipeline.fid.infinity import subset_sizes
        >>> round(variance_factor(subset_sizes(50_000)), 3)
        1.456
    """
    n = np.asarray(sizes, dtype=np.float64)
    c = intercept_weights(n)
    return float(n[-1] * (c @ (1.0 / np.maximum.outer(n, n)) @ c))


@dataclass(frozen=True)
class InfinityInterval:
    """FID∞'s standard error and interval.

    Attributes:
        standard_error: √(κ · SE_g² + SE_r²).
        low, high: FID∞ ∓ t_{G−1} · SE at ``level``.
        level: the interval's confidence level.
        groups: G.
        factor: κ.
        generated_error: SE_g, FID's jackknife standard error over the generated rows' groups
            (the reference held fixed).
        reference_error: SE_r, over the reference's groups (the generated set held fixed);
            None for a reference of statistics, held fixed.
    """

    standard_error: float
    low: float
    high: float
    level: float
    groups: int
    factor: float
    generated_error: float
    reference_error: float | None


def fid_infinity_interval(
    estimate: float,
    fid: float,
    sizes: tuple[int, ...],
    real: Gaussian,
    gen: Gaussian,
    gen_groups: GroupedMoments,
    real_groups: GroupedMoments | None,
    level: float,
    locations: tuple[str, str],
    engine: Engine | None = None,
) -> InfinityInterval:
    """The standard error and interval of the FID∞ ``estimate``, fitted at ``sizes`` (``fid``:
    FID of every generated row, ``real`` against ``gen``, the Gaussians of the fit).

    Args:
        estimate: FID∞.
        fid: FID of the whole generated set against ``real``.
        sizes: the nested subsets' sizes, as fitted.
        real, gen: the reference's and the whole generated set's Gaussians.
        gen_groups: the generated rows in G groups (:func:`~shardeval.pipeline.fid.
            jackknife.grouped_moments`).
        real_groups: the reference's rows in G groups; None: statistics, held fixed.
        level: the confidence level, in (0, 1).
        locations: (reference, generated set), as messages name them.
        engine: where the 2·G replicates run (in this process without it).

    Returns:
        :class:`InfinityInterval`.

    Raises:
        ShapeError: a side with fewer rows than groups, or a group without rows.

    Example:
        >>> from shardeval.pipeline.fid.gaussian import Gaussian
        >>> from shardeval.pipeline.fid.jackknife import summarize_groups
        >>> rows = np.random.default_rng(0).normal(size=(1000, 2)) + 0.5
        >>> real = Gaussian(np.zeros(2), np.eye(2))
        >>> gen = Gaussian(rows.mean(0), np.cov(rows.T))
        >>> groups = summarize_groups(rows, 0, 10, 0, precision="fp64")
        >>> i = fid_infinity_interval(0.5, 0.5, (100, 1000), real, gen, groups, None, 0.95,
        ...                           ("real", "gen"))
        >>> i.low < 0.5 < i.high, round(i.factor, 3)
        (True, 1.111)

    Formula: Var(FID∞) ≈ κ · Var_g(FID_N) + Var_r(FID_N), κ = N·Σ c_j c_k / max(N_j, N_k)
    (Chong & Forsyth 2020 for FID∞; Efron & Stein 1981 and Shao & Tu 1995, §2.3, for the
    delete-a-group jackknife).
    """
    from scipy import stats

    factor = variance_factor(np.asarray(sizes))
    generated = jackknife(fid, fid_replicates(real, gen_groups, locations, engine), level)
    variance = factor * generated.standard_error**2
    reference = None
    if real_groups is not None:
        # FID is symmetric in its sides: the reference's groups against the generated
        # set's Gaussian, held fixed.
        swapped = (locations[1], locations[0])
        reference = jackknife(fid, fid_replicates(gen, real_groups, swapped, engine), level)
        variance += reference.standard_error**2
    se = math.sqrt(variance)
    g = generated.groups
    half = float(stats.t.ppf((1 + level) / 2, g - 1)) * se
    return InfinityInterval(
        se,
        estimate - half,
        estimate + half,
        level,
        g,
        factor,
        generated.standard_error,
        None if reference is None else reference.standard_error,
    )
