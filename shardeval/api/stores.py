"""Feature stores and statistics files as the command line, job runs and histories use them:
opened and checked, fingerprinted (what a history records to tell whether an input changed),
checked complete, described (how their features were made), and a reference's statistics
computed once and kept in a file.

Nothing here prints; each function names the store in its errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.io.stores import STATS_FORMAT

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.stores import FeatureSource

#: The ``format`` attribute of a statistics group (``shardeval stats`` writes it): a Zarr
#: store that says it is not a history or a feature store.
STATISTICS_FORMAT = STATS_FORMAT

__all__ = [
    "STATISTICS_FORMAT",
    "content_fingerprint",
    "features_made_by",
    "is_statistics_file",
    "listing_fingerprint",
    "load_statistics",
    "missing_chunks",
    "open_store",
    "statistics_provenance",
    "write_statistics",
]


def open_store(
    location: str | os.PathLike[str], *, array: str | None = None, shard_rows: int | None = None
) -> FeatureSource:
    """Open a feature store (complete, readable, 2-D, numeric) as rows read shard by shard.

    Args:
        location: a Zarr array or group, an xarray dataset in Zarr, ``.npy``/``.npz``; a path
            or fsspec URL.
        array: the variable of a store that holds several.
        shard_rows: rows per shard (default: the store's chunks).

    Returns:
        The opened store (``.d`` its features, ``.n`` its rows, ``.describe()`` its
        provenance).

    Raises:
        StoreError, ShapeError, DtypeError: a store that is missing, incomplete or not
            features, named with what would fix it.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.api.stores import open_store
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((4, 3), np.float32))
        >>> open_store(path).d
        3
    """
    from shardeval.pipeline.io.stores import open_features

    return open_features(location, array_name=array, shard_rows=shard_rows)


def listing_fingerprint(location: str) -> str:
    """The digest of a store's listing (each file's relative path, size and modification
    time): cheap, and changed by any rewrite that changes a size or a time.

    Args:
        location: a path or fsspec URL of a store (or any folder or file).

    Returns:
        32 hex digits.

    Raises:
        OSError, StoreError: the location cannot be listed.

    Example:
        >>> import tempfile, os
        >>> from shardeval.api.stores import listing_fingerprint
        >>> folder = tempfile.mkdtemp()
        >>> len(listing_fingerprint(folder))
        32
    """
    from shardeval.pipeline.io.fingerprint import listing_digest

    return listing_digest(location)


def content_fingerprint(location: str) -> str:
    """The digest of a store's bytes (each stored file's relative path and contents): reads
    every file once; what ``run --verify`` compares.

    Args:
        location: a path or fsspec URL of a store (or any folder or file).

    Returns:
        32 hex digits.

    Raises:
        OSError, StoreError: a file cannot be read.

    Example:
        >>> import tempfile, os
        >>> from shardeval.api.stores import content_fingerprint
        >>> folder = tempfile.mkdtemp()
        >>> content_fingerprint(folder) == content_fingerprint(folder)
        True
    """
    from shardeval.pipeline.io.fingerprint import content_digest

    return content_digest(location)


def missing_chunks(array: Any, location: str = "") -> tuple[list[tuple[tuple[int, ...], str]], int]:
    """The chunks a Zarr array's store does not hold, and the number expected (nothing is
    decoded): a missing chunk would read as fill values.

    Args:
        array: an opened ``zarr.Array``.
        location: where it is, for the chunks' names.

    Returns:
        (missing chunks as (grid index, where it should be), chunks expected).

    Raises:
        StoreError: a damaged shard index.

    Example:
        >>> import zarr
        >>> from shardeval.api.stores import missing_chunks
        >>> a = zarr.create_array(store={}, shape=(4,), chunks=(2,), dtype="f4")
        >>> a[:] = 1.0
        >>> missing_chunks(a)
        ([], 2)
    """
    from shardeval.pipeline.io.reader import missing_chunks as missing

    return missing(array, location)


def is_statistics_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds statistics (ours, or a pytorch-fid ``.npz``); never raises.

    Args:
        path: any path.

    Returns:
        True for statistics.

    Example:
        >>> from shardeval.api.stores import is_statistics_file
        >>> is_statistics_file("/nonexistent")
        False
    """
    from shardeval.pipeline.io.statsio import is_stats

    return is_stats(path)


