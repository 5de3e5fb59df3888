"""Effective sample size and PSIS k̂ of importance log-weights, streamed shard by shard.

ESS = (Σw)² / Σw² (Kong 1992), from sums taken against one running max, so that neither
exp(log w) nor 2·log w overflows; k̂ from the mergeable top-M tail
(:mod:`shardeval.pipeline.likelihood.psis`). For (N, K) log-weights the same is also computed per
row and summarised. With a confidence level, the standard error of ESS/N by the delta method
on m₁²/m₂, from Σw³ and Σw⁴ kept against the same max (:func:`ess_interval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
from shardeval.pipeline.errors import NumericalError, OptionError, ShapeError
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
    ``per_row`` summarises the rows (ESS/K quantiles, k̂ quantiles and readings). With an
    interval asked (:func:`ess_interval`): the standard errors and interval ends of ESS and
    ESS/N, and ``ess_ci_method``; or, when k̂ or the weights' fourth powers do not allow one,
    ``ess_ci_withheld`` (why) with the rest None. Without one, all of these are None.
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
    ess_standard_error: float | None = None
    ess_ci_low: float | None = None
    ess_ci_high: float | None = None
    ess_fraction_standard_error: float | None = None
    ess_fraction_ci_low: float | None = None
    ess_fraction_ci_high: float | None = None
    ess_ci_method: str | None = None
    ess_ci_withheld: str | None = None


#: The interval is given only for k̂ below this: a Pareto tail of shape k has finite moments of
#: order < 1/k, and the delta method's variance of ESS/N needs E w⁴ (Var w²) finite.
CI_KHAT_MAX = 0.25

#: The interval is given only when Σw⁴ / max w⁴ (the sum of the fourth powers of the weights
#: over the largest one's, an ESS∞ of w⁴) is at least this: below it the fourth moment that the
#: standard error reads rests on a handful of weights, and the interval under-covers
#: (``benchmarks/ess_interval_calibration.py``; docs/likelihood.md).
CI_FOURTH_POWER_MIN = 60.0

#: The method an interval of ESS states in the report.
CI_METHOD = (
    "delta method on ESS/N = m₁²/m₂ (m_k = E w^k, from Σw, Σw², Σw³, Σw⁴), normal interval "
    "clipped to [0, N]; over all weights as independent draws, the variance divided by r_eff"
)


@dataclass(frozen=True)
class ESSInterval:
    """ESS/N's standard error and interval at a level, or why none is given (``withheld``)."""

    standard_error: float | None
    low: float | None
    high: float | None
    withheld: str | None = None


