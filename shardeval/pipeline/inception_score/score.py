"""The Inception Score (Salimans et al., "Improved techniques for training GANs", NeurIPS 2016)
from class logits, streamed shard by shard like every other metric:

    IS = exp(E_x KL(p(y|x) ‖ p(y))),   p(y) = E_x p(y|x).

With p_i the softmax of row i, q = (1/n) Σ_i p_i and f(x) = x log x (f(0) = 0),

    log IS = (1/n) Σ_i KL(p_i ‖ q) = Σ_y [ (1/n) Σ_i f(p_iy) − f(q_y) ],

so two means per class make it exactly: q_y and the mean of f(p_iy), with n. Means merge by
Chan's weighted update, so a shard's are a mergeable state (:class:`ClassMeans`), kept over all
rows and per split: the peers' protocol (torch-fidelity's ``isc``) cuts the rows into S splits
and reports the mean and standard deviation of the S scores, and one pass gives the score over
all samples and every split's.

Each class's term is ≥ 0 (f is convex: a mean of f is at least f of the mean, Jensen), so the
score cannot fall below 1 by rounding: a term that rounds below 0 is set to 0, which is the
nearest value the term can have (it only moves the result towards the exact one). A term below
0 by more than its rounding bound (4·n·u times the magnitudes it is the difference of) is an
error, not rounding. Rows that are all one distribution give exactly 1: a mean is the first
row plus the mean of the differences from it (0, exactly), Chan's update leaves two equal
means equal, and f(q_y) is computed as each f(p_iy) was, so every term is 0 exactly.

Numerics: the softmax is taken in float64 by log-sum-exp (z = x − max_y x, p = e^z / Σ e^z),
and f is 0 where p = 0 (an exponent that underflows, a −inf logit: a class the row gives
probability 0), as the limit says. A row with NaN or +inf, or with every logit −inf, has no
softmax: it is refused naming the rows. A set whose rows are all probability vectors
(non-negative, summing to 1) is refused too: those are not logits, and their log is. So is,
unless the caller declares it logits, a set whose every row is ≥ 0: features after a ReLU,
such as the Inception's pool3 (logits take both signs; see
:mod:`shardeval.pipeline.inception_score.logits`).

The standard error of the score over all samples is the delta method's. With a_i =
Σ_y f(p_iy), log IS is a smooth function g(ā, q) = ā − Σ_y q_y log q_y of two means; its
gradient (1, −(log q_y + 1)) applied to one row's deviation (a_i − ā, p_i − q) gives its
influence on the estimate,

    ψ_i = (a_i − ā) − Σ_y log q_y (p_iy − q_y) = KL(p_i ‖ q) − log IS

(the +1 drops out: both p_i and q sum to 1). So Var(log IS) ≈ Var(KL(p_i ‖ q))/n: the spread
of the per-row divergences from the estimated marginal. They need q, known only when every
shard has been summed, so a second pass over the shards computes them (:class:`ScalarMoments`
of KL(p_i ‖ q), merged by Chan's update: no cancellation). Their mean is log IS again, computed
another way: a difference beyond rounding means the logits changed between the passes, an
error. SE(IS) = IS · SE(log IS) (the delta method again, for exp).

This module holds the score itself (:func:`inception_score`) and its result; the per-row
arithmetic of logits is in :mod:`~shardeval.pipeline.inception_score.probabilities`, the shard
states and their tasks in :mod:`~shardeval.pipeline.inception_score.class_means`, and their
names are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import shard_tasks
from shardeval.pipeline.errors import NonFiniteError, NumericalError, OptionError, ShapeError
from shardeval.pipeline.inception_score import SEED
from shardeval.pipeline.inception_score.class_means import (
    TILE_ROWS,
    ClassMeans,
    class_means,
    kl_moments,
    split_labels,
    split_tasks,
)
from shardeval.pipeline.inception_score.logits import NotLogitsError, features_refusal
from shardeval.pipeline.inception_score.probabilities import (
    PROBABILITY_SUM_FLOOR,
    log_softmax,
    nonnegative_rows,
    p_log_p,
    probability_rows,
    softmax_terms,
    valid_rows,
)
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.runoptions import SEED_RANGE

#: How far the second pass's mean of KL(p_i ‖ q) may lie from the first pass's log IS (both
#: are float64 means of terms of order log C; rounding leaves ~1e-13).
CONSISTENCY = 1e-9

PROTOCOL = (
    "torch-fidelity's isc: the rows permuted by numpy's RandomState(seed).permutation(N), split "
    "i the permuted rows [i·N//S, (i+1)·N//S), the IS of each split; mean and standard "
    "deviation (ddof 0) over the S splits"
)
ESTIMATOR = (
    "all samples: log IS = Σ_y (mean_i p_iy log p_iy − q_y log q_y), each class's term ≥ 0 "
    "(rounding below 0 set to 0: log_clamped); standard error by the delta method on log IS "
    "(influence of row i: KL(p_i ‖ p̂) − log IS), then SE(IS) = IS · SE(log IS)"
)


@dataclass(frozen=True)
class InceptionScoreResult:
    """The Inception Score of a set of logits.

    Attributes:
        inception_score: over all samples, exact (one set of means over every row).
        standard_error: of it (delta method, see the module's text).
        log_inception_score: its logarithm, the mean KL(p(y|x) ‖ p(y)) in nats.
        log_standard_error: of the logarithm.
        n: rows.
        classes: logits per row.
        estimator: how the score and its error were computed.
        splits: S of the peers' protocol (0: not computed).
        seed: the seed of its split order (None without it).
        split_mean: mean of the S split scores (torch-fidelity's ``inception_score_mean``).
        split_std: their standard deviation, ddof 0 (its ``inception_score_std``).
        split_scores: the S scores, in split order.
        split_rows: rows of each split.
        protocol: how the split scores were computed (None without them).
        log_clamped: how much of log IS was rounding below 0 in some class's term (each is
            ≥ 0 exactly) and was set to 0, in nats: within the terms' rounding bounds.
        logits: what was read (the store and its array).
        as_logits: the caller declared the array logits, so that the checks that refuse
            features (2,048 columns, every value ≥ 0) did not apply.
    """

    inception_score: float
    standard_error: float
    log_inception_score: float
    log_standard_error: float
    n: int
    classes: int
    estimator: str = ESTIMATOR
    splits: int = 0
    seed: int | None = None
    split_mean: float | None = None
    split_std: float | None = None
    split_scores: tuple[float, ...] = ()
    split_rows: tuple[int, ...] = ()
    protocol: str | None = None
    log_clamped: float = 0.0
    logits: str = ""
    as_logits: bool = False


def _check_rows(source: FeatureSource, means: ClassMeans, as_logits: bool = False) -> None:
    """Every row has a softmax, the rows are not all probability vectors and, unless the
    caller declared them logits, not all ≥ 0."""
    bad = means.nonfinite
    if bad.count:
        raise NonFiniteError(
            f"{source.location!r} has {bad.count} row(s) of logits without a softmax (NaN, "
            f"+inf, or every logit −inf; first at rows {', '.join(map(str, bad.first))}); the "
            "Inception Score takes every row: clean them (a −inf logit in a row with finite "
            "ones is a class of probability 0, and is taken)"
        )
    n = int(means.n[0])
    if means.probabilities == n:
        raise NotLogitsError(
            f"{source.location!r}: all {n} rows are probability vectors (non-negative, summing "
            "to 1), not logits, and a softmax of probabilities is not theirs; give their log "
            "(np.log(p): its softmax is p, and log 0 = −inf is a class of probability 0)"
        )
    if means.nonnegative == n and not as_logits:
        raise features_refusal(
            source,
            f"every value of its {n:,} rows is ≥ 0, as in features after a ReLU (the "
            "Inception's pool3 features average ReLU outputs), where a classifier's logits take "
            "both signs",
        )


def check_splits(splits: int, seed: int, n: int | None = None) -> None:
    """``splits`` and ``seed`` are usable (for ``n`` rows when given).

    Raises:
        OptionError: a negative number of splits, more splits than rows, a seed out of range.
    """
    if splits < 0:
        raise OptionError(
            f"«splits» must be 0 (all samples only) or a positive count, got {splits}"
        )
    problem = SEED_RANGE.problem(seed)
    if problem:
        raise OptionError(f"«seed»: {problem}")
    if n is not None and splits > n:
        raise OptionError(
            f"«splits={splits}» exceeds the {n} rows: every split needs at least one row"
        )


def inception_score(
    source: FeatureSource,
    *,
    splits: int = 0,
    seed: int = SEED,
    engine: Engine | None = None,
    split_every: int | None = None,
    progress: Progress | None = None,
    standard_error: bool = True,
    as_logits: bool = False,
) -> InceptionScoreResult:
    """The Inception Score of (N, C) logits, over all samples with its standard error and,
    with ``splits``, by the peers' protocol too (both from one pass over the shards; the
    standard error takes a second).

    Args:
        source: the logits (see :func:`shardeval.pipeline.inception_score.logits.logits_of` for
            an extraction store's).
        splits: S > 0 also gives torch-fidelity's protocol with S splits (its default is 10).
        seed: seed of that protocol's permutation (torch-fidelity's ``rng_seed``, 2020).
        engine: where to run (default: the threaded scheduler).
        split_every: fan-in of a balanced merge tree (see :meth:`Engine.reduce`).
        progress: called with (shards done, shards total), once per pass.
        standard_error: compute it (the second pass); without, it is NaN.
        as_logits: the caller declares the rows logits: rows that are all ≥ 0 are read (else
            refused as features after a ReLU).

    Returns:
        :class:`InceptionScoreResult`.

    Raises:
        ShapeError: not 2-D, fewer than 2 classes or 2 rows.
        OptionError: bad ``splits`` or ``seed``.
        NonFiniteError: rows of logits without a softmax: NaN, +inf, or only −inf (named
            by rows; a −inf logit alone is a class of probability 0).
        NotLogitsError: every row is a probability vector (their log is logits), or, unless
            declared logits, every row is ≥ 0 (features after a ReLU).
        NumericalError: the two passes disagree (the logits changed meanwhile).
    """
    if source.array.ndim != 2 or source.d < 2 or source.n < 2:
        raise ShapeError(
            f"{source.location!r} has shape {tuple(source.array.shape)}; the Inception Score "
            "takes logits (N, C) with at least 2 rows and 2 classes"
        )
    check_splits(splits, seed, source.n)
    engine = engine or Engine()
    (means,) = engine.reduce(
        [split_tasks(source, splits, seed)], split_every=split_every, progress=progress
    )
    _check_rows(source, means, as_logits)
    log_scores = means.log_scores()
    log_is = float(log_scores[0])
    n = int(means.n[0])
    log_se = math.nan
    if standard_error:
        log_q = means.log_marginal()
        (spread,) = engine.reduce(
            [shard_tasks(source, kl_moments, log_q)], split_every=split_every, progress=progress
        )
        if spread.n != n or abs(spread.mean - log_is) > CONSISTENCY * max(1.0, abs(log_is)):
            raise NumericalError(
                f"{source.location!r}: the second pass over the logits gave mean KL "
                f"{spread.mean!r} over {spread.n} rows, the first log IS {log_is!r} over {n}; "
                "the logits changed between the passes"
            )
        log_se = float(math.sqrt(spread.variance() / n))
    score = math.exp(log_is)
    name = f"{source.location}" + (f" ({source.name})" if source.name else "")
    result = InceptionScoreResult(
        inception_score=score,
        standard_error=score * log_se,
        log_inception_score=log_is,
        log_standard_error=log_se,
        n=n,
        classes=source.d,
        log_clamped=float(means.clamped()[0]),
        logits=name,
        as_logits=as_logits,
    )
    if not splits:
        return result
    scores = np.exp(log_scores[1:])
    return replace(
        result,
        splits=splits,
        seed=seed,
        split_mean=float(np.mean(scores)),
        split_std=float(np.std(scores)),  # ddof 0, as torch-fidelity's np.std
        split_scores=tuple(float(s) for s in scores),
        split_rows=tuple(int(k) for k in means.n[1:]),
        protocol=PROTOCOL,
    )


__all__ = [
    "CONSISTENCY",
    "ESTIMATOR",
    "PROBABILITY_SUM_FLOOR",
    "PROTOCOL",
    "TILE_ROWS",
    "ClassMeans",
    "InceptionScoreResult",
    "check_splits",
    "class_means",
    "inception_score",
    "kl_moments",
    "log_softmax",
    "nonnegative_rows",
    "p_log_p",
    "probability_rows",
    "softmax_terms",
    "split_labels",
    "split_tasks",
    "valid_rows",
]
