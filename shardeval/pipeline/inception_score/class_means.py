"""The Inception Score's shard states and their tasks: :class:`ClassMeans` (per split, the
rows' mean probabilities and mean p·log p, merged by Chan's weighted update), the second pass's
KL(p_i ‖ q) moments (:func:`kl_moments`), and the split of each row under torch-fidelity's
protocol (:func:`split_labels`, :func:`split_tasks`). The estimator is described in
:mod:`shardeval.pipeline.inception_score.score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.reduce import SHARD_PREFIX, shard_tasks
from shardeval.pipeline.core.states import Examples, NonFiniteRows, ScalarMoments, state
from shardeval.pipeline.errors import NumericalError
from shardeval.pipeline.inception_score.probabilities import (
    _U64,
    _finite,
    _softmax,
    nonnegative_rows,
    p_log_p,
    probability_rows,
    softmax_terms,
    valid_rows,
)
from shardeval.pipeline.io.stores import FeatureSource

#: Rows softmaxed at once inside a shard: the float64 temporaries of a tile (the widened logits,
#: e^z, a reordered copy for the splits) are 4 MiB each at 1,008 classes, whatever the shard's
#: size, and stay in cache (measured: 130 MiB less peak memory than 2,048 rows, and no slower).
TILE_ROWS = 512


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
