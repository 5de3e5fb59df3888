"""Downloads of the files the encoders read, each checked against a digest and a size pinned
here.

Nothing is ever downloaded at import time or implicitly: only :func:`fetch` downloads, and
only what :data:`ARTIFACTS` lists, into the very place the encoders read it from
(:func:`shardeval.kernels.encoders.weights.inception_path` for the FID Inception).

How a file arrives:

* **Streamed to a partial file beside the target** (``<target>.part``), hashed (SHA-256) as
  it is written, flushed to disk, then **put into place** in one step that never replaces
  anything (a hard link made only if nothing is there, then the partial name removed): the
  target is never seen half-written, and it is always a file whose digest was checked.
* **Checked**: against the full SHA-256 where a public source pins it, else against the first
  8 hex digits that the file's name carries (torch hub's ``check_hash`` convention); the
  result says which (``verified``: ``sha256`` or ``sha256-prefix``).
* **Bounded by the pinned size**: a ``Content-Length`` (or ``Content-Range``) other than the
  pinned size is refused before a byte is written; a server that sends no length is read up
  to the pinned size and no further, and refused if it has more to send.
* **Resumable**: a run that is interrupted (Ctrl-C, a killed process) or fails (the server
  unreachable, an HTTP error, a transfer cut short) keeps its partial file; the next run asks
  the server for the rest only (HTTP ``Range``), hashing the part it already has first. A
  server that sends from the first byte again (it ignores ``Range``) is compared with the
  partial file byte for byte before anything is written.
* **A partial file is discarded only when it is proven wrong**, and the result or the error
  says so: it is longer than the pinned file, or as long and with another digest, or the
  server's bytes differ from it (from where they differ), or the finished file's digest fails
  (refused: :class:`DigestMismatchError`).
* **Nothing that is not shardeval's is written through, replaced or removed**: a target in
  place is verified and kept when it is right, refused otherwise (another digest, a folder, a
  symbolic link that leads to no file, a FIFO); a partial file's name that holds a symbolic
  link, a folder, a FIFO or a file with other names (hard links) is refused, untouched; a
  target that another program puts in place during the download is not replaced.
* **One writer**: the partial file is locked while it is written; a second run for the same
  file waits, then finds it in place.

Where from: ``url=`` given to :func:`fetch`; else the environment variable
``SHARDEVAL_FETCH_URL_<NAME>`` (``SHARDEVAL_FETCH_URL_INCEPTION``); else, when
``SHARDEVAL_FETCH_MIRROR`` is set, ``<mirror>/<file name>`` (a local mirror of the files, or
a test server); else the URL the artifact is published at. Only ``http://`` and ``https://``
URLs are read (through the proxies the environment names, as ``urllib`` reads them). The
digest and size checked are the pinned ones whatever the URL.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any

from shardeval.kernels.encoders.weights import INCEPTION_FILE, inception_path
from shardeval.pipeline.errors import ShardevalError

#: The environment variable naming a base URL that serves every artifact by its file name.
MIRROR_ENV = "SHARDEVAL_FETCH_MIRROR"

#: Prefix of the environment variables giving one artifact's URL (``..._INCEPTION``).
URL_ENV_PREFIX = "SHARDEVAL_FETCH_URL_"

#: The suffix of the partial file beside a target.
PART_SUFFIX = ".part"

#: Bytes read from the connection (and hashed, and written) at a time.
_CHUNK = 1 << 20
#: Seconds before the first retry of a transfer; the n-th waits n times as long.
_RETRY_DELAY = 1.0
#: HTTP statuses worth asking again: the server may answer next time.
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
_HEX = re.compile(r"[0-9a-f]+")
#: errno values of a file system that makes no hard links: the file is then put in place by
#: a rename, after a check that nothing is there.
_NO_HARD_LINKS = frozenset(
    getattr(errno, name)
    for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EMLINK", "EXDEV")
    if hasattr(errno, name)
)

Progress = Callable[[int, int], None]


class FetchError(ShardevalError):
    """A file could not be fetched as it must be; nothing is put in place of it. Its message
    is one line naming the file, the URL, what went wrong and what became of the partial
    file."""


class DigestMismatchError(FetchError):
    """The bytes received are not the pinned file (another file at that URL, or a mirror that
    serves something else)."""


class SizeMismatchError(DigestMismatchError):
    """The server announces or sends a file of another size than the pinned one: it is not
    the pinned file, and nothing past the pinned size is written."""


class TransferError(FetchError):
    """The server could not be reached, answered with an error, or sent less than it
    announced. An operating failure: nothing in the request would fix it, so the command line
    exits 1 (4xx answers, which a corrected URL would fix, exit 2)."""

    def __init__(self, message: str, *, operating_failure: bool = True) -> None:
        super().__init__(message)
        self.operating_failure = operating_failure


@dataclass(frozen=True)
class Artifact:
    """A file :func:`fetch` can download.

    Attributes:
        name: what it is asked for by (``inception``).
        title: what it is, for people.
        file_name: its name in place; for a torch hub checkpoint it carries the first 8 hex
            digits of its SHA-256.
        url: where it is published.
        sha256: the full SHA-256 (64 hex digits) where a public source pins it, else the
            prefix the file name carries.
        size: its bytes: no more is ever written, and a server announcing another size is
            refused.
        digest_source: where the digest is published (for the record and the docs).
        folder: where it goes: a function, so that environment variables (``TORCH_HOME``)
            are read when it is fetched, not when this module is imported.
    """

    name: str
    title: str
    file_name: str
    url: str
    sha256: str
    size: int
    digest_source: str
    folder: Callable[[], str]

    def __post_init__(self) -> None:
        if not _HEX.fullmatch(self.sha256) or len(self.sha256) not in (8, 64):
            raise ValueError(f"{self.name}: sha256 must be 8 or 64 lower-case hex digits")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"{self.name}: size must be a positive number of bytes")

    @property
    def full_digest(self) -> bool:
        """Whether the whole SHA-256 is pinned (else only its first hex digits)."""
        return len(self.sha256) == 64

    @property
    def verification(self) -> str:
        return "sha256" if self.full_digest else "sha256-prefix"

    def path(self) -> str:
        """Where the file goes (absolute), as the encoders read it."""
        return os.path.abspath(os.path.join(self.folder(), self.file_name))

    def describe(self) -> dict[str, Any]:
        """What is fetched, from where, checked how, put where (JSON-ready)."""
        return {
            "name": self.name,
            "title": self.title,
            "file": self.file_name,
            "url": self.url,
            "sha256": self.sha256,
            "size": self.size,
            "verified": self.verification,
            "digest_source": self.digest_source,
            "path": self.path(),
        }


#: pytorch-fid's port of the TF Inception graph of 2015-12-05, from pytorch-fid's GitHub
#: release (the URL pytorch-fid's ``FID_WEIGHTS_URL`` names). The file name's 6726825d is the
#: prefix torch hub's ``check_hash`` checks; the whole SHA-256 is pinned in public code that
#: downloads this URL with a full check (snap-research/discoscene,
#: models/inception_model.py, ``_MODEL_URL_SHA256['tf_inception_v3']``), and the same
#: digest with the same size, 95,628,359 bytes, is recorded by several independent projects
#: that keep the file (one pins both to convert it, one checks the size of the file at this
#: very torch hub path). torch-fidelity's release
#: ``v0.2.0/weights-inception-2015-12-05-6726825d.pth`` is recorded with the same digest: a
#: mirror (``url=``).
INCEPTION = Artifact(
    name="inception",
    title="the FID Inception weights (pytorch-fid's port of the TF Inception of 2015-12-05)",
    file_name=INCEPTION_FILE,
    url=(
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth"
    ),
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    size=95_628_359,
    digest_source=(
        "snap-research/discoscene models/inception_model.py (_MODEL_URL_SHA256, full "
        "SHA-256 of this URL); prefix 6726825d in the file name (torch hub check_hash)"
    ),
    folder=lambda: os.path.dirname(inception_path()),
)

#: Everything :func:`fetch` can download, by name. The ViT encoders' Hugging Face snapshots
#: are not here: no public source pins their files' digests.
ARTIFACTS: dict[str, Artifact] = {INCEPTION.name: INCEPTION}


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did.

    Attributes:
        name: the artifact.
        path: the file, in place and checked.
        url: where it was downloaded from (None when it was already in place).
        sha256: its full SHA-256, as computed from its bytes.
        verified: ``sha256`` (the whole digest matched a pinned one) or ``sha256-prefix``
            (only the 8 hex digits in its name are pinned).
        size: its bytes.
        downloaded: bytes received in this call (0 when it was in place).
        resumed_from: bytes of a partial file from an earlier run that were kept (0: none, or
            none of it was of this file).
        discarded: bytes of a partial file from an earlier run that were proven not of this
            file (longer than it, or differing from the server's bytes) and discarded.
        already_present: the file was in place with the right digest: nothing downloaded.
        seconds: wall time.
    """

    name: str
    path: str
    url: str | None
    sha256: str
    verified: str
    size: int
    downloaded: int
    resumed_from: int
    discarded: int
    already_present: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        check = "SHA-256" if self.verified == "sha256" else "SHA-256 prefix (in its name)"
        if self.already_present:
            return f"{self.name}: {self.path} is already in place ({check} verified)"
        resumed = f", resumed at {_size(self.resumed_from)}" if self.resumed_from else ""
        discarded = (
            f", {_size(self.discarded)} of an earlier partial file that were not of this "
            "file discarded"
            if self.discarded
            else ""
        )
        return (
            f"{self.name}: {self.path} ({_size(self.size)}, {check} verified{resumed}"
            f"{discarded}) from {self.url} in {self.seconds:.1f} s"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def artifact(name: str) -> Artifact:
    """The artifact called ``name``.

    Raises:
        FetchError: no artifact has that name (the message lists those that do).
    """
    try:
        return ARTIFACTS[name]
    except KeyError:
        raise FetchError(
            f"nothing called {name!r} can be fetched; known: {', '.join(sorted(ARTIFACTS))}"
        ) from None


def resolve_url(item: Artifact, url: str | None = None) -> str:
    """Where ``item`` is downloaded from: ``url``, else ``$SHARDEVAL_FETCH_URL_<NAME>``, else
    ``$SHARDEVAL_FETCH_MIRROR/<file name>``, else the artifact's own URL.

    Raises:
        FetchError: the URL is not ``http://`` or ``https://``.
    """
    given = url or os.environ.get(URL_ENV_PREFIX + item.name.upper().replace("-", "_"))
    if not given and os.environ.get(MIRROR_ENV):
        given = os.environ[MIRROR_ENV].rstrip("/") + "/" + item.file_name
    chosen = given or item.url
    if not chosen.lower().startswith(("http://", "https://")):
        raise FetchError(
            f"{item.name}: {chosen!r} is not an http:// or https:// URL; give one with «url=URL»"
        )
    return chosen


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _matches(item: Artifact, found: str) -> bool:
    return found == item.sha256 if item.full_digest else found.startswith(item.sha256)


def _expected(item: Artifact) -> str:
    if item.full_digest:
        return f"SHA-256 {item.sha256}"
    return (
        f"a SHA-256 starting {item.sha256} (the prefix its name carries; no full digest is pinned)"
    )


def _kind(mode: int) -> str:
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
            what = f"a symbolic link to {link}, which is {_kind(here.st_mode)}"
            return InPlace(path, "not-a-file", what, link)
    elif not stat.S_ISREG(first.st_mode):
        return InPlace(path, "not-a-file", _kind(first.st_mode))
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
        pinned=_matches(item, found),
        seconds=time.perf_counter() - started,
    )


