"""Effective sample size and PSIS k̂ of importance log-weights, streamed shard by shard.

ESS = (Σw)² / Σw² (Kong 1992), from sums taken against one running max, so that neither
exp(log w) nor 2·log w overflows; k̂ from the mergeable top-M tail
(:mod:`shardeval.pipeline.likelihood.psis`). For (N, K) log-weights the same is also computed per
row and summarised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.chunks import (
    check_device,
    check_nonfinite,
    check_policy,
    on_cpu,
    to_tensor,
    uses_gpu,
)
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.core.states import (
    Examples,
    NonFiniteRows,
    WeightStats,
    examples_of,
    state,
)
from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.likelihood.nll import (
    ImportanceSummary,
    check_pos_inf,
    check_reff,
    per_row_summary,
    summarize_importance,
)
from shardeval.pipeline.likelihood.psis import khat_reading, psis_khat, tail_size


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
    reff: float = 1.0


def _weight_summary_examples(rng: np.random.Generator) -> Examples[WeightSummary]:
    empty_weights, weights = examples_of(WeightStats, rng)
    found = [
        WeightSummary(w, nonfinite, int(rng.integers(0, 3)), rows)
        for w, nonfinite, rows in zip(
            weights,
            examples_of(NonFiniteRows, rng)[1],
            examples_of(ImportanceSummary, rng)[1],
            strict=True,
        )
    ]
    return WeightSummary.empty(empty_weights.keep, per_row=True), found


@state(examples=_weight_summary_examples)
@dataclass(frozen=True, eq=False)
class WeightSummary:
    """A shard of log-weights: sums and tail, NaN positions, the count of +inf, and, for
    (n, K) blocks, the per-row summary (from the same read of the block)."""

    weights: WeightStats
    nonfinite: NonFiniteRows
    pos_inf: int
    rows: ImportanceSummary | None

    @classmethod
    def empty(cls, keep: int, *, per_row: bool = False) -> WeightSummary:
        """No log-weights yet; ``per_row`` for (n, K) blocks, whose rows are summarised too."""
        rows = ImportanceSummary.empty() if per_row else None
        return cls(WeightStats.empty(keep), NonFiniteRows.empty(), 0, rows)

    def merge(self, other: WeightSummary) -> WeightSummary:
        rows = self.rows.merge(other.rows) if self.rows and other.rows else None
        return WeightSummary(
            self.weights.merge(other.weights),
            self.nonfinite.merge(other.nonfinite),
            self.pos_inf + other.pos_inf,
            rows,
        )


def summarize_weights(
    block: np.ndarray,
    offset: int,
    keep: int,
    reff: float,
    device: str = "cpu",
    backend: str = "auto",
) -> WeightSummary:
    """Log-weights (n,) or (n, K): the weight sums and the largest ``keep`` over all values,
    NaN and +inf left out and counted; for (n, K) also the per-row ESS/K and k̂."""
    lw = np.asarray(block, dtype=np.float64)
    flat = lw.reshape(-1)
    nan, pos_inf = np.isnan(flat), np.isposinf(flat)
    ok = flat[~(nan | pos_inf)]
    if ok.size and on_cpu(device, backend):
        from shardeval.kernels.lse_numpy import weight_stats_numpy

        v = weight_stats_numpy(ok, top=keep)
        weights = WeightStats(v.n, v.max, v.sum, v.sum_sq, v.top, keep)
    elif ok.size:
        from shardeval.kernels import weight_stats

        w = weight_stats(to_tensor(ok, device), top=keep, backend=backend)  # type: ignore[arg-type]
        top = w.top.cpu().numpy()
        weights = WeightStats(w.n, float(w.max), float(w.sum), float(w.sum_sq), top, keep)
    else:
        weights = WeightStats.empty(keep)
    rows_nan = nan.reshape(lw.shape[0], -1).any(axis=1)
    rows = summarize_importance(lw, offset, reff, device, backend) if lw.ndim == 2 else None
    return WeightSummary(
        weights, NonFiniteRows.from_mask(rows_nan, offset), int(pos_inf.sum()), rows
    )


def ess_of(
    source: FeatureSource,
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    reff: float = 1.0,
    device: str = "auto",
    backend: str = "auto",
    split_every: int | None = None,
    progress: Progress | None = None,
) -> ESSResult:
    """ESS, ESS/N, largest normalised weight and PSIS k̂ of log-weights (N,) or (N, K).

    .. math:: \\mathrm{ESS} = \\frac{(\\sum_i w_i)^2}{\\sum_i w_i^2}
              = \\frac{s^2}{s_2},\\quad s = \\sum_i e^{\\log w_i - m},\\;
              s_2 = \\sum_i e^{2(\\log w_i - m)},\\; m = \\max_i \\log w_i

    k̂ from a generalized Pareto fit to the M = ⌈min(N/5, 3√(N/r_eff))⌉ largest weights
    (Vehtari et al. 2024; ties at the cut-off treated as ArviZ's ``psislw`` does): k̂ < 0.5
    good, < 0.7 usable, ≥ 0.7 unreliable. For (N, K) the same per row, summarised in
    ``per_row``.

    Args:
        source: log-weights (N,) or (N, K); −inf is a zero weight.
        engine: where to run.
        nonfinite: ``error`` or ``drop`` for NaN log-weights.
        reff: relative efficiency of the draws (1 for independent draws; < 1 for MCMC, as
            ``az.loo`` computes it): a longer tail for correlated draws.
        device: where the kernels run (``auto``: a worker's GPU if it has one).
        backend: kernel backend (``auto``: Triton on GPU, torch on CPU).
        split_every: fan-in of a balanced merge tree (see :meth:`Engine.reduce`).
        progress: called with (shards done, shards total).

    Raises:
        NonFiniteError: +inf log-weights, or NaN with ``nonfinite='error'``.
        NumericalError: every weight is zero.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.pipeline.io.stores import open_features
        >>> path = os.path.join(tempfile.mkdtemp(), "lw.npy")
        >>> np.save(path, np.log([1.0, 1.0, 2.0]))
        >>> round(ess_of(open_features(path, ndims=(1,), min_rows=1)).ess, 6)   # 4² / 6
        2.666667
    """
    check_policy(nonfinite)
    check_reff(reff)
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    n_total = source.n * (source.d if source.array.ndim == 2 else 1)
    keep = tail_size(n_total, reff) + 1
    if not on_cpu(device, backend):
        import torch  # noqa: F401  # loaded before the graph runs, so its threads are budgeted

    tasks = shard_tasks(source, summarize_weights, keep, reff, device, backend)
    (summary,) = engine.reduce(
        [tasks], split_every=split_every, progress=progress, gpu=uses_gpu(device)
    )
    check_pos_inf(source, summary.pos_inf)
    check_nonfinite(source.location, summary.nonfinite, nonfinite)
    weights = summary.weights
    if weights.n == 0:
        raise ShapeError(f"{source.location!r} has no log-weights left to summarise")
    if weights.all_zero:
        raise NumericalError(
            f"every weight of {source.location!r} is zero (all {weights.n:,} log-weights are "
            "-inf): ESS and k̂ are undefined"
        )
    per_row = None
    if summary.rows is not None:
        per_row = per_row_summary(summary.rows.ess_fraction, summary.rows.khat, source.d)
        per_row["rows_all_zero"] = summary.rows.all_zero.count
    khat = psis_khat(weights.top, weights.n, reff)
    ess = weights.ess()
    return ESSResult(
        weights.n,
        ess,
        ess / weights.n,
        weights.max_normalized_weight(),
        khat,
        khat_reading(khat),
        tail_size(weights.n, reff),
        summary.nonfinite.count,
        per_row,
        reff,
    )
