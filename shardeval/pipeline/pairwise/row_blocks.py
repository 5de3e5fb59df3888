"""A feature set cut into row blocks, read block by block by the pair tasks of
:mod:`shardeval.pipeline.pairwise.blocks` (and by the Parzen pairs)."""

from __future__ import annotations

import numpy as np

from shardeval.kernels.moments import wide_dtype
from shardeval.pipeline.errors import ShapeError
from shardeval.pipeline.io.stores import FeatureSource

#: Target bytes of one row block (and of one column chunk streamed past it).
BLOCK_BYTES = 32 * 2**20

#: Row blocks of one set, i.e. tasks of one pass: each task streams the whole other set, so
#: the reads grow with the number of blocks (and every task costs the scheduler about a
#: millisecond). More are refused, naming the smallest block that fits.
MAX_ROW_BLOCKS = 4096


def default_block_rows(d: int) -> int:
    """Rows of about :data:`BLOCK_BYTES` of fp32 features (at least 256)."""
    return max(256, BLOCK_BYTES // (4 * max(1, d)))


class RowBlocks:
    """A feature set cut into row blocks that a task reads by index.

    Deliberately not a dataclass: ``dask.delayed`` looks inside dataclass arguments, and would
    make the source's dask array a dependency of every task that gets the blocks, so each
    task would wait for (and a cluster would ship) the whole set. A plain object is passed
    as it is, and each task reads only its own rows.

    Attributes:
        source: the opened store.
        bounds: (start, stop) rows of each block.
        precision: ``fp32`` (float32 products; float64 and wide-integer data stay float64) or
            ``fp64`` (every block upcast to float64).
        chunk_rows: rows per column chunk streamed past a block (about 32 MiB).
    """

    __slots__ = ("bounds", "chunk_rows", "precision", "source")

    def __init__(
        self, source: FeatureSource, bounds: tuple[tuple[int, int], ...], precision: str = "fp32"
    ) -> None:
        self.source, self.bounds, self.precision = source, bounds, precision
        self.chunk_rows = default_block_rows(source.d)

    @property
    def n(self) -> int:
        return self.source.n

    def read(self, b: int) -> np.ndarray:
        """Block ``b``'s rows in their working precision."""
        return self.read_rows(*self.bounds[b])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        reader = self.source.reader
        if reader is not None:
            block = reader[start:stop]
        else:  # a computed source (benchmarks, tests): its dask array's rows
            block = np.asarray(self.source.array[start:stop].compute(scheduler="sync"))
        wide = wide_dtype(block.dtype)  # by kind and size: '>f8' is float64 too
        dtype = np.float64 if self.precision == "fp64" or wide else np.float32
        return np.ascontiguousarray(block, dtype=dtype)

    @property
    def float64(self) -> bool:
        """Whether its blocks are read in float64 (``fp64``, or values fp32 cannot hold)."""
        return self.precision == "fp64" or wide_dtype(self.source.dtype)

    def chunks(self, start: int) -> list[tuple[int, int]]:
        """Column chunks covering rows [start, n)."""
        step = max(1, self.chunk_rows)
        return [(s, min(s + step, self.n)) for s in range(start, self.n, step)]


def row_blocks(
    source: FeatureSource, rows: int | None = None, precision: str = "fp32"
) -> RowBlocks:
    """Cut ``source`` into blocks of ``rows`` rows (default: about 32 MiB each).

    Raises:
        ShapeError: the blocks would be more than :data:`MAX_ROW_BLOCKS`.
    """
    if rows is None:
        rows = default_block_rows(source.d)
    rows = max(1, min(rows, source.n))
    count = -(-source.n // rows)
    if count > MAX_ROW_BLOCKS:
        fewest = -(-source.n // MAX_ROW_BLOCKS)
        raise ShapeError(
            f"block_rows={rows} cuts the {source.n:,} rows of {source.location!r} into {count:,} "
            f"blocks; each block is a task that reads the whole other set, so at most "
            f"{MAX_ROW_BLOCKS:,} are allowed: use at least {fewest:,} rows per block (or the "
            "default, about 32 MiB a block)"
        )
    bounds = tuple((s, min(s + rows, source.n)) for s in range(0, source.n, rows))
    return RowBlocks(source, bounds, precision)


def shard_blocks(source: FeatureSource, precision: str = "fp32") -> RowBlocks:
    """The source's own shards as blocks (whole stored chunks; ``--shard-rows`` sets them)."""
    stops = np.cumsum(source.array.chunks[0]).tolist()
    starts = [0, *stops[:-1]]
    return RowBlocks(source, tuple(zip(starts, stops, strict=True)), precision)
