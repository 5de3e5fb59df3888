"""Downloads of the files the encoders read, each checked against a digest pinned here.

Nothing is ever downloaded at import time or implicitly: only :func:`fetch` downloads, and
only what :data:`ARTIFACTS` lists, into the very place the encoders read it from
(:func:`shardeval.kernels.encoders.weights.inception_path` for the FID Inception).

How a file arrives:

* **Streamed to a partial file beside the target** (``<target>.part``), hashed (SHA-256) as
  it is written, flushed to disk, then **renamed into place** in one step: the target is never
  seen half-written, and it is always a file whose digest was checked.
* **Checked**: against the full SHA-256 where a public source pins it, else against the first
  8 hex digits that the file's name carries (torch hub's ``check_hash`` convention); the
  result says which (``verified``: ``sha256`` or ``sha256-prefix``).
* **Resumable**: a run that is interrupted (Ctrl-C, a killed process) leaves its partial file;
  the next run asks the server for the rest only (HTTP ``Range``), hashing the part it already
  has first. A server that ignores ``Range`` sends the whole file again, and a partial file
  that turns out to belong to another file is discarded and the file downloaded whole, once.
  Within one run, a transfer cut short is taken up again where it stopped (``retries``).
* **Refused in one line, leaving nothing**: a wrong digest, a transfer shorter than the
  server announced (or cut off for good), a server error: a :class:`FetchError`, and the
  partial file is removed. A target already in place is verified and kept when it is right;
  one with another digest is refused and never replaced (shardeval did not write it).
* **One writer**: the partial file is locked while it is written; a second run for the same
  file waits, then finds it in place.

Where from: ``url=`` given to :func:`fetch`; else the environment variable
``SHARDEVAL_FETCH_URL_<NAME>`` (``SHARDEVAL_FETCH_URL_INCEPTION``); else, when
``SHARDEVAL_FETCH_MIRROR`` is set, ``<mirror>/<file name>`` (a local mirror of the files, or
a test server); else the URL the artifact is published at. Only ``http://`` and ``https://``
URLs are read (through the proxies the environment names, as ``urllib`` reads them). The
digest checked is the pinned one whatever the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
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
_HEX = re.compile(r"[0-9a-f]+")

Progress = Callable[[int, int], None]


class FetchError(ShardevalError):
    """A file could not be fetched as it must be; nothing is left in place of it. Its message
    is one line naming the file, the URL and what went wrong."""


class DigestMismatchError(FetchError):
    """The bytes received are not the pinned file (another file at that URL, or a mirror that
    serves something else)."""


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
        digest_source: where the digest is published (for the record and the docs).
        folder: where it goes: a function, so that environment variables (``TORCH_HOME``)
            are read when it is fetched, not when this module is imported.
    """

    name: str
    title: str
    file_name: str
    url: str
    sha256: str
    digest_source: str
    folder: Callable[[], str]

    def __post_init__(self) -> None:
        if not _HEX.fullmatch(self.sha256) or len(self.sha256) not in (8, 64):
            raise ValueError(f"{self.name}: sha256 must be 8 or 64 lower-case hex digits")

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
            "verified": self.verification,
            "digest_source": self.digest_source,
            "path": self.path(),
        }


