"""Sources of images for extraction: a folder, a ``.zip``, a ``.npz``/``.npy`` of uint8 images,
or ``.tar`` shards; their names in a stated order, a fingerprint, and decoding one image.

Order: a folder is walked recursively and its images sorted by relative path (``/``
separators), which is clean-fid's order; a zip's members by name; tar shards by their path,
then members by name within each shard; array rows in index order. Extensions (any case):
png, jpg, jpeg, webp, bmp.

Decoding is Pillow's, converted with ``.convert("RGB")`` as pytorch-fid and clean-fid do
(grayscale replicated, alpha dropped, palettes expanded); array sources are converted the same
way without Pillow ((N, H, W) and (N, H, W, 1) replicated, (N, H, W, 4) loses alpha).

What a task reads is an :class:`ImageRefs`: the source's kind and location plus its own images'
names and locators (paths, member names, tar offsets, row numbers), never pixels, so the
scheduler carries a few hundred bytes per task.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import ShardevalError

#: Image file extensions listed from folders, zips and tar shards (compared lower-case).
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

_GLOB_CHARS = "*?["
_DIGEST_BYTES = 16


class ImageSourceError(ShardevalError):
    """The images argument cannot be used: missing, empty, of an unknown kind, or a badly
    shaped array."""


class ImageError(ShardevalError):
    """One image cannot be read or decoded; the message names it."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """A uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as (H, W, 3), converted as
    Pillow's ``convert("RGB")`` converts L and RGBA images (replicate; drop alpha)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.ascontiguousarray(array[:, :, :3])


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode an encoded image to (H, W, 3) uint8 RGB, fully (a truncated file fails here, not
    later).

    Args:
        data: the file's bytes.
        where: the image as a user can find it (for the message).

    Raises:
        ImageError: Pillow cannot identify or fully decode it.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.array(im.convert("RGB"))  # a writable copy
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad bytes
        raise ImageError(
            f"image {where} cannot be decoded ({_reason(exc)}); replace or remove it, or pass "
            "--skip-bad to leave it out"
        ) from exc


