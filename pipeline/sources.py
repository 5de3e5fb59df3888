"""Feature stores → one ``dask.array`` with one block per shard (rows split, columns whole).

A store is a Zarr array (v3; v2 readable) at a local path or fsspec URL, a Zarr group or xarray
dataset holding a 2-D variable (dims ``sample``, ``feature``), or a ``.npy``/``.npz`` file for
small work. Everything is validated here, before any compute: rank, dtype, rows, and (across
stores) the feature dimension.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr

from pipeline.errors import DtypeError, ShapeError, StoreError

#: Target bytes of one shard when the user does not choose rows: large enough that a BLAS
#: rank-k update runs at full speed, small enough that a few in flight per thread stay far
#: below a gigabyte.
DEFAULT_SHARD_BYTES = 64 * 2**20

#: Store attributes that name the network that produced the features, in order of preference.
EXTRACTOR_ATTRS = ("feature_extractor", "extractor", "model")

#: Attribute value that marks a Zarr group written by ``shardeval stats``.
STATS_FORMAT = "shardeval.moments"

_SAMPLE_DIMS = ("sample", "feature")


@dataclass(frozen=True, eq=False)
class FeatureSource:
    """An opened, validated feature store.

    Attributes:
        location: the path or URL the user gave.
        array: (n, d) dask array, one block per shard.
        name: the array's name inside a group or ``.npz`` ("" for a bare array).
        feature_extractor: the store's extractor attribute, if it has one.
    """

    location: str
    array: da.Array
    name: str = ""
    feature_extractor: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    @property
    def d(self) -> int:
        """Features per row (columns; 1 for a 1-D array of per-sample values)."""
        return int(self.array.shape[1]) if self.array.ndim == 2 else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def shards(self) -> int:
        return int(self.array.numblocks[0])

    @property
    def shard_offsets(self) -> list[int]:
        """Global index of the first row of each shard."""
        return [0, *np.cumsum(self.array.chunks[0])[:-1].tolist()]

    def describe(self) -> dict[str, Any]:
        """Provenance: what a report or a statistics file records about this source."""
        return {
            "source": self.location,
            "array": self.name,
            "shape": list(self.array.shape),
            "dtype": str(self.dtype),
            "shards": self.shards,
            "feature_extractor": self.feature_extractor,
        }


def _is_url(location: str) -> bool:
    return "://" in location


def _extractor(*attr_sets: Any) -> str | None:
    for attrs in attr_sets:
        for key in EXTRACTOR_ATTRS:
            if key in attrs and attrs[key] is not None:
                return str(attrs[key])
    return None


def _open_numpy(location: str, array_name: str | None) -> tuple[Any, str, dict[str, Any]]:
    try:
        if location.endswith(".npy"):
            return np.load(location, mmap_mode="r", allow_pickle=False), "", {}
        archive = np.load(location, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {location!r} as a numpy file: {exc}") from exc
    keys = list(archive.keys())
    if {"mu", "sigma"} <= set(keys):
        raise StoreError(
            f"{location!r} holds statistics (mu, sigma), not features; pass it as --ref"
        )
    if array_name is None:
        if len(keys) != 1:
            raise StoreError(
                f"{location!r} holds arrays {keys}; choose the features with --array NAME"
            )
        array_name = keys[0]
    if array_name not in keys:
        raise StoreError(f"{location!r} has no array {array_name!r}; it holds {keys}")
    return archive[array_name], array_name, {}


def _dims(node: Any) -> tuple[str, ...] | None:
    names = getattr(node.metadata, "dimension_names", None)
    if names is None:
        names = node.attrs.get("_ARRAY_DIMENSIONS")  # xarray's Zarr v2 convention
    return tuple(names) if names is not None else None


def _pick_from_group(group: Any, location: str, array_name: str | None) -> tuple[Any, str]:
    if group.attrs.get("format") == STATS_FORMAT:
        raise StoreError(
            f"{location!r} is a shardeval statistics group, not features; pass it as --ref"
        )
    arrays = dict(group.arrays())
    if array_name is not None:
        if array_name not in arrays:
            raise StoreError(f"{location!r} has no array {array_name!r}; it holds {sorted(arrays)}")
        return arrays[array_name], array_name
    candidates = [k for k, a in arrays.items() if _dims(a) == _SAMPLE_DIMS]
    if not candidates:
        candidates = [k for k, a in arrays.items() if a.ndim == 2]
    if len(candidates) != 1:
        raise StoreError(
            f"{location!r} is a group holding {sorted(arrays)}; "
            "choose the features with --array NAME"
        )
    return arrays[candidates[0]], candidates[0]


def _open_zarr(
    location: str, array_name: str | None, storage_options: dict[str, Any] | None
) -> tuple[Any, str, dict[str, Any]]:
    try:
        node = zarr.open(location, mode="r", storage_options=storage_options)
    except Exception as exc:  # zarr raises several types for a missing or foreign store
        raise StoreError(f"cannot open {location!r} as a Zarr store: {exc}") from exc
    if isinstance(node, zarr.Group):
        group_attrs = dict(node.attrs)
        node, array_name = _pick_from_group(node, location, array_name)
        return node, array_name, group_attrs
    return node, "", {}


def _default_shard_rows(stored_rows: int, row_bytes: int, n: int) -> int:
    """Whole stored chunks per shard, about DEFAULT_SHARD_BYTES each."""
    per_chunk = max(1, stored_rows) * row_bytes
    rows = max(1, stored_rows) * max(1, DEFAULT_SHARD_BYTES // per_chunk)
    return max(1, min(rows, n))


def validate_shape_dtype(
    location: str, shape: tuple[int, ...], dtype: np.dtype, ndims: tuple[int, ...] = (2,)
) -> None:
    """Rank in ``ndims`` and a real dtype: integers or floating point."""
    if len(shape) not in ndims:
        want = " or ".join({1: "1-D (samples)", 2: "2-D (samples x features)"}[k] for k in ndims)
        raise ShapeError(f"{location!r} has shape {shape}; it must be {want}")
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise DtypeError(f"{location!r} has dtype {dtype}; it must be integer or floating point")


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

    Args:
        location: local path or fsspec URL of a Zarr array/group, or a ``.npy``/``.npz`` file.
        array_name: the variable inside a Zarr group, xarray dataset or ``.npz``.
        shard_rows: rows per shard; default: whole stored chunks, about 64 MiB a shard.
        min_rows: fewest rows accepted (2 for a covariance).
        storage_options: passed to fsspec for URLs.
        ndims: accepted ranks: (2,) for features; (1,) or (1, 2) for per-sample values such as
            log-likelihoods (N,) or log-weights (N, K).

    Returns:
        A validated :class:`FeatureSource`.

    Raises:
        StoreError: the store is missing, unreadable, or the array is ambiguous.
        ShapeError: not 2-D, or fewer than ``min_rows`` rows.
        DtypeError: not integer or floating point.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "f.npy")
        >>> np.save(path, np.ones((10, 3), np.float32))
        >>> src = open_features(path, shard_rows=4)
        >>> src.n, src.d, src.shards
        (10, 3, 3)
    """
    location = os.fspath(location)
    if shard_rows is not None and shard_rows < 1:
        raise ShapeError(f"shard rows must be a positive integer, got {shard_rows}")
    if not _is_url(location) and not os.path.exists(location):
        raise StoreError(f"feature store {location!r} does not exist")
    attrs: dict[str, Any] = {}
    if location.endswith((".npy", ".npz")):
        data, name, _ = _open_numpy(location, array_name)
        stored_rows = int(data.shape[0]) if data.ndim else 0
    else:
        data, name, group_attrs = _open_zarr(location, array_name, storage_options)
        attrs = {**group_attrs, **dict(data.attrs)}
        outer = getattr(data, "shards", None) or data.chunks
        stored_rows = int(outer[0]) if data.ndim else 0
    shape, dtype = tuple(int(s) for s in data.shape), np.dtype(data.dtype)
    validate_shape_dtype(location, shape, dtype, ndims)
    n, d = shape[0], (shape[1] if len(shape) == 2 else 1)
    if n < min_rows:
        raise ShapeError(f"{location!r} has {n} row(s); at least {min_rows} are needed")
    if d < 1:
        raise ShapeError(f"{location!r} has shape {shape}; its rows are empty")
    rows = shard_rows or _default_shard_rows(stored_rows, d * dtype.itemsize, n)
    chunks = (rows, *shape[1:])
    if isinstance(data, np.ndarray):
        array = da.from_array(data, chunks=chunks, name=False)
    else:
        array = da.from_zarr(data, chunks=chunks)
    return FeatureSource(location, array, name, _extractor(attrs), attrs)


def check_same_dim(*sources: FeatureSource) -> None:
    """All stores must hold features of one dimension."""
    dims = {s.d for s in sources}
    if len(dims) > 1:
        listing = ", ".join(f"{s.location!r} has d={s.d}" for s in sources)
        raise ShapeError(f"feature dimensions differ: {listing}; compare features of one model")


def fingerprint(location: str) -> str:
    """Content digest of a store: BLAKE2b over every stored file's path and bytes, as stored
    (compressed chunks are hashed compressed, never decoded), so a changed value, shape, dtype
    or metadata changes it. Reads the store's bytes once, without the arithmetic of a pass.
    """
    import hashlib

    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    if not fs.exists(root):
        raise StoreError(f"store {location!r} does not exist")
    files = sorted(fs.find(root)) if fs.isdir(root) else [root]
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(os.path.relpath(path, root).encode())
        with fs.open(path, "rb") as fh:
            while chunk := fh.read(1 << 23):
                digest.update(chunk)
    return digest.hexdigest()
