"""What the API functions take as features or statistics, made into the pipeline's objects.

Features: a store's path or URL (anything :func:`~shardeval.pipeline.io.stores.open_features`
opens), an image source (extracted into the feature cache first), a numpy array, a torch
tensor on any device, a dask array, an xarray DataArray (dims named as in a store), or a
:class:`~shardeval.pipeline.io.stores.FeatureSource`. Statistics: a statistics file (ours or
a pytorch-fid ``.npz``), a :class:`~shardeval.pipeline.fid.gaussian.Gaussian`, or a
:class:`~shardeval.pipeline.core.states.Moments`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from shardeval.pipeline.errors import DtypeError, ShapeError

#: Bytes of one shard of an in-memory array (as a store's default shards).
_SHARD_BYTES = 64 * 2**20


def is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def describe_input(x: Any) -> str:
    """A short name for an input in messages and reports."""
    if is_path(x):
        return os.fspath(x)
    shape = getattr(x, "shape", None)
    return f"<{type(x).__module__.split('.')[0]}.{type(x).__name__} {tuple(shape or ())}>"


def is_statistics(x: Any) -> bool:
    """Whether ``x`` is statistics (a file, a Gaussian or Moments) rather than features."""
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian

    if isinstance(x, Gaussian | Moments):
        return True
    if is_path(x):
        from shardeval.pipeline.io.statsio import is_stats

        return is_stats(os.fspath(x))
    return False


def statistics(x: Any, location: str = "") -> Any:
    """``x`` as a :class:`~shardeval.pipeline.fid.gaussian.Gaussian`."""
    from shardeval.pipeline.fid.gaussian import as_gaussian

    if is_path(x):
        from shardeval.pipeline.io.statsio import load_stats

        location = os.fspath(x)
        return as_gaussian(load_stats(location), location)
    return as_gaussian(x, location or describe_input(x))


def _as_numpy(x: Any) -> Any:
    """A torch tensor (any device) as numpy; bfloat16, which numpy lacks, as float32 (exact)."""
    if type(x).__module__.startswith("torch"):
        import torch

        tensor = x.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return x


def _dask_array(x: Any, location: str, shard_rows: int | None) -> Any:
    import dask.array as da

    if type(x).__module__.startswith("xarray"):
        from shardeval.pipeline.io.stores import rows_axis

        axis = rows_axis(tuple(str(d) for d in x.dims), location) if x.ndim == 2 else 0
        x = x.data if axis in (0, None) else x.data.T
    if isinstance(x, da.Array):
        array = x
    else:
        x = _as_numpy(x)
        if not isinstance(x, np.ndarray):
            raise DtypeError(
                f"{location}: features must be a store path, a numpy array, a torch tensor, a "
                f"dask array or an xarray DataArray; got {type(x).__name__}"
            )
        array = da.from_array(x, chunks=x.shape or (1,))
    if array.ndim >= 1 and (shard_rows or not isinstance(x, da.Array)):
        row_bytes = max(1, int(np.prod(array.shape[1:])) * array.dtype.itemsize)
        rows = shard_rows or max(1, _SHARD_BYTES // row_bytes)
        array = array.rechunk((rows, *array.shape[1:]))
    return array


def features(
    x: Any,
    *,
    array: str | None = None,
    shard_rows: int | None = None,
    min_rows: int = 2,
    ndims: tuple[int, ...] = (2,),
) -> Any:
    """``x`` as a :class:`~shardeval.pipeline.io.stores.FeatureSource`, checked as a store is:
    rank, a real dtype, at least ``min_rows`` rows.

    Raises:
        ShapeError, DtypeError: as for a store; StoreError: a path that cannot be opened.
    """
    from shardeval.pipeline.io.stores import FeatureSource, open_features, validate_shape_dtype

    if isinstance(x, FeatureSource):
        return x
    if is_path(x):
        return open_features(
            os.fspath(x), array_name=array, shard_rows=shard_rows, min_rows=min_rows, ndims=ndims
        )
    location = describe_input(x)
    if array is not None:
        raise ShapeError(f"{location}: «array» names a variable inside a store; this is an array")
    data = _dask_array(x, location, shard_rows)
    validate_shape_dtype(location, tuple(data.shape), np.dtype(data.dtype), ndims)
    if data.shape[0] < min_rows:
        raise ShapeError(f"{location} has {data.shape[0]} row(s); at least {min_rows} are needed")
    # A distinct location per object: two arrays are never taken for one store.
    return FeatureSource(f"{location} at 0x{id(x):x}", data)


#: How image inputs become features: the options of ``extract`` that the metric functions
#: take too, where the features are cached, and whether the images' bytes (``verify``), not
#: their listing alone, decide that a cached entry is theirs.
IMAGE_OPTIONS = ("encoder", "resize", "weights", "batch_size", "cache_root", "verify", "skip_bad")


def is_images(x: Any) -> bool:
    """Whether ``x`` names an image source (a folder of images, a zip, tar shards, a uint8
    (N, H, W, 3) array file), told by content (never raises)."""
    if not is_path(x):
        return False
    from shardeval.pipeline.images.cache import is_image_source

    return is_image_source(os.fspath(x))


def extracted(
    x: Any,
    options: dict[str, Any],
    engine: Any,
    progress: Any,
    others: list[Any],
    used: list[Any] | None = None,
) -> str:
    """The feature store of the image source ``x``: its entry in the feature cache, extracted
    now (resumably, locked) or reused without running an encoder; with ``options["verify"]``
    the images' bytes decide reuse, with ``options["skip_bad"]`` undecodable images are left
    out (another entry). ``used``, when given, gets the
    :class:`~shardeval.pipeline.images.cache.CachedFeatures` (for the report).

    Raises:
        OutputExistsError: the cache lies inside another input (``others``).
    """
    from shardeval.pipeline.core.ieee_fp32 import set_in_this_process
    from shardeval.pipeline.images.cache import cached_features, resolve_cache_root
    from shardeval.pipeline.io.atomic import check_outside

    root = resolve_cache_root(options.get("cache_root"))  # an empty value is refused
    check_outside(root, [os.fspath(o) for o in others if is_path(o)])
    device = options.get("device") or "auto"
    set_in_this_process(engine, device)  # IEEE fp32 convolutions, as extract does
    cached = cached_features(
        os.fspath(x),
        cache_root=root,
        encoder=options.get("encoder") or "inception",
        resize=options.get("resize"),
        weights=options.get("weights"),
        batch_size=options.get("batch_size"),
        device=device,
        skip_bad=bool(options.get("skip_bad")),
        engine=engine,
        progress=progress,
        verify=bool(options.get("verify")),
        log=options.get("log"),
    )
    if used is not None:
        used.append(cached)
    return cached.path
