"""Features as the API functions take them: a store's path or URL, a numpy array, a torch
tensor, a dask array, an xarray DataArray or Dataset, or a
:class:`~shardeval.pipeline.io.stores.FeatureSource`, made into a checked feature source
(:func:`features`); «array» picks the variable of inputs that hold several (:func:`arrays_for`).
In-memory arrays are named by the digest of their content.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.input_kinds import ExtractedImages, _library, describe_input, is_path
from shardeval.api.statistics_inputs import is_statistics
from shardeval.pipeline.errors import DtypeError, ShapeError, StoreError

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource


#: Bytes of one shard of an in-memory array (as a store's default shards).
_SHARD_BYTES = 64 * 2**20


#: Hex digits of the content digest that name an in-memory array (64 bits).
_NAME_DIGITS = 16


def _as_numpy(x: Any) -> Any:
    """A torch tensor (any device) as numpy; bfloat16, which numpy lacks, as float32 (exact)."""
    if _library(x) == "torch":
        import torch

        tensor = x.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return x


def _variable(x: Any, array: str | None, location: str, ndims: tuple[int, ...]) -> Any:
    """An xarray Dataset's variable of features: the one named by ``array``, else its only
    one (or its only one of a features' rank).

    Raises:
        StoreError: no such variable, or several to choose from.
    """
    names = [str(k) for k in x.data_vars]
    if array is not None:
        if array not in names:
            raise StoreError(f"{location} has no variable {array!r}; it holds {names}")
        return x[array]
    candidates = names if len(names) == 1 else [k for k in names if x[k].ndim in ndims]
    if len(candidates) != 1:
        raise StoreError(
            f"{location} is an xarray Dataset holding {names or 'no variables'}; choose one "
            "with «array=NAME» (it picks the variable of every input that holds several), or "
            "pass the variable itself, x['NAME']"
        )
    return x[candidates[0]]


def holds_variables(x: Any) -> bool:
    """Whether «array» has a variable to pick in ``x``: an xarray Dataset, or a store that is
    not a ``.npy`` file or a single Zarr array (a group, an ``.npz``; a path that does not
    open counts, and opening it says why). Arrays in memory hold one array."""
    if is_path(x):
        from shardeval.pipeline.io.stores import holds_one_array

        return not holds_one_array(os.fspath(x))
    return _library(x) == "xarray" and hasattr(x, "data_vars")


def arrays_for(inputs: Sequence[Any], array: str | None) -> list[str | None]:
    """«array» for each of ``inputs`` read together (REAL and GEN): every input that holds
    variables takes it, and an input of one array beside them takes None, having nothing to
    pick. Where no input holds variables, every input takes it, and opening refuses it in
    words (it would apply to nothing).

    Example:
        >>> import numpy as np, xarray as xr
        >>> ds = xr.Dataset({"f": (("sample", "feature"), np.ones((3, 2)))})
        >>> arrays_for([ds, np.ones((3, 2))], "f"), arrays_for([np.ones((3, 2))], "f")
        (['f', None], ['f'])
    """
    if array is None:
        return [None] * len(inputs)
    holds = [holds_variables(x) for x in inputs]
    return [array if h or not any(holds) else None for h in holds]


def _dask_array(x: Any, location: str, shard_rows: int | None) -> tuple[Any, str]:
    """``x`` as a dask array of native byte order, rows in shards and columns whole, and the
    digest of its content (dask's token) that names it."""
    import dask.array as da
    from dask.base import tokenize

    from shardeval.pipeline.io.reader import native

    if _library(x) == "xarray":
        from shardeval.pipeline.io.stores import rows_axis

        axis = rows_axis(tuple(str(d) for d in x.dims), location) if x.ndim == 2 else 0
        x = x.data if axis in (0, None) else x.data.T
    given_dask = isinstance(x, da.Array)
    if given_dask:
        array = x
        if any(math.isnan(c) for chunks in array.chunks for c in chunks):
            raise ShapeError(
                f"{location} has unknown chunk sizes (NaN), as boolean indexing leaves them; "
                "call x.compute_chunk_sizes() first, or pass the computed array"
            )
        token = str(array.name)
        if not array.dtype.isnative:
            wanted = array.dtype.newbyteorder("=")
            array = array.map_blocks(native, dtype=wanted)
    else:
        x = _as_numpy(x)
        if not isinstance(x, np.ndarray):
            raise DtypeError(
                f"{location}: features must be a store path, a numpy array, a torch tensor, a "
                f"dask array or an xarray DataArray or Dataset; got {type(x).__name__}"
            )
        x = native(x)
        token = tokenize(x)
        array = da.from_array(x, chunks=x.shape or (1,), name=f"array-{token}")
    if array.ndim == 2 and array.numblocks[1] > 1:
        array = array.rechunk({1: -1})  # a shard's rows whole: its moments need every column
    if array.ndim >= 1 and (shard_rows or not given_dask):
        row_bytes = max(1, int(np.prod(array.shape[1:])) * array.dtype.itemsize)
        rows = shard_rows or max(1, _SHARD_BYTES // row_bytes)
        array = array.rechunk((rows, *array.shape[1:]))
    return array, token


def features(
    x: Any,
    *,
    array: str | None = None,
    shard_rows: int | None = None,
    min_rows: int = 2,
    ndims: tuple[int, ...] = (2,),
) -> FeatureSource:
    """``x`` as a :class:`~shardeval.pipeline.io.stores.FeatureSource`, checked as a store is:
    rank, a real dtype, rows of at least one column, at least ``min_rows`` rows.

    Raises:
        ShapeError, DtypeError: as for a store; StoreError: a path that cannot be opened, or
            statistics where rows are needed.
    """
    from shardeval.pipeline.io.stores import FeatureSource, open_features, validate_shape_dtype

    if isinstance(x, FeatureSource):
        return x
    if isinstance(x, ExtractedImages):
        from shardeval.pipeline.images.cache import check_rows

        source = open_features(
            x.path, array_name=array, shard_rows=shard_rows, min_rows=0, ndims=ndims
        )
        # Too few rows are too few decodable images: named by the images, not the entry.
        left_out = len(source.attrs.get("skipped") or ())
        check_rows(source.n, x.given, left_out, x.path, min_rows)
        return replace(source, given=x.given)
    if is_path(x):
        return open_features(
            os.fspath(x), array_name=array, shard_rows=shard_rows, min_rows=min_rows, ndims=ndims
        )
    location = describe_input(x)
    if is_statistics(x):
        raise StoreError(
            f"{location} is statistics (a mean and covariance); this needs the rows: give the "
            "features"
        )
    if _library(x) == "xarray" and hasattr(x, "data_vars"):
        x = _variable(x, array, location, ndims)
    elif array is not None:
        raise ShapeError(
            f"«array={array!r}»: {location} is one array, with no name to pick («array» picks "
            "a variable of a store or an xarray Dataset): leave «array» out"
        )
    data, token = _dask_array(x, location, shard_rows)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in ndims and len(shape) in (3, 4) and 2 in ndims:
        raise ShapeError(
            f"{location} has shape {shape}; features are 2-D (samples x features), images in "
            "memory 4-D: (N, H, W, 3) or (N, 3, H, W), extracted where a function takes images"
        )
    validate_shape_dtype(location, shape, np.dtype(data.dtype), ndims)
    if shape[0] < min_rows:
        raise ShapeError(f"{location} has {shape[0]} row(s); at least {min_rows} are needed")
    # Named by the digest of its content: two arrays are never taken for one store (Python
    # reuses the id() of a freed object), and statistics of one array made twice say so.
    return FeatureSource(f"{location} #{token[:_NAME_DIGITS]}", data)
