"""Sources of images for extraction: a folder, a ``.zip``, a ``.npz``/``.npy`` of uint8 images,
or ``.tar`` shards, listed: their names in a stated order and a fingerprint.

Order: a folder is walked recursively and its images sorted by relative path (``/``
separators), clean-fid's order; a zip's members by name; tar shards by path, then members by
name within each shard; array rows in index order. Extensions: png, jpg, jpeg, webp, bmp.

What is listed:

* Symbolic links are followed, to files and to folders alike. Each real folder is walked once:
  a link that leads to a folder already walked (an ancestor of itself, which would loop, or a
  folder reached before by another path) is not entered again, so no image is listed twice
  and none is lost; folders are walked depth first in sorted name order, and the first path
  that reaches a folder names its images.
* macOS metadata is not an image and is never listed: ``__MACOSX`` folders and AppleDouble
  ``._*`` files, on disk, in zips and in tar shards.
* Every member of an archive is its own row, read by its own entry (a zip member by its
  central-directory entry, a tar member by its offset), never looked up by name. An archive
  may hold several members of one name; they stay distinct rows in archive order, the first
  named as in the archive and the k-th (k >= 2) ``NAME#k`` (``a.png``, ``a.png#2``): such a
  name never ends in an image extension, so it cannot clash with another member's.
* A folder's image file that cannot be opened (a symbolic link whose target is gone) is listed
  and recorded in :attr:`ImageSource.unreadable`: it is a bad image like an undecodable one.

Decoding, and what a task reads (names and locators, never pixels), is in
:mod:`shardeval.pipeline.images.reading` (its names importable from here).
"""

from __future__ import annotations

import glob
import hashlib
import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardeval.pipeline.images.reading import (
    IMAGE_ADVICE,
    IMAGE_EXTENSIONS,
    MAC_FOLDER,
    ArrayLayout,
    ImageError,
    ImageRefs,
    ImageSourceError,
    decode_image,
    distinct_names,
    is_mac_metadata,
    lists_as_image,
    not_a_file,
    short_reason,
    to_rgb,
    unreadable_file,
)

__all__ = [
    "IMAGE_ADVICE",
    "IMAGE_EXTENSIONS",
    "ArrayLayout",
    "ImageError",
    "ImageRefs",
    "ImageSource",
    "ImageSourceError",
    "decode_image",
    "open_images",
    "to_rgb",
]

_GLOB_CHARS = "*?["
_DIGEST_BYTES = 16


@dataclass(frozen=True)
class ImageSource:
    """A listed source of images.

    Attributes:
        location: as the user gave it.
        kind: ``folder``, ``zip``, ``tar`` or ``array``.
        names: every image's name, in the order rows are written; distinct (an archive's
            repeated member names are suffixed ``#k``, see the module's description).
        fingerprint: BLAKE2b over the kind and, per image in order, its name and size plus
            its modification time (folders, tar members), CRC (zip members) or the array's
            file size, time and shape: a re-run can tell the source changed without reading it.
        locators: per image, what :class:`ImageRefs` needs to read it.
        layout: for arrays, where the rows are.
        unreadable: (position, problem) of each image the listing found it cannot open (a
            folder's symbolic link whose target is gone); reading it fails the same way.
    """

    location: str
    kind: str
    names: tuple[str, ...]
    fingerprint: str
    locators: tuple[Any, ...] = field(repr=False)
    layout: ArrayLayout | None = None
    unreadable: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def refs(self, indices: Sequence[int]) -> ImageRefs:
        """The images at ``indices`` (positions in :attr:`names`), for one task."""
        idx = tuple(int(i) for i in indices)
        return ImageRefs(
            self.location,
            self.kind,
            idx,
            tuple(self.names[i] for i in idx),
            tuple(self.locators[i] for i in idx),
            self.layout,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.location,
            "source_kind": self.kind,
            "source_fingerprint": self.fingerprint,
            "image_count": len(self),
        }


def _digest(kind: str, items: Sequence[tuple[Any, ...]]) -> str:
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    h.update(kind.encode() + b"\n")
    for item in items:
        h.update("\0".join(map(str, item)).encode() + b"\n")
    return h.hexdigest()


