"""Our statistics files, written and read: a Zarr group (``mean``, ``m2``, attribute ``n`` and
provenance) or an ``.npz`` (``mu``, ``sigma``, ``n`` and the provenance as JSON text), and the
pytorch-fid / clean-fid ``.npz`` files (``mu``, ``sigma``) read as statistics of unknown ``n``.
The formats are described in :mod:`shardeval.pipeline.io.statsio`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import zarr

from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import StatsFormatError, StoreError
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.io.atomic import atomic_dir, atomic_file, claim_output, is_stream
from shardeval.pipeline.io.reader import missing_chunks
from shardeval.pipeline.io.stats_adm import adm_provenance
from shardeval.pipeline.io.stats_checks import _NPZ_ERRORS, check_n, check_statistics
from shardeval.pipeline.io.stores import STATS_FORMAT, not_a_store, numpy_kind

FORMAT_VERSION = 1


#: The member of our ``.npz`` statistics that holds their provenance: JSON text of the
#: attributes a statistics group records (how the features were made among them).
NPZ_PROVENANCE = "shardeval_provenance"


def is_stats(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like statistics (ours, or a pytorch-fid ``.npz``, whatever it is
    named); never raises."""
    path = os.fspath(path)
    try:
        kind = numpy_kind(path)
        if kind == "npz":
            with np.load(path, allow_pickle=False) as archive:
                return bool({"mu", "sigma"} & set(archive.keys()))
        if kind == "npy":
            return False  # one array: features or values, never mu and sigma
        return (
            zarr.open_group(path, mode="r", use_consolidated=False).attrs.get("format")
            == STATS_FORMAT
        )
    except Exception:
        return False


