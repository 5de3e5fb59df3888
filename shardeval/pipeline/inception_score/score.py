"""The Inception Score (Salimans et al., "Improved techniques for training GANs", NeurIPS 2016)
from class logits, streamed shard by shard like every other metric:

    IS = exp(E_x KL(p(y|x) ‖ p(y))),   p(y) = E_x p(y|x).

With p_i the softmax of row i, q = (1/n) Σ_i p_i and a_i = Σ_y p_iy log p_iy,

    log IS = (1/n) Σ_i KL(p_i ‖ q) = (1/n) Σ_i a_i − Σ_y q_y log q_y,

so three sums make it exactly: n, Σ_i p_i (C floats) and Σ_i a_i. They add, so a shard's sums
are a mergeable state (:class:`ClassSums`), kept per split: the peers' protocol (torch-fidelity's
``isc``) cuts the rows into S splits and reports the mean and standard deviation of the S scores,
and one pass gives every split's sums and, summed, the score over all samples.

Numerics: the softmax is taken in float64 by log-sum-exp (z = x − max_y x, log p = z − log Σ e^z),
and p log p is 0 where p = 0 (an exponent that underflows, or a difference that overflows to
−inf), as the limit says; q log q likewise.

The standard error of the score over all samples is the delta method's. log IS is a smooth
function f(ā, q) = ā − Σ_y q_y log q_y of two means; its gradient (1, −(log q_y + 1)) applied to
one row's deviation (a_i − ā, p_i − q) gives its influence on the estimate,

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

from shardeval.pipeline.core.chunks import check_nonfinite, finite_rows
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.core.reduce import SHARD_PREFIX, shard_tasks
from shardeval.pipeline.core.states import Examples, NonFiniteRows, ScalarMoments, state
from shardeval.pipeline.errors import NumericalError, OptionError, ShapeError
from shardeval.pipeline.inception_score import SEED
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.options import seed_problem

#: Rows softmaxed at once inside a shard: the float64 temporaries of a tile (the widened logits,
#: e^z, a reordered copy for the splits) are 4 MiB each at 1,008 classes, whatever the shard's
#: size, and stay in cache (measured: 130 MiB less peak memory than 2,048 rows, and no slower).
TILE_ROWS = 512

#: How far the second pass's mean of KL(p_i ‖ q) may lie from the first pass's log IS (both
#: are float64 sums of terms of order log C; rounding leaves ~1e-13).
CONSISTENCY = 1e-9

PROTOCOL = (
    "torch-fidelity's isc: the rows permuted by numpy's RandomState(seed).permutation(N), split "
    "i the permuted rows [i·N//S, (i+1)·N//S), the IS of each split; mean and standard "
    "deviation (ddof 0) over the S splits"
)
ESTIMATOR = (
    "all samples; standard error by the delta method on log IS (influence of row i: "
    "KL(p_i ‖ p̂) − log IS), then SE(IS) = IS · SE(log IS)"
)


_LOWEST = float(np.finfo(np.float64).min)


def _finite(tile: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The rows of ``tile`` that ``keep`` marks (the tile itself, uncopied, when all are)."""
    return tile if keep.all() else tile[keep]