@dataclass(frozen=True)
class ArrayLayout:
    """Where the rows of a ``.npy`` or ``.npz`` member are, so a task reads only its own.

    Attributes:
        path: the file.
        key: the ``.npz`` array name ("" for ``.npy``).
        shape: (N, H, W[, C]).
        data_offset: byte offset of row 0 in the file (stored data), or, for a compressed
            ``.npz`` member, in the member's uncompressed stream.
        compressed: the member is deflated (rows are reached by decompressing forward).
    """

    path: str
    key: str
    shape: tuple[int, ...]
    data_offset: int
    compressed: bool = False

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:]))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as uint8 (stop − start, H, W[, C])."""
        count = (stop - start) * self.row_bytes
        if self.compressed:
            with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as fh:
                fh.seek(self.data_offset + start * self.row_bytes)
                raw = fh.read(count)
        else:
            with open(self.path, "rb") as fh:
                fh.seek(self.data_offset + start * self.row_bytes)
                raw = fh.read(count)
        if len(raw) != count:
            raise ImageSourceError(
                f"{self.path!r} is shorter than its header says (rows {start}-{stop - 1} "
                "cannot be read); the file is truncated"
            )
        return np.frombuffer(raw, np.uint8).reshape((stop - start, *self.shape[1:]))


@dataclass(frozen=True)
class ImageRefs:
    """Some images of a source, as a task receives them: names and locators, no pixels.

    Attributes:
        location: the source as the user gave it.
        kind: ``folder``, ``zip``, ``tar`` or ``array``.
        indices: positions of these images in the source's order.
        names: their names (what the feature store records).
        locators: per image, a file path (folder), member name (zip), (shard path, offset,
            size) (tar) or row number (array).
        layout: for arrays, where the rows are.
    """

    location: str
    kind: str
    indices: tuple[int, ...]
    names: tuple[str, ...]
    locators: tuple[Any, ...]
    layout: ArrayLayout | None = None

    def __len__(self) -> int:
        return len(self.names)

    def where(self, j: int) -> str:
        """Image ``j`` as a user can find it."""
        loc = self.locators[j]
        if self.kind == "folder":
            return repr(loc)
        if self.kind == "zip":
            return f"{self.names[j]!r} in {self.location!r}"
        if self.kind == "tar":
            return f"{self.names[j]!r} (member of {loc[0]!r})"
        return f"row {loc} of {self.location!r}"

    def _archive_bytes(self) -> list[bytes | Exception]:
        """Encoded bytes of every image of a zip or tar, read in order with one open per
        archive; a member that cannot be read is its exception (an image error), an archive
        that cannot be opened a source error."""
        out: list[bytes | Exception] = []
        try:
            if self.kind == "zip":
                with zipfile.ZipFile(self.location) as zf:
                    for member in self.locators:
                        try:
                            out.append(zf.read(member))
                        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
                            out.append(exc)  # e.g. a member whose CRC does not match
                return out
            handles: dict[str, Any] = {}
            try:
                for shard, offset, size in self.locators:
                    if shard not in handles:
                        handles[shard] = open(shard, "rb")  # noqa: SIM115 (closed below)
                    handles[shard].seek(offset)
                    data = handles[shard].read(size)
                    out.append(data if len(data) == size else EOFError("the shard is truncated"))
            finally:
                for fh in handles.values():
                    fh.close()
            return out
        except (OSError, zipfile.BadZipFile) as exc:
            raise ImageSourceError(
                f"{self.location!r} cannot be read ({_reason(exc)}); did it change or move "
                "since the extraction started?"
            ) from exc

    def _decoders(self) -> list[Callable[[], np.ndarray]]:
        """Per image, a call that reads (files: in the calling thread, so reads overlap) and
        decodes it, raising :class:`ImageError` naming it."""

        def from_bytes(data: bytes | Exception, where: str) -> Callable[[], np.ndarray]:
            def run() -> np.ndarray:
                if isinstance(data, Exception):
                    raise ImageError(
                        f"image {where} cannot be read ({_reason(data)}); replace or remove "
                        "it, or pass --skip-bad to leave it out"
                    ) from data
                return decode_image(data, where)

            return run

        def from_file(path: str, where: str) -> Callable[[], np.ndarray]:
            def run() -> np.ndarray:
                try:
                    with open(path, "rb") as fh:
                        data: bytes | Exception = fh.read()
                except OSError as exc:
                    data = exc
                return from_bytes(data, where)()

            return run

        if self.kind == "folder":
            return [from_file(p, self.where(j)) for j, p in enumerate(self.locators)]
        raw = self._archive_bytes()
        return [from_bytes(data, self.where(j)) for j, data in enumerate(raw)]

    def read(self, threads: int = 1) -> list[np.ndarray]:
        """Every image decoded to (H, W, 3) uint8 RGB, in order.

        Args:
            threads: reading and decoding threads (Pillow releases the GIL while it decodes).

        Raises:
            ImageError: an image cannot be read or decoded (the first in order is named).
            ImageSourceError: an archive cannot be opened any more.
        """
        if self.kind == "array":
            return self._rows()
        jobs = self._decoders()
        if threads <= 1 or len(jobs) <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(min(threads, len(jobs))) as pool:
            # map returns in order and re-raises the first failure in order
            return list(pool.map(lambda job: job(), jobs))

    def check(self, threads: int = 1) -> list[tuple[int, str]]:
        """Read and decode every image; report the ones that fail, keeping no pixels.

        Returns:
            (source index, reason) of each image that cannot be read or decoded.
        """
        if self.kind == "array":
            return []
        jobs = self._decoders()

        def bad(job: Callable[[], np.ndarray]) -> str | None:
            try:
                job()
            except ImageError as exc:
                return _reason(exc.__cause__ or exc)
            return None

        with ThreadPoolExecutor(max(1, min(threads, len(jobs)))) as pool:
            reasons = list(pool.map(bad, jobs))
        return [(self.indices[j], r) for j, r in enumerate(reasons) if r is not None]

    def _rows(self) -> list[np.ndarray]:
        if self.layout is None:
            raise ImageSourceError(f"{self.location!r}: array rows without a layout")
        rows: list[np.ndarray] = []
        j = 0
        while j < len(self.locators):  # contiguous runs are read in one go
            start = stop = int(self.locators[j])
            while j < len(self.locators) and int(self.locators[j]) == stop:
                stop, j = stop + 1, j + 1
            rows.extend(to_rgb(r) for r in self.layout.read_rows(start, stop))
        return rows


@dataclass(frozen=True)
class ImageSource:
    """A listed source of images.

    Attributes:
        location: as the user gave it.
        kind: ``folder``, ``zip``, ``tar`` or ``array``.
        names: every image's name, in the order rows are written.
        fingerprint: BLAKE2b over the kind and, per image in order, its name and size plus
            its modification time (folders, tar members), CRC (zip members) or the array's
            file size, time and shape: a re-run can tell the source changed without reading it.
        locators: per image, what :class:`ImageRefs` needs to read it.
        layout: for arrays, where the rows are.
    """

    location: str
    kind: str
    names: tuple[str, ...]
    fingerprint: str
    locators: tuple[Any, ...] = field(repr=False)
    layout: ArrayLayout | None = None

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
    rel = sorted(os.path.relpath(f, root).replace(os.sep, "/") for f in files)
    paths = [os.path.join(root, r) for r in rel]
    try:
        stats = [os.stat(p) for p in paths]
    except OSError as exc:
        raise ImageSourceError(
            f"{root!r}: {exc.filename!r} cannot be read: {exc.strerror}"
        ) from exc
    items = [(r, s.st_size, s.st_mtime_ns) for r, s in zip(rel, stats, strict=True)]
    return ImageSource(root, "folder", tuple(rel), _digest("folder", items), tuple(paths))


def _zip(location: str) -> ImageSource:
    try:
        with zipfile.ZipFile(location) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and _is_image(i.filename)]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImageSourceError(f"{location!r} cannot be read as a zip: {_reason(exc)}") from exc
    infos.sort(key=lambda i: i.filename)
    if not infos:
        raise ImageSourceError(f"{location!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    names = tuple(i.filename for i in infos)
    items = [(i.filename, i.file_size, i.CRC) for i in infos]
    return ImageSource(location, "zip", names, _digest("zip", items), names)


def _tar(location: str, shards: list[str]) -> ImageSource:
    shards = sorted(os.path.abspath(s) for s in shards)
    base = os.path.commonpath([os.path.dirname(s) for s in shards])
    entries: list[tuple[str, str, tuple[str, int, int], tuple[Any, ...]]] = []
    items: list[tuple[Any, ...]] = []
    for shard in shards:
        label = os.path.relpath(shard, base).replace(os.sep, "/")
        try:
            with tarfile.open(shard, "r:") as tf:
                members = sorted(
                    (m for m in tf if m.isfile() and _is_image(m.name)), key=lambda m: m.name
                )
            size = os.path.getsize(shard)
        except (OSError, tarfile.TarError) as exc:
            raise ImageSourceError(
                f"tar shard {shard!r} cannot be read ({_reason(exc)}); shards must be "
                "uncompressed .tar files"
            ) from exc
        items.append((label, size))
        for m in members:
            entries.append((label, m.name, (shard, m.offset_data, m.size), (m.size, m.mtime)))
    if not entries:
        raise ImageSourceError(f"{location!r}: the tar shards hold no images")
    names = tuple(f"{label}/{member}" for label, member, _, _ in entries)
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
        raise ImageSourceError(f"{where} is not a numpy array file: {_reason(exc)}") from exc
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
        raise ImageSourceError(f"{where} cannot be read: {_reason(exc)}") from exc
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


def _walk(root: str) -> tuple[list[str], list[str]]:
    images, tars = [], []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if _is_image(name):
                images.append(path)
            elif name.lower().endswith(".tar"):
                tars.append(path)
    return images, tars


def open_images(location: str | os.PathLike[str]) -> ImageSource:
    """List a source of images in its stated order.

    Args:
        location: a folder (recursive: images, or else ``.tar`` shards), a ``.zip``, a
            ``.npz`` (``arr_0``, or its only array) or ``.npy`` of uint8 images, a ``.tar``
            shard, or a glob of ``.tar`` shards.

    Returns:
        The listed source (nothing is decoded).

    Raises:
        ImageSourceError: missing, unreadable, empty, of an unknown kind, or a folder holding
            both images and tar shards.
    """
    # Absolute, so that a worker with another working directory reads the same files.
    location = os.path.abspath(os.fspath(location))
    if not os.path.exists(location) and any(c in location for c in _GLOB_CHARS):
        matches = sorted(glob.glob(location))
        tars = [m for m in matches if m.lower().endswith(".tar") and os.path.isfile(m)]
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
