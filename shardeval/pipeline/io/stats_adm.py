"""Guided-diffusion's (ADM's) reference batches, ``VIRTUAL_*.npz``: read, never written.

:func:`is_adm_reference` tells one by its arrays, :func:`load_adm_reference` reads and checks it
into an :class:`ADMReference`, and :func:`adm_provenance` describes one for reports from its
array headers alone. What their statistics are features of is in
:mod:`shardeval.pipeline.io.statsio`'s description.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.errors import StatsFormatError, StoreError
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.io.stats_checks import _NPZ_ERRORS, check_statistics
from shardeval.pipeline.io.stores import numpy_kind

#: The arrays of a guided-diffusion reference batch: the images, the FID statistics, and the
#: sFID statistics (optional here).
ADM_IMAGES, ADM_POOL, ADM_SPATIAL = "arr_0", ("mu", "sigma"), ("mu_s", "sigma_s")


#: What the FID statistics of a reference batch are, for reports (see the module's description).
ADM_FEATURES = (
    "pool_3 of the TF Inception graph of 2015-12-05 (guided-diffusion evaluations/evaluator.py: "
    "images in [0, 255] resized by the graph's TF 1.x bilinear resize); comparable with "
    "resize legacy-tensorflow"
)


@dataclass(frozen=True, eq=False)
class ADMReference:
    """A guided-diffusion reference batch (``VIRTUAL_*.npz``), checked.

    Attributes:
        path: the file.
        pool: ``mu``/``sigma``: FID statistics of ``pool_3`` features (n unknown).
        spatial: ``mu_s``/``sigma_s``: the suite's sFID statistics (the first 7 channels of the
            TF graph's ``mixed_6/conv`` output, 17 x 17 x 7 = 2,023 values per image, in
            height-width-channel order), or None when the file has none: sFID's reference
            (the ``sfid`` metric; docs/sfid.md).
        images: the shape of ``arr_0`` (N, H, W, 3), uint8; the images themselves are read by
            the image sources (:mod:`shardeval.pipeline.images.sources`), not here.
    """

    path: str
    pool: Gaussian
    spatial: Gaussian | None
    images: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        """For reports: what the file is and what its statistics are features of."""
        spatial = None if self.spatial is None else self.spatial.d
        return _adm_description(self.pool.d, self.images, spatial)


def _adm_description(d: int, images: tuple[int, ...], spatial: int | None) -> dict[str, Any]:
    return {
        "format": "guided-diffusion reference batch",
        "feature_extractor": "inception-2015-12-05/pool3",
        "features": ADM_FEATURES,
        "resize": "legacy-tensorflow",
        "d": d,
        "n": None,
        "images": images[0],
        "image_shape": list(images[1:]),
        "spatial_statistics_d": spatial,
    }


def adm_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a guided-diffusion reference batch is, for reports, from its array headers alone
    (:meth:`ADMReference.describe` without reading the arrays); {} for another file."""
    path = os.fspath(path)
    if not is_adm_reference(path):
        return {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")}
            images, _ = _npz_header(archive, ADM_IMAGES)
            mu, _ = _npz_header(archive, "mu")
            spatial = _npz_header(archive, "mu_s")[0] if "mu_s" in names else None
    except _NPZ_ERRORS:
        return {}
    # A 0-d mean is d = 1, as pytorch-fid reads it.
    d_spatial = None if spatial is None else (spatial[0] if spatial else 1)
    return _adm_description(mu[0] if mu else 1, images, d_spatial)


def _npz_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of member ``name`` of an ``.npz``, from its header alone."""
    fmt = np.lib.format
    with archive.open(f"{name}.npy") as fh:
        version = fmt.read_magic(fh)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _fortran, dtype = reader(fh)
    return tuple(int(v) for v in shape), np.dtype(dtype)


def _adm_members(path: str) -> tuple[set[str], tuple[int, ...], np.dtype] | None:
    """The arrays of an ``.npz`` and its ``arr_0`` header, when it has ``arr_0``, ``mu`` and
    ``sigma``; else None."""
    with zipfile.ZipFile(path) as archive:
        names = {n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")}
        if not {ADM_IMAGES, *ADM_POOL} <= names:
            return None
        shape, dtype = _npz_header(archive, ADM_IMAGES)
    return names, shape, dtype


def is_adm_reference(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a guided-diffusion reference batch: an ``.npz`` (by its bytes, not its
    name) holding ``mu``, ``sigma`` and uint8 images ``arr_0`` of shape (N, H, W, 3). Reads the
    archive's listing and one array header; never raises."""
    path = os.fspath(path)
    try:
        if numpy_kind(path) != "npz":
            return False
        members = _adm_members(path)
    except Exception:
        return False
    if members is None:
        return False
    _names, shape, dtype = members
    return dtype == np.uint8 and len(shape) == 4 and shape[3] == 3


def load_adm_reference(path: str | os.PathLike[str]) -> ADMReference:
    """Read and check a guided-diffusion reference batch (``VIRTUAL_*.npz``).

    The statistics are checked as any statistics file's (shapes, finite values, a symmetric
    covariance with non-negative variances); ``mu_s`` and ``sigma_s``, when present, likewise
    and both together; ``arr_0`` must be uint8 (N, H, W, 3) with N ≥ 2 (only its header is read).

    Raises:
        StoreError: the file is missing or is not a readable ``.npz``.
        StatsFormatError: arrays missing, of the wrong shape or dtype, or not finite.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise StoreError(f"reference batch {path!r} does not exist")
    if numpy_kind(path) != "npz":
        raise StatsFormatError(f"{path!r} is not an .npz archive; a reference batch is one")
    try:
        members = _adm_members(path)
        if members is None:
            with np.load(path, allow_pickle=False) as archive:
                keys = sorted(archive.keys())
            raise StatsFormatError(
                f"{path!r} holds {keys}; a guided-diffusion reference batch holds 'arr_0' "
                "(images), 'mu' and 'sigma' (and 'mu_s', 'sigma_s')"
            )
        names, shape, dtype = members
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[0] < 2:
            raise StatsFormatError(
                f"{path!r}: 'arr_0' is {dtype} of shape {shape}; a reference batch's images are "
                "uint8 (N, H, W, 3) with N >= 2"
            )
        spatial_names = set(ADM_SPATIAL) & names
        if spatial_names and spatial_names != set(ADM_SPATIAL):
            raise StatsFormatError(
                f"{path!r} holds {sorted(spatial_names)} without "
                f"{sorted(set(ADM_SPATIAL) - spatial_names)}; the sFID statistics come in pairs"
            )
        with np.load(path, allow_pickle=False) as archive:
            found = {
                k: np.asarray(archive[k], dtype=np.float64)
                for k in (*ADM_POOL, *sorted(spatial_names))
            }
    except _NPZ_ERRORS as exc:
        raise StoreError(
            f"cannot read reference batch {path!r}: {exc}; the file is damaged"
        ) from exc
    mu = np.atleast_1d(found["mu"])
    sigma = check_statistics(path, mu, np.atleast_2d(found["sigma"]), ADM_POOL)
    spatial = None
    if spatial_names:
        mu_s = np.atleast_1d(found["mu_s"])
        sigma_s = check_statistics(path, mu_s, np.atleast_2d(found["sigma_s"]), ADM_SPATIAL)
        spatial = Gaussian(mu_s, sigma_s, None, f"{path} (mu_s, sigma_s)")
    return ADMReference(path, Gaussian(mu, sigma, None, path), spatial, shape)