def softmax_terms(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise softmax of finite logits in float64 by log-sum-exp: p, log p and
    a_i = Σ_y p_iy log p_iy, with p · log p = 0 where p = 0.

    z = x − max_y x ≤ 0 (a difference that overflows, −inf, is held at float64's lowest, so
    that its p is 0 and its log p finite: 0 · log p = 0, never NaN), s = Σ_y e^z ∈ [1, C],
    p = e^z / s, log p = z − log s. One exponential per value, in place where it can be.
    """
    z = np.array(x, dtype=np.float64)  # a copy: the block is never written
    with np.errstate(over="ignore", under="ignore"):
        z -= z.max(axis=1, keepdims=True)
        np.maximum(z, _LOWEST, out=z)
        p = np.exp(z)
        s = p.sum(axis=1, keepdims=True)
        p /= s
        z -= np.log(s)
    return p, z, np.einsum("ij,ij->i", p, z)


def log_softmax(x: Any) -> np.ndarray:
    """Row-wise log-softmax in float64 by log-sum-exp (rows of finite logits)."""
    return softmax_terms(x)[1]


def _class_sums_examples(rng: np.random.Generator) -> Examples[ClassSums]:
    splits, classes = 3, 5
    found = []
    for rows in (6, 1, 9):
        labels = rng.integers(0, splits, rows)
        block = rng.standard_normal((rows, classes)) * 4
        found.append(ClassSums.from_logits(block, 0, labels, splits))
    return ClassSums.empty(splits, classes), found


@state(examples=_class_sums_examples)
@dataclass(frozen=True, eq=False)
class ClassSums:
    """Per split, the sums that make its Inception Score: rows, Σ_i p(y|x_i) and
    Σ_i Σ_y p log p; and where rows with non-finite logits are (left out of the sums).

    Attributes:
        n: (S,) rows per split, int64.
        p: (S, C) float64, Σ_i p_i over each split's rows.
        plogp: (S,) float64, Σ_i Σ_y p_iy log p_iy (0 log 0 = 0).
        nonfinite: rows with NaN/±inf logits.

    The merge adds them; the sums over the splits are the sums over all rows.

    Example:
        >>> x = np.array([[0.0, 0.0], [5.0, -5.0], [-5.0, 5.0]])
        >>> s = ClassSums.from_logits(x[:1], 0, None, 1).merge(ClassSums.from_logits(x[1:], 1))
        >>> int(s.n[0]), s.p.round(6).tolist()
        (3, [[1.5, 1.5]])
    """

    n: np.ndarray
    p: np.ndarray
    plogp: np.ndarray
    nonfinite: NonFiniteRows

    def __post_init__(self) -> None:
        n = np.ascontiguousarray(self.n, dtype=np.int64)
        p = np.ascontiguousarray(self.p, dtype=np.float64)
        plogp = np.ascontiguousarray(self.plogp, dtype=np.float64)
        for a in (n, p, plogp):
            a.setflags(write=False)
        if p.ndim != 2 or n.shape != (p.shape[0],) or plogp.shape != n.shape:
            raise ValueError(
                f"ClassSums needs n (S,), p (S, C), plogp (S,); got {n.shape}, {p.shape}, "
                f"{plogp.shape}"
            )
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "plogp", plogp)

    @property
    def splits(self) -> int:
        return int(self.p.shape[0])

    @property
    def classes(self) -> int:
        return int(self.p.shape[1])

    @classmethod
    def empty(cls, splits: int, classes: int) -> ClassSums:
        return cls(
            np.zeros(splits, np.int64),
            np.zeros((splits, classes)),
            np.zeros(splits),
            NonFiniteRows.empty(),
        )

    @classmethod
    def from_logits(cls, block: Any, offset: int, labels: Any = None, splits: int = 1) -> ClassSums:
        """The sums of one block of logits (rows, C) whose first row is global row
        ``offset``; ``labels`` (rows,) gives each row's split (None: every row in split 0)."""
        x = np.asarray(block)
        ok = finite_rows(x)
        n = np.zeros(splits, np.int64)
        p_sum = np.zeros((splits, x.shape[1]))
        plogp = np.zeros(splits)
        for lo in range(0, x.shape[0], TILE_ROWS):
            keep = ok[lo : lo + TILE_ROWS]
            tile = _finite(x[lo : lo + TILE_ROWS], keep)
            if not len(tile):
                continue
            p, _, a = softmax_terms(tile)
            if labels is None:
                n[0] += len(p)
                p_sum[0] += p.sum(axis=0)
                plogp[0] += a.sum()
                continue
            split = np.asarray(labels[lo : lo + TILE_ROWS])[keep].astype(np.int64)
            order = np.argsort(split, kind="stable")
            found, starts, counts = np.unique(split[order], return_index=True, return_counts=True)
            n[found] += counts
            p_sum[found] += np.add.reduceat(p[order], starts, axis=0)
            plogp[found] += np.add.reduceat(a[order], starts)
        return cls(n, p_sum, plogp, NonFiniteRows.from_mask(~ok, offset))

    def merge(self, other: ClassSums) -> ClassSums:
        if self.p.shape != other.p.shape:
            raise ValueError(
                f"cannot merge ClassSums of (splits, classes) {self.p.shape} and {other.p.shape}"
            )
        if not other.n.any() and not other.nonfinite.count:
            return self
        if not self.n.any() and not self.nonfinite.count:
            return other
        return ClassSums(
            self.n + other.n,
            self.p + other.p,
            self.plogp + other.plogp,
            self.nonfinite.merge(other.nonfinite),
        )

    def total(self) -> ClassSums:
        """The sums over every row (one split)."""
        return ClassSums(
            self.n.sum(keepdims=True),
            self.p.sum(axis=0, keepdims=True),
            self.plogp.sum(keepdims=True),
            self.nonfinite,
        )

    def log_scores(self) -> np.ndarray:
        """(S,) log IS of each split: Σ a / n − Σ_y q_y log q_y, q = Σ p / n."""
        n = self.n.astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):  # an empty split: NaN
            q = self.p / n
            q_log_q = q * np.log(np.where(q > 0, q, 1.0))
            return np.asarray(self.plogp / n[:, 0] - q_log_q.sum(axis=1))

    def log_marginal(self) -> np.ndarray:
        """(C,) log q of the whole set, 0 where q = 0 (no row has mass there, so every
        p_iy log q_y it meets is 0)."""
        total = self.total()
        q = total.p[0] / float(total.n[0])
        return np.log(np.where(q > 0, q, 1.0))


