"""What a path holds, told without extracting anything: whether it is a source of images
(:func:`is_image_source`, by content, not name), and the digest of the bytes its images are
read from (:func:`images_digest`, the feature cache's ``verify``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import tarfile
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.pipeline.images.sources import IMAGE_EXTENSIONS
from shardeval.pipeline.io.stores import NPY_MAGIC, ZIP_MAGICS

if TYPE_CHECKING:
    from shardeval.pipeline.images.sources import ImageSource

_DIGEST_BYTES = 16
_GLOB_CHARS = "*?["
_READ_BLOCK = 1 << 23
#: Files that make a folder a Zarr store (v3; v2 group, array, attributes).
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
#: Where a POSIX (ustar) or GNU tar header says what it is.
_TAR_MAGIC_AT, _TAR_MAGIC = 257, b"ustar"


def images_digest(source: ImageSource) -> str:
    """A BLAKE2b (128-bit, hex) digest of the bytes a source's images are read from: a
    folder's listed image files (name and bytes, in order; one that cannot be read by why),
    a zip's or array file's bytes, tar shards' bytes (and names, relative to their common
    folder). Where the source is does not count. Reads everything once.

    Raises:
        ImageSourceError: an archive or array file cannot be read.
    """
    from shardeval.pipeline.images.sources import ImageSourceError

    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    digest.update(source.kind.encode() + b"\n")
    if source.kind == "folder":
        for name, path in zip(source.names, source.locators, strict=True):
            digest.update(name.encode() + b"\0")
            _hash_image_file(digest, path)
        return digest.hexdigest()
    if source.kind == "tar":
        files = sorted({shard for shard, _offset, _size in source.locators})
    else:  # a zip, or an array's file
        files = [source.layout.path if source.layout is not None else source.location]
    base = os.path.commonpath([os.path.dirname(f) for f in files])
    for path in files:
        # Named as the listing names shards (relative), so that a moved copy hashes the same.
        digest.update(os.path.relpath(path, base).encode() + b"\0")
        try:
            _hash_file(digest, path)
        except OSError as exc:
            raise ImageSourceError(
                f"{path!r} cannot be read ({exc.strerror}); did it move since it was listed?"
            ) from exc
    return digest.hexdigest()


def _hash_file(digest: Any, path: str) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)


def _hash_image_file(digest: Any, path: str) -> None:
    """An image file's bytes into ``digest``; one that is not a regular file (never opened: a
    FIFO would wait for ever) or cannot be read goes in as its reason, as the listing has it."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            digest.update(f"\0not a file {mode}\n".encode())
            return
        _hash_file(digest, path)
    except OSError as exc:
        digest.update(f"\0unreadable {exc.errno}\n".encode())
    digest.update(b"\n")


def is_image_source(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a source of images rather than features or statistics, told by
    what it holds, not its name, and without decoding any image (never raises).

    Images: a folder that is not a Zarr store and holds image files or ``.tar`` shards (found
    recursively, as listing does); a zip of image files; a ``.npy``, or a ``.npz`` whose
    ``arr_0`` or only array is uint8 of rank 3 or 4 ((N, H, W[, C]): features are 1-D or 2-D);
    a tar file; a
    glob matching tar files. Not images: a Zarr store (array, group, dataset, statistics),
    a ``.npy``/``.npz`` of features or statistics, a URL, a path that does not exist.
    """
    path = os.fspath(location)
    if "://" in path:
        return False  # images are read from local files; a URL is a store
    path = os.path.abspath(path)
    try:
        if not os.path.exists(path):
            if not any(c in path for c in _GLOB_CHARS):
                return False
            return any(os.path.isfile(m) and _is_tar(m) for m in sorted(glob.glob(path)))
        if os.path.isdir(path):
            return not is_zarr_folder(path) and _holds_images(path)
        return _file_holds_images(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError):
        return False


def is_zarr_folder(path: str) -> bool:
    """Whether ``path`` holds a Zarr store's own files (:data:`_ZARR_MARKERS`)."""
    return any(os.path.exists(os.path.join(path, m)) for m in _ZARR_MARKERS)


def _lists_as_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("._")


def _holds_images(root: str) -> bool:
    """Whether a folder holds, at any depth, an image file or ``.tar`` shard (what listing
    takes), stopping at the first; symbolic links are followed, each real folder once."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if d != "__MACOSX")
        for name in files:
            if _lists_as_image(name) or (
                name.lower().endswith(".tar") and not name.startswith("._")
            ):
                return True
    return False


def _file_holds_images(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(_TAR_MAGIC_AT + len(_TAR_MAGIC))
    if head.startswith(NPY_MAGIC):
        with open(path, "rb") as fh:
            return _npy_holds_images(fh)
    if head.startswith(ZIP_MAGICS):
        return _zip_holds_images(path)
    return head[_TAR_MAGIC_AT:] == _TAR_MAGIC or _is_tar(path)


def _npy_holds_images(fh: Any) -> bool:
    """Whether the array whose ``.npy`` header ``fh`` starts at is uint8 of rank 3 or 4 (the
    header only). Floats of rank 3 or 4 are not taken for images: features of the wrong rank
    are refused as such by the store reader, which names the image layout too."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _fortran, dtype = reader(fh)
    return len(shape) in (3, 4) and np.dtype(dtype) == np.uint8


def _zip_holds_images(path: str) -> bool:
    """A ``.npz`` whose ``arr_0`` or only array is uint8 of rank 3 or 4, or a zip of image
    files."""
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        arrays = [n for n in names if n.endswith(".npy")]
        if arrays:
            key = "arr_0.npy" if "arr_0.npy" in arrays else arrays[0] if len(arrays) == 1 else None
            if key is None:
                return False  # several arrays, none arr_0: statistics (mu, sigma) or features
            with zf.open(key) as fh:
                return _npy_holds_images(fh)
        return any(_lists_as_image(n.rsplit("/", 1)[-1]) and "__MACOSX/" not in n for n in names)


def _is_tar(path: str) -> bool:
    """Whether a file is an uncompressed tar archive holding at least one member."""
    with open(path, "rb") as fh:
        head = fh.read(_TAR_MAGIC_AT + len(_TAR_MAGIC))
    if head[_TAR_MAGIC_AT:] == _TAR_MAGIC:
        return True
    if head.startswith((NPY_MAGIC, *ZIP_MAGICS)):
        return False
    try:
        with tarfile.open(path, "r:") as tf:
            return tf.next() is not None  # an old (v7) tar: no magic, a readable header
    except (tarfile.TarError, OSError, EOFError):
        return False
