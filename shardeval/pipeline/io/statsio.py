"""Statistics files: compute once, reuse many times, merge.

Two formats:

* our own, exact and mergeable: a Zarr group with ``mean`` (d,) and ``m2`` (d, d) in float64,
  attribute ``n`` and provenance (source, shape, dtype, feature extractor, versions);
* pytorch-fid / clean-fid ``.npz`` with ``mu`` and ``sigma`` (``np.cov``, ddof=1). We also write
  ``n``, which makes our ``.npz`` files mergeable, and the provenance a Zarr group keeps in its
  attributes as JSON text in :data:`NPZ_PROVENANCE` (a 0-d unicode array: no pickle; pytorch-fid
  and clean-fid read ``mu`` and ``sigma`` by name and pass it by). A bare ``mu``/``sigma`` file
  is read as a :class:`~shardeval.pipeline.fid.gaussian.Gaussian` with ``n=None`` and cannot be
  merged.

Read, never written: guided-diffusion's (ADM's) reference batches, ``VIRTUAL_*.npz``
(:func:`is_adm_reference`, :func:`load_adm_reference`): ``mu``/``sigma`` as above, the sFID
statistics ``mu_s``/``sigma_s``, and the reference images in ``arr_0``, uint8 (N, H, W, 3).
Their ``mu``/``sigma`` are ``np.mean`` and ``np.cov`` (ddof=1) of the ``pool_3`` features of
the TF Inception graph (``classify_image_graph_def.pb``, images fed at their own size as
float32 in [0, 255] and resized by the graph's own TF 1.x bilinear resize), computed by the
suite's ``evaluations/evaluator.py`` over the whole dataset (``arr_0`` holds 10,000 of its
images, for precision and recall). They are read as statistics with ``n`` unknown (not
mergeable). FID against them compares with features extracted with the TF-compatible resize
(``legacy-tensorflow``): the same network under another resize gives other features, and an
FID that mixes the two measures the resize as well as the images. ``mu_s``/``sigma_s`` are
checked and kept, not used: see :class:`ADMReference`.

A file is told apart by its bytes, not its name: a zip archive is read as ``.npz``, a folder as a
Zarr group (:func:`shardeval.pipeline.io.stores.numpy_kind`). pytorch-fid's d = 1 statistics (a 0-d
``sigma``) are read as it reads them, with ``np.atleast_1d``/``np.atleast_2d``.

Everything read is checked before it is used: shapes, finite values, a symmetric covariance
(a file holding one triangle would give a wrong FID), non-negative variances, an integer
``n`` ≥ 2, and, for Zarr groups, every chunk present. Writes are atomic and never replace
what is not a statistics file (:mod:`shardeval.pipeline.io.atomic`).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import ShapeError, StatsFormatError, StoreError, SuspectStoreWarning
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.io.atomic import atomic_dir, atomic_file, claim_output, is_stream
from shardeval.pipeline.io.reader import missing_chunks
from shardeval.pipeline.io.stores import STATS_FORMAT, not_a_store, numpy_kind

FORMAT_VERSION = 1

#: Largest asymmetry max|Σ − Σᵀ| / max|Σ| accepted: float32 storage of a symmetric matrix is
#: exactly symmetric, and anything computed then rounded stays within a few ulps of fp32.
SYMMETRY_RTOL = 1e-5

#: Largest row count accepted: float64 counts are exact up to 2^53.
MAX_N = 2**53

_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)

#: What statistics of an extraction store's features keep of how those were made, and what
#: must agree for two of them to merge.
_MADE_KEYS = ("encoder", "resize", "weights_digest")

#: The member of our ``.npz`` statistics that holds their provenance: JSON text of the
#: attributes a statistics group records (how the features were made among them).
NPZ_PROVENANCE = "shardeval_provenance"


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
            height-width-channel order), or None when the file has none. Read and checked,
            not used: shardeval's Inception does not extract that layer.
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


def check_n(path: str, n: Any) -> int:
    """An exact row count: an integer in [2, 2^53] (``path``: how messages name the
    statistics).

    Raises:
        StatsFormatError: anything else.
    """
    if isinstance(n, np.ndarray):
        n = n.item() if n.ndim == 0 and n.dtype.kind in "iu" else n
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise StatsFormatError(
            f"{path!r}: the row count n is {n!r}; it must be an integer (how many rows the "
            "statistics summarise)"
        )
    if not 2 <= int(n) <= MAX_N:
        raise StatsFormatError(f"{path!r}: the row count n is {int(n)}; it must be in [2, 2^53]")
    return int(n)


def check_statistics(
    path: str, mean: np.ndarray, second: np.ndarray, names: tuple[str, str]
) -> np.ndarray:
    """Shapes, finite values, symmetry and non-negative diagonal of a covariance-like matrix;
    returns it exactly symmetric. The one check of statistics, read from a file or given in
    memory (``path``: how messages name them; ``names``: of the mean and the matrix).

    Asymmetry up to :data:`SYMMETRY_RTOL` of the largest entry is rounding, and the matrix is
    symmetrised; more is refused (a matrix holding one triangle would give a wrong FID).

    Raises:
        StatsFormatError: naming what is wrong.
    """
    a, b = names
    if mean.ndim != 1 or second.shape != (mean.shape[0], mean.shape[0]):
        raise StatsFormatError(
            f"{path!r}: {a!r} has shape {mean.shape} and {b!r} {second.shape}; "
            "expected (d,) and (d, d)"
        )
    if not (np.isfinite(mean).all() and np.isfinite(second).all()):
        raise StatsFormatError(f"{path!r}: {a!r} or {b!r} holds NaN or inf")
    scale = float(np.abs(second).max()) if second.size else 0.0
    asymmetry = float(np.abs(second - second.T).max()) if second.size else 0.0
    if asymmetry > SYMMETRY_RTOL * scale:
        raise StatsFormatError(
            f"{path!r}: {b!r} is not symmetric (max |S - S^T| = {asymmetry:.3g} against max |S| "
            f"= {scale:.3g}); it may hold only one triangle. A covariance must be stored whole"
        )
    if (np.diagonal(second) < 0).any():
        raise StatsFormatError(f"{path!r}: {b!r} has a negative variance on its diagonal")
    return 0.5 * (second + second.T)


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


def merge_stats(paths: list[str]) -> tuple[Moments, dict[str, Any]]:
    """Merge statistics files of disjoint row sets into the statistics of their union.

    The merge claims of its features only what every input records: how they were made
    (encoder, resize, weights digest) when every input records the same, the feature
    extractor when every input names the same one. Inputs that record how their features were
    made never merge with inputs that record nothing of it (statistics of another tool's
    features, or ``.npz`` files written before ours kept their provenance): nothing tells
    whether those were made the same way, and a merge of features made differently is a
    plausible wrong set of statistics that no later report could warn of.

    Args:
        paths: two or more statistics files, each recording its row count ``n``.

    Returns:
        The merged :class:`Moments` and provenance (the inputs; the feature extractor they
        share; how their features were made, when every input records it).

    Raises:
        StatsFormatError: a file has no ``n`` (a bare pytorch-fid file cannot be merged), the
            same file is given twice, the files name different feature extractors or record
            features made differently (encoder, resize, weights digest), or some record how
            their features were made and others do not.
        ShapeError: the feature dimensions differ.

    Warns:
        SuspectStoreWarning: two files record the same source (their rows may be counted
            twice); some files name a feature extractor and others none (the merge names
            none).

    Example:
        >>> import numpy as np, tempfile, os
        >>> x = np.arange(12.0).reshape(6, 2)
        >>> tmp = tempfile.mkdtemp()
        >>> a = save_stats(os.path.join(tmp, "a.npz"), Moments.from_rows(x[:2]))
        >>> b = save_stats(os.path.join(tmp, "b.npz"), Moments.from_rows(x[2:]))
        >>> merged, _ = merge_stats([a, b])
        >>> merged.n, np.allclose(merged.covariance(), np.cov(x, rowvar=False))
        (6, True)
    """
    if len(paths) < 2:
        raise StatsFormatError(f"merging needs at least two statistics files, got {len(paths)}")
    real = [os.path.realpath(p) for p in paths]
    repeated = sorted({p for p, r in zip(paths, real, strict=True) if real.count(r) > 1})
    if repeated:
        raise StatsFormatError(
            f"{repeated} given more than once: merging a file with itself counts its rows twice"
        )
    extractors: dict[str, str] = {}
    # How each input's features were made (encoder, resize, weights), where it records it.
    made: dict[str, tuple[Any, ...]] = {}
    made_by: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    merged: Moments | None = None
    for path in paths:
        stats = load_stats(path)
        if not isinstance(stats, Moments):
            raise StatsFormatError(
                f"{path!r} has mu and sigma but no row count n: it cannot be merged (write "
                "statistics with `shardeval stats`, which records n)"
            )
        if merged is not None and merged.d != stats.d:
            raise ShapeError(
                f"feature dimensions differ: {path!r} has d={stats.d}, the others d={merged.d}"
            )
        provenance = stats_provenance(path)
        extractor = provenance.get("feature_extractor")
        if provenance.get("source") is not None:
            key = tuple(str(provenance.get(k)) for k in ("source", "array", "shape"))
            if key in sources:
                warnings.warn(
                    f"{sources[key]!r} and {path!r} record the same source "
                    f"{provenance['source']!r} (array, shape): if they are statistics of the "
                    "same rows, the merge counts those rows twice",
                    SuspectStoreWarning,
                    stacklevel=2,
                )
            sources[key] = path
        if extractor is not None:
            extractors[path] = str(extractor)
        extraction = provenance.get("extraction")
        if isinstance(extraction, dict):
            made[path] = tuple(extraction.get(k) for k in _MADE_KEYS)
            made_by.setdefault("extraction", extraction)
        merged = stats if merged is None else merged.merge(stats)
    if len(set(extractors.values())) > 1:
        raise StatsFormatError(
            f"the files come from different feature extractors ({extractors}); statistics of "
            "different features cannot be merged"
        )
    if len(set(made.values())) > 1:
        listed = "; ".join(
            f"{p!r}: " + ", ".join(f"{k} {v}" for k, v in zip(_MADE_KEYS, m, strict=True))
            for p, m in made.items()
        )
        raise StatsFormatError(
            f"the files' features were made differently ({listed}); statistics of features "
            "made by another encoder, resize or weights cannot be merged"
        )
    unrecorded = [p for p in paths if p not in made]
    if made and unrecorded:
        (how,) = set(made.values())
        one = len(unrecorded) == 1
        raise StatsFormatError(
            f"{unrecorded} record{'s' if one else ''} nothing of how {'its' if one else 'their'}"
            f" features were made, and {sorted(made)} record{'s' if len(made) == 1 else ''} "
            + ", ".join(f"{k} {v}" for k, v in zip(_MADE_KEYS, how, strict=True))
            + ": nothing tells whether they were made the same way, and statistics of "
            "features made differently cannot be merged; compute the statistics of those "
            "features again with `shardeval stats`, which records how they were made"
        )
    if merged is None:  # unreachable: at least two paths were read
        raise StatsFormatError("no statistics to merge")
    unnamed = [p for p in paths if p not in extractors]
    if extractors and unnamed:
        warnings.warn(
            f"{unnamed} name no feature extractor, and {sorted(extractors)} name "
            f"{next(iter(extractors.values()))!r}: the merged statistics name none",
            SuspectStoreWarning,
            stacklevel=2,
        )
    merged_provenance: dict[str, Any] = {
        "merged_from": list(paths),
        # Claimed only when every input names it: the merge holds every input's rows.
        "feature_extractor": None if unnamed else next(iter(extractors.values()), None),
    }
    if made:  # every input says how, and the same way: so does the merge
        merged_provenance["extraction"] = {
            k: made_by["extraction"][k] for k in _MADE_KEYS if k in made_by["extraction"]
        }
    return merged, merged_provenance
