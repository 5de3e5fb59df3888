"""Parzen-window NLL: log-density of test rows under a Gaussian kernel density estimate of
sample rows (Parzen 1962; the estimator of Breuleux et al. 2011 and Goodfellow et al. 2014 for
implicit models),

    log p(x) = LSE_j(−‖x − y_j‖² / 2h²) − log M − (d/2) log(2π h²),

tiled as test shards × sample shards on the block-pair engine
(:mod:`shardeval.pipeline.pairwise.blocks`): each pair task reads its two shards and returns, per
test row, the mergeable log-sum-exp pair over its sample rows; pairs merge across sample shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.chunks import (
    ValueSummary,
    check_device,
    check_nonfinite,
    check_policy,
    count_finite,
    finite_rows,
    to_tensor,
    uses_gpu,
)
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import SHARD_PREFIX, merge_all, shard_tasks
from shardeval.pipeline.core.states import (
    Examples,
    NonFiniteRows,
    RowLogSumExp,
    ScalarMoments,
    examples_of,
    state,
)
from shardeval.pipeline.errors import NumericalError, ShapeError
from shardeval.pipeline.fid.moments import feature_moments
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.likelihood.nll import NLLResult, summarize_nll
from shardeval.pipeline.pairwise.blocks import RowBlocks, shard_blocks

_LOG_2PI = math.log(2 * math.pi)
_U64 = 2.0**-53

#: 1/(2h²) multiplies fp32 squared distances: it must be an fp32 number.
_MIN_BANDWIDTH = math.sqrt(0.5 / float(np.finfo(np.float64).max))


def silverman_bandwidth(variance_trace: float, n: int, d: int) -> float:
    """Silverman's rule for an isotropic Gaussian kernel in d dimensions:
    h = σ̄ (4 / ((d + 2) n))^{1/(d+4)}, σ̄² = tr Σ / d."""
    sigma = math.sqrt(variance_trace / d)
    return sigma * (4.0 / ((d + 2) * n)) ** (1.0 / (d + 4))


def check_bandwidth(h: float) -> float:
    """A bandwidth the kernels can use: positive, finite, and large enough that 1/(2h²) is a
    float64 number (any larger h is exact: the kernel values tend to 1). Where 1/(2h²) is not
    an fp32 number, the products are float64 (:func:`rounding_per_row` sees to it)."""
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"bandwidth must be positive and finite, got {h}")
    if h < _MIN_BANDWIDTH:
        raise NumericalError(
            f"bandwidth {h:g} is below {_MIN_BANDWIDTH:.3g}: 1/(2h²) overflows float64 and "
            "every kernel value underflows; choose a bandwidth on the scale of the distances"
        )
    return h


#: Test × sample shard pairs, i.e. tasks: more are refused, naming the shard that fits.
MAX_PARZEN_PAIRS = 16_384


#: Parzen log-densities are stated to this many nats: a block pair whose fp32 products could
#: move a row's log-density by more (from the blocks' norms) takes float64 products.
PARZEN_TOLERANCE = 1e-6


def _parzen_sums_examples(rng: np.random.Generator) -> Examples[ParzenSums]:
    _, rows = examples_of(RowLogSumExp, rng)
    n = len(rows[0].max)
    found = [
        ParzenSums(r, int(rng.integers(1, 50)), rng.random(n) * 1e-9, 1, int(f64))
        for r, f64 in zip(rows, rng.integers(0, 2, 3), strict=True)
    ]
    return ParzenSums.empty(n), found


@state(examples=_parzen_sums_examples)
@dataclass(frozen=True, eq=False)
class ParzenSums:
    """Per row of one test block: the log-sum-exp pair of −‖x − y‖²/2h² over the sample rows
    seen so far, how many finite sample rows those were, a bound on each row's rounding (in
    nats: the log-sum-exp moves by at most the largest error of its terms), and how many of
    the block pairs took float64 products. Non-finite test rows hold NaN."""

    rows: RowLogSumExp
    samples: int
    rounding: np.ndarray
    pairs: int = 1
    float64_pairs: int = 0

    @classmethod
    def empty(cls, rows: int) -> ParzenSums:
        """No sample rows (and no block pair) yet, for a test block of ``rows`` rows."""
        return cls(RowLogSumExp.empty(rows), 0, np.zeros(rows), pairs=0)

    def merge(self, other: ParzenSums) -> ParzenSums:
        return ParzenSums(
            self.rows.merge(other.rows),
            self.samples + other.samples,
            np.maximum(self.rounding, other.rounding),
            self.pairs + other.pairs,
            self.float64_pairs + other.float64_pairs,
        )


def _parzen_summary_examples(rng: np.random.Generator) -> Examples[ParzenSummary]:
    found = [
        ParzenSummary(values, nonfinite, underflow, float(rng.random()) * 1e-9, pairs, pairs // 2)
        for values, nonfinite, underflow, pairs in zip(
            examples_of(ScalarMoments, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            (int(p) for p in rng.integers(1, 9, 3)),
            strict=True,
        )
    ]
    return ParzenSummary.empty(), found


@state(examples=_parzen_summary_examples)
@dataclass(frozen=True, eq=False)
class ParzenSummary:
    """Log-densities of a test block: moments of the finite ones, the rows that were not
    finite, the finite rows whose density underflowed to zero, the largest rounding bound of
    a row (nats), and the block pairs (all, and with float64 products)."""

    values: ScalarMoments
    nonfinite: NonFiniteRows
    underflow: NonFiniteRows
    rounding: float = 0.0
    pairs: int = 0
    float64_pairs: int = 0

    @classmethod
    def empty(cls) -> ParzenSummary:
        return cls(ScalarMoments.empty(), NonFiniteRows.empty(), NonFiniteRows.empty())

    def merge(self, other: ParzenSummary) -> ParzenSummary:
        return ParzenSummary(
            self.values.merge(other.values),
            self.nonfinite.merge(other.nonfinite),
            self.underflow.merge(other.underflow),
            max(self.rounding, other.rounding),
            self.pairs + other.pairs,
            self.float64_pairs + other.float64_pairs,
        )


def rounding_per_row(
    test: np.ndarray, samples: np.ndarray, bandwidth: float, dtype: type
) -> np.ndarray:
    """Bound, per test row, on how far the products' rounding moves its log-sum-exp over
    ``samples`` (nats): each centred squared distance ‖x‖² + ‖y‖² − 2x·y errs by at most
    c(‖x‖ + ‖y‖)² (c = 2γ_(d+2) + 4u: the three products, the centring's own rounding, the
    additions), scaled by 1/2h²; the fp32 exponentials add 8u of the sum (GPU exponentials
    are approximate to a few ulp)."""
    from shardeval.kernels.kernel_sums import gamma_n

    u = float(np.finfo(dtype).eps) / 2
    c = 2 * gamma_n(test.shape[1] + 2, u) + 4 * u
    scale = 0.5 / bandwidth / bandwidth
    if dtype == np.float32 and scale > float(np.finfo(np.float32).max):
        return np.full(test.shape[0], np.inf)  # the fp32 path cannot even scale the distances
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: no bound (inf)
        centre = samples.astype(np.float64).mean(axis=0)
        test_norms = np.linalg.norm(test.astype(np.float64) - centre, axis=1)
        sample_norm = float(np.linalg.norm(samples.astype(np.float64) - centre, axis=1).max())
        exp_rounding = 8 * u if dtype == np.float32 else 0.0
        return c * (test_norms + sample_norm) ** 2 * scale + exp_rounding


def _lse(
    test: np.ndarray, samples: np.ndarray, bandwidth: float, device: str, backend: str
) -> ParzenSums:
    """The log-sum-exp pair of every test row over the finite sample rows: fp32 products
    where their rounding bound is within :data:`PARZEN_TOLERANCE`, float64 elsewhere."""
    from shardeval.kernels import parzen_lse

    samples = samples[finite_rows(samples)]
    bad = ~finite_rows(test)
    if bad.any():
        test = np.where(bad[:, None], 0, test)  # computed as zeros, reported as NaN
    rounding = np.zeros(test.shape[0])
    wide = False
    if samples.shape[0] == 0:
        m = np.full(test.shape[0], -np.inf)
        s = np.zeros(test.shape[0])
    else:
        # By kind and size: '>f8' is float64 too (a dtype comparison with np.float64 is not).
        float64 = any(t.kind == "f" and t.itemsize >= 8 for t in (test.dtype, samples.dtype))
        working = np.float64 if float64 else np.float32
        rounding = rounding_per_row(test, samples, bandwidth, working)
        if working == np.float32 and rounding.max(initial=0.0) > PARZEN_TOLERANCE:
            working, wide = np.float64, True
            rounding = rounding_per_row(test, samples, bandwidth, np.float64)
        mt, st = parzen_lse(
            to_tensor(test.astype(working, copy=False), device),
            to_tensor(samples.astype(working, copy=False), device),
            bandwidth,
            backend=backend,  # type: ignore[arg-type]
        )
        m, s = mt.cpu().numpy().copy(), st.cpu().numpy()
    m[bad] = np.nan
    rounding[bad] = 0.0
    return ParzenSums(RowLogSumExp(m, s), int(samples.shape[0]), rounding, 1, int(wide))


def _pair(
    test: RowBlocks, i: int, samples: RowBlocks, j: int, h: float, device: str, backend: str
) -> ParzenSums:
    return _lse(test.read(i), samples.read(j), h, device, backend)


def _finish(sums: ParzenSums, offset: int, d: int, bandwidth: float) -> ParzenSummary:
    if sums.samples == 0:
        raise ShapeError("no finite sample rows remain to place kernels on")
    norm = math.log(sums.samples) + 0.5 * d * (_LOG_2PI + 2.0 * math.log(bandwidth))
    lp = sums.rows.values() - norm
    ok = np.isfinite(lp)
    # The finish's own rounding: max + log s − norm, norm's few terms, each a rounding or two.
    with np.errstate(invalid="ignore", divide="ignore"):  # rows of density 0: refused later
        finish = 8 * _U64 * (np.abs(sums.rows.max) + np.abs(np.log(sums.rows.sum)) + abs(norm))
    return ParzenSummary(
        ScalarMoments.from_values(lp[ok]),
        NonFiniteRows.from_mask(np.isnan(lp), offset),
        NonFiniteRows.from_mask(np.isneginf(lp), offset),
        float((sums.rounding + finish)[ok].max(initial=0.0)),
        sums.pairs,
        sums.float64_pairs,
    )


def _density(
    samples: FeatureSource,
    test: FeatureSource,
    h: float,
    engine: Engine,
    device: str,
    backend: str,
    progress: Progress | None,
) -> ParzenSummary:
    """Test shards × sample shards on the block-pair engine: each task reads its two shards,
    so a worker holds two shards whatever the size of the sample set."""
    from dask.base import tokenize
    from dask.delayed import delayed

    tb, sb = shard_blocks(test), shard_blocks(samples)
    token = tokenize(test.location, tb.bounds, samples.location, sb.bounds, h)
    groups = [
        [
            delayed(_pair, pure=True)(
                tb,
                i,
                sb,
                j,
                h,
                device,
                backend,
                dask_key_name=f"{SHARD_PREFIX}parzen-{token}-{i}-{j}",
            )
            for j in range(len(sb.bounds))
        ]
        for i in range(len(tb.bounds))
    ]
    states = engine.reduce(groups, progress=progress, gpu=uses_gpu(device))
    return merge_all(
        *(_finish(s, start, test.d, h) for s, (start, _) in zip(states, tb.bounds, strict=True))
    )


def nll_parzen(
    samples: FeatureSource,
    test: FeatureSource,
    bandwidth: float | str = "silverman",
    *,
    engine: Engine | None = None,
    nonfinite: str = "error",
    device: str = "auto",
    backend: str = "auto",
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
        nonfinite: ``error`` (NaN/inf rows in either store fail, before the pairs are
            computed) or ``drop`` (they are left out and counted).
        device: where the pair kernels run (``auto``: a worker's GPU if it has one).
        backend: kernel backend (``auto``: Triton on GPU, torch on CPU).
        progress: called with (tasks done, total).
        cv_grid: candidates tried by ``cv``.

    Returns:
        :class:`~shardeval.pipeline.likelihood.nll.NLLResult` with ``method='parzen'`` and the
        bandwidth.

    Raises:
        ShapeError: dimensions differ, or no finite rows remain.
        NonFiniteError: non-finite rows with ``nonfinite='error'``.
        NumericalError: a bandwidth too small for fp32, constant samples under a rule, or
            test rows whose density underflows to zero at the chosen bandwidth.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.pipeline.io.stores import open_features
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((2, 1)))
        >>> src = open_features(path)
        >>> round(nll_parzen(src, src, 1.0).nll, 6)   # ½ log 2π
        0.918939
    """
    check_policy(nonfinite)
    if samples.d != test.d:
        raise ShapeError(
            f"feature dimensions differ: {samples.location!r} has d={samples.d}, "
            f"{test.location!r} has d={test.d}"
        )
    if isinstance(bandwidth, str) and bandwidth not in ("silverman", "cv"):
        raise ValueError(f"bandwidth must be a number, 'silverman' or 'cv'; got {bandwidth!r}")
    if not isinstance(bandwidth, str):
        check_bandwidth(float(bandwidth))
    pairs = test.shards * samples.shards
    if pairs > MAX_PARZEN_PAIRS:
        raise ShapeError(
            f"{test.shards:,} test shards × {samples.shards:,} sample shards make {pairs:,} tasks "
            f"(each reads two shards); at most {MAX_PARZEN_PAIRS:,} are allowed: use larger "
            "shards (shard_rows), or the stored chunks"
        )
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    import torch  # noqa: F401  # loaded before any graph runs, so its threads are budgeted

    # A cheap first pass finds non-finite rows before the n × M pairs are computed; under a
    # bandwidth rule it is the samples' moments pass, which the rule needs anyway.
    (test_count,) = engine.reduce([shard_tasks(test, count_finite)])
    check_nonfinite(test.location, test_count.nonfinite, nonfinite)
    extra: dict[str, Any] = {}
    if isinstance(bandwidth, str):
        ((moments, dropped),) = feature_moments([samples], engine=engine, nonfinite=nonfinite)
        rule = silverman_bandwidth(float(np.trace(moments.covariance())), moments.n, samples.d)
        if not (rule > 0 and math.isfinite(rule)):
            raise NumericalError(
                f"the samples {samples.location!r} have no spread (trace of their covariance "
                f"is {np.trace(moments.covariance()):g}): Silverman's rule gives h = {rule:g}; "
                "pass a bandwidth"
            )
        extra["silverman"] = rule
        h = rule
        if bandwidth == "cv":
            h = _cross_validate(samples, rule, engine, cv_grid, extra, device, backend)
        extra["samples"] = moments.n
        extra["samples_nonfinite_dropped"] = dropped
    else:
        (sample_count,) = engine.reduce([shard_tasks(samples, count_finite)])
        check_nonfinite(samples.location, sample_count.nonfinite, nonfinite)
        if sample_count.n == 0:
            raise ShapeError(f"{samples.location!r} has no finite rows")
        h = float(bandwidth)
        extra["samples"] = sample_count.n
        extra["samples_nonfinite_dropped"] = sample_count.nonfinite.count
    check_bandwidth(h)
    extra["bandwidth"] = h
    summary = _density(samples, test, h, engine, device, backend, progress)
    if summary.underflow.count:
        raise NumericalError(
            f"{summary.underflow.count} row(s) of {test.location!r} have density 0 at bandwidth "
            f"{h:g} (first at rows {', '.join(map(str, summary.underflow.first))}): every "
            "kernel value underflows; the bandwidth is too small for these distances"
        )
    # The mean of n values: each addition rounds by u of a partial sum at most n·max|lp|.
    spread = max(abs(summary.values.min), abs(summary.values.max))
    extra["rounding_bound"] = summary.rounding + (summary.values.n + 2) * _U64 * spread
    extra["pairs"] = summary.pairs
    extra["pairs_float64"] = summary.float64_pairs
    return summarize_nll("parzen", ValueSummary(summary.values, summary.nonfinite), test.d, **extra)


