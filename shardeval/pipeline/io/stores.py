"""Feature stores → one ``dask.array`` with one block per shard (rows split, columns whole).

A store is a Zarr array (v3; v2 readable) at a local path or fsspec URL, a Zarr group or xarray
dataset holding a 2-D variable (dims ``sample``, ``feature``), or a ``.npy``/``.npz`` file for
small work. What a store is comes from what it holds, never from its name: a folder is Zarr, a
file is read by its first bytes (:func:`numpy_kind`). Everything is validated here, before any
compute: rank, dtype, rows, and (across stores) the feature dimension.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from shardeval.pipeline.errors import DtypeError, ShapeError, StoreError, SuspectStoreWarning
from shardeval.pipeline.io.reader import CF_KEYS, StoredArray, cf_decode, missing_chunks, native

if TYPE_CHECKING:
    import dask.array as da

#: Target bytes of one shard when the user does not choose rows: large enough that a BLAS
#: rank-k update runs at full speed, small enough that a few in flight per thread stay far
#: below a gigabyte.
DEFAULT_SHARD_BYTES = 64 * 2**20

#: Store attributes that name the network that produced the features, in order of preference.
EXTRACTOR_ATTRS = ("feature_extractor", "extractor", "model")

#: Attribute value that marks an extraction store (``shardeval extract``, the feature cache).
FEATURES_FORMAT = "shardeval.features"

#: What a report names of an extraction store: report key → the store's attribute.
_EXTRACTION_PROVENANCE = {
    "encoder": "encoder",
    "encoder_source": "encoder_source",
    "resize": "resize",
    "weights_digest": "weights_digest",
    "weights_file": "weights_file",
    "images": "source",
    "image_count": "image_count",
    "skip_bad": "skip_bad",
}

#: Attribute value that marks a Zarr group written by ``shardeval stats``.
STATS_FORMAT = "shardeval.moments"

#: Group attribute present while an extraction is still writing its store.
INCOMPLETE_ATTR = "shardeval_incomplete"

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


@dataclass(frozen=True, eq=False)
class FeatureSource:
    """An opened, validated feature store.

    Attributes:
        location: the path or URL the user gave.
        array: (n, d) dask array, one block per shard.
        name: the array's name inside a group or ``.npz`` ("" for a bare array).
        feature_extractor: the store's extractor attribute, if it has one.
        attrs: the store's attributes (its group's, then its own).
        reader: what reads its rows by index (the pair metrics' tasks read their own blocks);
            None for a source made from a computed dask array.
        given: the input as the user gave it, when that is not the store read (images,
            whose features the feature cache holds): what summaries name.
        extraction: how the rows were made, when the store does not record it (rows that a
            training-loop metric encoded in memory and spilled): the encoder, resize, weights
            digest and file, as an extraction store's attributes name them.
    """

    location: str
    array: da.Array
    name: str = ""
    feature_extractor: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    reader: StoredArray | None = None
    given: str = ""
    extraction: dict[str, Any] | None = None

    @property
    def shown(self) -> str:
        """How summaries name it: as the user gave it (a folder of images, not its cache
        entry)."""
        return self.given or self.location

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
        """Provenance: what a report or a statistics file records about this source; for an
        extraction store also how its features were made (encoder, resize, the weights'
        digest and file, whether they are the published file, the images), which decides
        what a number compares with."""
        described: dict[str, Any] = {
            **({"given": self.given} if self.given else {}),
            "source": self.location,
            "array": self.name,
            "shape": list(self.array.shape),
            "dtype": str(self.dtype),
            "shards": self.shards,
            "feature_extractor": self.feature_extractor,
        }
        made = None if self.extraction is None else dict(self.extraction)
        if made is None and self.attrs.get("format") == FEATURES_FORMAT:
            made = {
                key: self.attrs[name]
                for key, name in _EXTRACTION_PROVENANCE.items()
                if name in self.attrs
            }
        if made is not None:
            from shardeval.pipeline.images.provenance import weights_status

            # Decided from the digest against the pinned one, whatever the store says.
            made["weights_status"] = weights_status(made.get("encoder"), made.get("weights_digest"))
            described["extraction"] = made
        return described


def _is_url(location: str) -> bool:
    return "://" in location


def _extractor(*attr_sets: Any) -> str | None:
    for attrs in attr_sets:
        for key in EXTRACTOR_ATTRS:
            if key in attrs and attrs[key] is not None:
                return str(attrs[key])
    return None


#: What a failed read of a numpy file can raise: a truncated ``.npz`` is a broken zip, a
#: truncated member a short zlib stream.
NUMPY_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)

#: The first bytes of a NumPy ``.npy`` file.
NPY_MAGIC = b"\x93NUMPY"

#: The first bytes of a zip archive (``.npz``): a file entry, or the end record of an empty one
#: (the two numpy's own ``np.load`` takes for an archive).
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def numpy_kind(location: str) -> str | None:
    """What a local file holds, by its first bytes, whatever its name: ``"npy"`` (one array) or
    ``"npz"`` (a zip archive of arrays). None for what is not a local file (a folder or an
    fsspec URL, read as Zarr) or does not exist (the caller reports that).

    Raises:
        StoreError: a local file that is neither (a CSV, a pickle, an empty file, ...).
    """
    if _is_url(location) or not os.path.isfile(location):
        return None
    try:
        with open(location, "rb") as fh:
            head = fh.read(len(NPY_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read {location!r}: {exc.strerror}") from exc
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGICS):
        return "npz"
    start = f"it begins with {head!r}" if head else "it is empty"
    raise StoreError(
        f"{location!r} is neither a .npy array nor a .npz archive ({start}); give a Zarr "
        "store (a folder), a file written by numpy.save (.npy) or numpy.savez (.npz)"
    )


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


def holds_one_array(location: str | os.PathLike[str]) -> bool:
    """Whether the store at ``location`` holds one array, with no name for «array» to pick: a
    ``.npy`` file or a single Zarr array (not a group, an ``.npz`` or what does not open,
    whose opening says why). Reads metadata only.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "f.npy")
        >>> np.save(path, np.ones((3, 2)))
        >>> holds_one_array(path)
        True
    """
    location = os.fspath(location)
    try:
        kind = numpy_kind(location)
        if kind is not None:
            return kind == "npy"
        if not _is_url(location) and not os.path.exists(location):
            return False
        node = zarr.open(location, mode="r", use_consolidated=False)
    except Exception:  # zarr raises several types for a missing or foreign store
        return False
    return isinstance(node, zarr.Array)


#: Files that make a folder a Zarr store (v3; v2 array, group).
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def not_a_store(
    location: str,
    exc: BaseException,
    wanted: str = "a Zarr array or group, a .npy/.npz file, or a folder of images",
) -> str:
    """Why ``location`` cannot be opened as a Zarr store, naming it as the user gave it
    (never Zarr's ``StorePath(LocalStore, 'file://...')``), and what to give (``wanted``)."""
    local_folder = not _is_url(location) and os.path.isdir(location)
    if local_folder and not any(os.path.exists(os.path.join(location, m)) for m in _ZARR_MARKERS):
        return (
            f"{location!r} is a folder, not a feature store or statistics (no Zarr array or "
            f"group: it holds no zarr.json, .zarray or .zgroup); give {wanted}"
        )
    reason = re.sub(r"StorePath\([^)]*\)(?: at path '[^']*')?", repr(location), str(exc))
    first = reason.splitlines()[0] if reason else type(exc).__name__
    return f"cannot open {location!r} as a Zarr store: {first}"


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


def _check_complete(array: Any, location: str) -> None:
    """Every chunk the metadata declare must be stored: a missing one would read as the fill
    value, a plausible number that is wrong."""
    missing, total = missing_chunks(array, location)
    if not missing:
        return
    index, where = missing[0]
    first = index[0] * array.chunks[0]
    last = min(first + array.chunks[0], array.shape[0]) - 1
    raise StoreError(
        f"{location!r} is incomplete: {len(missing)} of {total} chunks are missing (first: "
        f"{where}, rows {first}-{last} as stored); the writer stopped early or the shape was "
        "changed. (Zarr also skips chunks that are entirely the fill value unless written "
        "with write_empty_chunks=True)"
    )


def _check_last_row(reader: StoredArray) -> None:
    """Warn when the last row equals the fill value in every column.

    A listing cannot see a chunk that was written only part-way, or a shape enlarged within
    the last chunk: the rows past the written ones read as the fill value. Reading the last row
    (one chunk) catches the common case; a real feature row equal to the fill value in every
    column is rare enough to be worth a warning, not common enough to refuse.
    """
    fill = getattr(reader.stored, "fill_value", None)
    if fill is None or reader.cf or reader.ndim != 2 or reader.shape[1] < 2:
        return
    fill = np.asarray(fill)
    if fill.dtype.kind == "f" and not np.isfinite(fill):
        return  # a NaN fill shows up as non-finite rows, which are checked anyway
    last = reader[reader.shape[0] - 1 : reader.shape[0]]
    if np.all(last == fill):
        warnings.warn(
            f"{reader.location!r}: the last row (row {reader.shape[0] - 1}) equals the fill "
            f"value {fill.item()!r} in every column; if the writer stopped part-way through a "
            "chunk, or the shape was enlarged, those rows are not data and the result is wrong",
            SuspectStoreWarning,
            stacklevel=3,
        )


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
        images = "; images are uint8 (N, H, W, 3)" if len(shape) in (3, 4) else ""
        raise ShapeError(f"{location!r} has shape {shape}; it must be {want}{images}")
    if len(shape) == 2 and shape[1] < 1:
        raise ShapeError(f"{location!r} has shape {shape}; its rows are empty (no features)")
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise DtypeError(f"{location!r} has dtype {dtype}; it must be integer or floating point")


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


def check_same_dim(*sources: FeatureSource) -> None:
    """All stores must hold features of one dimension."""
    dims = {s.d for s in sources}
    if len(dims) > 1:
        listing = ", ".join(f"{s.location!r} has d={s.d}" for s in sources)
        raise ShapeError(f"feature dimensions differ: {listing}; compare features of one model")
