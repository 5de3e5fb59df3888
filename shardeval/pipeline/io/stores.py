"""Feature stores → one ``dask.array`` with one block per shard (rows split, columns whole).

A store is a Zarr array (v3; v2 readable) at a local path or fsspec URL, a Zarr group or xarray
dataset holding a 2-D variable (dims ``sample``, ``feature``), or a ``.npy``/``.npz`` file for
small work. What a store is comes from what it holds, never from its name: a folder is Zarr, a
file is read by its first bytes (:func:`numpy_kind`). Everything is validated here, before any
compute: rank, dtype, rows, and (across stores) the feature dimension.

This module opens stores (:func:`open_features`); what a store is lives in
:mod:`~shardeval.pipeline.io.store_kinds`, the checks in :mod:`~shardeval.pipeline.io.store_checks`
and the opened store in :mod:`~shardeval.pipeline.io.feature_source`, and their names are
re-exported here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

from shardeval.pipeline.errors import ShapeError, StoreError
from shardeval.pipeline.io.feature_source import FeatureSource
from shardeval.pipeline.io.reader import CF_KEYS, StoredArray, cf_decode, native
from shardeval.pipeline.io.store_checks import (
    _check_complete,
    _check_last_row,
    check_same_dim,
    validate_shape_dtype,
)
from shardeval.pipeline.io.store_kinds import (
    EXTRACTOR_ATTRS,
    FEATURES_FORMAT,
    INCOMPLETE_ATTR,
    NPY_MAGIC,
    NUMPY_READ_ERRORS,
    STATS_FORMAT,
    ZIP_MAGICS,
    _extractor,
    _is_url,
    holds_one_array,
    not_a_store,
    numpy_kind,
)

#: Target bytes of one shard when the user does not choose rows: large enough that a BLAS
#: rank-k update runs at full speed, small enough that a few in flight per thread stay far
#: below a gigabyte.
DEFAULT_SHARD_BYTES = 64 * 2**20


#: Dimension names (any case) that say which axis of a 2-D variable holds the samples.
# fmt: off
SAMPLE_DIM_NAMES = frozenset({
    "sample", "samples", "row", "rows", "n", "image", "images", "item", "items", "obs",
    "observation", "observations", "example", "examples", "draw", "draws", "point", "points",
})
FEATURE_DIM_NAMES = frozenset({
    "feature", "features", "feat", "dim", "d", "embedding", "channel", "channels", "component",
    "components", "variable", "variables",
})
# fmt: on


def rows_axis(dims: tuple[str, ...] | None, location: str) -> int | None:
    """Which axis of a 2-D variable holds the samples, by its dimension names: 0, 1, or None
    when the names say nothing (rows are then taken first, as stored).

    Raises:
        StoreError: names that point both ways, e.g. ``("sample", "row")``.
    """
    if dims is None or len(dims) != 2:
        return None
    a, b = (str(name).lower() for name in dims)
    first = a in SAMPLE_DIM_NAMES or b in FEATURE_DIM_NAMES
    last = a in FEATURE_DIM_NAMES or b in SAMPLE_DIM_NAMES
    if first and last:
        raise StoreError(
            f"{location!r}: dimension names {tuple(dims)} do not say which axis holds the "
            "samples; name one 'sample' and the other 'feature'"
        )
    return 0 if first else 1 if last else None


def _open_numpy(
    location: str, kind: str, array_name: str | None
) -> tuple[Any, str, tuple[int, ...], Any]:
    """(what the reader reads, array name, shape, dtype) of a numpy file of ``kind``
    (:func:`numpy_kind`)."""
    try:
        if kind == "npy":
            if array_name is not None:
                raise StoreError(
                    f"«array={array_name!r}»: {location!r} is a .npy file, which holds one "
                    "array, with no name to pick («array» picks a variable of a group, "
                    "dataset or .npz): leave «array» out"
                )
            mapped = np.load(location, mmap_mode="r", allow_pickle=False)
            return location, "", tuple(mapped.shape), mapped.dtype
        archive = np.load(location, allow_pickle=False)
        keys = list(archive.keys())
    except NUMPY_READ_ERRORS as exc:
        raise StoreError(f"cannot read {location!r} as a numpy file: {exc}") from exc
    if {"mu", "sigma"} <= set(keys):
        raise StoreError(
            f"{location!r} holds statistics (mu, sigma), not features; give it where "
            "statistics are accepted (e.g. `shardeval fid STATS GEN`)"
        )
    if array_name is None:
        if len(keys) != 1:
            raise StoreError(f"{location!r} holds arrays {keys}; choose one with «array=NAME»")
        array_name = keys[0]
    if array_name not in keys:
        raise StoreError(f"{location!r} has no array {array_name!r}; it holds {keys}")
    try:
        data = archive[array_name]
    except NUMPY_READ_ERRORS as exc:
        raise StoreError(
            f"cannot read array {array_name!r} of {location!r}: {exc}; the file is damaged "
            "or truncated"
        ) from exc
    return data, array_name, tuple(data.shape), data.dtype


def _dims(node: Any) -> tuple[str, ...] | None:
    names = getattr(node.metadata, "dimension_names", None)
    if names is None:
        names = node.attrs.get("_ARRAY_DIMENSIONS")  # xarray's Zarr v2 convention
    return tuple(names) if names is not None else None


def _names_samples_and_features(dims: tuple[str, ...] | None) -> bool:
    """Whether a variable's dimension names are one sample name and one feature name."""
    if dims is None or len(dims) != 2:
        return False
    a, b = (str(name).lower() for name in dims)
    return (a in SAMPLE_DIM_NAMES and b in FEATURE_DIM_NAMES) or (
        a in FEATURE_DIM_NAMES and b in SAMPLE_DIM_NAMES
    )


