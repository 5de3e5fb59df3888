"""What is at an artifact's place, checked against the pinned file: the state
``shardeval fetch --list`` shows, and what :func:`shardeval.pipeline.io.fetch.fetch` keeps or
refuses before it downloads anything. Something in place is never replaced: it is kept when it
is the pinned file, refused otherwise."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass

from shardeval.pipeline.io.fetch_artifacts import (
    Artifact,
    FetchError,
    FetchResult,
    digest_matches,
    expected_digest,
)


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def kind_words(mode: int) -> str:
    """What a file system entry is, in words, for a message."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "a device"
    return "a file" if stat.S_ISREG(mode) else "not a regular file"


@dataclass(frozen=True)
class InPlace:
    """What is at an artifact's place, and whether it is the pinned file.

    Attributes:
        path: the place.
        kind: ``missing``; ``file`` (a regular file, or a symbolic link to one); ``not-a-file``
            (a folder, a symbolic link that leads to no file, a FIFO, a socket, a device);
            ``unreadable``.
        what: for ``not-a-file`` and ``unreadable``, what it is or why it cannot be read, in
            words.
        link: where a symbolic link at the place points (None: no link).
        size: the file's bytes (None unless ``kind`` is ``file``).
        sha256: its SHA-256; computed only when its size is the pinned one (a file of another
            size is not the pinned file, and is not read).
        pinned: it is the pinned file (its size and digest are the pinned ones).
        seconds: what reading the file for its SHA-256 cost (0: it was not read).
    """

    path: str
    kind: str
    what: str | None = None
    link: str | None = None
    size: int | None = None
    sha256: str | None = None
    pinned: bool = False
    seconds: float = 0.0

    def words(self, item: Artifact) -> str:
        """The state in a few words: ``missing``, ``present, the pinned file: ...``,
        ``present, not the pinned file: ...``, ``present, not a file: ...``."""
        via = f" (through the symbolic link to {self.link})" if self.link else ""
        if self.kind == "missing":
            return "missing"
        if self.kind == "unreadable":
            return f"present, cannot be read ({self.what})"
        if self.kind == "not-a-file":
            return f"present, not a file: {self.what}"
        if self.pinned:
            return (
                f"present, the pinned file: SHA-256 of {self.size:,} bytes checked in "
                f"{self.seconds:.1f} s{via}"
            )
        if self.sha256 is None:
            return (
                f"present, not the pinned file: {self.size:,} bytes, the pinned file has "
                f"{item.size:,}{via}"
            )
        return (
            f"present, not the pinned file: SHA-256 {self.sha256} (checked in "
            f"{self.seconds:.1f} s){via}"
        )


def look_in_place(item: Artifact) -> InPlace:
    """What is at ``item``'s place: nothing, the pinned file, another file, or something that
    is not a file. Reads nothing but the file there, and that only when it has the pinned
    size (its SHA-256 is then computed: about 0.1 to 0.5 s for 100 MB on one core, more when
    the file is not in the page cache). Nothing is cached: a cache keyed by size and
    modification time would call a file rewritten in place the pinned one.

    Returns:
        :class:`InPlace`.
    """
    started = time.perf_counter()
    path = item.path()
    try:
        first = os.lstat(path)
    except FileNotFoundError:
        return InPlace(path, "missing")
    except OSError as exc:
        return InPlace(path, "unreadable", what=exc.strerror or str(exc))
    link = None
    here = first
    if stat.S_ISLNK(first.st_mode):
        link = os.readlink(path)
        try:
            here = os.stat(path)
        except FileNotFoundError:
            return InPlace(path, "not-a-file", f"a symbolic link to {link}, which is missing", link)
        except OSError as exc:
            return InPlace(path, "unreadable", exc.strerror or str(exc), link)
        if not stat.S_ISREG(here.st_mode):
            what = f"a symbolic link to {link}, which is {kind_words(here.st_mode)}"
            return InPlace(path, "not-a-file", what, link)
    elif not stat.S_ISREG(first.st_mode):
        return InPlace(path, "not-a-file", kind_words(first.st_mode))
    if here.st_size != item.size:
        return InPlace(path, "file", link=link, size=here.st_size)
    try:
        found = sha256_file(path)
    except OSError as exc:
        return InPlace(path, "unreadable", exc.strerror or str(exc), link)
    return InPlace(
        path,
        "file",
        link=link,
        size=here.st_size,
        sha256=found,
        pinned=digest_matches(item, found),
        seconds=time.perf_counter() - started,
    )


def in_place_result(item: Artifact, here: InPlace, started: float) -> FetchResult:
    """What is in place: kept when it is the pinned file, refused otherwise."""
    target = here.path
    if here.kind == "unreadable":
        raise FetchError(f"{item.name}: {target!r} cannot be read ({here.what})")
    if here.kind == "not-a-file":
        raise FetchError(
            f"{item.name}: {target!r} is {here.what}, not the file; it is not replaced "
            "(shardeval did not make it): move it aside and fetch again"
        )
    if not here.pinned or here.sha256 is None or here.size is None:
        via = f" (a symbolic link to {here.link!r})" if here.link else ""
        found = (
            f"SHA-256 {here.sha256}"
            if here.sha256 is not None
            else f"{here.size:,} bytes (the pinned file has {item.size:,})"
        )
        raise FetchError(
            f"{item.name}: {target!r}{via} is already there with {found}, not "
            f"{expected_digest(item)}; it is not replaced (shardeval did not write it): move it "
            "aside and fetch again"
        )
    return FetchResult(
        name=item.name,
        path=target,
        url=None,
        sha256=here.sha256,
        verified=item.verification,
        size=here.size,
        downloaded=0,
        resumed_from=0,
        discarded=0,
        already_present=True,
        seconds=time.perf_counter() - started,
    )