def _folder(root: str, files: list[str]) -> ImageSource:
    """A folder's images (``files``: their paths under ``root``), listed without reading them.

    A file that cannot be opened (a symbolic link whose target is gone) is listed and
    recorded as unreadable; its state enters the fingerprint, so mending it is a change."""
    rel = sorted(os.path.relpath(f, root).replace(os.sep, "/") for f in files)
    paths = [os.path.join(root, r) for r in rel]
    items: list[tuple[Any, ...]] = []
    unreadable: list[tuple[int, str]] = []
    for i, (name, path) in enumerate(zip(rel, paths, strict=True)):
        try:
            info = os.stat(path)  # of the target, for a symbolic link
        except OSError as exc:
            unreadable.append((i, unreadable_file(path, repr(path), exc)))
            target = os.readlink(path) if os.path.islink(path) else ""
            items.append((name, "unreadable", exc.errno, target))
            continue
        odd = not_a_file(path)
        if odd is not None:  # a FIFO or device named like an image: never opened
            unreadable.append((i, f"image {path!r} cannot be read ({odd})"))
            items.append((name, "not a file", info.st_mode))
            continue
        items.append((name, info.st_size, info.st_mtime_ns))
    return ImageSource(
        root,
        "folder",
        tuple(rel),
        _digest("folder", items),
        tuple(paths),
        unreadable=tuple(unreadable),
    )


