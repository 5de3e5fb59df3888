"""What the API functions take as features, statistics or images, made into the pipeline's
objects and checked at the boundary, so that every input is what it seems or refused in words.

Features: a store's path or URL (anything :func:`~shardeval.pipeline.io.stores.open_features`
opens), a numpy array, a torch tensor on any device, a dask array (columns rechunked whole), an
xarray DataArray (dims named as in a store) or Dataset (its one variable, or the one named by
«array»), or a :class:`~shardeval.pipeline.io.stores.FeatureSource`. «array» picks the
variable of every input that holds several (a Dataset, a Zarr group, an ``.npz``); an input of
one array beside them has nothing to pick and is read as it is (:func:`arrays_for`). In-memory
arrays are read in native byte order (``>f8`` is float64 and stays so) and named by the digest
of their content (dask's token), so that two arrays are never taken for one, and one array
given twice is.

Statistics: a statistics file (ours or a pytorch-fid ``.npz``), a
:class:`~shardeval.pipeline.fid.gaussian.Gaussian` or
:class:`~shardeval.pipeline.core.states.Moments`, checked as a statistics file is (finite, a
symmetric covariance within the files' tolerance, non-negative variances, n in [2, 2^53]).

Images: an image source's path (a folder, zip, tar shards, a uint8 array file), or images in
memory: a 4-D numpy array or torch tensor, uint8 (0..255) or floats in [0, 1], ``(N, H, W, 3)``
or ``(N, 3, H, W)`` (:func:`image_pixels`). Either goes through the encoder into the feature
cache once and is reused after. Images in memory are cached by a BLAKE2b digest of their
pixels (:func:`extracted`): the features are what an encoder makes of exactly those bytes, so
the digest is the one key that is right whatever object holds them, and a notebook that
compares several generators with one real set encodes the real set once (hashing reads the
pixels once, far less than an encoder's work on them). To extract them, the pixels are staged
once as ``.shardeval-images-<digest>.npy`` in the cache folder and extracted as any array
file is (tasks read their own rows, so a cluster's workers need no pixels from the client; a
killed run resumes), and the staged file is removed once the entry is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.pipeline.errors import DtypeError, ShapeError, StatsFormatError, StoreError

if TYPE_CHECKING:
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.stores import FeatureSource

#: Bytes of one shard of an in-memory array (as a store's default shards).
_SHARD_BYTES = 64 * 2**20

#: Hex digits of the content digest that name an in-memory array (64 bits).
_NAME_DIGITS = 16


def is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def describe_input(x: Any) -> str:
    """A short name for an input in messages and reports."""
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian

    if isinstance(x, ExtractedImages):
        return x.given
    if is_path(x):
        return os.fspath(x)
    if isinstance(x, Moments):
        return f"<Moments n={x.n} d={x.d}>"
    if isinstance(x, Gaussian):
        return x.source or f"<Gaussian d={x.d}>"
    shape = getattr(x, "shape", None)
    if shape is None and _library(x) == "xarray":  # a Dataset: its sizes by dimension
        shape = tuple(dict(getattr(x, "sizes", {})).values())
    return f"<{_library(x)}.{type(x).__name__} {tuple(shape or ())}>"


# ---------------------------------------------------------------------------------------------
# statistics


def is_statistics(x: Any) -> bool:
    """Whether ``x`` is statistics (a file, a Gaussian or Moments) rather than features."""
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian

    if isinstance(x, Gaussian | Moments):
        return True
    if is_path(x) and not isinstance(x, ExtractedImages):
        from shardeval.pipeline.io.statsio import is_stats

        return is_stats(os.fspath(x))
    return False


def checked_gaussian(mean: Any, cov: Any, n: Any, where: str, names: tuple[str, str]) -> Gaussian:
    """Statistics given in memory, checked as a statistics file's are (the one check,
    :func:`~shardeval.pipeline.io.statsio.check_statistics`): shapes, finite values, a
    symmetric covariance (asymmetry within :data:`~shardeval.pipeline.io.statsio.SYMMETRY_RTOL`
    of its largest entry is rounding and is symmetrised; more is refused: a matrix holding one
    triangle would give a wrong FID), non-negative variances, ``n`` None or in [2, 2^53].

    Raises:
        StatsFormatError: naming ``where`` and what is wrong.
    """
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.statsio import check_n, check_statistics

    try:
        mu = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        sigma = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise StatsFormatError(f"{where}: {names[0]}/{names[1]} are not arrays of numbers") from exc
    sigma = check_statistics(where, mu, sigma, names)
    return Gaussian(mu, sigma, None if n is None else check_n(where, n), where)


def statistics(x: Any, location: str = "") -> Gaussian:
    """``x`` as a checked :class:`~shardeval.pipeline.fid.gaussian.Gaussian`.

    Raises:
        StatsFormatError: ``x`` is not statistics, or they do not hold up (see
            :func:`checked_gaussian`).
    """
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian, as_gaussian

    if is_path(x) and not isinstance(x, ExtractedImages):
        from shardeval.pipeline.io.statsio import load_stats

        location = os.fspath(x)
        return as_gaussian(load_stats(location), location)
    where = location or describe_input(x)
    if isinstance(x, Moments):
        n = x.n
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
            raise StatsFormatError(
                f"{where}: Moments of {n!r} row(s); a covariance needs at least 2 rows"
            )
        m2 = checked_gaussian(x.mean, x.m2, n, where, ("mean", "m2")).cov
        return Gaussian.from_moments(Moments(int(n), x.mean, m2), where)
    if isinstance(x, Gaussian):
        return checked_gaussian(x.mean, x.cov, x.n, where, ("mean", "cov"))
    raise StatsFormatError(
        f"{where} is not statistics: statistics are a statistics file, a Gaussian or Moments "
        "(leave «real_is_statistics» out to read an array's rows as features)"
    )


# ---------------------------------------------------------------------------------------------
# features


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


# ---------------------------------------------------------------------------------------------
# images

#: How image inputs become features: the options of ``extract`` that the metric functions
#: take too, where the features are cached, and whether the images' bytes (``verify``), not
#: their listing alone, decide that a cached entry is theirs.
IMAGE_OPTIONS = ("encoder", "resize", "weights", "batch_size", "cache_root", "verify", "skip_bad")

#: Bumped when what an in-memory entry's key stands for changes.
_ARRAY_KEY_VERSION = 1


@dataclass(frozen=True)
class ExtractedImages(os.PathLike[str]):
    """The features of an image input in the feature cache, a path (``os.fspath`` is the
    entry), remembering the images as the user gave them, which summaries name.

    Attributes:
        path: the cache entry, a complete feature store.
        given: the image source's path, or the description of the images in memory.
    """

    path: str
    given: str

    def __fspath__(self) -> str:
        return self.path


def _is_image_array(x: Any) -> bool:
    """A 4-D array or tensor: images (features are 2-D, per-sample values 1-D)."""
    return _library(x) in ("numpy", "torch", "dask", "xarray") and getattr(x, "ndim", 0) == 4


def is_images(x: Any) -> bool:
    """Whether ``x`` is images: a path naming an image source (a folder of images, a zip, tar
    shards, a uint8 (N, H, W, 3) array file), told by content, or a 4-D array or tensor in
    memory (never raises)."""
    if _is_image_array(x):
        return True
    if not is_path(x) or isinstance(x, ExtractedImages):
        return False
    from shardeval.pipeline.images.cache import is_image_source

    return is_image_source(os.fspath(x))


def image_pixels(images: Any, what: str, *, channels_last: bool = True) -> np.ndarray:
    """Images in memory as the (N, H, W, 3) uint8 array the encoders' preprocessing takes.

    Layouts: ``(N, 3, H, W)``, and with ``channels_last`` ``(N, H, W, 3)``; where both fit (a
    3-pixel side), a torch tensor is read channels first and a numpy array channels last, as
    each library stores images. Floats in [0, 1] are quantised as ``torchvision.utils.
    save_image`` writes a PNG (× 255, + 0.5, clamp, truncate): the features are those of the
    images as saved, which is what FID of an image folder measures.

    Args:
        images: a 4-D numpy array or torch tensor (any device), uint8 or floating point.
        what: how messages name it.
        channels_last: accept ``(N, H, W, 3)`` (the training-loop metrics take channels
            first only, as torch models produce them).

    Raises:
        ShapeError: not 4-D with 3 channels; DtypeError: neither uint8 nor floats in [0, 1].
    """
    import torch

    from shardeval.pipeline.io.reader import native

    library = _library(images)
    if library in ("dask", "xarray"):
        data = getattr(images, "data", images)
        if library == "dask" or _library(data) == "dask":
            raise DtypeError(
                f"{what} is a dask array of images; images in memory are numpy arrays or "
                "torch tensors: compute it first, or save it as a .npy and give its path"
            )
        images = np.asarray(data)
    if isinstance(images, np.ndarray):
        if images.dtype.kind not in "uf" or images.dtype == np.bool_:
            raise DtypeError(
                f"{what} has dtype {images.dtype}; images are uint8 (0..255) or floats in [0, 1]"
            )
        t = torch.from_numpy(np.ascontiguousarray(native(images)))
        last_first = True
    elif isinstance(images, torch.Tensor):
        t, last_first = images.detach(), False
    else:
        raise DtypeError(f"{what} must be a numpy array or a torch tensor, got {type(images)}")
    shape = tuple(t.shape)
    first, last = len(shape) == 4 and shape[1] == 3, len(shape) == 4 and shape[-1] == 3
    if channels_last and last and (last_first or not first):
        t = t.permute(0, 3, 1, 2)
    elif not first:
        layouts = "(N, 3, H, W) or (N, H, W, 3)" if channels_last else "(B, 3, H, W)"
        hint = (
            ", not channels-last: pass x.permute(0, 3, 1, 2)" if last and not channels_last else ""
        )
        raise ShapeError(f"{what} has shape {shape}; images are {layouts}{hint}")
    if t.dtype != torch.uint8:
        if not t.is_floating_point():
            raise DtypeError(
                f"{what} has dtype {t.dtype}; images are uint8 (0..255) or floats in [0, 1]"
            )
        nan = torch.isnan(t).flatten(1).any(dim=1)  # per image
        if bool(nan.any()):  # aminmax would say [nan, nan], however few values are NaN
            image = int(torch.nonzero(nan)[0, 0])
            raise DtypeError(
                f"{what} holds NaN in {int(nan.sum())} image(s) (first: image {image}); float "
                "images must be numbers in [0, 1]: clean or drop those images"
            )
        low, high = (float(v) for v in torch.aminmax(t.float())) if t.numel() else (0, 0)
        if not (low >= 0.0 and high <= 1.0):
            raise DtypeError(
                f"{what} holds {t.dtype} values in [{low:.6g}, {high:.6g}]; float images "
                "must lie in [0, 1] (scale them, e.g. (x + 1) / 2 for [-1, 1])"
            )
        t = t.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(t.permute(0, 2, 3, 1).cpu().numpy())


def pixels_digest(pixels: np.ndarray) -> str:
    """A BLAKE2b (128-bit, hex) digest of (N, H, W, 3) uint8 images: their shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"shardeval.images {pixels.shape}\n".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


