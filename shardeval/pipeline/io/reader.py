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

from shardeval.pipeline.errors import StoreError

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


def missing_chunks(array: Any, location: str = "") -> tuple[list[tuple[tuple[int, ...], str]], int]:
    """Chunks of a Zarr array that the store does not hold, and the number expected.

    Each missing chunk comes as (its index in the chunk grid, where it should be stored, quoted
    for a message). For a sharded array the unit is the inner chunk: a shard file exists once
    any of its chunks was written, so each stored shard's index (a few bytes at its end or
    start) is read as well. Nothing else is read or decoded.

    Raises:
        StoreError: a stored shard too short to hold its index, or one whose index codecs are
            not the specification's ``bytes`` (+ ``crc32c``); ``location`` names the store.
    """
    if 0 in array.shape:
        return [], 0
    grid = [max(1, math.ceil(s / c)) for s, c in zip(array.shape, array.chunks, strict=True)]
    sharding = _sharding_codec(array)
    if sharding is None:
        expected = [
            (index, array.metadata.encode_chunk_key(index))
            for index in itertools.product(*(range(g) for g in grid))
        ]
        present = _listing(array)
        return [(i, repr(k)) for i, k in expected if k not in present], len(expected)

    per_shard = tuple(s // c for s, c in zip(array.shards, array.chunks, strict=True))
    shard_grid = [math.ceil(g / p) for g, p in zip(grid, per_shard, strict=True)]
    present = _listing(array)
    shards = [
        (index, array.metadata.encode_chunk_key(index))
        for index in itertools.product(*(range(g) for g in shard_grid))
    ]
    stored = [(i, k) for i, k in shards if k in present]
    empties = _shard_indexes(array, sharding, stored, per_shard, location)
    indexes = dict(zip((k for _, k in stored), empties, strict=True))
    missing: list[tuple[tuple[int, ...], str]] = []
    total = 0
    for shard, key in shards:
        empty = indexes.get(key)
        for inner in itertools.product(*(range(p) for p in per_shard)):
            chunk = tuple(s * p + j for s, p, j in zip(shard, per_shard, inner, strict=True))
            if any(c >= g for c, g in zip(chunk, grid, strict=True)):
                continue  # past the array's edge: never written
            total += 1
            if empty is None:
                missing.append((chunk, repr(key)))
            elif empty[inner]:
                missing.append((chunk, f"chunk {inner} of shard {key!r}"))
    return missing, total


def _sharding_codec(array: Any) -> Any:
    """The array's sharding codec, or None when it is not sharded."""
    from zarr.codecs import ShardingCodec

    codecs = getattr(array.metadata, "codecs", ())
    return codecs[0] if codecs and isinstance(codecs[0], ShardingCodec) else None


#: The Zarr v3 sharding index marks a chunk that was never written by this offset and length.
_EMPTY = np.uint64(2**64 - 1)


def _shard_indexes(
    array: Any,
    sharding: Any,
    shards: list[tuple[tuple[int, ...], str]],
    per_shard: tuple[int, ...],
    location: str,
) -> list[np.ndarray]:
    """For each stored shard, a boolean array over its inner chunks: True where empty.

    The index is ``per_shard + (2,)`` uint64 (offset, length), encoded by ``index_codecs``: a
    ``bytes`` codec and an optional ``crc32c`` checksum, per the sharding specification (a
    checksum that does not match shows up when the shard is read).
    """
    from zarr.abc.store import RangeByteRequest, SuffixByteRequest
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodecIndexLocation
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    codecs = list(sharding.index_codecs)
    checksum = 4 if codecs[1:] == [Crc32cCodec()] else 0
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 1 + bool(checksum):
        raise StoreError(
            f"{location!r} is sharded with index codecs {codecs}: only bytes and crc32c are "
            "understood, so its completeness cannot be checked"
        )
    endian = "<" if getattr(codecs[0].endian, "value", "little") == "little" else ">"
    size = 16 * math.prod(per_shard) + checksum
    at_start = sharding.index_location == ShardingCodecIndexLocation.start
    request = RangeByteRequest(0, size) if at_start else SuffixByteRequest(size)
    store, prefix = array.store_path.store, array.store_path.path
    prefix = f"{prefix}/" if prefix else ""

    async def read_all() -> list[Any]:
        import asyncio

        prototype = default_buffer_prototype()
        return await asyncio.gather(
            *(store.get(prefix + key, prototype, byte_range=request) for _, key in shards)
        )

    indexes = []
    for (_, key), buffer in zip(shards, sync(read_all()), strict=True):
        raw = b"" if buffer is None else buffer.to_bytes()
        if len(raw) != size:
            raise StoreError(
                f"{location!r}: shard {key!r} holds {len(raw)} bytes where its index alone takes "
                f"{size}: the shard is damaged or was written incompletely"
            )
        pairs = np.frombuffer(raw[: size - checksum], dtype=f"{endian}u8").reshape(*per_shard, 2)
        indexes.append(np.all(pairs == _EMPTY, axis=-1))
    return indexes


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
