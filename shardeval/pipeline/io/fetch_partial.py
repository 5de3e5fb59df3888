"""The partial file beside a target (``<target>.part``): opened without following a link or
blocking on a FIFO, locked against a second writer, hashed as it grows, cut where it is proven
wrong, and put into place in one step that never replaces anything. A name that holds what
shardeval did not make is never written through, truncated or removed."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from typing import IO, Any

from shardeval.pipeline.io.fetch_artifacts import FetchError
from shardeval.pipeline.io.fetch_in_place import kind_words

#: errno values of a file system that makes no hard links: the file is then put in place by
#: a rename, after a check that nothing is there.
_NO_HARD_LINKS = frozenset(
    getattr(errno, name)
    for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EMLINK", "EXDEV")
    if hasattr(errno, name)
)


class Partial:
    """The partial file, open and locked, with the SHA-256 of the bytes it holds (``size``);
    ``resumed``: the bytes an earlier run left in it that are still kept; ``received``: the
    bytes received here; ``discarded``: bytes an earlier run left that were found not of this
    file and dropped. What it holds is hashed ``chunk`` bytes at a time."""

    def __init__(self, fh: IO[bytes], chunk: int) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        fh.seek(0)
        while block := fh.read(chunk):
            self.digest.update(block)
        self.size = self.resumed = fh.tell()
        self.received = 0
        self.discarded = 0

    def read(self, offset: int, count: int) -> bytes:
        self.fh.seek(offset)
        return self.fh.read(count)

    def append(self, block: bytes) -> None:
        self.fh.seek(self.size)
        self.fh.write(block)
        self.digest.update(block)
        self.size += len(block)

    def cut(self, size: int, digest: Any, *, earlier: bool) -> None:
        """Keep only the first ``size`` bytes, whose SHA-256 state is ``digest``; ``earlier``:
        the bytes dropped are proven not of this file, and those of them an earlier run left
        count as ``discarded`` (else they are this run's, of another file)."""
        self.fh.seek(size)
        self.fh.truncate()
        if earlier:
            self.discarded += max(0, self.resumed - size)
            self.resumed = min(self.resumed, size)
        self.size = size
        self.digest = digest

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())


HARD_LINK = "a file with other names too (hard links)"


class NotOurs(Exception):
    """The partial file's name holds something shardeval did not make."""


def _open_part(part: str) -> tuple[IO[bytes], bool]:
    """The partial file opened for reading and writing, and whether it was created here.
    Never follows a symbolic link, never blocks on a FIFO, never opens a folder.

    Raises:
        NotOurs: the name holds a symbolic link, a folder, a FIFO or another kind of file, or
            a file with other names (hard links: truncating it would change them).
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    created = True
    try:
        fd = os.open(part, flags | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        created = False
        try:
            fd = os.open(part, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise NotOurs(kind_words(os.lstat(part).st_mode)) from None
            raise
    here = os.fstat(fd)
    if not stat.S_ISREG(here.st_mode) or here.st_nlink != 1:
        os.close(fd)
        what = kind_words(here.st_mode)
        raise NotOurs(what if what != "a file" else HARD_LINK)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "r+b"), created


@contextlib.contextmanager
def locked_part(part: str, made: list[str]) -> Iterator[tuple[IO[bytes], bool]]:
    """The partial file, created if missing, opened for reading and writing and held under
    an exclusive lock, and whether this call created it; a partial file another run put in
    place or removed while this one waited is opened anew, and its folder made again (adding
    to ``made``) when that run, having made it, removed it empty."""
    import fcntl

    while True:
        try:
            fh, created = _open_part(part)
        except FileNotFoundError:
            if os.path.isdir(os.path.dirname(part)):
                raise
            made.extend(make_folder(os.path.dirname(part)))
            continue
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                here = os.lstat(part)
            except FileNotFoundError:
                here = None
            mine = os.fstat(fh.fileno())
            if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                yield fh, created
                return
        finally:
            fh.close()


def remove_file(path: str) -> None:
    """Remove ``path`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def make_folder(folder: str) -> list[str]:
    """Create ``folder`` and its missing parents; returns those created, deepest first.

    Raises:
        FetchError: it cannot be created.
    """
    created = []
    probe = folder
    while not os.path.isdir(probe):
        created.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"the folder {folder!r} cannot be created ({exc.strerror})") from exc
    return created


def _sync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def put_in_place(part: str, target: str) -> bool:
    """Give the checked partial file the target's name, unless something is there by now
    (another program wrote it during the download): then nothing changes and this returns
    False. A hard link does it in one step that cannot replace; on a file system without hard
    links, a rename after a check that nothing is there."""
    try:
        os.link(part, target, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(target):
            return False
        os.rename(part, target)
    else:
        os.remove(part)
    _sync_folder(os.path.dirname(target))
    return True
