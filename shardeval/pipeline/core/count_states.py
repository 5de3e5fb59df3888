"""States that count or bound: :class:`NonFiniteRows` (how many rows held NaN/±inf, and the first
few), :class:`Magnitudes` (the largest and smallest nonzero magnitude of a set) and
:class:`Histogram` (counts over fixed bin edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.core.mergeable import Examples, state

_MAX_REPORTED_ROWS = 5


def _nonfinite_rows_examples(rng: np.random.Generator) -> Examples[NonFiniteRows]:
    # Together more than the reported first rows, so that the merges must choose which to keep.
    masks = [rng.random(6) < 0.5 for _ in range(3)]
    for mask in masks:
        mask[rng.integers(6)] = True
    found = [
        NonFiniteRows.from_mask(m, offset) for m, offset in zip(masks, (40, 0, 20), strict=True)
    ]
    return NonFiniteRows.empty(), found


@state(examples=_nonfinite_rows_examples)
@dataclass(frozen=True)
class NonFiniteRows:
    """How many rows held NaN/±inf, and the first few of their global indices."""

    count: int = 0
    first: tuple[int, ...] = ()

    @classmethod
    def empty(cls) -> NonFiniteRows:
        return cls()

    @classmethod
    def from_mask(cls, bad: Any, offset: int) -> NonFiniteRows:
        """From a boolean per-row mask of one block whose first row is global row ``offset``."""
        idx = np.flatnonzero(np.asarray(bad))
        return cls(int(idx.size), tuple(int(i) + offset for i in idx[:_MAX_REPORTED_ROWS]))

    def merge(self, other: NonFiniteRows) -> NonFiniteRows:
        first = tuple(sorted(self.first + other.first)[:_MAX_REPORTED_ROWS])
        return NonFiniteRows(self.count + other.count, first)


def _magnitudes_examples(rng: np.random.Generator) -> Examples[Magnitudes]:
    blocks = [rng.standard_normal((4, 3)) * 10.0 ** rng.integers(-5, 5) for _ in range(3)]
    blocks[1][0, 0] = 0.0  # a zero is no magnitude
    return Magnitudes.empty(), [Magnitudes.from_values(b) for b in blocks]


@state(examples=_magnitudes_examples)
@dataclass(frozen=True)
class Magnitudes:
    """The largest and the smallest nonzero magnitude of a set's values (0 and inf before any
    nonzero value): how far a power of two must scale the set, and whether it can exactly.

    Example:
        >>> a = Magnitudes.from_values(np.array([[0.0, -3.0], [0.5, 1.0]]))
        >>> a.merge(Magnitudes.from_values(np.array([[1e-3]]))).smallest
        0.001
    """

    largest: float = 0.0
    smallest: float = math.inf

    @classmethod
    def empty(cls) -> Magnitudes:
        return cls()

    @classmethod
    def from_values(cls, values: Any) -> Magnitudes:
        """Of an array's finite values."""
        size = np.abs(np.asarray(values, dtype=np.float64))
        size = size[np.isfinite(size) & (size > 0)]
        return cls(float(size.max()), float(size.min())) if size.size else cls()

    def merge(self, other: Magnitudes) -> Magnitudes:
        return Magnitudes(max(self.largest, other.largest), min(self.smallest, other.smallest))


def _histogram_examples(rng: np.random.Generator) -> Examples[Histogram]:
    edges = np.linspace(-2.0, 2.0, 9)
    values = [rng.standard_normal(n) for n in (10, 4, 7)]
    return Histogram.empty(edges), [Histogram.from_values(v, edges) for v in values]


@state(examples=_histogram_examples)
@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts over fixed bin edges (mergeable quantiles of per-row quantities)."""

    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, edges: np.ndarray) -> Histogram:
        return cls(edges, np.zeros(len(edges) - 1, dtype=np.int64))

    @classmethod
    def from_values(cls, values: np.ndarray, edges: np.ndarray) -> Histogram:
        clipped = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
        return cls(edges, np.histogram(clipped, bins=edges)[0].astype(np.int64))

    def merge(self, other: Histogram) -> Histogram:
        return Histogram(self.edges, self.counts + other.counts)

    def quantile(self, q: float) -> float:
        """Upper edge of the bin holding the q-quantile (resolution: one bin)."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        idx = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return float(self.edges[min(idx + 1, len(self.edges) - 1)])