def kl_moments(block: Any, offset: int, log_q: np.ndarray) -> ScalarMoments:
    """The second pass: Welford/Chan moments of KL(p_i ‖ q) = Σ_y p_iy (log p_iy − log q_y)
    over the block's rows (rows with non-finite logits, already refused, left out)."""
    x = np.asarray(block)
    ok = finite_rows(x)
    acc = ScalarMoments.empty()
    for lo in range(0, x.shape[0], TILE_ROWS):
        tile = _finite(x[lo : lo + TILE_ROWS], ok[lo : lo + TILE_ROWS])
        if len(tile):
            p, _, a = softmax_terms(tile)
            acc = acc.merge(ScalarMoments.from_values(a - p @ log_q))
    return acc


def _sums_block(
    block: np.ndarray,
    labels: np.ndarray,
    splits: int,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = ClassSums.from_logits(block, offset, labels[:, 0], splits)
    return out


def class_sums(block: Any, offset: int) -> ClassSums:
    """A shard's sums, every row in one split (the score over all samples)."""
    return ClassSums.from_logits(block, offset)


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
    """One delayed :class:`ClassSums` per shard of ``source``: every row in split 0 when
    ``splits`` is 0, else per split of the peers' protocol. The labels are a dask array cut
    like the shards, so each task receives only its own rows' (a byte each for S ≤ 256)."""
    if not splits:
        return shard_tasks(source, class_sums)
    import dask.array as da
    from dask.base import tokenize

    labels = split_labels(source.n, splits, seed)[:, None]
    labels_array = da.from_array(labels, chunks=(source.array.chunks[0], (1,)))
    token = tokenize(source.array.name, splits, seed)
    states = da.map_blocks(
        _sums_block,
        source.array,
        labels_array,
        splits,
        name=f"{SHARD_PREFIX}is-sums-{token}",
        chunks=((1,) * source.shards, (1,)),
        meta=np.empty((0, 0), dtype=object),
    )
    return list(states.to_delayed().ravel())


@dataclass(frozen=True)
class InceptionScoreResult:
    """The Inception Score of a set of logits.

    Attributes:
        inception_score: over all samples, exact (one set of sums over every row).
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
        logits: what was read (the store and its array).
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
    logits: str = ""


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

    Returns:
        :class:`InceptionScoreResult`.

    Raises:
        ShapeError: not 2-D, fewer than 2 classes or 2 rows.
        OptionError: bad ``splits`` or ``seed``.
        NonFiniteError: logits with NaN/±inf (named by rows).
        NumericalError: the two passes disagree (the logits changed meanwhile).
    """
    if source.array.ndim != 2 or source.d < 2 or source.n < 2:
        raise ShapeError(
            f"{source.location!r} has shape {tuple(source.array.shape)}; the Inception Score "
            "takes logits (N, C) with at least 2 rows and 2 classes"
        )
    check_splits(splits, seed, source.n)
    engine = engine or Engine()
    (sums,) = engine.reduce(
        [split_tasks(source, splits, seed)], split_every=split_every, progress=progress
    )
    check_nonfinite(source.location, sums.nonfinite, "error", "row(s) of logits")
    total = sums.total()
    log_is = float(total.log_scores()[0])
    n = int(total.n[0])
    log_se = math.nan
    if standard_error:
        log_q = total.log_marginal()
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
        logits=name,
    )
    if not splits:
        return result
    scores = np.exp(sums.log_scores())
    return replace(
        result,
        splits=splits,
        seed=seed,
        split_mean=float(np.mean(scores)),
        split_std=float(np.std(scores)),  # ddof 0, as torch-fidelity's np.std
        split_scores=tuple(float(s) for s in scores),
        split_rows=tuple(int(k) for k in sums.n),
        protocol=PROTOCOL,
    )
