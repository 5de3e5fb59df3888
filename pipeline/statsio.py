"""Statistics files: compute once, reuse many times.

Two formats:

* our own, exact and mergeable: a Zarr group with ``mean`` (d,) and ``m2`` (d, d) in float64,
  attribute ``n`` and provenance (source, shape, dtype, feature extractor, versions);
* pytorch-fid / clean-fid ``.npz`` with ``mu`` and ``sigma`` (``np.cov``, ddof=1). We also write
  ``n``, which makes our ``.npz`` files mergeable; a bare ``mu``/``sigma`` file is read as a
  :class:`~pipeline.gaussian.Gaussian` with ``n=None`` and cannot be merged.

Writes are atomic (:mod:`pipeline.atomic`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

from pipeline.atomic import atomic_dir, atomic_file
from pipeline.errors import StatsFormatError, StoreError
from pipeline.gaussian import Gaussian
from pipeline.sources import STATS_FORMAT
from pipeline.states import Moments

FORMAT_VERSION = 1


def save_stats(
    path: str | os.PathLike[str], moments: Moments, provenance: dict[str, Any] | None = None
) -> str:
    """Write statistics to ``path``: ``.npz`` (mu, sigma, n) or otherwise a Zarr group.

    Args:
        path: output location (local). Ending in ``.npz`` selects the pytorch-fid layout.
        moments: merged moments, n ≥ 2.
        provenance: JSON-serialisable attributes recorded with the statistics.

    Returns:
        The path written.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        with atomic_file(path, "wb") as fh:
            np.savez(fh, mu=moments.mean, sigma=moments.covariance(ddof=1), n=np.int64(moments.n))
        return path
    with atomic_dir(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        group.create_array("mean", data=moments.mean)
        group.create_array("m2", data=moments.m2)
        group.attrs.update(
            {
                "format": STATS_FORMAT,
                "format_version": FORMAT_VERSION,
                "n": int(moments.n),
                **(provenance or {}),
            }
        )
    return path


def _load_npz(path: str) -> Moments | Gaussian:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read statistics {path!r}: {exc}") from exc
    missing = {"mu", "sigma"} - set(archive.keys())
    if missing:
        raise StatsFormatError(
            f"{path!r} lacks {sorted(missing)}; a statistics .npz needs 'mu' (d,) and "
            f"'sigma' (d, d), it holds {sorted(archive.keys())}"
        )
    mu = np.asarray(archive["mu"], dtype=np.float64)
    sigma = np.asarray(archive["sigma"], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise StatsFormatError(
            f"{path!r}: 'mu' has shape {mu.shape} and 'sigma' {sigma.shape}; "
            "expected (d,) and (d, d)"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatsFormatError(f"{path!r}: 'mu' or 'sigma' holds NaN or inf")
    if "n" in archive:
        n = int(archive["n"])
        if n < 2:
            raise StatsFormatError(f"{path!r}: 'n' is {n}; statistics need n >= 2")
        return Moments(n, mu, sigma * (n - 1))
    return Gaussian(mu, sigma, None, path)


def _array(group: zarr.Group, name: str) -> np.ndarray:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise KeyError(name)
    return np.asarray(node[...])


def load_stats(path: str | os.PathLike[str]) -> Moments | Gaussian:
    """Read statistics written by :func:`save_stats`, or a pytorch-fid/clean-fid ``.npz``.

    Returns:
        :class:`Moments` (mergeable) when the file records n, else a :class:`Gaussian`.

    Raises:
        StoreError: missing or unreadable file.
        StatsFormatError: fields missing, shapes inconsistent, values not finite.
    """
    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise StoreError(f"statistics file {path!r} does not exist")
    if path.endswith(".npz"):
        return _load_npz(path)
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"cannot open statistics {path!r} as a Zarr group: {exc}") from exc
    if group.attrs.get("format") != STATS_FORMAT:
        raise StatsFormatError(
            f"{path!r} is not a shardeval statistics group (attribute format="
            f"{group.attrs.get('format')!r}); make one with `shardeval stats STORE -o {path}`"
        )
    try:
        mean = np.asarray(_array(group, "mean"), dtype=np.float64)
        m2 = np.asarray(_array(group, "m2"), dtype=np.float64)
        n = int(group.attrs["n"])  # type: ignore[arg-type]  # JSON value, checked by int()
    except KeyError as exc:
        raise StatsFormatError(f"{path!r} lacks {exc}; expected mean, m2 and attribute n") from exc
    if mean.ndim != 1 or m2.shape != (mean.shape[0], mean.shape[0]):
        raise StatsFormatError(
            f"{path!r}: 'mean' has shape {mean.shape} and 'm2' {m2.shape}; expected (d,), (d, d)"
        )
    return Moments(n, mean, m2)


def stats_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Attributes recorded with a Zarr statistics group ({} for ``.npz``)."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        return {}
    return dict(zarr.open_group(path, mode="r").attrs)