def ess_interval(weights: WeightStats, khat: float, level: float, reff: float = 1.0) -> ESSInterval:
    """Standard error and normal interval of ESS/N by the delta method.

    With m_k = E w^k and f = ESS/N = m₁²/m₂, the gradient (2m₁/m₂, −m₁²/m₂²) and the
    covariance of (w, w²) (Var w = m₂ − m₁², Cov(w, w²) = m₃ − m₁m₂, Var w² = m₄ − m₂²) give

    .. math:: \\frac{N\\,\\mathrm{Var}\\,\\hat f}{f^2} \\approx
              4\\frac{m_2}{m_1^2} - 4\\frac{m_3}{m_1 m_2} + \\frac{m_4}{m_2^2} - 1,

    the same quadratic form rearranged into ratios that the sums against the running max give
    exactly (:meth:`WeightStats.ess_fraction_relative_variance`); SE(f) = f·√(that / (N·r_eff)),
    the interval f ∓ z·SE clipped to [0, 1] (ESS/N is at most 1). ESS = N·f has N times both.
    ESS as a diagnostic of the weights is Kong's (1992; Owen, *Monte Carlo theory, methods and
    examples*, 2013, §9.3); its population value m₁²/m₂ is what the interval covers.

    The delta method needs a finite fourth moment of w, i.e. a Pareto tail of shape k < 1/4
    (Vehtari et al., "Pareto smoothed importance sampling", JMLR 2024): for k̂ ≥
    :data:`CI_KHAT_MAX`, or an undetermined k̂ (too few weights for the tail fit), no interval
    is given and ``withheld`` says why. That is necessary, not sufficient: the standard error
    reads m̂₄, and when a few of the largest weights make up Σw⁴ the interval covers far less
    than its level even with every moment finite (log-normal weights, σ = 1, N = 1,000: 57 %
    at 95 %). So the interval is also withheld unless s₄ = Σw⁴ / max w⁴ ≥
    :data:`CI_FOURTH_POWER_MIN` (the largest weight is at most 1/60 of Σw⁴; an ESS∞ of w⁴,
    Martino, Elvira & Louzada, "Effective sample size for importance sampling based on
    discrepancy measures", Signal Processing 2017), the threshold measured by simulation so
    that the intervals given cover 92–98 % (docs/likelihood.md gives the table).

    Args:
        weights: merged :class:`WeightStats` holding s₃ and s₄.
        khat: the PSIS k̂ of the same weights.
        level: confidence level in (0, 1).
        reff: relative efficiency of the draws: the variance is divided by it.

    Returns:
        ESSInterval of ESS/N (``withheld`` set, the rest None, when no interval is given).

    Raises:
        OptionError: ``level`` is not in (0, 1).
        ValueError: ``weights`` holds no s₃, s₄ (made without ``higher``).

    Example:
        >>> import numpy as np
        >>> w = WeightStats.from_values(np.log([1.0, 2.0] * 200), keep=1, higher=True)
        >>> got = ess_interval(w, khat=0.0, level=0.95)
        >>> round(w.ess() / w.n, 6), round(got.standard_error, 6)   # 0.9·√(0.004444/400)
        (0.9, 0.003)
        >>> few = WeightStats.from_values(np.log([1.0, 2.0] * 50), keep=1, higher=True)
        >>> ess_interval(few, khat=0.0, level=0.95).withheld.split(" (")[0]   # 50/16 + 50
        'no interval: the largest weight is 1/53.1 of Σw⁴'
    """
    if not (isinstance(level, float | int) and 0 < level < 1):
        raise OptionError(f"the interval's level must be in (0, 1), got {level!r}")
    if not weights.has_higher:
        raise ValueError(
            "an interval of ESS needs the sums of w³ and w⁴: summarise the weights with higher=True"
        )
    if weights.n < 2:
        return ESSInterval(None, None, None, f"no interval from {weights.n} weight")
    if not math.isfinite(khat):
        return ESSInterval(
            None,
            None,
            None,
            "no interval: Pareto k̂ is undetermined (too few weights for the tail fit), so "
            f"nothing shows the weights' fourth moment finite (k̂ < {CI_KHAT_MAX})",
        )
    if khat >= CI_KHAT_MAX:
        return ESSInterval(
            None,
            None,
            None,
            f"no interval: Pareto k̂ {khat:.3f} ≥ {CI_KHAT_MAX}, the weights' fourth moment is "
            "likely infinite and the delta method's interval would not be calibrated",
        )
    from shardeval.pipeline.metrics.intervals import normal_interval

    f, n = weights.ess() / weights.n, weights.n
    if weights.sum == n:  # every weight equals the largest: f = 1 exactly, and no spread
        return ESSInterval(0.0, 1.0, 1.0)
    fourth = weights.fourth_power_count()
    if fourth < CI_FOURTH_POWER_MIN:
        return ESSInterval(
            None,
            None,
            None,
            f"no interval: the largest weight is 1/{fourth:.1f} of Σw⁴ (fewer than "
            f"{CI_FOURTH_POWER_MIN:g} weights' worth), so the standard error's fourth moment "
            "rests on too few weights for the interval to be calibrated",
        )
    variance = weights.ess_fraction_relative_variance()
    if variance <= weights.ess_fraction_rounding():
        return ESSInterval(
            None,
            None,
            None,
            f"no interval: the weights are nearly equal (ESS/N {f:.10g}), and the standard "
            "error of ESS/N is below the rounding of the float64 sums of their powers",
        )
    error = f * math.sqrt(variance / (n * reff))
    low, high = normal_interval(f, error, level)
    return ESSInterval(error, max(0.0, low), min(1.0, high))