#: pytorch-fid's port of the TF Inception graph of 2015-12-05, from pytorch-fid's GitHub
#: release (the URL pytorch-fid's ``FID_WEIGHTS_URL`` names). The file name's 6726825d is the
#: prefix torch hub's ``check_hash`` checks; the whole SHA-256 is pinned in public code that
#: downloads this URL with a full check (snap-research/discoscene,
#: models/inception_model.py, ``_MODEL_URL_SHA256['tf_inception_v3']``), and the same
#: digest (95,628,359 bytes) is recorded by several independent projects that keep the file.
#: torch-fidelity's release ``v0.2.0/weights-inception-2015-12-05-6726825d.pth`` is recorded
#: with the same digest: a mirror (``url=``).
INCEPTION = Artifact(
    name="inception",
    title="the FID Inception weights (pytorch-fid's port of the TF Inception of 2015-12-05)",
    file_name=INCEPTION_FILE,
    url=(
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth"
    ),
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
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
            it was not of this file, or the server would not resume it).
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
    already_present: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        check = "SHA-256" if self.verified == "sha256" else "SHA-256 prefix (in its name)"
        if self.already_present:
            return f"{self.name}: {self.path} is already in place ({check} verified)"
        resumed = f", resumed at {_size(self.resumed_from)}" if self.resumed_from else ""
        return (
            f"{self.name}: {self.path} ({_size(self.size)}, {check} verified{resumed}) "
            f"from {self.url} in {self.seconds:.1f} s"
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


class _Restart(Exception):
    """The partial file cannot be continued (the server sent another range, or none fits):
    start again from its first byte."""


class _Transient(Exception):
    """A transfer that may succeed if asked again (cut short, a 5xx, unreachable)."""

    def __init__(self, message: str, operating_failure: bool = True) -> None:
        super().__init__(message)
        self.operating_failure = operating_failure


class _Fatal(Exception):
    """A transfer that asking again will not mend (a 4xx)."""


class _Partial:
    """The partial file, open and locked, with the SHA-256 of the bytes it holds, the bytes an
    earlier run left in it (``resumed``: 0 once it is started again) and the bytes received
    here (``received``)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        fh.seek(0)
        while block := fh.read(_CHUNK):
            self.digest.update(block)
        self.size = self.resumed = fh.tell()
        self.received = 0

    def append(self, block: bytes) -> None:
        self.fh.write(block)
        self.digest.update(block)
        self.size += len(block)
        self.received += len(block)

    def reset(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.digest = hashlib.sha256()
        self.size = self.resumed = 0

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())


@contextlib.contextmanager
def _locked_part(part: str) -> Iterator[IO[bytes]]:
    """The partial file, created if missing, opened for reading and appending and held under
    an exclusive lock; a partial file another run renamed into place or removed while this one
    waited is opened anew."""
    import fcntl

    while True:
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o666)
        fh = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                here = os.stat(part)
            except FileNotFoundError:
                here = None
            mine = os.fstat(fd)
            if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                fh.seek(0, os.SEEK_END)
                yield fh
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


def fetch(
    name: str | Artifact,
    *,
    url: str | None = None,
    retries: int = 2,
    timeout: float = 60.0,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> FetchResult:
    """Download an artifact into place, checked against its pinned digest; or verify the one
    already there.

    Args:
        name: an artifact's name (see :data:`ARTIFACTS`: ``inception``), or an
            :class:`Artifact`.
        url: download from here instead (a mirror); the digest is checked all the same.
        retries: how many more times a transfer cut short, a 5xx answer or an unreachable
            server is tried (each taking up where the last stopped when the server allows).
        timeout: seconds a connection may stay silent before it counts as cut.
        progress: called with (bytes in the partial file, bytes of the whole file) as they
            arrive.
        log: called with notices (resuming, retrying).

    Returns:
        :class:`FetchResult`.

    Raises:
        DigestMismatchError: the bytes received are not the pinned file; nothing is left.
        TransferError: unreachable, an HTTP error, or fewer bytes than announced, after the
            retries; nothing is left.
        FetchError: an unknown name, a URL that is not http(s), the target in place with
            another digest (never replaced), a folder that cannot be written.
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
    if os.path.isfile(target):
        return _in_place(item, target, started)
    created = _make_folder(folder)
    part = target + PART_SUFFIX
    done = False
    try:
        with _locked_part(part) as fh:
            try:
                if os.path.isfile(target):  # another run put it in place while this one waited
                    _remove(part)
                    return _in_place(item, target, started)
                result = _download(item, source, target, part, fh, retries, timeout, progress, log)
                done = True
                return FetchResult(**{**asdict(result), "seconds": time.perf_counter() - started})
            except Exception:
                # Refused or failed: nothing is left. (An interruption, which is no Exception,
                # keeps the partial file for the next run to resume.)
                _remove(part)
                raise
    except OSError as exc:
        raise FetchError(
            f"{item.name}: {part!r} cannot be written ({exc.strerror or exc}); "
            f"is {folder!r} writable and is there room?"
        ) from exc
    finally:
        if not done and not os.path.exists(part):
            for path in created:  # the folders this call made, if they stayed empty
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def _in_place(item: Artifact, target: str, started: float) -> FetchResult:
    """The target already there: kept when its digest is right, refused otherwise."""
    try:
        found = sha256_file(target)
    except OSError as exc:
        raise FetchError(f"{item.name}: {target!r} cannot be read ({exc.strerror})") from exc
    if not _matches(item, found):
        raise FetchError(
            f"{item.name}: {target!r} is already there with SHA-256 {found}, not "
            f"{_expected(item)}; it is not replaced (shardeval did not write it): move it "
            "aside and fetch again"
        )
    return FetchResult(
        name=item.name,
        path=target,
        url=None,
        sha256=found,
        verified=item.verification,
        size=os.path.getsize(target),
        downloaded=0,
        resumed_from=0,
        already_present=True,
        seconds=time.perf_counter() - started,
    )


def _download(
    item: Artifact,
    source: str,
    target: str,
    part: str,
    fh: IO[bytes],
    retries: int,
    timeout: float,
    progress: Progress | None,
    log: Callable[[str], None] | None,
) -> FetchResult:
    """Fill the locked partial file from ``source``, check it, rename it into place."""
    partial = _Partial(fh)
    if partial.resumed and log:
        log(f"{item.name}: resuming {part} at {_size(partial.resumed)}")
    attempt = 0
    restarted = False
    # A partial file that is already the whole file (a run stopped before its rename) is not
    # downloaded again.
    complete = bool(partial.size) and _matches(item, partial.digest.hexdigest())
    while not complete:
        try:
            _transfer(source, partial, timeout, progress, log)
        except _Restart:
            if restarted:
                raise TransferError(
                    f"{item.name}: {source} does not serve the byte range asked for, even from "
                    "the start"
                ) from None
            restarted = True
            partial.reset()
            continue
        except _Transient as exc:
            attempt += 1
            if attempt > retries:
                raise TransferError(
                    f"{item.name}: {exc} (after {attempt} attempt{'s' if attempt > 1 else ''}); "
                    "nothing was kept",
                    operating_failure=exc.operating_failure,
                ) from None
            if log:
                log(f"{item.name}: {exc}; trying again ({attempt} of {retries})")
            time.sleep(_RETRY_DELAY * attempt)
            continue
        except _Fatal as exc:
            raise TransferError(f"{item.name}: {exc}", operating_failure=False) from None
        partial.sync()
        if _matches(item, partial.digest.hexdigest()):
            break
        if partial.resumed and not restarted:
            # The partial file an earlier run left was not the start of this file (the file
            # at the URL changed, or another URL was given): download it whole, once.
            if log:
                log(f"{item.name}: the partial file was not of this file; downloading it whole")
            restarted = True
            partial.reset()
            continue
        raise DigestMismatchError(
            f"{item.name}: {source} sent {_size(partial.size)} with SHA-256 "
            f"{partial.digest.hexdigest()}, not "
            f"{_expected(item)}; refused, nothing was kept"
        )
    os.replace(part, target)
    _sync_folder(os.path.dirname(target))
    return FetchResult(
        name=item.name,
        path=target,
        url=source,
        sha256=partial.digest.hexdigest(),
        verified=item.verification,
        size=partial.size,
        downloaded=partial.received,
        resumed_from=partial.resumed,
        already_present=False,
        seconds=0.0,
    )


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"shardeval/{version('shardeval')}"
    except PackageNotFoundError:
        return "shardeval"


def _transfer(
    source: str,
    partial: _Partial,
    timeout: float,
    progress: Progress | None,
    log: Callable[[str], None] | None,
) -> None:
    """Append to ``partial`` what ``source`` holds beyond it, up to the end.

    Raises:
        _Restart: the server cannot continue this partial file.
        _Transient: unreachable, a transient HTTP error, or fewer bytes than announced.
        _Fatal: another HTTP error.
    """
    offset = partial.size
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(source, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # http(s) only: resolve_url
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            raise _Restart() from None  # the partial file is not shorter than the file
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
        if status == 206 and offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                raise _Restart()
            first, last, whole = match.groups()
            expected: int | None = int(last) - int(first) + 1
            total = int(whole) if whole != "*" else None
        elif status == 200:
            if offset:
                if log:
                    log(f"{source} does not resume downloads; downloading it whole")
                partial.reset()
                offset = 0
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            total = expected
        else:
            raise _Fatal(f"{source} answered HTTP {status} {response.reason}")
        received = 0
        while True:
            try:
                block = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(
                    f"the transfer from {source} was cut at {_size(offset + received)} "
                    f"({type(exc).__name__})"
                ) from None
            if not block:
                break
            partial.append(block)
            received += len(block)
            if progress is not None:
                progress(partial.size, max(total or 0, partial.size))
        if expected is not None and received < expected:
            raise _Transient(
                f"{source} sent {_size(offset + received)} of the "
                f"{_size(offset + expected)} it announced (truncated)"
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
    "TransferError",
    "artifact",
    "fetch",
    "resolve_url",
    "sha256_file",
]