class _Restart(Exception):
    """The server cannot continue the partial file (it sent another range): ask for the file
    from its first byte, comparing what the partial file holds."""


class _Transient(Exception):
    """A transfer that may succeed if asked again (cut short, a 5xx, unreachable)."""

    def __init__(self, message: str, operating_failure: bool = True) -> None:
        super().__init__(message)
        self.operating_failure = operating_failure


class _Fatal(Exception):
    """A transfer that asking again will not mend (a 4xx)."""


class _WrongSize(Exception):
    """The server's file is not of the pinned size (announced, or sent)."""


class _Partial:
    """The partial file, open and locked, with the SHA-256 of the bytes it holds (``size``);
    ``resumed``: the bytes an earlier run left in it that are still kept; ``received``: the
    bytes received here; ``discarded``: bytes an earlier run left that were found not of this
    file and dropped."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        fh.seek(0)
        while block := fh.read(_CHUNK):
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


_HARD_LINK = "a file with other names too (hard links)"


class _NotOurs(Exception):
    """The partial file's name holds something shardeval did not make."""


def _open_part(part: str) -> tuple[IO[bytes], bool]:
    """The partial file opened for reading and writing, and whether it was created here.
    Never follows a symbolic link, never blocks on a FIFO, never opens a folder.

    Raises:
        _NotOurs: the name holds a symbolic link, a folder, a FIFO or another kind of file, or
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
                raise _NotOurs(_kind(os.lstat(part).st_mode)) from None
            raise
    here = os.fstat(fd)
    if not stat.S_ISREG(here.st_mode) or here.st_nlink != 1:
        os.close(fd)
        what = _kind(here.st_mode)
        raise _NotOurs(what if what != "a file" else _HARD_LINK)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "r+b"), created


@contextlib.contextmanager
def _locked_part(part: str, made: list[str]) -> Iterator[tuple[IO[bytes], bool]]:
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
            made.extend(_make_folder(os.path.dirname(part)))
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


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _make_folder(folder: str) -> list[str]:
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


def _put_in_place(part: str, target: str) -> bool:
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


def fetch(
    name: str | Artifact,
    *,
    url: str | None = None,
    retries: int = 2,
    timeout: float = 60.0,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> FetchResult:
    """Download an artifact into place, checked against its pinned digest and size; or
    verify the one already there.

    Args:
        name: an artifact's name (see :data:`ARTIFACTS`: ``inception``), or an
            :class:`Artifact`.
        url: download from here instead (a mirror); the digest is checked all the same.
        retries: how many more times a transfer cut short, a 5xx answer or an unreachable
            server is tried (each taking up where the last stopped when the server allows).
        timeout: seconds a connection may stay silent before it counts as cut.
        progress: called with (bytes of the file so far, bytes of the whole file) as they
            arrive.
        log: called with notices (resuming, retrying, a partial file discarded).

    Returns:
        :class:`FetchResult`.

    Raises:
        DigestMismatchError: the bytes received are not the pinned file; the partial file is
            discarded.
        SizeMismatchError: the server announces or sends a file of another size than the
            pinned one; nothing past the pinned size is written, and what the partial file
            held before is kept.
        TransferError: unreachable, an HTTP error, or fewer bytes than announced, after the
            retries; the partial file is kept for the next run to resume.
        FetchError: an unknown name, a URL that is not http(s); something in place that is not
            the pinned file (another digest, a folder, a symbolic link to no file: never
            replaced); a partial file's name that holds what shardeval did not make (never
            touched); a folder that cannot be written.

    Example:
        >>> from shardeval.pipeline.io.fetch import fetch
        >>> fetch("inception").summary()  # doctest: +SKIP
        'inception: .../pt_inception-2015-12-05-6726825d.pth (91.2 MiB, SHA-256 verified) ...'
    """
    item = artifact(name) if isinstance(name, str) else name
    if retries < 0:
        raise FetchError(f"«retries» must be at least 0, got {retries}")
    if not timeout > 0:
        raise FetchError(f"«timeout» must be positive, got {timeout}")
    started = time.perf_counter()
    source = resolve_url(item, url)
    target = item.path()
    folder = os.path.dirname(target)
    here = look_in_place(item)
    if here.kind != "missing":
        return _in_place(item, here, started)
    created = _make_folder(folder)
    part = target + PART_SUFFIX
    try:
        first = os.lstat(part)
    except FileNotFoundError:
        first = None
    if first is not None and (not stat.S_ISREG(first.st_mode) or first.st_nlink != 1):
        what = _kind(first.st_mode)
        raise FetchError(_not_ours(item, part, what if what != "a file" else _HARD_LINK))
    partial: _Partial | None = None
    try:
        with _locked_part(part, created) as (fh, made):
            try:
                partial = _Partial(fh)
                here = look_in_place(item)
                if here.kind != "missing":  # another run put it in place while this one waited
                    return _in_place(item, here, started)
                result = _download(
                    item, source, target, part, partial, retries, timeout, progress, log
                )
                return FetchResult(**{**asdict(result), "seconds": time.perf_counter() - started})
            finally:
                # A partial file this call made, or emptied as proven not of this file, goes
                # when it is empty (under the lock, so that no other run is writing to it);
                # any other is kept for the next run.
                empty = (
                    partial.size == 0 if partial is not None else not os.fstat(fh.fileno()).st_size
                )
                if empty and (made or (partial is not None and partial.discarded)):
                    _remove(part)
    except _NotOurs as exc:
        raise FetchError(_not_ours(item, part, str(exc))) from None
    except OSError as exc:
        kept = "the partial file is kept; " if partial is not None and partial.size else ""
        raise FetchError(
            f"{item.name}: {part!r} cannot be written ({exc.strerror or exc}); {kept}"
            f"is {folder!r} writable and is there room?"
        ) from exc
    finally:
        # The folders this call made go if nothing is in them.
        if not os.path.lexists(target) and not os.path.lexists(part):
            for path in created:
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def _not_ours(item: Artifact, part: str, what: str) -> str:
    return (
        f"{item.name}: {part!r} is {what}, not a partial download shardeval made; it is not "
        "touched: move it aside and fetch again"
    )


def _in_place(item: Artifact, here: InPlace, started: float) -> FetchResult:
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
            f"{_expected(item)}; it is not replaced (shardeval did not write it): move it "
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


def _kept(partial: _Partial, part: str) -> str:
    """What became of the partial file after a failure that does not prove it wrong."""
    if partial.size == 0:
        return "nothing was kept"
    return f"the partial file {part} ({_size(partial.size)}) is kept: fetch again to resume"


def _download(
    item: Artifact,
    source: str,
    target: str,
    part: str,
    partial: _Partial,
    retries: int,
    timeout: float,
    progress: Progress | None,
    log: Callable[[str], None] | None,
) -> FetchResult:
    """Fill the locked partial file from ``source``, check it, put it into place."""

    def say(message: str) -> None:
        if log:
            log(f"{item.name}: {message}")

    # A partial file longer than the pinned file, or as long and with another digest, is
    # proven not to be (the start of) it.
    if partial.size > item.size or (
        partial.size == item.size and not _matches(item, partial.digest.hexdigest())
    ):
        why = (
            f"is longer than the pinned file ({partial.size:,} bytes, not {item.size:,})"
            if partial.size > item.size
            else f"is as long as the pinned file but its SHA-256 is "
            f"{partial.digest.hexdigest()}, not {_expected(item)}"
        )
        partial.cut(0, hashlib.sha256(), earlier=True)
        say(f"the partial file {part} {why}: not of this file, discarded")
    elif partial.resumed:
        say(f"resuming {part} at {_size(partial.resumed)}")
    attempt = 0
    restarted = False  # asked from the first byte once: a mismatch then is final
    from_start = False
    while True:
        if partial.size == item.size and not from_start:
            # A partial file already whole (a run stopped before putting it in place) is not
            # downloaded again.
            partial.sync()
            if _matches(item, partial.digest.hexdigest()):
                break
            if partial.resumed and not restarted:
                # An earlier run's bytes and this server's do not make the file: ask for it from
                # its first byte, keeping what agrees with the server.
                say(f"{source} and the partial file do not make the file; asking for it whole")
                restarted = from_start = True
                continue
            found = partial.digest.hexdigest()
            partial.cut(0, hashlib.sha256(), earlier=partial.resumed > 0)
            _remove(part)
            raise DigestMismatchError(
                f"{item.name}: {source} sent {_size(item.size)} with SHA-256 {found}, not "
                f"{_expected(item)}; refused, nothing was kept"
            )
        try:
            _transfer(item, source, partial, from_start, timeout, progress, say)
            from_start = False
            if partial.size < item.size:
                raise _Transient(
                    f"the transfer from {source} ended at {_size(partial.size)}, short of the "
                    f"pinned {_size(item.size)}"
                )
        except _Restart:
            if restarted:
                raise TransferError(
                    f"{item.name}: {source} does not serve the byte range asked for, even from "
                    f"the start; {_kept(partial, part)}"
                ) from None
            restarted = from_start = True
        except _Transient as exc:
            attempt += 1
            if attempt > retries:
                raise TransferError(
                    f"{item.name}: {exc} (after {attempt} attempt{'s' if attempt > 1 else ''}); "
                    f"{_kept(partial, part)}",
                    operating_failure=exc.operating_failure,
                ) from None
            say(f"{exc}; trying again ({attempt} of {retries})")
            time.sleep(_RETRY_DELAY * attempt)
        except _Fatal as exc:
            raise TransferError(
                f"{item.name}: {exc}; {_kept(partial, part)}", operating_failure=False
            ) from None
        except _WrongSize as exc:
            raise SizeMismatchError(f"{item.name}: {exc}; {_kept(partial, part)}") from None
    sha256 = partial.digest.hexdigest()
    if not _put_in_place(part, target):
        here = look_in_place(item)
        if not here.pinned:
            raise FetchError(
                f"{item.name}: {target!r} appeared while this download ran (another program "
                f"wrote it: {here.words(item)}); it is not replaced. The checked download is "
                f"kept as {part!r}: move {target!r} aside and fetch again to put it in place"
            )
        _remove(part)  # the same bytes as the file now in place
        return _in_place(item, here, time.perf_counter())
    return FetchResult(
        name=item.name,
        path=target,
        url=source,
        sha256=sha256,
        verified=item.verification,
        size=partial.size,
        downloaded=partial.received,
        resumed_from=partial.resumed,
        discarded=partial.discarded,
        already_present=False,
        seconds=0.0,
    )


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"shardeval/{version('shardeval')}"
    except PackageNotFoundError:
        return "shardeval"


def _read(response: Any, count: int) -> tuple[bytes, BaseException | None]:
    """Up to ``count`` bytes of a body (fewer at its end), and the failure that stopped the
    reading early (a connection silent past the timeout, or cut), if any, with the bytes that
    arrived before it: a stalled server's last bytes are kept, and the message counts them."""
    parts: list[bytes] = []
    got = 0
    while got < count:
        try:
            part = response.read1(count - got)
        except (OSError, http.client.HTTPException) as exc:
            return b"".join(parts), exc
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts), None


