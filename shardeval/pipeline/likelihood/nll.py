"""Negative log-likelihood summaries, streamed shard by shard like FID.

* From per-sample log-likelihoods (N,): mean NLL and its standard error (Welford/Chan).
* Importance-weighted (IWAE-style) from log-weights (N, K) (Burda, Grosse & Salakhutdinov,
  "Importance weighted autoencoders", ICLR 2016): log p̂(x_i) = LSE_k(log w_ik) − log K per row,
  then the same summary, with per-row ESS/K and PSIS k̂ quantiles.

The Gaussian and Parzen-window NLLs of feature rows live in :mod:`shardeval.pipeline.fid.gaussian`
and :mod:`shardeval.pipeline.likelihood.parzen` and return the same :class:`NLLResult`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardeval.pipeline.core.chunks import (
    ValueSummary,
    check_device,
    check_nonfinite,
    check_policy,
    finite_rows,
    on_cpu,
    to_tensor,
    uses_gpu,
)
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.core.states import (
    Examples,
    Histogram,
    NonFiniteRows,
    ScalarMoments,
    examples_of,
    merge_fieldwise,
    state,
)
from shardeval.pipeline.errors import NonFiniteError, NumericalError, ShapeError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.likelihood.psis import psis_khat, tail_size

#: Bin edges for per-row ESS/K: quantiles are reported to 1/1000 of K.
ESS_EDGES = np.linspace(0.0, 1.0, 1001)
#: Bin edges for per-row k̂.
KHAT_EDGES = np.linspace(-1.0, 3.0, 801)


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


def summarize_nll(method: str, summary: ValueSummary, dims: int | None, **extra: Any) -> NLLResult:
    """The :class:`NLLResult` of merged per-sample log-likelihoods.

    Raises:
        ShapeError: no finite value remains.
        NumericalError: the mean or standard error of finite values overflows float64 (values
            near ±1e308: their spread squared is beyond the largest float); never reported as
            an infinite NLL.
    """
    v = summary.values
    if v.n == 0:
        raise ShapeError("no finite values remain to summarise")
    error = v.standard_error()
    if not math.isfinite(v.mean) or (v.n > 1 and not math.isfinite(error)):
        raise NumericalError(
            f"the mean NLL and its standard error of {v.n:,} log-likelihoods from {v.min:.6g} "
            f"to {v.max:.6g} overflow float64 (their spread squared exceeds 1.8e308); "
            "log-likelihoods this large are not log-densities of data: check what wrote them"
        )
    return NLLResult(
        method, v.n, -v.mean, error, v.min, v.max, summary.nonfinite.count, dims, extra
    )


#: What an interval of the mean NLL is conditional on, by method: what is held fixed, and what
#: it covers (its standard error is the spread of the per-row values over their rows alone).
INTERVAL_GIVEN = {
    "loglik": "given the model, over the samples' log-likelihoods",
    "importance": (
        "of the IWAE bound at this K (−E log p̂, an upper bound on the NLL), not of the NLL, "
        "over the rows' estimates"
    ),
    "gaussian": "given the reference Gaussian, held fixed",
    "parzen": "given the kernel centres and the bandwidth, held fixed",
    "gmm": "given the fitted mixture, held fixed (not the fit's own variability)",
}


def nll_interval(result: NLLResult, level: float) -> tuple[float, float]:
    """The normal interval nll ∓ z·SE of the mean NLL per sample (nats), z the standard
    normal's (1 + level)/2 quantile; conditional on what :data:`INTERVAL_GIVEN` says of the
    method (the standard error is that of a mean of per-row values, whatever else was fixed).

    Raises:
        ShapeError: fewer than 2 values: no standard error, so no interval.
    """
    from shardeval.pipeline.metrics.intervals import normal_interval

    if result.n < 2:
        raise ShapeError(
            f"an interval of the mean NLL needs the standard error of a mean, and {result.n} "
            "finite value remains; give at least 2"
        )
    return normal_interval(result.nll, result.standard_error, level)


def summarize_loglik(block: np.ndarray, offset: int) -> ValueSummary:
    """Per-sample log-likelihoods (n,): NaN and ±inf are counted, the rest summarised."""
    v = np.asarray(block, dtype=np.float64)
    ok = finite_rows(v)
    return ValueSummary(ScalarMoments.from_values(v[ok]), NonFiniteRows.from_mask(~ok, offset))


def nll_from_loglik(
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    dims: int | None = None,
    split_every: int | None = None,
    progress: Progress | None = None,
) -> NLLResult:
    """NLL summary of per-sample log-likelihoods (N,).

    ``split_every``: fan-in of a balanced merge tree (see :meth:`Engine.reduce`).

    Raises:
        ShapeError: the store is not 1-D.
        NonFiniteError: NaN/±inf values and ``nonfinite='error'``.
    """
    check_policy(nonfinite)
    if source.array.ndim != 1:
        raise ShapeError(
            f"{source.location!r} has shape {source.array.shape}; log-likelihoods "
            "must be 1-D (N,); for (N, K) log-weights use «iw»"
        )
    (summary,) = (engine or Engine()).reduce(
        [shard_tasks(source, summarize_loglik)], split_every=split_every, progress=progress
    )
    check_nonfinite(source.location, summary.nonfinite, nonfinite, "value(s)")
    return summarize_nll("loglik", summary, dims)


def _importance_summary_examples(rng: np.random.Generator) -> Examples[ImportanceSummary]:
    found = [
        ImportanceSummary(
            values,
            nonfinite,
            int(rng.integers(0, 3)),
            all_zero,
            Histogram.from_values(rng.random(6), ESS_EDGES),
            Histogram.from_values(rng.standard_normal(6), KHAT_EDGES),
        )
        for values, nonfinite, all_zero in zip(
            examples_of(ScalarMoments, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            strict=True,
        )
    ]
    return ImportanceSummary.empty(), found


@state(examples=_importance_summary_examples)
@dataclass(frozen=True, eq=False)
class ImportanceSummary:
    """A shard of (n, K) log-weights: moments of log p̂ per row, rows with NaN, the count of
    +inf log-weights, rows whose weights are all zero, and histograms of per-row ESS/K and k̂."""

    values: ScalarMoments
    nonfinite: NonFiniteRows
    pos_inf: int
    all_zero: NonFiniteRows
    ess_fraction: Histogram
    khat: Histogram

    @classmethod
    def empty(cls) -> ImportanceSummary:
        nothing = NonFiniteRows.empty()
        return cls(
            ScalarMoments.empty(),
            nothing,
            0,
            nothing,
            Histogram.empty(ESS_EDGES),
            Histogram.empty(KHAT_EDGES),
        )

    merge = merge_fieldwise


def _row_sums_numpy(lw: np.ndarray, keep: int) -> tuple[np.ndarray, ...]:
    """Per row of (n, K) log-weights: m = max, Σ exp(lw − m), Σ exp(2(lw − m)) and the ``keep``
    largest, descending; in numpy, so the CPU path needs no torch."""
    from shardeval.kernels.lse_numpy import largest, row_logsumexp_numpy

    m, s = row_logsumexp_numpy(lw)
    # Against the row max, so nothing overflows even where 2·log w would.
    s_sq = np.exp(2.0 * (lw - np.where(np.isneginf(m), 0.0, m)[:, None])).sum(axis=1)
    return m, s, s_sq, largest(lw, keep)


def _row_sums_torch(lw: np.ndarray, keep: int, device: str, backend: str) -> tuple[np.ndarray, ...]:
    """:func:`_row_sums_numpy` by the kernels on ``device`` (Triton on a GPU)."""
    import torch

    from shardeval.kernels import logsumexp

    good = to_tensor(lw, device)
    pair = logsumexp(good, dim=1, backend=backend)  # type: ignore[arg-type]
    safe = torch.where(torch.isneginf(pair.max), torch.zeros_like(pair.max), pair.max)
    s_sq = torch.exp(2.0 * (good - safe[:, None])).sum(dim=1)
    tops = torch.topk(good, keep, dim=1).values
    return tuple(t.cpu().numpy() for t in (pair.max, pair.sum, s_sq, tops))


def summarize_importance(
    block: np.ndarray,
    offset: int,
    reff: float = 1.0,
    device: str = "cpu",
    backend: str = "auto",
) -> ImportanceSummary:
    """Log-weights (n, K): log p̂ = LSE_k(log w) − log K per row; ESS/K and k̂ per row.

    Rows holding NaN or +inf are left out and counted; −inf weights are zero weights, legal,
    but a row whose weights are all zero has p̂ = 0 and is counted apart.
    """
    lw = np.asarray(block, dtype=np.float64)
    pos_inf = np.isposinf(lw)
    ok = ~(np.isnan(lw).any(axis=1) | pos_inf.any(axis=1))
    k = lw.shape[1]
    keep = min(tail_size(k, reff) + 1, k)
    est, ess, khats = np.zeros(0), np.zeros(0), np.zeros(0)
    if ok.any():
        if on_cpu(device, backend):
            m, s, s_sq, tops = _row_sums_numpy(lw[ok], keep)
        else:
            m, s, s_sq, tops = _row_sums_torch(lw[ok], keep, device, backend)
        with np.errstate(divide="ignore", invalid="ignore"):
            est = m + np.log(s) - math.log(k)
            ess = s**2 / s_sq / k
        khats = np.array([psis_khat(row, k, reff) for row in tops])
    zero = np.zeros(lw.shape[0], dtype=bool)
    zero[np.flatnonzero(ok)[np.isneginf(est)]] = True
    return ImportanceSummary(
        ScalarMoments.from_values(est[np.isfinite(est)]),
        NonFiniteRows.from_mask(~ok & ~pos_inf.any(axis=1), offset),
        int(pos_inf.sum()),
        NonFiniteRows.from_mask(zero, offset),
        Histogram.from_values(ess[np.isfinite(ess)], ESS_EDGES),
        Histogram.from_values(khats[np.isfinite(khats)], KHAT_EDGES),
    )


def per_row_summary(ess: Histogram, khat: Histogram, k: int) -> dict[str, Any]:
    """Quantiles of per-row ESS/K and k̂, and how many rows read good / usable / unreliable
    (and how many have too few tail weights for k̂ at all)."""
    counts = khat.counts
    edges = khat.edges[:-1]
    return {
        "ess_over_k_quantiles": {q: ess.quantile(q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "khat_quantiles": {q: khat.quantile(q) for q in (0.05, 0.5, 0.95)},
        "khat_counts": {
            "good": int(counts[edges < 0.5].sum()),
            "usable": int(counts[(edges >= 0.5) & (edges < 0.7)].sum()),
            "unreliable": int(counts[edges >= 0.7].sum()),
            # Tails too short for a fit (K ≤ 20 or so): ArviZ reports inf for these rows.
            "undetermined": int(ess.counts.sum() - counts.sum()),
        },
        "k": k,
    }


def check_reff(reff: float) -> None:
    if not (isinstance(reff, int | float) and reff > 0 and math.isfinite(reff)):
        raise ValueError(f"reff must be a positive finite number, got {reff!r}")


def check_pos_inf(source: FeatureSource, count: int) -> None:
    # +inf log-weights make every normalised weight undefined: always an error.
    if count:
        raise NonFiniteError(
            f"{source.location!r} has {count} log-weight(s) equal to +inf; "
            "log-weights must be finite or -inf"
        )


def nll_importance(
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    dims: int | None = None,
    reff: float = 1.0,
    device: str = "auto",
    backend: str = "auto",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> NLLResult:
    """IWAE-style NLL from log-weights (N, K): log p̂(x_i) = LSE_k log w_ik − log K.

    Args:
        source: log-weights (N, K).
        engine: where to run.
        nonfinite: ``error`` or ``drop`` for rows holding NaN.
        dims: dimensions per sample (for bits/dim).
        reff: relative efficiency of the K draws, for the per-row k̂ tail length.
        device: where the kernels run (``auto``: a worker's GPU if it has one).
        backend: kernel backend (``auto``: Triton on GPU, torch on CPU).
        split_every: fan-in of a balanced merge tree (see :meth:`Engine.reduce`).
        progress: called with (shards done, shards total).

    Raises:
        ShapeError: the store is not 2-D.
        NonFiniteError: +inf log-weights, or NaN rows with ``nonfinite='error'``.
        NumericalError: a row's weights are all zero (p̂ = 0, an infinite NLL).
    """
    check_policy(nonfinite)
    check_reff(reff)
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    if source.array.ndim != 2:
        raise ShapeError(
            f"{source.location!r} has shape {source.array.shape}; importance "
            "log-weights must be 2-D (N, K)"
        )
    if not on_cpu(device, backend):
        import torch  # noqa: F401  # loaded before the graph runs, so its threads are budgeted

    tasks = shard_tasks(source, summarize_importance, reff, device, backend)
    (summary,) = engine.reduce(
        [tasks], split_every=split_every, progress=progress, gpu=uses_gpu(device)
    )
    check_pos_inf(source, summary.pos_inf)
    check_nonfinite(source.location, summary.nonfinite, nonfinite)
    if summary.all_zero.count:
        raise NumericalError(
            f"{source.location!r}: {summary.all_zero.count} row(s) have every weight zero "
            f"(all log-weights -inf; first at rows {', '.join(map(str, summary.all_zero.first))}"
            "): their likelihood estimate is 0 and the NLL is infinite"
        )
    per_row = per_row_summary(summary.ess_fraction, summary.khat, source.d)
    return summarize_nll(
        "importance",
        ValueSummary(summary.values, summary.nonfinite),
        dims,
        k=source.d,
        per_row=per_row,
    )
