"""Sources of images for extraction: a folder, a ``.zip``, a ``.npz``/``.npy`` of uint8 images,
or ``.tar`` shards; their names in a stated order, a fingerprint, and decoding one image.

Order: a folder is walked recursively and its images sorted by relative path (``/``
separators), which is clean-fid's order; a zip's members by name; tar shards by their path,
then members by name within each shard; array rows in index order. Extensions (any case):
png, jpg, jpeg, webp, bmp.

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

Decoding is Pillow's, converted with ``.convert("RGB")`` as pytorch-fid and clean-fid do
(grayscale replicated, alpha dropped, palettes expanded); array sources are converted the same
way without Pillow ((N, H, W) and (N, H, W, 1) replicated, (N, H, W, 4) loses alpha). So, as
theirs, a 16-bit PNG becomes 8 bits (grayscale clipped at 255, RGB keeping each value's high
byte) and an EXIF orientation is not applied: features of such images compare with the peers'
only because they are read the same way.

What a task reads is an :class:`ImageRefs`: the source's kind and location plus its own images'
names and locators (paths, zip entries, tar offsets, row numbers), never pixels, so the
scheduler carries a few hundred bytes per task.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shardeval.pipeline.errors import ShardevalError

#: Image file extensions listed from folders, zips and tar shards (compared lower-case).
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

_GLOB_CHARS = "*?["
_DIGEST_BYTES = 16

#: What an image error tells the caller to do (marked: see :mod:`shardeval._words`).
IMAGE_ADVICE = "replace or remove it, or pass «skip_bad=True» to leave it out"

#: A folder macOS adds to the zips it makes (resource forks, Finder metadata).
_MAC_FOLDER = "__MACOSX"
#: The prefix of AppleDouble files macOS writes beside each file on foreign file systems.
_APPLE_DOUBLE = "._"

#: An object's default repr (``<_io.BytesIO object at 0x7f...>``), which says nothing to a user.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class ImageSourceError(ShardevalError):
    """The images argument cannot be used: missing, empty, of an unknown kind, or a badly
    shaped array."""


class ImageError(ShardevalError):
    """One image cannot be read or decoded; the message names it."""


def _reason(exc: BaseException) -> str:
    """An exception as a short readable reason: its type and the first line of its message,
    without object reprs (Pillow names the in-memory buffer it was given, not the image)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return f"{type(exc).__name__}: not in an image format Pillow can identify"
    text = _OBJECT_REPR.sub("the image", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_mac_metadata(path: str) -> bool:
    """Whether ``path`` (``/`` or the OS separator) is macOS metadata: inside a ``__MACOSX``
    folder, or an AppleDouble ``._*`` file."""
    parts = path.replace(os.sep, "/").split("/")
    return _MAC_FOLDER in parts or parts[-1].startswith(_APPLE_DOUBLE)


def _lists_as_image(path: str) -> bool:
    """Whether a file or member at ``path`` is listed: an image extension, not metadata."""
    return _is_image(path) and not _is_mac_metadata(path)


def _distinct_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` with the k-th repeat (k >= 2) of a name written ``NAME#k``, in order."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return tuple(out)


def _repeat_of(name: str) -> tuple[str, int] | None:
    """(archive name, k) of a name :func:`_distinct_names` suffixed, else None."""
    base, sep, k = name.rpartition("#")
    if sep and k.isdigit() and _is_image(base) and not _is_image(name):
        return base, int(k)
    return None


def _member_label(name: str) -> str:
    """An archive member as a user finds it in the archive's listing."""
    repeat = _repeat_of(name)
    if repeat is None:
        return repr(name)
    return f"{name!r} (member {repeat[1]} of those named {repeat[0]!r})"


def to_rgb(array: np.ndarray) -> np.ndarray:
    """A uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as (H, W, 3), converted as
    Pillow's ``convert("RGB")`` converts L and RGBA images (replicate; drop alpha)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    return np.ascontiguousarray(array[:, :, :3])


def _decoded(data: bytes, where: str) -> np.ndarray | str:
    """An encoded image decoded fully to (H, W, 3) uint8 RGB, or, if it cannot be, the
    problem: a sentence naming the image (``where``) and a readable reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.array(im.convert("RGB"))  # a writable copy
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad bytes
        return f"image {where} cannot be decoded ({_reason(exc)})"


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode an encoded image to (H, W, 3) uint8 RGB, fully (a truncated file fails here, not
    later).

    Args:
        data: the file's bytes.
        where: the image as a user can find it (for the message).

    Raises:
        ImageError: Pillow cannot identify or fully decode it.
    """
    decoded = _decoded(data, where)
    if isinstance(decoded, str):
        raise ImageError(f"{decoded}; {IMAGE_ADVICE}")
    return decoded


def _unreadable_file(path: str, where: str, exc: OSError) -> str:
    """The problem of an image file that cannot be opened, naming it; a symbolic link whose
    target is gone, or that leads back to itself, says so (the OS says only that the file
    does not exist, or that there are too many levels of links)."""
    if exc.errno == errno.ELOOP:
        reason = f"a loop of symbolic links (through {os.readlink(path)!r})"
    elif os.path.islink(path) and not os.path.exists(path):
        reason = f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    else:
        reason = _reason(exc)
    return f"image {where} cannot be read ({reason})"


def _not_a_file(path: str) -> str | None:
    """Why ``path`` is not a regular file (a FIFO, a device, a socket), else None: reading
    one would wait for a writer for ever (a FIFO) or never end (``/dev/zero``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # the read says why
    if stat.S_ISREG(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) else "not a file"
    return f"{kind}, not a regular file"


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
        locators: per image, a file path (folder), (member name, local header offset) (zip),
            (shard path, data offset, size) (tar) or row number (array).
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
            return f"{_member_label(self.names[j])} in {self.location!r}"
        if self.kind == "tar":
            return f"{_member_label(self.names[j])} in {loc[0]!r}"
        return f"row {loc} of {self.location!r}"

    def _zip_bytes(self) -> list[bytes | str]:
        """Encoded bytes of every image of a zip, each read by its own central-directory entry
        (found by its local header's offset, as listed): a zip may hold several members of
        one name, and a read by name would return the last of them for each. A member that
        cannot be read is its reason."""
        out: list[bytes | str] = []
        with zipfile.ZipFile(self.location) as zf:
            entries = {info.header_offset: info for info in zf.infolist()}
            for name, offset in self.locators:
                info = entries.get(offset)
                if info is None or info.filename != name:
                    out.append("the zip no longer holds it where it was listed")
                    continue
                try:
                    out.append(zf.read(info))
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    out.append(_reason(exc))  # e.g. a member whose CRC does not match
        return out

    def _tar_bytes(self) -> list[bytes | str]:
        """Encoded bytes of every image of tar shards, each read at its own offset, with one
        open per shard; a member the shard is too short for is its reason."""
        out: list[bytes | str] = []
        handles: dict[str, Any] = {}
        try:
            for shard, offset, size in self.locators:
                if shard not in handles:
                    handles[shard] = open(shard, "rb")  # noqa: SIM115 (closed below)
                handles[shard].seek(offset)
                data = handles[shard].read(size)
                out.append(data if len(data) == size else "the shard is truncated")
        finally:
            for fh in handles.values():
                fh.close()
        return out

    def _archive_bytes(self) -> list[bytes | str]:
        """Encoded bytes, or the reason they cannot be read, of every image of a zip or tar,
        in order.

        Raises:
            ImageSourceError: the archive cannot be opened any more.
        """
        try:
            return self._zip_bytes() if self.kind == "zip" else self._tar_bytes()
        except (OSError, zipfile.BadZipFile) as exc:
            raise ImageSourceError(
                f"{self.location!r} cannot be read ({_reason(exc)}); did it change or move "
                "since the extraction started?"
            ) from exc

    def _decoders(self) -> list[Callable[[], np.ndarray | str]]:
        """Per image, a call that reads (files: in the calling thread, so reads overlap) and
        decodes it, returning the image or its problem (a sentence naming it)."""

        def from_bytes(data: bytes | str, where: str) -> Callable[[], np.ndarray | str]:
            def run() -> np.ndarray | str:
                if isinstance(data, str):
                    return f"image {where} cannot be read ({data})"
                return _decoded(data, where)

            return run

        def from_file(path: str, where: str) -> Callable[[], np.ndarray | str]:
            def run() -> np.ndarray | str:
                odd = _not_a_file(path)
                if odd is not None:
                    return f"image {where} cannot be read ({odd})"
                try:
                    with open(path, "rb") as fh:
                        data = fh.read()
                except OSError as exc:
                    return _unreadable_file(path, where, exc)
                return _decoded(data, where)

            return run

        if self.kind == "folder":
            return [from_file(p, self.where(j)) for j, p in enumerate(self.locators)]
        raw = self._archive_bytes()
        return [from_bytes(data, self.where(j)) for j, data in enumerate(raw)]

    def _outcomes(self, threads: int) -> list[np.ndarray | str]:
        """Every image decoded, or its problem, in order, on up to ``threads`` threads."""
        jobs = self._decoders()
        if threads <= 1 or len(jobs) <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(min(threads, len(jobs))) as pool:
            return list(pool.map(lambda job: job(), jobs))  # in order

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
        images: list[np.ndarray] = []
        for outcome in self._outcomes(threads):
            if isinstance(outcome, str):
                raise ImageError(f"{outcome}; {IMAGE_ADVICE}")
            images.append(outcome)
        return images

    def check(self, threads: int = 1) -> list[tuple[int, str]]:
        """Read and decode every image; report the ones that fail, keeping no pixels.

        Returns:
            (source index, problem) of each image that cannot be read or decoded; the problem
            is a sentence naming the image and the reason.

        Raises:
            ImageSourceError: an archive cannot be opened any more.
        """
        if self.kind == "array":
            return []
        jobs = self._decoders()

        def problem(job: Callable[[], np.ndarray | str]) -> str | None:
            outcome = job()
            return outcome if isinstance(outcome, str) else None  # the pixels are dropped

        with ThreadPoolExecutor(max(1, min(threads, len(jobs)))) as pool:
            problems = list(pool.map(problem, jobs))
        return [(self.indices[j], p) for j, p in enumerate(problems) if p is not None]

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
            unreadable.append((i, _unreadable_file(path, repr(path), exc)))
            target = os.readlink(path) if os.path.islink(path) else ""
            items.append((name, "unreadable", exc.errno, target))
            continue
        odd = _not_a_file(path)
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
            infos = [i for i in zf.infolist() if not i.is_dir() and _lists_as_image(i.filename)]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImageSourceError(f"{location!r} cannot be read as a zip: {_reason(exc)}") from exc
    infos.sort(key=lambda i: i.filename)  # stable: members of one name stay in archive order
    if not infos:
        raise ImageSourceError(f"{location!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    names = _distinct_names([i.filename for i in infos])
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
                    (m for m in tf if m.isfile() and _lists_as_image(m.name)),
                    key=lambda m: m.name,  # stable: members of one name stay in shard order
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
    names = _distinct_names([f"{label}/{member}" for label, member, _, _ in entries])
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
        if name == _MAC_FOLDER:
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
            f"folder {exc.filename!r} under {root!r} cannot be listed ({_reason(exc)}); "
            "make it readable, or give a folder that does not hold it"
        ) from exc

    images, tars = [], []
    walked = {_folder_identity(root)}
    for folder, dirs, files in os.walk(root, onerror=refuse, followlinks=True):
        dirs[:] = _folders_to_enter(folder, dirs, walked)  # os.walk enters only these
        for name in files:
            path = os.path.join(folder, name)
            if _lists_as_image(name):
                images.append(path)
            elif name.lower().endswith(".tar") and not _is_mac_metadata(name):
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
            if m.lower().endswith(".tar") and os.path.isfile(m) and not _is_mac_metadata(m)
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
