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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import SHARD_PREFIX, shard_tasks
from shardeval.pipeline.core.states import Examples, NonFiniteRows, ScalarMoments, state
from shardeval.pipeline.errors import NonFiniteError, NumericalError, OptionError, ShapeError
from shardeval.pipeline.inception_score import SEED
from shardeval.pipeline.inception_score.logits import NotLogitsError, features_refusal
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.options import seed_problem

#: Rows softmaxed at once inside a shard: the float64 temporaries of a tile (the widened logits,
#: e^z, a reordered copy for the splits) are 4 MiB each at 1,008 classes, whatever the shard's
#: size, and stay in cache (measured: 130 MiB less peak memory than 2,048 rows, and no slower).
TILE_ROWS = 512

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


_LOWEST = float(np.finfo(np.float64).min)

#: Unit roundoff of float64.
_U64 = 2.0**-53

#: How far from 1 a row of non-negative values may sum and still be a probability vector: its
#: dtype's rounding over C values (C·eps), and at least the rounding of 16-bit storage.
PROBABILITY_SUM_FLOOR = 1e-3


def valid_rows(block: np.ndarray) -> np.ndarray:
    """Per row of logits: has it a softmax? No NaN, no +inf, and at least one finite logit
    (−inf is a class of probability 0; a row of only −inf has none)."""
    x = np.asarray(block)
    finite = np.isfinite(x)
    if finite.all():  # the common case: one pass
        return np.ones(len(x), bool)
    bad = np.isnan(x) | (x == np.inf)
    return np.asarray(~bad.any(axis=1) & finite.any(axis=1))


def probability_rows(block: np.ndarray) -> int:
    """How many rows of ``block`` (rows with a softmax) are probability vectors: no negative
    value, and a sum within max(C·eps, :data:`PROBABILITY_SUM_FLOOR`) of 1, eps the rounding
    of the block's dtype (float64's for integers)."""
    x = np.asarray(block)
    if not len(x):
        return 0
    eps = float(np.finfo(x.dtype if x.dtype.kind == "f" else np.float64).eps)
    tolerance = min(0.5, max(x.shape[1] * eps, PROBABILITY_SUM_FLOOR))
    with np.errstate(invalid="ignore"):  # a −inf logit: the row is not a probability vector
        total = x.sum(axis=1, dtype=np.float64)
        return int(np.count_nonzero((x.min(axis=1) >= 0) & (np.abs(total - 1.0) <= tolerance)))


def nonnegative_rows(block: np.ndarray) -> int:
    """How many rows of ``block`` (rows with a softmax) have no value below 0, as features
    after a ReLU have (a −inf logit is below 0)."""
    x = np.asarray(block)
    return int(np.count_nonzero(x.min(axis=1) >= 0)) if x.size else 0