def _pick_from_group(group: Any, location: str, array_name: str | None) -> tuple[Any, str]:
    if group.attrs.get("format") == STATS_FORMAT:
        raise StoreError(
            f"{location!r} is a shardeval statistics group, not features; give it where "
            "statistics are accepted (e.g. `shardeval fid STATS GEN`)"
        )
    arrays = dict(group.arrays())
    if array_name is not None:
        if array_name not in arrays:
            raise StoreError(f"{location!r} has no array {array_name!r}; it holds {sorted(arrays)}")
        return arrays[array_name], array_name
    candidates = [k for k, a in arrays.items() if _names_samples_and_features(_dims(a))]
    if not candidates:
        candidates = [k for k, a in arrays.items() if a.ndim == 2]
    if len(candidates) != 1:
        raise StoreError(
            f"{location!r} is a group holding {sorted(arrays)}; choose one with «array=NAME»"
        )
    return arrays[candidates[0]], candidates[0]


def _open_zarr(
    location: str, array_name: str | None, storage_options: dict[str, Any] | None
) -> tuple[Any, str, dict[str, Any]]:
    try:
        # Each array's own metadata, not a consolidated copy: one written before the array
        # was resized or rewritten would give its old shape (half the rows, say) silently.
        node = zarr.open(
            location, mode="r", storage_options=storage_options, use_consolidated=False
        )
    except Exception as exc:  # zarr raises several types for a missing or foreign store
        raise StoreError(not_a_store(location, exc)) from exc
    if isinstance(node, zarr.Group):
        group_attrs = dict(node.attrs)
        if group_attrs.get(INCOMPLETE_ATTR):
            raise StoreError(
                f"{location!r} is an incomplete extraction ({group_attrs[INCOMPLETE_ATTR]}); "
                "run the extraction again to finish it"
            )
        node, array_name = _pick_from_group(node, location, array_name)
        return node, array_name, group_attrs
    if array_name is not None:
        raise StoreError(
            f"«array={array_name!r}»: {location!r} is a single Zarr array, with no name to pick "
            "(«array» picks a variable of a group, dataset or .npz): leave «array» out"
        )
    return node, "", {}


def _cf_attributes(array: Any, dims: tuple[str, ...] | None) -> dict[str, Any]:
    """The CF attributes xarray would decode this Zarr array with: scale/offset, missing and
    fill values from the attributes, and, for an xarray variable in Zarr v2, the array's own
    fill value (which xarray reads as ``_FillValue``)."""
    attrs = {k: array.attrs[k] for k in CF_KEYS if k in array.attrs}
    xarray_v2 = dims is not None and "_ARRAY_DIMENSIONS" in array.attrs
    if xarray_v2 and "_FillValue" not in attrs and array.fill_value is not None:
        fill = np.asarray(array.fill_value)
        if not (fill.dtype.kind == "f" and np.isnan(fill)):  # NaN masks nothing new
            attrs["_FillValue"] = fill.item()
    return attrs


