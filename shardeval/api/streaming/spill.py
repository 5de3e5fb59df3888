"""Rows spilled to a Zarr array in a work folder, one whole chunk at a time: what a training-loop
metric that needs every row keeps."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass


#: Bytes of one spilled chunk (and of the buffer that fills it): what a pair metric holds in
#: memory per set, and what one message carries when rows travel to rank 0.
SPILL_CHUNK_BYTES = 8 * 2**20


def _chunk_rows(d: int, dtype: np.dtype) -> int:
    return max(1, SPILL_CHUNK_BYTES // max(1, d * dtype.itemsize))


class _Spill:
    """One set's rows, appended to a Zarr array ``(n, d)`` one whole chunk at a time.

    Memory: one chunk (the buffer). :meth:`flush` writes a partial last chunk and keeps it in
    the buffer, so that the chunk is written whole once it fills. The fill value is NaN: a
    chunk that was never written cannot pass for rows.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.array: Any = None
        self.buffer: np.ndarray | None = None
        self.start = 0  # rows stored before the buffer's first row (whole chunks)
        self.filled = 0  # rows in the buffer

    @property
    def n(self) -> int:
        return self.start + self.filled

    @property
    def dtype(self) -> np.dtype | None:
        return None if self.buffer is None else self.buffer.dtype

    def append(self, rows: np.ndarray) -> None:
        if self.buffer is None:
            import zarr

            d = rows.shape[1]
            chunk = _chunk_rows(d, rows.dtype)
            self.array = zarr.create_array(
                self.path,
                shape=(0, d),
                chunks=(chunk, d),
                dtype=rows.dtype,
                fill_value=np.nan,
                compressors=None,  # features hardly compress; the CPU time is better spent
                dimension_names=("sample", "feature"),
                config={"write_empty_chunks": True},
            )
            self.buffer = np.empty((chunk, d), dtype=rows.dtype)
        pos = 0
        while pos < len(rows):
            take = min(len(self.buffer) - self.filled, len(rows) - pos)
            self.buffer[self.filled : self.filled + take] = rows[pos : pos + take]
            self.filled += take
            pos += take
            if self.filled == len(self.buffer):
                self.flush()
                self.start += self.filled
                self.filled = 0

    def flush(self) -> None:
        if self.filled and self.buffer is not None:
            stop = self.start + self.filled
            if self.array.shape[0] < stop:
                self.array.resize((stop, self.array.shape[1]))
            self.array[self.start : stop] = self.buffer[: self.filled]

    def chunks(self) -> Iterator[np.ndarray]:
        """The rows, one spill chunk at a time."""
        self.flush()
        step = 1 if self.buffer is None else len(self.buffer)
        for start in range(0, self.n, step):
            yield np.asarray(self.array[start : min(start + step, self.n)])

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.array, self.buffer, self.start, self.filled = None, None, 0, 0


class _SpilledRows:
    """A spill's rows as a copy or a pickle takes them: ``copy.deepcopy`` hands the spill
    itself to the copy, which reads it chunk by chunk (never every row in memory); a pickle
    holds every row, as one array."""

    def __init__(self, spill: _Spill) -> None:
        self.spill = spill

    def __deepcopy__(self, memo: dict[int, Any]) -> _SpilledRows:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (np.asarray, (np.concatenate(list(self.spill.chunks())),))
