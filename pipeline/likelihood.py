"""NLL and importance-sampling diagnostics, streamed shard by shard like FID.

* NLL from per-sample log-likelihoods (N,): mean and standard error (Welford/Chan), bits/dim.
* Importance-weighted NLL (IWAE-style) from log-weights (N, K): log p̂(x_i) = LSE_k(log w_ik) −
  log K per row, then the NLL summary, plus per-row ESS/K quantiles.
* Gaussian NLL of feature rows under N(mean, cov) of saved statistics (Cholesky).
* Parzen-window NLL of test rows under a Gaussian KDE of sample rows, tiled as test shards ×
  sample shards with log-sum-exp merges across sample shards.
* ESS = exp(2·LSE(log w) − LSE(2·log w)) and the PSIS Pareto k̂ from a mergeable top-M tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from dask.base import tokenize
from dask.delayed import delayed
from dask.sizeof import sizeof

from kernels import gaussian_logpdf, logsumexp, parzen_lse
from pipeline.engine import Engine, Progress
from pipeline.errors import NonFiniteError, ShapeError
from pipeline.fid import Gaussian
from pipeline.reduce import SHARD_PREFIX, chain_merge, merge_all, shard_tasks
from pipeline.sources import FeatureSource
from pipeline.states import (
    Histogram,
    NonFiniteRows,
    RowLogSumExp,
    ScalarMoments,
    WeightStats,
    _sizeof_fields,
    merge_fieldwise,
)

#: Bin edges for per-row ESS/K: quantiles are reported to 1/1000 of K.
ESS_EDGES = np.linspace(0.0, 1.0, 1001)
#: Bin edges for per-row k̂.
KHAT_EDGES = np.linspace(-1.0, 3.0, 801)


def tail_size(n: int) -> int:
    """PSIS tail length M = ⌈min(N/5, 3√N)⌉ (Vehtari et al., "Pareto smoothed importance
    sampling", JMLR 2024)."""
    return math.ceil(min(0.2 * n, 3.0 * math.sqrt(n)))


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
    weights = 1.0 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(np.float64).eps
    weights = weights[keep] / weights[keep].sum()
    theta_hat = float(np.sum(theta[keep] * weights))
    k_hat = float(np.log1p(-theta_hat * x).mean())
    prior_n, prior_k = 10, 0.5
    return (n * k_hat + prior_n * prior_k) / (n + prior_n)


def psis_khat(top_log_w: np.ndarray, n: int) -> float:
    """k̂ from the largest log-weights (descending; at least M + 1 of them, M = tail_size(n))."""
    m = tail_size(n)
    if top_log_w.size < m + 1 or m < 5:
        return float("nan")
    tail, cutoff = top_log_w[:m], top_log_w[m]
    shift = top_log_w[0]
    return gpd_khat(np.exp(tail - shift) - np.exp(cutoff - shift))


def khat_reading(k: float) -> str:
    """The usual reading of k̂ (Vehtari et al. 2024)."""
    if not math.isfinite(k):
        return "undetermined"
    return "good" if k < 0.5 else "usable" if k < 0.7 else "unreliable"


# ---------------------------------------------------------------------------------------------
# chunk steps (one shard → a state)


@dataclass(frozen=True, eq=False)
class ValueSummary:
    """A shard of per-sample values: moments of the finite ones, and where the others are."""

    values: ScalarMoments
    nonfinite: NonFiniteRows

    merge = merge_fieldwise


@dataclass(frozen=True, eq=False)
class ImportanceSummary:
    """A shard of (n, K) log-weights: moments of log p̂ per row, rows with NaN, the count of
    +inf log-weights, and histograms of per-row ESS/K and k̂."""

    values: ScalarMoments
    nonfinite: NonFiniteRows
    pos_inf: int
    ess_fraction: Histogram
    khat: Histogram

    merge = merge_fieldwise


@dataclass(frozen=True, eq=False)
class WeightSummary:
    """A shard of log-weights: LSE pairs and tail, NaN positions, the count of +inf."""

    weights: WeightStats
    nonfinite: NonFiniteRows
    pos_inf: int

    merge = merge_fieldwise


def _finite_rows(block: np.ndarray) -> np.ndarray:
    v = block.reshape(block.shape[0], -1)
    return np.asarray(np.isfinite(v).all(axis=1))


def summarize_loglik(block: np.ndarray, offset: int) -> ValueSummary:
    """Per-sample log-likelihoods (n,): NaN and ±inf are counted, the rest summarised."""
    v = np.asarray(block, dtype=np.float64)
    ok = _finite_rows(v)
    return ValueSummary(ScalarMoments.from_values(v[ok]), NonFiniteRows.from_mask(~ok, offset))


def _row_ess_fraction(lw: torch.Tensor) -> np.ndarray:
    one = logsumexp(lw, dim=1)
    two = logsumexp(2.0 * lw, dim=1)
    lse1 = one.max + torch.log(one.sum)
    lse2 = two.max + torch.log(two.sum)
    return (torch.exp(2 * lse1 - lse2) / lw.shape[1]).numpy()


def summarize_importance(block: np.ndarray, offset: int) -> ImportanceSummary:
    """Log-weights (n, K): log p̂ = LSE_k(log w) − log K per row; ESS/K and k̂ per row.

    Rows holding NaN or +inf are left out and counted; −inf weights are zero weights, legal.
    """
    lw = np.asarray(block, dtype=np.float64)
    pos_inf = np.isposinf(lw)
    ok = ~(np.isnan(lw).any(axis=1) | pos_inf.any(axis=1))
    good = torch.from_numpy(np.ascontiguousarray(lw[ok]))
    k = lw.shape[1]
    est, ess, khats = np.zeros(0), np.zeros(0), np.zeros(0)
    if good.shape[0]:
        pair = logsumexp(good, dim=1)
        with np.errstate(divide="ignore"):
            est = (pair.max + torch.log(pair.sum)).numpy() - math.log(k)
        ess = _row_ess_fraction(good)
        tops = torch.topk(good, min(tail_size(k) + 1, k), dim=1).values.numpy()
        khats = np.array([psis_khat(row, k) for row in tops])
    return ImportanceSummary(
        ScalarMoments.from_values(est),
        NonFiniteRows.from_mask(~ok & ~pos_inf.any(axis=1), offset),
        int(pos_inf.sum()),
        Histogram.from_values(ess, ESS_EDGES),
        Histogram.from_values(khats[np.isfinite(khats)], KHAT_EDGES),
    )


def summarize_weights(block: np.ndarray, offset: int, keep: int) -> WeightSummary:
    """Log-weights (any shape, flattened): LSE pairs and the largest ``keep``; NaN and +inf
    left out and counted."""
    lw = np.asarray(block, dtype=np.float64).reshape(-1)
    nan, pos_inf = np.isnan(lw), np.isposinf(lw)
    ok = ~(nan | pos_inf)
    width = int(np.prod(block.shape[1:], dtype=np.int64)) if np.ndim(block) > 1 else 1
    rows_nan = nan.reshape(-1, width).any(axis=1)
    return WeightSummary(
        WeightStats.from_values(lw[ok], keep),
        NonFiniteRows.from_mask(rows_nan, offset),
        int(pos_inf.sum()),
    )


def summarize_gaussian(
    block: np.ndarray, offset: int, mean: np.ndarray, chol: np.ndarray, device: str = "cpu"
) -> ValueSummary:
    """Log-density of each finite feature row under N(mean, L Lᵀ)."""
    x = np.asarray(block)
    ok = _finite_rows(x)
    lp = gaussian_logpdf(
        torch.from_numpy(np.ascontiguousarray(x[ok])),
        torch.tensor(mean),  # a copy: the statistics are read-only
        torch.tensor(chol),
    )
    return ValueSummary(ScalarMoments.from_values(lp.numpy()), NonFiniteRows.from_mask(~ok, offset))


def _parzen_pair(test: np.ndarray, samples: np.ndarray, bandwidth: float) -> RowLogSumExp:
    m, s = parzen_lse(
        torch.from_numpy(np.ascontiguousarray(test)),
        torch.from_numpy(np.ascontiguousarray(samples)),
        bandwidth,
    )
    return RowLogSumExp(m.numpy(), s.numpy())


def _parzen_finish(rows: RowLogSumExp, count: int, d: int, bandwidth: float) -> ValueSummary:
    lp = rows.values() - math.log(count) - 0.5 * d * math.log(2 * math.pi * bandwidth**2)
    return ValueSummary(ScalarMoments.from_values(lp), NonFiniteRows.empty())


# ---------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class NLLResult:
    """Negative log-likelihood summary, in nats.

    Attributes:
        method: ``loglik``, ``importance``, ``gaussian`` or ``parzen``.
        n: samples summarised.
        nll: mean negative log-likelihood per sample.
        standard_error: of that mean.
        min_loglik, max_loglik: extremes of the per-sample log-likelihood.
        nonfinite: samples dropped as non-finite (0 unless dropping was asked for).
        dims: dimensions per sample, when known (bits/dim and nats/dim need it).
        extra: method-specific figures (bandwidth, per-row ESS quantiles, …).
    """

    method: str
    n: int
    nll: float
    standard_error: float
    min_loglik: float
    max_loglik: float
    nonfinite: int = 0
    dims: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nats_per_dim(self) -> float | None:
        return self.nll / self.dims if self.dims else None

    @property
    def bits_per_dim(self) -> float | None:
        return self.nll / (self.dims * math.log(2)) if self.dims else None


@dataclass(frozen=True)
class ESSResult:
    """Effective sample size and Pareto k̂ of importance weights.

    For a 1-D set of weights the fields describe it; for (N, K) they describe the whole set and
    ``per_row`` summarises the rows (ESS/K quantiles, k̂ quantiles and readings).
    """

    n: int
    ess: float
    ess_fraction: float
    max_weight: float
    khat: float
    khat_reading: str
    tail: int
    nonfinite: int = 0
    per_row: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# drivers


def _check_nonfinite(source: FeatureSource, bad: NonFiniteRows, policy: str, what: str) -> None:
    if bad.count and policy == "error":
        raise NonFiniteError(
            f"{source.location!r} has {bad.count} {what} that are NaN or infinite (first at rows "
            f"{', '.join(map(str, bad.first))}); clean them or pass --nonfinite drop"
        )


def _check_policy(nonfinite: str) -> None:
    if nonfinite not in ("error", "drop"):
        raise ValueError(f"nonfinite must be 'error' or 'drop', got {nonfinite!r}")


def _nll(method: str, summary: ValueSummary, dims: int | None, **extra: Any) -> NLLResult:
    v = summary.values
    if v.n == 0:
        raise ShapeError("no finite values remain to summarise")
    return NLLResult(
        method, v.n, -v.mean, v.standard_error(), v.min, v.max, summary.nonfinite.count, dims, extra
    )


def nll_from_loglik(
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    dims: int | None = None,
    progress: Progress | None = None,
) -> NLLResult:
    """NLL summary of per-sample log-likelihoods (N,).

    Raises:
        ShapeError: the store is not 1-D.
        NonFiniteError: NaN/±inf values and ``nonfinite='error'``.
    """
    _check_policy(nonfinite)
    if source.array.ndim != 1:
        raise ShapeError(
            f"{source.location!r} has shape {source.array.shape}; log-likelihoods "
            "must be 1-D (N,); for (N, K) log-weights use --iw"
        )
    (summary,) = (engine or Engine()).reduce(
        [shard_tasks(source, summarize_loglik)], progress=progress
    )
    _check_nonfinite(source, summary.nonfinite, nonfinite, "value(s)")
    return _nll("loglik", summary, dims)


def nll_importance(
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    dims: int | None = None,
    progress: Progress | None = None,
) -> NLLResult:
    """IWAE-style NLL from log-weights (N, K) (Burda et al., "Importance weighted
    autoencoders", 2016): log p̂(x_i) = LSE_k log w_ik − log K, with per-row ESS/K and k̂."""
    _check_policy(nonfinite)
    if source.array.ndim != 2:
        raise ShapeError(
            f"{source.location!r} has shape {source.array.shape}; importance "
            "log-weights must be 2-D (N, K)"
        )
    if source.d < 1:
        raise ShapeError(f"{source.location!r} has K = 0 samples per row")
    (summary,) = (engine or Engine()).reduce(
        [shard_tasks(source, summarize_importance)], progress=progress
    )
    _check_pos_inf(source, summary.pos_inf)
    _check_nonfinite(source, summary.nonfinite, nonfinite, "row(s)")
    per_row = _per_row(summary.ess_fraction, summary.khat, source.d)
    return _nll(
        "importance",
        ValueSummary(summary.values, summary.nonfinite),
        dims,
        k=source.d,
        per_row=per_row,
    )


def _per_row(ess: Histogram, khat: Histogram, k: int) -> dict[str, Any]:
    counts = khat.counts
    edges = khat.edges[:-1]
    return {
        "ess_over_k_quantiles": {q: ess.quantile(q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "khat_quantiles": {q: khat.quantile(q) for q in (0.05, 0.5, 0.95)},
        "khat_counts": {
            "good": int(counts[edges < 0.5].sum()),
            "usable": int(counts[(edges >= 0.5) & (edges < 0.7)].sum()),
            "unreliable": int(counts[edges >= 0.7].sum()),
        },
        "k": k,
    }


def _check_pos_inf(source: FeatureSource, count: int) -> None:
    # +inf log-weights make every normalised weight undefined: always an error.
    if count:
        raise NonFiniteError(
            f"{source.location!r} has {count} log-weight(s) equal to +inf; "
            "log-weights must be finite or -inf"
        )


def nll_gaussian(
    stats: Gaussian,
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    device: str = "cpu",
    progress: Progress | None = None,
) -> NLLResult:
    """NLL of feature rows under N(mean, cov) of saved statistics; also nats per dimension."""
    _check_policy(nonfinite)
    if stats.d != source.d:
        raise ShapeError(
            f"feature dimensions differ: statistics {stats.source!r} have "
            f"d={stats.d}, {source.location!r} has d={source.d}"
        )
    try:
        chol = np.linalg.cholesky(stats.cov)
    except np.linalg.LinAlgError:
        raise ShapeError(
            f"the covariance of {stats.source!r} is singular (n={stats.n}, "
            f"d={stats.d}); a Gaussian NLL needs n > d"
        ) from None
    tasks = shard_tasks(source, summarize_gaussian, stats.mean, chol, device)
    (summary,) = (engine or Engine()).reduce([tasks], progress=progress)
    _check_nonfinite(source, summary.nonfinite, nonfinite, "row(s)")
    return _nll("gaussian", summary, source.d)


def silverman_bandwidth(variance_trace: float, n: int, d: int) -> float:
    """Silverman's rule for an isotropic Gaussian kernel in d dimensions:
    h = σ̄ (4 / ((d + 2) n))^{1/(d+4)}, σ̄² = tr Σ / d."""
    sigma = math.sqrt(variance_trace / d)
    return sigma * (4.0 / ((d + 2) * n)) ** (1.0 / (d + 4))


def _parzen_graph(
    test: Sequence[Any],
    sample_blocks: Sequence[Any],
    count: int,
    d: int,
    bandwidth: float,
    token: str,
) -> list[Any]:
    leaves = []
    for i, tb in enumerate(test):
        pairs = [
            delayed(_parzen_pair, pure=True)(
                tb, sb, bandwidth, dask_key_name=f"{SHARD_PREFIX}parzen-{token}-{i}-{j}"
            )
            for j, sb in enumerate(sample_blocks)
        ]
        leaves.append(
            delayed(_parzen_finish, pure=True)(
                chain_merge(pairs, name=f"parzen-merge-{i}"),
                count,
                d,
                bandwidth,
                dask_key_name=f"parzen-finish-{token}-{i}",
            )
        )
    return leaves


def nll_parzen(
    samples: FeatureSource,
    test: FeatureSource,
    bandwidth: float | str = "silverman",
    *,
    engine: Engine | None = None,
    progress: Progress | None = None,
    cv_grid: int = 9,
) -> NLLResult:
    """Parzen-window NLL of TEST rows under a Gaussian KDE of SAMPLES.

    Args:
        samples: kernel centres (M, d).
        test: query rows (n, d).
        bandwidth: h > 0, ``silverman``, or ``cv`` (held-out likelihood: every 10th sample row
            (at most 2,000) is held out, h is chosen on a log grid around Silverman's rule).
        engine: where to run.
        progress: called with (tasks done, total).
        cv_grid: candidates tried by ``cv``.
    """
    if samples.d != test.d:
        raise ShapeError(
            f"feature dimensions differ: {samples.location!r} has d={samples.d}, "
            f"{test.location!r} has d={test.d}"
        )
    engine = engine or Engine()
    extra: dict[str, Any] = {"samples": samples.n}
    if isinstance(bandwidth, str):
        from pipeline.fid import feature_moments

        ((moments, _),) = feature_moments([samples], engine=engine)
        rule = silverman_bandwidth(float(np.trace(moments.covariance())), samples.n, samples.d)
        extra["silverman"] = rule
        if bandwidth == "silverman":
            h = rule
        elif bandwidth == "cv":
            h = _cross_validate(samples, rule, engine, cv_grid, extra)
        else:
            raise ValueError(f"bandwidth must be a number, 'silverman' or 'cv'; got {bandwidth!r}")
    else:
        h = float(bandwidth)
        if not (h > 0 and math.isfinite(h)):
            raise ValueError(f"bandwidth must be positive and finite, got {bandwidth}")
    extra["bandwidth"] = h
    token = tokenize(test.array.name, samples.array.name, h)
    leaves = _parzen_graph(
        test.array.to_delayed().ravel(),
        samples.array.to_delayed().ravel(),
        samples.n,
        samples.d,
        h,
        token,
    )
    total = delayed(merge_all)(*leaves)
    (summary,) = engine.run_delayed([total], progress=progress, shards=test.shards * samples.shards)
    return _nll("parzen", summary, test.d, **extra)


def _cross_validate(
    samples: FeatureSource, rule: float, engine: Engine, grid: int, extra: dict[str, Any]
) -> float:
    step = max(10, math.ceil(samples.n / 2000))
    held = np.zeros(samples.n, dtype=bool)
    held[::step] = True
    fit, val = samples.array[~held], samples.array[held]
    candidates = rule * 2.0 ** np.linspace(-2, 2, grid)
    token = tokenize(samples.array.name, step, grid)
    fit_blocks = fit.to_delayed().ravel()
    totals = []
    for c, h in enumerate(candidates):
        leaves = _parzen_graph(
            val.to_delayed().ravel(),
            fit_blocks,
            int(fit.shape[0]),
            samples.d,
            float(h),
            f"{token}-{c}",
        )
        totals.append(delayed(merge_all)(*leaves))
    summaries = engine.run_delayed(totals)
    scores = [s.values.mean for s in summaries]
    best = int(np.argmax(scores))
    extra["cv"] = {
        "candidates": candidates.tolist(),
        "mean_loglik": scores,
        "held_out": int(held.sum()),
    }
    return float(candidates[best])


def ess_of(
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    progress: Progress | None = None,
) -> ESSResult:
    """ESS, ESS/N, largest normalised weight and PSIS k̂ of log-weights (N,) or (N, K).

    ESS = (Σw)²/Σw² = exp(2·LSE(log w) − LSE(2·log w)) (Kong 1992); k̂ from a generalized
    Pareto fit to the M = ⌈min(N/5, 3√N)⌉ largest weights (Vehtari et al. 2024): k̂ < 0.5 good,
    < 0.7 usable, ≥ 0.7 unreliable. For (N, K) the same per row, summarised in ``per_row``.
    """
    _check_policy(nonfinite)
    engine = engine or Engine()
    n_total = source.n * (source.d if source.array.ndim == 2 else 1)
    groups = [shard_tasks(source, summarize_weights, tail_size(n_total) + 1)]
    if source.array.ndim == 2:
        groups.append(shard_tasks(source, summarize_importance))
    results = engine.reduce(groups, progress=progress)
    summary: WeightSummary = results[0]
    _check_pos_inf(source, summary.pos_inf)
    _check_nonfinite(source, summary.nonfinite, nonfinite, "row(s)")
    per_row = None
    if source.array.ndim == 2:
        per_row = _per_row(results[1].ess_fraction, results[1].khat, source.d)
    weights, bad = summary.weights, summary.nonfinite
    if weights.n == 0:
        raise ShapeError(f"{source.location!r} has no log-weights left to summarise")
    khat = psis_khat(weights.top, weights.n)
    ess = weights.ess()
    return ESSResult(
        weights.n,
        ess,
        ess / weights.n,
        weights.max_normalized_weight(),
        khat,
        khat_reading(khat),
        tail_size(weights.n),
        bad.count,
        per_row,
    )


sizeof.register(ImportanceSummary)(_sizeof_fields)
sizeof.register(WeightSummary)(_sizeof_fields)