def _finite(tile: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The rows of ``tile`` that ``keep`` marks (the tile itself, uncopied, when all are)."""
    return tile if keep.all() else tile[keep]


def _softmax(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p = e^z / s, z = x − max_y x and s = Σ_y e^z of rows with a softmax, in float64."""
    z = np.array(x, dtype=np.float64)  # a copy: the block is never written
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        z -= z.max(axis=1, keepdims=True)
        np.maximum(z, _LOWEST, out=z)
        p = np.exp(z)
        s = p.sum(axis=1, keepdims=True)
        p /= s
    return p, z, s


def softmax_terms(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise softmax of logits (rows with a softmax: see :func:`valid_rows`) in float64 by
    log-sum-exp: p, log p and a_i = Σ_y p_iy log p_iy, with p · log p = 0 where p = 0.

    z = x − max_y x ≤ 0 (−inf, a masked class or a difference that overflows, is held at
    float64's lowest, so that its p is 0 and its log p finite: 0 · log p = 0, never NaN),
    s = Σ_y e^z ∈ [1, C], p = e^z / s, log p = z − log s. One exponential per value, in place
    where it can be.
    """
    p, z, s = _softmax(x)
    z -= np.log(s)
    return p, z, np.einsum("ij,ij->i", p, z)


def log_softmax(x: Any) -> np.ndarray:
    """Row-wise log-softmax in float64 by log-sum-exp (rows with a softmax)."""
    return softmax_terms(x)[1]


def p_log_p(p: np.ndarray) -> np.ndarray:
    """f(p) = p log p elementwise, 0 where p = 0. The one function both f(p_iy) and f(q_y)
    are computed with: equal probabilities give equal values, bit for bit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.log(p)
        f *= p
    zero = p == 0  # 0 · log 0 = 0 · −inf: NaN, where the limit is 0
    if zero.any():
        f[zero] = 0.0
    return np.asarray(f)


def _mean_rows(values: np.ndarray) -> np.ndarray:
    """The mean of the rows of ``values`` (k ≥ 1), as the first row plus the mean difference
    from it: rows that are all equal give that row exactly."""
    first = values[0]
    return first + (values - first).sum(axis=0) / len(values)


def _group_means(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The means of consecutive groups of rows of ``values`` (group g: ``counts[g]`` rows
    from ``starts[g]``), each as :func:`_mean_rows` makes it: its first row plus the mean
    difference from it."""
    first = values[starts]
    differences = values - np.repeat(first, counts, axis=0)
    return first + np.add.reduceat(differences, starts, axis=0) / counts[:, None]


def _merge_means(
    n_a: np.ndarray, a: np.ndarray, n_b: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Chan's weighted update of per-split means (rows of ``a``, ``b``) over ``n_a``, ``n_b``
    rows: a + (b − a)·n_b/n, which leaves two equal means equal; an empty side gives the
    other's exactly."""
    n = n_a + n_b
    weight = np.divide(n_b, n, out=np.zeros(n.shape), where=n > 0)[:, None]
    merged = np.where((n_a == 0)[:, None], b, a + (b - a) * weight)
    return n, merged


def _class_means_examples(rng: np.random.Generator) -> Examples[ClassMeans]:
    splits, classes = 3, 5
    found = []
    for rows in (6, 1, 9):
        labels = rng.integers(0, splits, rows)
        block = rng.standard_normal((rows, classes)) * 4
        found.append(ClassMeans.from_logits(block, 0, labels, splits))
    return ClassMeans.empty(splits, classes), found


@state(examples=_class_means_examples)
@dataclass(frozen=True, eq=False)
class ClassMeans:
    """The means that make the Inception Score, over every row and per split: rows, the
    marginal q = mean_i p(y|x_i) and the mean of p log p, per class; how many rows were
    probability vectors and how many had no value below 0; and where rows without a softmax
    are (left out of the means).

    Attributes:
        n: (1 + S,) rows of the whole set (row 0), then of each split, int64.
        q: (1 + S, C) float64, mean_i p_iy over those rows (0 where there are none).
        plogp: (1 + S, C) float64, mean_i p_iy log p_iy (0 log 0 = 0).
        probabilities: rows that are probability vectors, not logits.
        nonfinite: rows with NaN or +inf logits, or only −inf ones.
        nonnegative: rows with no value below 0 (features after a ReLU, when all are).

    The merge is Chan's weighted update of the means, row by row. The whole set's means are
    kept apart from the splits' (not merged from them at the end), so the score over all
    samples is the same, bit for bit, with splits or without.

    Example:
        >>> x = np.array([[0.0, 0.0], [5.0, -5.0], [-5.0, 5.0]])
        >>> s = ClassMeans.from_logits(x[:1], 0).merge(ClassMeans.from_logits(x[1:], 1))
        >>> int(s.n[0]), s.q.round(6).tolist()
        (3, [[0.5, 0.5]])
    """

    n: np.ndarray
    q: np.ndarray
    plogp: np.ndarray
    probabilities: int
    nonfinite: NonFiniteRows
    nonnegative: int = 0

    def __post_init__(self) -> None:
        n = np.ascontiguousarray(self.n, dtype=np.int64)
        q = np.ascontiguousarray(self.q, dtype=np.float64)
        plogp = np.ascontiguousarray(self.plogp, dtype=np.float64)
        for a in (n, q, plogp):
            a.setflags(write=False)
        if q.ndim != 2 or not len(n) or n.shape != (q.shape[0],) or plogp.shape != q.shape:
            raise ValueError(
                f"ClassMeans needs n (1 + S,), q and plogp (1 + S, C); got {n.shape}, "
                f"{q.shape}, {plogp.shape}"
            )
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "plogp", plogp)
        object.__setattr__(self, "probabilities", int(self.probabilities))
        object.__setattr__(self, "nonnegative", int(self.nonnegative))

    @property
    def splits(self) -> int:
        return int(self.q.shape[0]) - 1

    @property
    def classes(self) -> int:
        return int(self.q.shape[1])

    @classmethod
    def empty(cls, splits: int, classes: int) -> ClassMeans:
        return cls(
            np.zeros(1 + splits, np.int64),
            np.zeros((1 + splits, classes)),
            np.zeros((1 + splits, classes)),
            0,
            NonFiniteRows.empty(),
        )

    @classmethod
    def from_logits(
        cls, block: Any, offset: int, labels: Any = None, splits: int = 0
    ) -> ClassMeans:
        """The means of one block of logits (rows, C) whose first row is global row
        ``offset``; ``labels`` (rows,) gives each row's split in [0, ``splits``) (None: no
        splits, the whole set's means alone)."""
        x = np.asarray(block)
        ok = valid_rows(x)
        n = np.zeros(1 + splits, np.int64)
        q, plogp = np.zeros((1 + splits, x.shape[1])), np.zeros((1 + splits, x.shape[1]))
        probabilities = nonnegative = 0
        for lo in range(0, x.shape[0], TILE_ROWS):
            keep = ok[lo : lo + TILE_ROWS]
            tile = _finite(x[lo : lo + TILE_ROWS], keep)
            if not len(tile):
                continue
            probabilities += probability_rows(tile)
            nonnegative += nonnegative_rows(tile)
            p = _softmax(tile)[0]
            f = p_log_p(p)
            # Row 0, the whole set, then the splits this tile has rows of.
            rows, tile_n = np.zeros(1, np.int64), np.array([len(p)])
            tile_q, tile_f = _mean_rows(p)[None], _mean_rows(f)[None]
            if labels is not None:
                split = np.asarray(labels[lo : lo + TILE_ROWS])[keep].astype(np.int64)
                order = np.argsort(split, kind="stable")
                found, starts, counts = np.unique(
                    split[order], return_index=True, return_counts=True
                )
                rows, tile_n = np.concatenate([rows, 1 + found]), np.concatenate([tile_n, counts])
                tile_q = np.concatenate([tile_q, _group_means(p[order], starts, counts)])
                tile_f = np.concatenate([tile_f, _group_means(f[order], starts, counts)])
            _, q[rows] = _merge_means(n[rows], q[rows], tile_n, tile_q)
            n[rows], plogp[rows] = _merge_means(n[rows], plogp[rows], tile_n, tile_f)
        nonfinite = NonFiniteRows.from_mask(~ok, offset)
        return cls(n, q, plogp, probabilities, nonfinite, nonnegative)

    def merge(self, other: ClassMeans) -> ClassMeans:
        if self.q.shape != other.q.shape:
            raise ValueError(
                f"cannot merge ClassMeans of (1 + splits, classes) {self.q.shape} and "
                f"{other.q.shape}"
            )
        if not other.n.any() and not other.nonfinite.count:
            return self
        if not self.n.any() and not self.nonfinite.count:
            return other
        _, q = _merge_means(self.n, self.q, other.n, other.q)
        n, plogp = _merge_means(self.n, self.plogp, other.n, other.plogp)
        return ClassMeans(
            n,
            q,
            plogp,
            self.probabilities + other.probabilities,
            self.nonfinite.merge(other.nonfinite),
            self.nonnegative + other.nonnegative,
        )

    def class_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(1 + S, C) terms mean_i f(p_iy) − f(q_y) of log IS, each ≥ 0 (Jensen), with their
        rounding bounds 4·n·u·(|mean f| + |f(q)| + q), n the rows of the mean (a mean of n
        values carries at most (n − 1)·u of their magnitude; f(q) adds its slope's share)."""
        f_q = p_log_p(self.q)
        terms = self.plogp - f_q
        scale = np.abs(self.plogp) + np.abs(f_q) + self.q
        return terms, 4.0 * _U64 * np.maximum(self.n, 1)[:, None] * scale

    def log_scores(self) -> np.ndarray:
        """(1 + S,) log IS of the whole set, then of each split: Σ_y max(0, mean f(p_y) −
        f(q_y)) (NaN where there are no rows).

        Raises:
            NumericalError: a term below 0 by more than its rounding bound.
        """
        terms, bound = self.class_terms()
        if (terms < -bound).any():
            row, y = np.argwhere(terms < -bound)[0]
            which = f"split {row - 1}" if row else "the whole set"
            raise NumericalError(
                f"the Inception Score's term of class {y} ({which}) is {terms[row, y]!r}, below "
                f"0 by more than its rounding bound {bound[row, y]:.3g}: the means lost precision"
            )
        scores = np.maximum(terms, 0.0).sum(axis=1)
        return np.where(self.n > 0, scores, np.nan)

    def clamped(self) -> np.ndarray:
        """(1 + S,) how much of each log IS was rounding below 0, set to 0 (nats)."""
        terms, _ = self.class_terms()
        return np.asarray(np.maximum(-terms, 0.0).sum(axis=1))

    def log_marginal(self) -> np.ndarray:
        """(C,) log q of the whole set, 0 where q = 0 (no row has mass there, so every
        p_iy log q_y it meets is 0)."""
        q = self.q[0]
        return np.log(np.where(q > 0, q, 1.0))


def kl_moments(block: Any, offset: int, log_q: np.ndarray) -> ScalarMoments:
    """The second pass: Welford/Chan moments of KL(p_i ‖ q) = Σ_y p_iy (log p_iy − log q_y)
    over the block's rows (rows without a softmax, already refused, left out)."""
    x = np.asarray(block)
    ok = valid_rows(x)
    acc = ScalarMoments.empty()
    for lo in range(0, x.shape[0], TILE_ROWS):
        tile = _finite(x[lo : lo + TILE_ROWS], ok[lo : lo + TILE_ROWS])
        if len(tile):
            p, _, a = softmax_terms(tile)
            acc = acc.merge(ScalarMoments.from_values(a - p @ log_q))
    return acc


def _means_block(
    block: np.ndarray,
    labels: np.ndarray,
    splits: int,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = ClassMeans.from_logits(block, offset, labels[:, 0], splits)
    return out


def class_means(block: Any, offset: int) -> ClassMeans:
    """A shard's means over all its rows (no splits)."""
    return ClassMeans.from_logits(block, offset)


def split_labels(n: int, splits: int, seed: int) -> np.ndarray:
    """The split of each row (in stored order) under torch-fidelity's protocol: the rows are
    permuted by ``RandomState(seed).permutation(n)`` and split i is the permuted rows
    [i·n//S, (i+1)·n//S)."""
    permutation = np.random.RandomState(seed).permutation(n)
    bounds = np.array([i * n // splits for i in range(splits + 1)])
    dtype = np.uint8 if splits <= 2**8 else np.uint16 if splits <= 2**16 else np.int32
    labels = np.empty(n, dtype=dtype)
    labels[permutation] = np.repeat(np.arange(splits, dtype=dtype), np.diff(bounds))
    return labels


def split_tasks(source: FeatureSource, splits: int, seed: int) -> list[Any]:
    """One delayed :class:`ClassMeans` per shard of ``source``: over all rows, and per split
    of the peers' protocol when ``splits`` > 0. The labels are a dask array cut
    like the shards, so each task receives only its own rows' (a byte each for S ≤ 256)."""
    if not splits:
        return shard_tasks(source, class_means)
    import dask.array as da
    from dask.base import tokenize

    labels = split_labels(source.n, splits, seed)[:, None]
    labels_array = da.from_array(labels, chunks=(source.array.chunks[0], (1,)))
    token = tokenize(source.array.name, splits, seed)
    states = da.map_blocks(
        _means_block,
        source.array,
        labels_array,
        splits,
        name=f"{SHARD_PREFIX}is-means-{token}",
        chunks=((1,) * source.shards, (1,)),
        meta=np.empty((0, 0), dtype=object),
    )
    return list(states.to_delayed().ravel())


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
    problem = seed_problem(seed)
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