def _transfer(
    item: Artifact,
    source: str,
    partial: _Partial,
    from_start: bool,
    timeout: float,
    progress: Progress | None,
    say: Callable[[str], None],
) -> None:
    """Append to ``partial`` what ``source`` holds beyond it, up to the pinned size and never
    past it. A body that starts before the partial file's end (``from_start``, or a server
    that ignores ``Range``) is compared with the partial file where they overlap: from the
    first byte that differs, the partial file's bytes are discarded (and said so) and the
    server's written.

    Raises:
        _Restart: the server cannot continue this partial file.
        _Transient: unreachable, a transient HTTP error, or fewer bytes than announced.
        _Fatal: another HTTP error.
        _WrongSize: a length other than the pinned size, announced or sent.
    """
    offset = 0 if from_start else partial.size
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(source, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # http(s) only: resolve_url
    except urllib.error.HTTPError as exc:
        unsatisfied = _UNSATISFIED_RANGE.fullmatch(
            (exc.headers.get("Content-Range") or "").strip() if exc.headers else ""
        )
        exc.close()
        if exc.code == 416 and offset:
            # Nothing past the partial file, which is shorter than the pinned file.
            has = f" (its file has {int(unsatisfied.group(1)):,})" if unsatisfied else ""
            raise _WrongSize(
                f"{source} has no bytes past {offset:,} (HTTP 416{has}): not the pinned file "
                f"of {item.size:,} bytes; refused"
            ) from None
        what = f"{source} answered HTTP {exc.code} {exc.reason}"
        if exc.code in _TRANSIENT:
            raise _Transient(what) from None
        raise _Fatal(what) from None
    except urllib.error.URLError as exc:
        raise _Transient(f"{source} cannot be reached ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{source} cannot be reached ({exc})") from None
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        announced = int(length) if length and length.strip().isdigit() else None
        if status == 206 and offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                raise _Restart()
            first, last, whole = match.groups()
            if (whole != "*" and int(whole) != item.size) or int(last) >= item.size:
                raise _WrongSize(
                    f"{source} answers Content-Range {match.group(0)!r}: not the pinned file "
                    f"of {item.size:,} bytes; refused"
                )
            expected: int | None = int(last) - int(first) + 1
            start = offset
        elif status == 200:
            if announced is not None and announced != item.size:
                raise _WrongSize(
                    f"{source} announces Content-Length {announced:,}: not the pinned "
                    f"{item.size:,} bytes; refused"
                )
            if offset:
                say(f"{source} does not resume downloads; comparing what it sends from the start")
            expected = announced
            start = 0
        else:
            raise _Fatal(f"{source} answered HTTP {status} {response.reason}")
        wanted = item.size - start  # never more than the pinned file
        received = 0
        written_from: tuple[int, Any] | None = None  # size and digest before this body's writes
        compared = hashlib.sha256()  # of the server's bytes that agree with the partial file
        failed: BaseException | None = None
        while failed is None:
            block, failed = _read(
                response, min(_CHUNK, wanted - received) if received < wanted else 1
            )
            if not block:
                break
            if received >= wanted:
                # More than the pinned file: what this body wrote is of another file.
                dropped = ""
                if written_from is not None:
                    dropped = f"; the {_size(partial.size - written_from[0])} it sent are discarded"
                    partial.cut(*written_from, earlier=False)
                raise _WrongSize(
                    f"{source} sends more than the pinned {item.size:,} bytes (it announced "
                    f"{'no length' if announced is None else f'{announced:,}'}); refused, "
                    f"stopped at the pinned size{dropped}"
                )
            position = start + received
            received += len(block)
            partial.received += len(block)
            overlap = max(0, min(len(block), partial.size - position))
            if overlap:
                mine = partial.read(position, overlap)
                if mine == block[:overlap]:
                    compared.update(block[:overlap])
                else:
                    same = next(i for i in range(overlap) if mine[i] != block[i])
                    compared.update(block[:same])
                    cut_at = position + same
                    say(
                        f"the partial file differs from what {source} sends from byte "
                        f"{cut_at:,}: its {partial.size - cut_at:,} bytes from there are "
                        "not of this file, discarded"
                    )
                    partial.cut(cut_at, compared.copy(), earlier=True)
                    overlap = same
            rest = block[overlap:]
            if rest:
                if written_from is None:
                    written_from = (partial.size, partial.digest.copy())
                partial.append(rest)
            if progress is not None:
                progress(start + received, item.size)
        if failed is not None:  # what arrived before it is written: the next try resumes
            raise _Transient(
                f"the transfer from {source} was cut at {_size(start + received)} "
                f"({type(failed).__name__})"
            )
        if expected is not None and received < expected:
            raise _Transient(
                f"{source} sent {_size(start + received)} of the "
                f"{_size(start + expected)} it announced (truncated)"
            )


__all__ = [
    "ARTIFACTS",
    "INCEPTION",
    "MIRROR_ENV",
    "URL_ENV_PREFIX",
    "Artifact",
    "DigestMismatchError",
    "FetchError",
    "FetchResult",
    "InPlace",
    "SizeMismatchError",
    "TransferError",
    "artifact",
    "fetch",
    "look_in_place",
    "resolve_url",
    "sha256_file",
]