def _default_shard_rows(stored_rows: int, row_bytes: int, n: int) -> int:
    """Whole stored chunks per shard, about DEFAULT_SHARD_BYTES each."""
    per_chunk = max(1, stored_rows) * row_bytes
    rows = max(1, stored_rows) * max(1, DEFAULT_SHARD_BYTES // per_chunk)
    return max(1, min(rows, n))


def _stored_array(
    location: str, array_name: str | None, storage_options: dict[str, Any] | None
) -> tuple[StoredArray, str, dict[str, Any]]:
    """Locate the array, check it is complete, and say how to read it."""
    kind = numpy_kind(location)
    if kind is not None:
        data, name, shape, dtype = _open_numpy(location, kind, array_name)
        chunk_rows = shape[0] if shape else 1
        return (
            StoredArray(
                location, data, shape, native(np.empty(0, dtype)).dtype, max(1, chunk_rows)
            ),
            name,
            {},
        )
    node, name, group_attrs = _open_zarr(location, array_name, storage_options)
    attrs = {**group_attrs, **dict(node.attrs)}
    dims = _dims(node)
    shape = tuple(int(s) for s in node.shape)
    transposed = rows_axis(dims, location) == 1
    if transposed:
        shape = shape[::-1]
    outer = getattr(node, "shards", None) or node.chunks
    chunk_rows = int(outer[1] if transposed else outer[0]) if outer else 1
    cf = _cf_attributes(node, dims)
    dtype = native(np.empty(0, node.dtype)).dtype
    stored_dims = tuple(dims) if dims is not None else tuple(f"dim_{i}" for i in range(node.ndim))
    if cf:
        empty = np.empty((0,) * node.ndim, dtype)
        dtype = cf_decode(empty, stored_dims, cf).dtype
    validate_shape_dtype(location, shape, dtype, (1, 2))  # rank checked again by the caller
    _check_complete(node, location)
    reader = StoredArray(
        location,
        node,
        shape,
        dtype,
        max(1, chunk_rows),
        transposed,
        stored_dims,
        tuple(sorted(cf.items())),
    )
    return reader, name, attrs


def open_features(
    location: str | os.PathLike[str],
    *,
    array_name: str | None = None,
    shard_rows: int | None = None,
    min_rows: int = 2,
    storage_options: dict[str, Any] | None = None,
    ndims: tuple[int, ...] = (2,),
) -> FeatureSource:
    """Open a feature store lazily as a dask array with one block per shard.

    Before anything is computed the store is checked: every chunk it declares is stored (a
    listing), the rank and dtype are right. Blocks are read decoded (CF scale/offset/fill as
    xarray decodes them), row-major (a variable stored ``(feature, sample)`` is transposed),
    and in native byte order; a chunk that cannot be decoded fails naming its rows.

    Args:
        location: local path or fsspec URL of a Zarr array/group, or a ``.npy``/``.npz`` file
            (told apart by their bytes, not their names).
        array_name: the variable inside a Zarr group, xarray dataset or ``.npz``.
        shard_rows: rows per shard; default: whole stored chunks, about 64 MiB a shard.
        min_rows: fewest rows accepted (2 for a covariance).
        storage_options: passed to fsspec for URLs.
        ndims: accepted ranks: (2,) for features; (1,) or (1, 2) for per-sample values such as
            log-likelihoods (N,) or log-weights (N, K).

    Returns:
        A validated :class:`FeatureSource`.

    Raises:
        StoreError: the store is missing, unreadable, incomplete, or the array is ambiguous.
        ShapeError: wrong rank, or fewer than ``min_rows`` rows.
        DtypeError: not integer or floating point.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "f.npy")
        >>> np.save(path, np.ones((10, 3), np.float32))
        >>> src = open_features(path, shard_rows=4)
        >>> src.n, src.d, src.shards
        (10, 3, 3)
    """
    import dask.array as da
    from dask.base import tokenize

    location = os.fspath(location)
    if shard_rows is not None and shard_rows < 1:
        raise ShapeError(f"shard rows must be a positive integer, got {shard_rows}")
    if not _is_url(location) and not os.path.exists(location):
        raise StoreError(f"feature store {location!r} does not exist")
    reader, name, attrs = _stored_array(location, array_name, storage_options)
    shape, dtype = reader.shape, reader.dtype
    validate_shape_dtype(location, shape, dtype, ndims)
    n, d = shape[0], (shape[1] if len(shape) == 2 else 1)
    if n < min_rows:
        raise ShapeError(f"{location!r} has {n} row(s); at least {min_rows} are needed")
    _check_last_row(reader)
    rows = shard_rows or _default_shard_rows(reader.chunk_rows, d * dtype.itemsize, n)
    chunks = (rows, *shape[1:])
    token = tokenize(location, name, shape, str(dtype), reader.transposed, reader.cf, rows)
    array = da.from_array(
        reader,
        chunks=chunks,
        name=f"read-{token}",
        lock=False,
        asarray=False,
        # Inlined into each read task: a shared root key would let the scheduler run every
        # shard's read before the first merge, holding them all in memory.
        inline_array=True,
        meta=np.empty((0,) * len(shape), dtype),
    )
    return FeatureSource(location, array, name, _extractor(attrs), attrs, reader)


__all__ = [
    "DEFAULT_SHARD_BYTES",
    "EXTRACTOR_ATTRS",
    "FEATURES_FORMAT",
    "FEATURE_DIM_NAMES",
    "INCOMPLETE_ATTR",
    "NPY_MAGIC",
    "NUMPY_READ_ERRORS",
    "SAMPLE_DIM_NAMES",
    "STATS_FORMAT",
    "ZIP_MAGICS",
    "FeatureSource",
    "check_same_dim",
    "holds_one_array",
    "not_a_store",
    "numpy_kind",
    "open_features",
    "rows_axis",
    "validate_shape_dtype",
]