def _candidate_sums_examples(rng: np.random.Generator) -> Examples[CandidateSums]:
    _, first = examples_of(ParzenSums, rng)
    _, second = examples_of(ParzenSums, rng)
    found = [CandidateSums((a, b)) for a, b in zip(first, second, strict=True)]
    return CandidateSums.empty(first[0].rounding.shape[0], 2), found


@state(examples=_candidate_sums_examples)
@dataclass(frozen=True, eq=False)
class CandidateSums:
    """The held-out rows' kernel sums under each candidate bandwidth."""

    sums: tuple[ParzenSums, ...]

    @classmethod
    def empty(cls, rows: int, candidates: int) -> CandidateSums:
        """No sample shard yet, for ``rows`` held-out rows and ``candidates`` bandwidths."""
        return cls((ParzenSums.empty(rows),) * candidates)

    def merge(self, other: CandidateSums) -> CandidateSums:
        return CandidateSums(tuple(a.merge(b) for a, b in zip(self.sums, other.sums, strict=True)))


def _held_out(samples: RowBlocks, j: int, step: int) -> np.ndarray:
    start, stop = samples.bounds[j]
    return samples.read(j)[np.arange(start, stop) % step == 0]


def _cv_pair(
    held: np.ndarray,
    samples: RowBlocks,
    j: int,
    step: int,
    candidates: tuple[float, ...],
    device: str,
    backend: str,
) -> CandidateSums:
    start, stop = samples.bounds[j]
    fit = samples.read(j)[np.arange(start, stop) % step != 0]
    return CandidateSums(tuple(_lse(held, fit, h, device, backend) for h in candidates))


