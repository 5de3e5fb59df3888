"""Reading the images of a listed source: decoding one image, and a task's images
(:class:`ImageRefs`) read and decoded on its own worker.

Decoding is Pillow's, converted with ``.convert("RGB")`` as pytorch-fid and clean-fid do
(grayscale replicated, alpha dropped, palettes expanded); array sources are converted the same
way without Pillow ((N, H, W) and (N, H, W, 1) replicated, (N, H, W, 4) loses alpha). So, as
theirs, a 16-bit PNG becomes 8 bits (grayscale clipped at 255, RGB keeping each value's high
byte) and an EXIF orientation is not applied: features of such images compare with the peers'
only because they are read the same way.

What a task reads is an :class:`ImageRefs`: the source's kind and location plus its own images'
names and locators (paths, zip entries, tar offsets, row numbers), never pixels, so the
scheduler carries a few hundred bytes per task. Every archive member is read by its own entry
(a zip member by its central-directory entry, a tar member by its offset), never looked up by
name. Listing the images is :mod:`shardeval.pipeline.images.sources`.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardeval.pipeline.errors import ShardevalError

#: Image file extensions listed from folders, zips and tar shards (compared lower-case).
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

#: What an image error tells the caller to do (marked: see :mod:`shardeval._words`).
IMAGE_ADVICE = "replace or remove it, or pass «skip_bad=True» to leave it out"

#: A folder macOS adds to the zips it makes (resource forks, Finder metadata).
MAC_FOLDER = "__MACOSX"
#: The prefix of AppleDouble files macOS writes beside each file on foreign file systems.
_APPLE_DOUBLE = "._"

#: An object's default repr (``<_io.BytesIO object at 0x7f...>``), which says nothing to a user.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class ImageSourceError(ShardevalError):
    """The images argument cannot be used: missing, empty, of an unknown kind, or a badly
    shaped array."""


class ImageError(ShardevalError):
    """One image cannot be read or decoded; the message names it."""


def short_reason(exc: BaseException) -> str:
    """An exception as a short readable reason: its type and the first line of its message,
    without object reprs (Pillow names the in-memory buffer it was given, not the image)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return f"{type(exc).__name__}: not in an image format Pillow can identify"
    text = _OBJECT_REPR.sub("the image", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_mac_metadata(path: str) -> bool:
    """Whether ``path`` (``/`` or the OS separator) is macOS metadata: inside a ``__MACOSX``
    folder, or an AppleDouble ``._*`` file."""
    parts = path.replace(os.sep, "/").split("/")
    return MAC_FOLDER in parts or parts[-1].startswith(_APPLE_DOUBLE)


def lists_as_image(path: str) -> bool:
    """Whether a file or member at ``path`` is listed: an image extension, not metadata."""
    return _is_image(path) and not is_mac_metadata(path)


def distinct_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` with the k-th repeat (k >= 2) of a name written ``NAME#k``, in order."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return tuple(out)


def _repeat_of(name: str) -> tuple[str, int] | None:
    """(archive name, k) of a name :func:`distinct_names` suffixed, else None."""
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
        return f"image {where} cannot be decoded ({short_reason(exc)})"


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


def unreadable_file(path: str, where: str, exc: OSError) -> str:
    """The problem of an image file that cannot be opened, naming it; a symbolic link whose
    target is gone, or that leads back to itself, says so (the OS says only that the file
    does not exist, or that there are too many levels of links)."""
    if exc.errno == errno.ELOOP:
        reason = f"a loop of symbolic links (through {os.readlink(path)!r})"
    elif os.path.islink(path) and not os.path.exists(path):
        reason = f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    else:
        reason = short_reason(exc)
    return f"image {where} cannot be read ({reason})"


def not_a_file(path: str) -> str | None:
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
                    out.append(short_reason(exc))  # e.g. a member whose CRC does not match
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
                f"{self.location!r} cannot be read ({short_reason(exc)}); did it change or move "
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
                odd = not_a_file(path)
                if odd is not None:
                    return f"image {where} cannot be read ({odd})"
                try:
                    with open(path, "rb") as fh:
                        data = fh.read()
                except OSError as exc:
                    return unreadable_file(path, where, exc)
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
