"""Images as the API functions take them: an image source's path, or a 4-D numpy array or
torch tensor in memory (:func:`image_pixels`), through the encoder into the feature cache once
(:func:`extracted`). Images in memory are cached by a BLAKE2b digest of their pixels
(:func:`pixels_digest`) and staged once as an array file to be extracted as any is
(:func:`stage_images`, :func:`extract_pixels`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.input_kinds import ExtractedImages, _library, describe_input, is_path
from shardeval.pipeline.errors import DtypeError, ShapeError

if TYPE_CHECKING:
    pass


#: How image inputs become features: the options of ``extract`` that the metric functions
#: take too, where the features are cached, and whether the images' bytes (``verify``), not
#: their listing alone, decide that a cached entry is theirs.
IMAGE_OPTIONS = ("encoder", "resize", "weights", "batch_size", "cache_root", "verify", "skip_bad")


#: Bumped when what an in-memory entry's key stands for changes.
_ARRAY_KEY_VERSION = 1


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
    spatial: bool = False,
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
                spatial=spatial,
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