def _cross_validate(
    samples: FeatureSource,
    rule: float,
    engine: Engine,
    grid: int,
    extra: dict[str, Any],
    device: str,
    backend: str,
) -> float:
    from dask.base import tokenize
    from dask.delayed import delayed

    step = max(10, math.ceil(samples.n / 2000))
    candidates = tuple(
        float(c) for c in rule * 2.0 ** np.linspace(-2, 2, grid) if c >= _MIN_BANDWIDTH
    )
    if not candidates:
        check_bandwidth(float(rule * 4.0))  # raises: even the largest candidate is too small
    # The held-out rows (at most 2,000) are gathered once; each task reads one sample shard,
    # fits on its other rows and scores every candidate, so the shards are read once.
    sb = shard_blocks(samples)
    token = tokenize(samples.location, sb.bounds, step, candidates)
    parts = [delayed(_held_out, pure=True)(sb, j, step) for j in range(len(sb.bounds))]
    held = delayed(np.concatenate, pure=True)(parts, dask_key_name=f"parzen-held-{token}")
    tasks = [
        delayed(_cv_pair, pure=True)(
            held,
            sb,
            j,
            step,
            candidates,
            device,
            backend,
            dask_key_name=f"{SHARD_PREFIX}parzen-cv-{token}-{j}",
        )
        for j in range(len(sb.bounds))
    ]
    (state,) = engine.reduce([tasks], gpu=uses_gpu(device))
    summaries = [_finish(s, 0, samples.d, h) for s, h in zip(state.sums, candidates, strict=True)]
    # A candidate under which some held-out row has density 0 has held-out likelihood 0.
    scores = [
        s.values.mean if s.values.n and not s.underflow.count else float("-inf") for s in summaries
    ]
    best = int(np.argmax(scores))
    extra["cv"] = {
        "candidates": list(candidates),
        "mean_loglik": scores,
        "held_out": len(range(0, samples.n, step)),
    }
    return candidates[best]