#: The name of images in memory staged for extraction, by their digest.
_STAGED = ".shardeval-images-{}.npy"


def stage_images(pixels: np.ndarray, folder: str, digest: str | None = None) -> str:
    """Write images in memory as ``.shardeval-images-<digest>.npy`` in ``folder``, unless
    there already, and return its path. The file is named by its content and its
    modification time fixed, so its listing (name, size, time, shape), which extraction
    records, is the same whoever writes it and whenever: a killed extraction resumes from
    it, and a concurrent one of the same images writes the same file. Written aside, then
    linked into place (never replacing one there).

    Raises:
        OSError: the folder cannot be written.
    """
    import tempfile

    path = os.path.join(folder, _STAGED.format(digest or pixels_digest(pixels)))
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".shardeval-images-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, pixels, allow_pickle=False)
        os.utime(tmp, ns=(0, 0))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another run staged the same bytes
        except OSError:  # a file system without hard links: the same bytes, renamed
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _entry_done(path: str, plan: Any) -> bool:
    """Whether ``path`` is a complete extraction of ``plan``'s settings."""
    import zarr

    from shardeval.pipeline.images.extract import is_extraction_store
    from shardeval.pipeline.io.stores import INCOMPLETE_ATTR

    if not os.path.isdir(path) or not is_extraction_store(path):
        return False
    attrs = zarr.open_group(path, mode="r", use_consolidated=False).attrs
    return (
        attrs.get("complete") is True
        and not attrs.get(INCOMPLETE_ATTR)
        and (attrs.get("encoder"), attrs.get("weights_digest"), attrs.get("resize"))
        == (plan.encoder, plan.digest, plan.resize)
    )


