"""The pass before the pairs: pair metrics need every row, so one cheap read of each set finds
its non-finite rows, its rows of zeros and its integers beyond 2^53 before any pair runs, and
takes the means of its rows (the centres the kernel sums expand about)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shardeval.pipeline.core.chunks import check_nonfinite, finite_rows, inexact_integer_rows
from shardeval.pipeline.core.engine import Engine
from shardeval.pipeline.core.states import (
    Examples,
    Magnitudes,
    NonFiniteRows,
    RowMean,
    examples_of,
    merge_fieldwise,
    state,
)
from shardeval.pipeline.errors import NumericalError
from shardeval.pipeline.io.stores import FeatureSource


def _set_inspection_examples(rng: np.random.Generator) -> Examples[SetInspection]:
    found = [
        SetInspection(*parts)
        for parts in zip(
            examples_of(NonFiniteRows, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            examples_of(RowMean, rng)[1],
            examples_of(RowMean, rng)[1],
            examples_of(NonFiniteRows, rng)[1],
            examples_of(Magnitudes, rng)[1],
            strict=True,
        )
    ]
    return SetInspection.empty(found[0].rows.mean.shape[0]), found


@state(examples=_set_inspection_examples)
@dataclass(frozen=True, eq=False)
class SetInspection:
    """One read of a set before its pairs: where its non-finite rows and its rows of zeros
    are, the means of its rows and of its rows scaled to unit norm (the centres the kernel
    sums expand about), and the range of its magnitudes (the scale of its distances)."""

    nonfinite: NonFiniteRows
    zeros: NonFiniteRows
    rows: RowMean
    units: RowMean
    inexact: NonFiniteRows
    magnitudes: Magnitudes

    @classmethod
    def empty(cls, d: int) -> SetInspection:
        nothing = NonFiniteRows.empty()
        return cls(
            nothing, nothing, RowMean.empty(d), RowMean.empty(d), nothing, Magnitudes.empty()
        )

    merge = merge_fieldwise


def inspect_block(block: np.ndarray, offset: int) -> SetInspection:
    """The chunk step of :func:`inspect_sets`."""
    from shardeval.kernels.kernel_sums import unit_rows

    ok = finite_rows(block)
    inexact = inexact_integer_rows(block)
    x = np.asarray(block[ok], dtype=np.float64)
    nonzero = np.any(x != 0, axis=1)
    return SetInspection(
        NonFiniteRows.from_mask(~ok, offset),
        NonFiniteRows.from_mask(~np.any(block != 0, axis=1), offset),
        RowMean.from_rows(x),
        RowMean.from_rows(unit_rows(x[nonzero])),
        NonFiniteRows.from_mask(inexact, offset),
        Magnitudes.from_values(x),
    )


def inspect_sets(
    sources: Sequence[FeatureSource], engine: Engine, unit_rows: bool = False
) -> list[SetInspection]:
    """Pair metrics need every row: one cheap pass finds non-finite rows before any pair runs,
    and, for a kernel on rows scaled to unit norm (``unit_rows``), rows of zeros; it also
    takes the sets' means.

    Raises:
        NonFiniteError: naming the store, how many rows and the first of them.
        ZeroRowError: likewise, for rows of zeros.
        NumericalError: likewise, for integers beyond 2^53.
    """
    from shardeval.pipeline.core.reduce import shard_tasks
    from shardeval.pipeline.errors import ZeroRowError

    found: list[SetInspection] = engine.reduce([shard_tasks(s, inspect_block) for s in sources])
    for source, seen in zip(sources, found, strict=True):
        check_nonfinite(source.location, seen.nonfinite, "error")
        if seen.inexact.count:
            raise NumericalError(
                f"{source.location!r} has {seen.inexact.count:,} row(s) of integers beyond "
                f"2^53 (first at row {seen.inexact.first[0]}), which float64 cannot hold "
                "exactly; store them as floats if rounding them is acceptable"
            )
        if unit_rows and seen.zeros.count:
            raise ZeroRowError(
                f"{source.location!r} has {seen.zeros.count:,} row(s) of zeros (first at row "
                f"{seen.zeros.first[0]}): the kernel scales each row to unit norm, which a zero "
                "row does not have; remove them"
            )
    return found


def same_store(a: FeatureSource, b: FeatureSource) -> bool:
    """Whether two sources are one store (read once, its blocks serving as both sets)."""
    import os

    def key(s: FeatureSource) -> tuple[str, str]:
        where = s.location.removeprefix("file://")  # a local URL is its path
        where = where if "://" in where else os.path.realpath(where)
        return where, s.name

    return key(a) == key(b)