def save_stats(
    path: str | os.PathLike[str],
    moments: Moments,
    provenance: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> str:
    """Write statistics to ``path``: ``.npz`` (mu, sigma, n) or otherwise a Zarr group.

    Args:
        path: output location (local). Ending in ``.npz``, or a stream (a pipe, FIFO or
            device, such as ``/dev/stdout``: one file, written in place), selects the
            pytorch-fid layout.
        moments: merged moments, n ≥ 2.
        provenance: JSON-serialisable attributes recorded with the statistics (in a
            ``.npz``, as JSON text in :data:`NPZ_PROVENANCE`).
        overwrite: replace an existing statistics file at ``path`` (anything else there is
            never replaced).

    Returns:
        The path written.

    Raises:
        OutputExistsError: ``path`` exists and is not statistics, or ``overwrite`` is False.
    """
    path = os.fspath(path)
    claim_output(path, "statistics file", is_stats, overwrite, streams=True)
    attrs = {
        "format": STATS_FORMAT,
        "format_version": FORMAT_VERSION,
        "n": int(moments.n),
        **(provenance or {}),
    }
    if path.endswith(".npz") or is_stream(path):
        arrays: dict[str, Any] = {
            "mu": moments.mean,
            "sigma": moments.covariance(ddof=1),
            "n": np.int64(moments.n),
            NPZ_PROVENANCE: np.str_(json.dumps(attrs)),  # text: read without pickle
        }
        with atomic_file(path, "wb") as fh:
            np.savez(fh, **arrays)
        return path
    with atomic_dir(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        group.create_array("mean", data=moments.mean)
        group.create_array("m2", data=moments.m2)
        group.attrs.update(attrs)
    return path


def _load_npz(path: str) -> Moments | Gaussian:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.keys())
            missing = {"mu", "sigma"} - keys
            if missing:
                raise StatsFormatError(
                    f"{path!r} lacks {sorted(missing)}; a statistics .npz needs 'mu' (d,) and "
                    f"'sigma' (d, d), it holds {sorted(keys)}"
                )
            # As pytorch-fid reads them: at d = 1 np.cov gives a 0-d sigma (and a mean a 0-d
            # or 1-element mu).
            mu = np.atleast_1d(np.asarray(archive["mu"], dtype=np.float64))
            sigma = np.atleast_2d(np.asarray(archive["sigma"], dtype=np.float64))
            n = archive["n"] if "n" in keys else None
    except _NPZ_ERRORS as exc:
        raise StoreError(f"cannot read statistics {path!r}: {exc}; the file is damaged") from exc
    sigma = check_statistics(path, mu, sigma, ("mu", "sigma"))
    if n is None:
        return Gaussian(mu, sigma, None, path)
    count = check_n(path, n)
    return Moments(count, mu, sigma * (count - 1))


def _read_array(group: zarr.Group, path: str, name: str) -> np.ndarray:
    try:
        node = group[name]
    except KeyError:
        raise StatsFormatError(
            f"{path!r} lacks {name!r}; expected mean, m2 and attribute n"
        ) from None
    if not isinstance(node, zarr.Array):
        raise StatsFormatError(f"{path!r}: {name!r} is not an array")
    missing, total = missing_chunks(node, f"{path}/{name}")
    if missing:
        raise StoreError(
            f"{path!r} is incomplete: {len(missing)} of {total} chunks of {name!r} are missing "
            f"(first: {missing[0][1]}); recompute the statistics"
        )
    try:
        return np.asarray(node[...], dtype=np.float64)
    except Exception as exc:  # codecs raise many types for damaged bytes
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise StoreError(f"{path!r}: {name!r} cannot be decoded ({reason})") from exc


def load_stats(path: str | os.PathLike[str]) -> Moments | Gaussian:
    """Read statistics written by :func:`save_stats`, or a pytorch-fid/clean-fid ``.npz``.

    Returns:
        :class:`Moments` (mergeable) when the file records n, else a :class:`Gaussian`.

    Raises:
        StoreError: missing, unreadable, incomplete or damaged file.
        StatsFormatError: fields missing, shapes inconsistent, values not finite, a covariance
            that is not symmetric or has a negative variance, an ``n`` that is not an integer
            in [2, 2^53].
    """
    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise StoreError(f"statistics file {path!r} does not exist")
    kind = numpy_kind(path)
    if kind == "npz":
        return _load_npz(path)
    if kind == "npy":
        raise StatsFormatError(_one_array(path))
    try:
        group = zarr.open_group(path, mode="r", use_consolidated=False)
    except Exception as exc:
        wanted = "statistics: a group written by `shardeval stats`, or a .npz with mu and sigma"
        raise StoreError(not_a_store(path, exc, wanted)) from exc
    if group.attrs.get("format") != STATS_FORMAT:
        raise StatsFormatError(
            f"{path!r} is not a shardeval statistics group (attribute format="
            f"{group.attrs.get('format')!r}); make one with `shardeval stats STORE -o {path}`"
        )
    if "n" not in group.attrs:
        raise StatsFormatError(f"{path!r} lacks the attribute 'n' (the row count)")
    n = check_n(path, group.attrs["n"])
    mean = _read_array(group, path, "mean")
    m2 = check_statistics(path, mean, _read_array(group, path, "m2"), ("mean", "m2"))
    return Moments(n, mean, m2)


def _one_array(path: str) -> str:
    """The message for a ``.npy`` file given as statistics."""
    try:
        shape = f"of shape {np.load(path, mmap_mode='r', allow_pickle=False).shape} "
    except _NPZ_ERRORS:
        shape = ""
    return (
        f"{path!r} holds one array {shape}(a .npy file), not statistics; statistics are a "
        "shardeval statistics group or a .npz with 'mu' and 'sigma' (save_stats writes them "
        "from the moments of features)"
    )


def stats_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Attributes recorded with statistics: a Zarr group's, or those our ``.npz`` holds in
    :data:`NPZ_PROVENANCE`; for a guided-diffusion reference batch, what it is
    (:meth:`ADMReference.describe`); {} for another numpy file (pytorch-fid's, clean-fid's).

    Raises:
        StatsFormatError: an ``.npz`` whose :data:`NPZ_PROVENANCE` is not JSON text of an
            object (damaged, or written by hand).
    """
    path = os.fspath(path)
    kind = numpy_kind(path)
    if kind == "npz":
        return _npz_provenance(path) or adm_provenance(path)
    if kind is not None:
        return {}
    return dict(zarr.open_group(path, mode="r", use_consolidated=False).attrs)


def _npz_provenance(path: str) -> dict[str, Any]:
    """What our ``.npz`` statistics record in :data:`NPZ_PROVENANCE` ({} when there is none)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if NPZ_PROVENANCE not in archive.files:
                return {}
            held = archive[NPZ_PROVENANCE]
    except _NPZ_ERRORS as exc:
        raise StoreError(f"cannot read statistics {path!r}: {exc}; the file is damaged") from exc
    try:
        if held.ndim != 0 or held.dtype.kind != "U":
            raise ValueError(f"an array {held.dtype} of shape {held.shape}")
        recorded = json.loads(str(held[()]))
        if not isinstance(recorded, dict):
            raise ValueError(f"JSON of a {type(recorded).__name__}")
    except ValueError as exc:
        raise StatsFormatError(
            f"{path!r}: {NPZ_PROVENANCE!r} is not JSON text of an object ({exc}); it records "
            "how the statistics were made: write them again with `shardeval stats`"
        ) from None
    return recorded
