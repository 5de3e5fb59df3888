"""The checks a feature store passes before any compute: rank and a real dtype
(:func:`validate_shape_dtype`), every declared chunk stored, a last row that is not all fill
value (a warning), and, across stores, one feature dimension (:func:`check_same_dim`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.pipeline.errors import DtypeError, ShapeError, StoreError, SuspectStoreWarning
from shardeval.pipeline.io.reader import StoredArray, missing_chunks

if TYPE_CHECKING:
    pass
from shardeval.pipeline.io.feature_source import FeatureSource


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


def check_same_dim(*sources: FeatureSource) -> None:
    """All stores must hold features of one dimension."""
    dims = {s.d for s in sources}
    if len(dims) > 1:
        listing = ", ".join(f"{s.location!r} has d={s.d}" for s in sources)
        raise ShapeError(f"feature dimensions differ: {listing}; compare features of one model")