def extract_pixels(
    pixels: np.ndarray,
    output: str,
    staging: str,
    plan: Any,
    *,
    digest: str | None = None,
    batch_size: int | None,
    device: str,
    engine: Any,
    progress: Any,
    overwrite: bool = False,
    log: Any = None,
) -> Any:
    """Extract images in memory into the feature store ``output``: staged in ``staging``
    (:func:`stage_images`), extracted as an array file, the staged file removed once the
    store is complete (under the store's lock, so a run still extracting keeps it).

    Returns:
        The :class:`~shardeval.pipeline.images.extract.ExtractResult`.
    """
    from shardeval.pipeline.images.extract import ExtractionError, extract_features
    from shardeval.pipeline.images.sources import ImageSourceError
    from shardeval.pipeline.io.atomic import locked

    for attempt in (1, 2):
        staged = stage_images(pixels, staging, digest)
        try:
            result = extract_features(
                staged,
                output,
                encoder=plan.encoder_spec,
                weights=plan.weights,
                resize=plan.resize,
                batch_size=batch_size,
                device=device,
                overwrite=overwrite,
                engine=engine,
                progress=progress,
                log=log,
            )
            break
        except (ImageSourceError, ExtractionError):
            # A concurrent run of the same images finished and removed the staged file while
            # this one listed it: stage it again, and find the store complete.
            if attempt == 2 or os.path.exists(staged):
                raise
    with locked(output + ".lock", exclusive=True):
        if _entry_done(output, plan):
            with contextlib.suppress(FileNotFoundError):  # a concurrent run removed it
                os.unlink(staged)
    return result