def statistics_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The attributes recorded with statistics (how their features were made, what they were
    computed from); {} for a file that records none.

    Args:
        path: a statistics file.

    Returns:
        The recorded attributes.

    Raises:
        StatsFormatError: a damaged record.

    Example:
        >>> from shardeval.api.stores import statistics_provenance  # doctest: +SKIP
        >>> statistics_provenance("real-stats.zarr")["fingerprint"]  # doctest: +SKIP
    """
    from shardeval.pipeline.io.statsio import stats_provenance

    return stats_provenance(path)


def load_statistics(path: str | os.PathLike[str], where: str | None = None) -> Gaussian:
    """A statistics file as its mean, covariance and count, checked.

    Args:
        path: a statistics file (ours, pytorch-fid's ``.npz``, a guided-diffusion batch).
        where: the name its messages give it (default: ``path``).

    Returns:
        The statistics (``.d`` their dimension).

    Raises:
        StatsFormatError, StoreError: a file that is not complete statistics.

    Example:
        >>> from shardeval.api.stores import load_statistics  # doctest: +SKIP
        >>> load_statistics("real-stats.zarr").d  # doctest: +SKIP
        2048
    """
    from shardeval.pipeline.fid.gaussian import as_gaussian
    from shardeval.pipeline.io.statsio import load_stats

    return as_gaussian(load_stats(path), os.fspath(path) if where is None else where)


def write_statistics(
    source: FeatureSource,
    path: str,
    *,
    fingerprint: str,
    engine: Engine,
    recorded: dict[str, Any] | None = None,
    overwrite: bool = False,
    where: str = "",
    device: str = "auto",
    backend: str = "auto",
    precision: str = "fp32",
    split_every: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Gaussian:
    """Compute a store's statistics (count, mean, co-moment: one pass, exact merges) and keep
    them in a statistics file that records the input's ``fingerprint``.

    Another process may write the same file meanwhile (two runs of one job): when the file
    it left holds statistics of the same ``fingerprint``, they are the same statistics and
    this call uses its own; anything else there is refused.

    Args:
        source: the opened store (:func:`open_store`).
        path: the statistics file to write.
        fingerprint: the digest of the input (and of whatever decides its statistics).
        engine: where the pass runs.
        recorded: more attributes to record beside the store's description.
        overwrite: replace statistics at ``path`` (a file this caller found stale).
        where: the name the statistics' messages give the input.
        device, backend, precision, split_every: run options of the pass.
        log: receives a line when another process wrote the file meanwhile.

    Returns:
        The statistics, as computed here.

    Raises:
        OutputExistsError: ``path`` holds something else.
        NonFiniteError, StoreError: the store's rows cannot be used.

    Example:
        >>> from shardeval.api.stores import open_store, write_statistics  # doctest: +SKIP
        >>> write_statistics(open_store("real.zarr"), "real-stats.zarr",  # doctest: +SKIP
        ...                  fingerprint="…", engine=engine).d
    """
    from shardeval.pipeline.fid.gaussian import as_gaussian
    from shardeval.pipeline.fid.moments import feature_moments
    from shardeval.pipeline.io.atomic import OutputExistsError
    from shardeval.pipeline.io.statsio import is_stats, save_stats, stats_provenance

    ((moments, _),) = feature_moments(
        [source],
        engine=engine,
        device=device,
        backend=backend,
        precision=precision,
        split_every=split_every,
    )
    try:
        provenance = {**source.describe(), "fingerprint": fingerprint, **(recorded or {})}
        save_stats(path, moments, provenance, overwrite=overwrite)
    except (OutputExistsError, OSError):
        # Another process wrote the file meanwhile: the same input (its fingerprint says so),
        # so the same statistics. Anything else there is still an error.
        if not (is_stats(path) and stats_provenance(path).get("fingerprint") == fingerprint):
            raise
        log(f"reference statistics {path} written meanwhile by another run")
    return as_gaussian(moments, where)


def features_made_by(source: FeatureSource) -> dict[str, Any]:
    """How a store's features were made, as reports and histories list it: an extraction's
    encoder, resize and weights' digest, or the settings of ``shardeval synth``.

    Args:
        source: the opened store (:func:`open_store`).

    Returns:
        ``{"encoder": …, "resize": …, "weights_digest": …}``, ``{"features": "synthetic
        Gaussian", "seed": …, …}``, or {} when the store does not say (features of other
        tools).

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.api.stores import features_made_by, open_store
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((4, 3), np.float32))
        >>> features_made_by(open_store(path))
        {}
    """
    from shardeval.pipeline.io.synthetic import made_by

    made = source.describe().get("extraction", {})
    extracted = {k: made[k] for k in ("encoder", "resize", "weights_digest") if k in made}
    return extracted or made_by(source.attrs, tuple(source.array.shape)) or {}
