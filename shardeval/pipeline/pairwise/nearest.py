"""Each row's nearest row of a reference set, exact over the full sets: the cross pass of
:mod:`shardeval.pipeline.pairwise.blocks` reducing to :class:`~.pair_states.Nearest` (O(M) per
set measured, whatever the reference's N), for several sets against one reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shardeval.pipeline.core.chunks import check_device
from shardeval.pipeline.core.engine import Engine, Progress
from shardeval.pipeline.errors import ShapeError
from shardeval.pipeline.io.stores import FeatureSource
from shardeval.pipeline.neighbours.prdc import sets_exponent
from shardeval.pipeline.pairwise.blocks import PairPlan, cross_statistics, inspect_sets, row_blocks
from shardeval.pipeline.pairwise.pair_states import Nearest


def nearest_rows(
    reference: FeatureSource,
    sets: Sequence[FeatureSource],
    *,
    engine: Engine | None = None,
    block_rows: int | None = None,
    precision: str = "fp32",
    split_every: int | None = None,
    device: str = "auto",
    backend: str = "auto",
    progress: Progress | None = None,
) -> list[Nearest]:
    """Per row of each of ``sets``, the exact squared distance to its nearest row of
    ``reference`` and that row's index (the first of rows at one exact distance): fp32
    products, close calls recomputed in float64 from the rows (as AuthPct's), so no decision
    and no distance depends on how the sets were cut.

    Args:
        reference: the rows searched (X, N rows).
        sets: the rows whose nearest row of X is wanted (each M_i rows, of X's d).
        engine, block_rows, precision, split_every, device, backend, progress: as
            :func:`shardeval.pipeline.pairwise.passes.sample_metrics` takes them.

    Returns:
        One :class:`Nearest` per set, squared distances in the rows' own units (the exact
        power-of-two scaling the comparison may take is undone).

    Raises:
        ShapeError: a set of another d, or a set without rows.
        NonFiniteError: a set holds NaN or inf.

    Example:
        >>> import dask.array as da
        >>> x = FeatureSource("x", da.from_array(np.array([[0.0], [3.0]]), chunks=(1, 1)))
        >>> y = FeatureSource("y", da.from_array(np.array([[1.0], [2.5], [9.0]]), chunks=(2, 1)))
        >>> (found,) = nearest_rows(x, [y], device="cpu")
        >>> found.sq.tolist(), found.index.tolist()
        ([1.0, 0.25, 36.0], [0, 1, 1])
    """
    for source in (reference, *sets):
        if source.d != reference.d:
            raise ShapeError(
                f"feature dimensions differ: {reference.location!r} has d={reference.d}, "
                f"{source.location!r} has d={source.d}; compare features of one model"
            )
        if source.n < 1:
            raise ShapeError(f"{source.location!r} has no rows")
    engine = engine or Engine()
    check_device(device, backend, local=not engine.is_distributed)
    rb = row_blocks(reference, block_rows, precision)
    blocks = [row_blocks(s, block_rows, precision) for s in sets]
    seen = inspect_sets([reference, *sets], engine)
    exponent = 0
    if rb.float64 or any(b.float64 for b in blocks):  # float64 rows' distances in range
        locations = [s.location for s in (reference, *sets)]
        exponent = sets_exponent([s.magnitudes for s in seen], locations)
    plan = PairPlan(nearest=True, device=device, backend=backend, exponent=exponent)
    found = []
    for b in blocks:
        cross = cross_statistics(
            rb, b, plan, engine=engine, split_every=split_every, progress=progress
        )
        if cross.nearest is None:  # unreachable
            raise ValueError("the cross pass did not find the nearest rows")
        found.append(Nearest(np.ldexp(cross.nearest.sq, 2 * exponent), cross.nearest.index))
    return found