def _weight_summary_examples(rng: np.random.Generator) -> Examples[WeightSummary]:
    empty_weights, weights = examples_of(WeightStats, rng)
    higher = empty_weights.has_higher
    found = [
        WeightSummary(w, nonfinite, int(rng.integers(0, 3)), rows)
        for w, nonfinite, rows in zip(
            weights,
            examples_of(NonFiniteRows, rng)[1],
            examples_of(ImportanceSummary, rng)[1],
            strict=True,
        )
    ]
    return WeightSummary.empty(empty_weights.keep, per_row=True, higher=higher), found


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
    def empty(cls, keep: int, *, per_row: bool = False, higher: bool = False) -> WeightSummary:
        """No log-weights yet; ``per_row`` for (n, K) blocks, whose rows are summarised too;
        ``higher`` keeps the sums of w³ and w⁴."""
        rows = ImportanceSummary.empty() if per_row else None
        return cls(WeightStats.empty(keep, higher), NonFiniteRows.empty(), 0, rows)

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
    higher: bool = False,
) -> WeightSummary:
    """Log-weights (n,) or (n, K): the weight sums and the largest ``keep`` over all values,
    NaN and +inf left out and counted; for (n, K) also the per-row ESS/K and k̂. ``higher``
    adds the sums of w³ and w⁴ (for an interval; float64 on every device)."""
    lw = np.asarray(block, dtype=np.float64)
    flat = lw.reshape(-1)
    nan, pos_inf = np.isnan(flat), np.isposinf(flat)
    ok = flat[~(nan | pos_inf)]
    if ok.size and on_cpu(device, backend):
        from shardeval.kernels.lse_numpy import weight_stats_numpy

        v = weight_stats_numpy(ok, top=keep, higher=higher)
        weights = WeightStats(v.n, v.max, v.sum, v.sum_sq, v.top, keep, v.sum_cube, v.sum_fourth)
    elif ok.size:
        from shardeval.kernels import weight_stats

        w = weight_stats(to_tensor(ok, device), top=keep, backend=backend, higher=higher)  # type: ignore[arg-type]
        top = w.top.cpu().numpy()
        more = [None if t is None else float(t) for t in (w.sum_cube, w.sum_fourth)]
        weights = WeightStats(w.n, float(w.max), float(w.sum), float(w.sum_sq), top, keep, *more)
    else:
        weights = WeightStats.empty(keep, higher)
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
    ci: float = 0.0,
) -> ESSResult:
    """ESS, ESS/N, largest normalised weight and PSIS k̂ of log-weights (N,) or (N, K); with
    ``ci``, the standard error and interval of ESS and ESS/N (:func:`ess_interval`).

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
        ci: 0 (no interval) or a confidence level in (0, 1). For (N, K) the interval is of the
            whole set's ESS over all N·K weights, none per row. Only ``ci`` reads the sums
            of w³ and w⁴ (two more exponentials per weight); without it every figure is
            what it would be without the interval.

    Raises:
        OptionError: ``ci`` neither 0 nor in (0, 1).
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
    if not (isinstance(ci, float | int) and not isinstance(ci, bool) and 0 <= ci < 1):
        raise OptionError(f"ci must be 0 (no interval) or a level in (0, 1), got {ci!r}")
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    n_total = source.n * (source.d if source.array.ndim == 2 else 1)
    keep = tail_size(n_total, reff) + 1
    if not on_cpu(device, backend):
        import torch  # noqa: F401  # loaded before the graph runs, so its threads are budgeted

    tasks = shard_tasks(source, summarize_weights, keep, reff, device, backend, bool(ci))
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
    result = ESSResult(
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
    if not ci:
        return result
    got, n = ess_interval(weights, khat, float(ci), reff), weights.n
    if got.standard_error is None or got.low is None or got.high is None:
        return replace(result, ess_ci_method=CI_METHOD, ess_ci_withheld=got.withheld)
    return replace(
        result,
        ess_standard_error=n * got.standard_error,
        ess_ci_low=n * got.low,
        ess_ci_high=n * got.high,
        ess_fraction_standard_error=got.standard_error,
        ess_fraction_ci_low=got.low,
        ess_fraction_ci_high=got.high,
        ess_ci_method=CI_METHOD,
    )
