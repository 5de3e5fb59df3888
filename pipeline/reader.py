"""Reading a stored array block by block, so that every value we compute with is the value the
store holds: chunks that were never written are found before compute (a listing, not a read),
chunks that cannot be decoded fail naming the chunk, CF-encoded variables are decoded as xarray
decodes them, a variable stored ``(feature, sample)`` is read row-major, and big-endian data
come out in native byte order.

:class:`StoredArray` is what ``dask.array.from_array`` slices: it looks like an array (shape,
dtype, ``__getitem__``) and pickles small (a Zarr array pickles as its store and path; a
``.npy`` file as its path), so a distributed worker reads its own blocks.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import StoreError

#: Attributes by which netCDF/CF conventions encode a variable (xarray decodes them on read).
CF_KEYS = ("scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned")


def native(a: np.ndarray) -> np.ndarray:
    """``a`` in the machine's byte order (a copy only when it was not)."""
    if a.dtype.byteorder in ("=", "|") or a.dtype.isnative:
        return a
    return a.astype(a.dtype.newbyteorder("="))


def cf_decode(raw: np.ndarray, dims: tuple[str, ...], cf: dict[str, Any]) -> np.ndarray:
    """Decode CF packing (scale/offset, fill and missing values, ``_Unsigned``) exactly as
    ``xarray.decode_cf`` does, dtype choice included."""
    import xarray as xr

    ds = xr.Dataset({"v": xr.Variable(dims, raw, attrs=dict(cf))})
    decoded = xr.decode_cf(ds, decode_times=False, decode_timedelta=False, decode_coords=False)
    return np.asarray(decoded["v"].values)


def _listing(array: Any) -> set[str]:
    """Keys stored under a Zarr array's path, relative to it."""
    from zarr.core.sync import sync

    store, prefix = array.store_path.store, array.store_path.path
    prefix = f"{prefix}/" if prefix else ""

    async def collect() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return {key[len(prefix) :] for key in sync(collect())}


def missing_chunks(array: Any) -> tuple[list[tuple[tuple[int, ...], str]], int]:
    """Chunks (or shards) of a Zarr array that the store does not hold: (grid index, key) for
    each, and the number expected. A listing of the store: nothing is read or decoded."""
    outer = getattr(array, "shards", None) or array.chunks
    grid = [max(1, math.ceil(s / c)) for s, c in zip(array.shape, outer, strict=True)]
    if 0 in array.shape:
        return [], 0
    present = _listing(array)
    expected = [
        (index, array.metadata.encode_chunk_key(index))
        for index in itertools.product(*(range(g) for g in grid))
    ]
    return [(i, k) for i, k in expected if k not in present], len(expected)


@dataclass(frozen=True, eq=False)
class StoredArray:
    """A stored array seen as (rows, ...) in native byte order, decoded, with one-line errors.

    Attributes:
        location: the store as the user named it (for messages).
        stored: a ``zarr.Array``, an in-memory ``np.ndarray``, or the path of a ``.npy`` file
            (memory-mapped on first read, so that it pickles as a path).
        shape: logical shape, rows first.
        dtype: logical dtype, after decoding.
        chunk_rows: rows per stored chunk (to name a chunk in an error).
        transposed: stored as (feature, sample); blocks are read transposed.
        dims: dimension names as stored (for CF decoding).
        cf: CF attributes to decode with; empty when the data are stored plainly.
    """

    location: str
    stored: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int
    transposed: bool = False
    dims: tuple[str, ...] = ()
    cf: tuple[tuple[str, Any], ...] = ()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _source(self) -> Any:
        if isinstance(self.stored, str):  # a .npy file: map it where the block is read
            return np.load(self.stored, mmap_mode="r", allow_pickle=False)
        return self.stored

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        source = self._source()
        block = source[key[::-1]].T if self.transposed else source[key]
        # A memory-mapped block is a read-only view of the file: copy it into memory, where the
        # kernels (which take tensors of it) may treat it as any other block.
        return np.array(block) if isinstance(source, np.memmap) else np.asarray(block)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        try:
            raw = self._read(key)
        except Exception as exc:  # zarr, numcodecs and numpy raise many types for bad bytes
            raise StoreError(self._read_error(key, exc)) from exc
        raw = native(raw)
        if self.cf:
            dims = self.dims[::-1] if self.transposed else self.dims
            raw = cf_decode(raw, dims, dict(self.cf))
        return raw

    def _read_error(self, key: tuple[Any, ...], exc: Exception) -> str:
        rows = key[0] if isinstance(key[0], slice) else slice(None)
        start, stop, _ = rows.indices(self.shape[0])
        bad = f"rows {start}-{stop - 1}"
        # Name the first chunk that fails on its own: the user can then look at that file.
        for first in range(start - start % self.chunk_rows, stop, self.chunk_rows):
            chunk = (slice(first, min(first + self.chunk_rows, self.shape[0])), *key[1:])
            try:
                self._read(chunk)
            except Exception as chunk_exc:
                bad = f"the chunk holding rows {chunk[0].start}-{chunk[0].stop - 1}"
                exc = chunk_exc
                break
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        return (
            f"{self.location!r}: {bad} cannot be read or decoded ({reason}); the store is "
            "damaged or was written incompletely"
        )