def _zip(location: str) -> ImageSource:
    """A zip's images, one per member (repeated names made distinct), sorted by name; a
    member is located by its local header's offset, never by its name."""
    try:
        with zipfile.ZipFile(location) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and lists_as_image(i.filename)]
    except (OSError, zipfile.BadZipFile) as exc:
        why = short_reason(exc)
        raise ImageSourceError(f"{location!r} cannot be read as a zip: {why}") from exc
    infos.sort(key=lambda i: i.filename)  # stable: members of one name stay in archive order
    if not infos:
        raise ImageSourceError(f"{location!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    names = distinct_names([i.filename for i in infos])
    items = [(n, i.file_size, i.CRC) for n, i in zip(names, infos, strict=True)]
    locators = tuple((i.filename, i.header_offset) for i in infos)
    return ImageSource(location, "zip", names, _digest("zip", items), locators)


def _tar(location: str, shards: list[str]) -> ImageSource:
    """Tar shards' images, by shard path, then by member name (repeated names made
    distinct); a member is located by its data offset, never by its name."""
    shards = sorted(os.path.abspath(s) for s in shards)
    base = os.path.commonpath([os.path.dirname(s) for s in shards])
    entries: list[tuple[str, str, tuple[str, int, int], tuple[Any, ...]]] = []
    items: list[tuple[Any, ...]] = []
    for shard in shards:
        label = os.path.relpath(shard, base).replace(os.sep, "/")
        try:
            with tarfile.open(shard, "r:") as tf:
                members = sorted(
                    (m for m in tf if m.isfile() and lists_as_image(m.name)),
                    key=lambda m: m.name,  # stable: members of one name stay in shard order
                )
            size = os.path.getsize(shard)
        except (OSError, tarfile.TarError) as exc:
            raise ImageSourceError(
                f"tar shard {shard!r} cannot be read ({short_reason(exc)}); shards must be "
                "uncompressed .tar files"
            ) from exc
        items.append((label, size))
        for m in members:
            entries.append((label, m.name, (shard, m.offset_data, m.size), (m.size, m.mtime)))
    if not entries:
        raise ImageSourceError(f"{location!r}: the tar shards hold no images")
    names = distinct_names([f"{label}/{member}" for label, member, _, _ in entries])
    items += [(n, *extra) for n, (_, _, _, extra) in zip(names, entries, strict=True)]
    locators = tuple(loc for _, _, loc, _ in entries)
    return ImageSource(location, "tar", names, _digest("tar", items), locators)


def _npy_header(fh: Any, where: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = reader(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageSourceError(f"{where} is not a numpy array file: {short_reason(exc)}") from exc
    return tuple(shape), np.dtype(dtype), bool(fortran), int(fh.tell())


def _check_layout(where: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
    ok = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3, 4))
    if dtype != np.uint8 or not ok or fortran:
        raise ImageSourceError(
            f"{where} holds a {dtype} array of shape {shape}"
            f"{' (Fortran order)' if fortran else ''}; images must be C-ordered uint8 "
            "(N, H, W, 3), (N, H, W, 4) or (N, H, W)"
        )
    if 0 in shape:
        raise ImageSourceError(f"{where} holds no images (shape {shape})")


def _array(location: str) -> ImageSource:
    where = repr(location)
    try:
        stat = os.stat(location)
        if location.lower().endswith(".npy"):
            key = ""
            with open(location, "rb") as fh:
                shape, dtype, fortran, offset = _npy_header(fh, where)
            compressed, available = False, stat.st_size - offset
        else:
            with zipfile.ZipFile(location) as zf:
                members = [n for n in zf.namelist() if n.endswith(".npy")]
                keys = [n[:-4] for n in members]
                if "arr_0" in keys:
                    key = "arr_0"  # ADM-style sample dumps: images in arr_0, labels in arr_1
                elif len(keys) == 1:
                    key = keys[0]
                else:
                    raise ImageSourceError(
                        f"{where} holds arrays {keys}; the images must be arr_0 or the only array"
                    )
                info = zf.getinfo(f"{key}.npy")
                where = f"array {key!r} of {location!r}"
                with zf.open(info) as fh:
                    shape, dtype, fortran, header = _npy_header(fh, where)
                compressed = info.compress_type != zipfile.ZIP_STORED
                offset = header if compressed else _stored_offset(location, info) + header
                available = info.file_size - header
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImageSourceError(f"{where} cannot be read: {short_reason(exc)}") from exc
    _check_layout(where, shape, dtype, fortran)
    if available < int(np.prod(shape)):
        raise ImageSourceError(f"{where} is shorter than its shape {shape} needs: truncated")
    layout = ArrayLayout(location, key, shape, offset, compressed)
    names = tuple(f"{key}[{i}]" for i in range(shape[0]))
    item = (os.path.basename(location), stat.st_size, stat.st_mtime_ns, key, shape)
    return ImageSource(
        location, "array", names, _digest("array", [item]), tuple(range(shape[0])), layout
    )


def _stored_offset(path: str, info: zipfile.ZipInfo) -> int:
    """Offset of a stored zip member's data: after its local header (whose name and extra
    field lengths may differ from the central directory's)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename!r}")
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _folder_identity(path: str) -> tuple[int, int]:
    """The real folder at ``path`` (after symbolic links): its device and inode."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _folders_to_enter(folder: str, names: list[str], walked: set[tuple[int, int]]) -> list[str]:
    """Of the sub-folders ``names`` of ``folder``, in sorted order, those to walk: not
    ``__MACOSX``, and not a real folder walked (or about to be) already, which a symbolic link
    to an ancestor or a second path to one folder would reach again. Marks them walked."""
    enter = []
    for name in sorted(names):
        if name == MAC_FOLDER:
            continue
        try:
            identity = _folder_identity(os.path.join(folder, name))
        except OSError:
            enter.append(name)  # os.walk reports what it cannot list
            continue
        if identity not in walked:
            walked.add(identity)
            enter.append(name)
    return enter


def _walk(root: str) -> tuple[list[str], list[str]]:
    """The image files and tar shards under ``root``, following symbolic links to folders and
    walking each real folder once (see the module's description); macOS metadata left out.

    Raises:
        ImageSourceError: a folder under ``root`` cannot be listed (its images would be
            missing without a word).
    """

    def refuse(exc: OSError) -> None:
        raise ImageSourceError(
            f"folder {exc.filename!r} under {root!r} cannot be listed ({short_reason(exc)}); "
            "make it readable, or give a folder that does not hold it"
        ) from exc

    images, tars = [], []
    walked = {_folder_identity(root)}
    for folder, dirs, files in os.walk(root, onerror=refuse, followlinks=True):
        dirs[:] = _folders_to_enter(folder, dirs, walked)  # os.walk enters only these
        for name in files:
            path = os.path.join(folder, name)
            if lists_as_image(name):
                images.append(path)
            elif name.lower().endswith(".tar") and not is_mac_metadata(name):
                tars.append(path)
    return images, tars


def open_images(location: str | os.PathLike[str]) -> ImageSource:
    """List a source of images in its stated order.

    Args:
        location: a folder (recursive, following symbolic links: images, or else ``.tar``
            shards), a ``.zip``, a ``.npz`` (``arr_0``, or its only array) or ``.npy`` of
            uint8 images, a ``.tar`` shard, or a glob of ``.tar`` shards.

    Returns:
        The listed source (nothing is decoded).

    Raises:
        ImageSourceError: missing, unreadable (a folder under it too), empty, of an unknown
            kind, or a folder holding both images and tar shards.
    """
    # Absolute, so that a worker with another working directory reads the same files.
    location = os.path.abspath(os.fspath(location))
    if not os.path.exists(location) and any(c in location for c in _GLOB_CHARS):
        matches = sorted(glob.glob(location))
        tars = [
            m
            for m in matches
            if m.lower().endswith(".tar") and os.path.isfile(m) and not is_mac_metadata(m)
        ]
        if not tars:
            raise ImageSourceError(f"{location!r} matches no .tar shards")
        return _tar(location, tars)
    if not os.path.exists(location):
        raise ImageSourceError(f"images {location!r} do not exist")
    if os.path.isdir(location):
        images, tars = _walk(location)
        if images and tars:
            raise ImageSourceError(
                f"folder {location!r} holds both images and .tar shards; give one kind"
            )
        if tars:
            return _tar(location, tars)
        if not images:
            raise ImageSourceError(
                f"folder {location!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched "
                "recursively)"
            )
        return _folder(location, images)
    lower = location.lower()
    if lower.endswith(".zip"):
        return _zip(location)
    if lower.endswith((".npz", ".npy")):
        return _array(location)
    if lower.endswith(".tar"):
        return _tar(location, [location])
    raise ImageSourceError(
        f"{location!r} is not a folder, .zip, .npz, .npy, .tar shard or glob of .tar shards"
    )