def _cached_array(x: Any, options: dict[str, Any], root: str, engine: Any, progress: Any) -> str:
    """The cache entry of images in memory, keyed by their pixels' digest and the encoder's
    settings: reused when complete (no encoder runs), else extracted (see the module's
    description)."""
    from shardeval.pipeline.images.cache import cache_path, make_cache_root
    from shardeval.pipeline.images.extract import ExtractionError, plan_extraction

    pixels = image_pixels(x, describe_input(x))
    if "://" in root:
        raise ExtractionError(
            f"«cache_root={root!r}» is a URL; the feature cache is a local folder (shared by "
            "every worker on a cluster)"
        )
    root = os.path.abspath(os.path.expanduser(root))
    plan = plan_extraction(
        options.get("encoder") or "inception", options.get("weights"), options.get("resize")
    )
    digest = pixels_digest(pixels)
    parts = [
        "shardeval.feature-cache.array",
        _ARRAY_KEY_VERSION,
        digest,
        plan.encoder,
        plan.digest,
        plan.resize,
        # a user's encoder (its name says it too): the source; registered ones keep their keys
        *([] if plan.source == "shardeval" else [plan.source]),
    ]
    key = hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()
    path = cache_path(root, key)
    if not _entry_done(path, plan):
        make_cache_root(root)  # marked as a cache before anything is staged there
        extract_pixels(
            pixels,
            path,
            root,
            plan,
            digest=digest,
            batch_size=options.get("batch_size"),
            device=options.get("device") or "auto",
            engine=engine,
            progress=progress,
        )
    return path


def extracted(
    x: Any,
    options: dict[str, Any],
    engine: Any,
    progress: Any,
    others: list[Any],
    used: list[Any] | None = None,
) -> ExtractedImages:
    """The features of the images ``x`` (a source's path, or images in memory): their entry in
    the feature cache, extracted now (resumably, locked) or reused without running an encoder;
    with ``options["verify"]`` the images' bytes decide reuse, with ``options["skip_bad"]``
    undecodable images are left out (another entry). ``used``, when given, gets the
    :class:`~shardeval.pipeline.images.cache.CachedFeatures` (for the report).

    Raises:
        OutputExistsError: the cache lies inside another input (``others``).
        ShapeError, DtypeError: images in memory of another layout or dtype
            (:func:`image_pixels`).
    """
    from shardeval.pipeline.core.ieee_fp32 import set_in_this_process
    from shardeval.pipeline.images.cache import cached_features, resolve_cache_root
    from shardeval.pipeline.io.atomic import check_outside

    root = resolve_cache_root(options.get("cache_root"))  # an empty value is refused
    check_outside(root, [os.fspath(o) for o in others if is_path(o)])
    device = options.get("device") or "auto"
    set_in_this_process(engine, device)  # IEEE fp32 convolutions, as extract does
    if not is_path(x):
        return ExtractedImages(_cached_array(x, options, root, engine, progress), describe_input(x))
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
    return ExtractedImages(cached.path, os.fspath(x))
