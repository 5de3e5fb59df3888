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
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict

from shardeval.pipeline.io.fetch_artifacts import (
    ARTIFACTS,
    INCEPTION,
    MIRROR_ENV,
    URL_ENV_PREFIX,
    Artifact,
    DigestMismatchError,
    FetchError,
    FetchResult,
    SizeMismatchError,
    TransferError,
    artifact,
    digest_matches,
    expected_digest,
    resolve_url,
    size_text,
)
from shardeval.pipeline.io.fetch_in_place import (
    InPlace,
    in_place_result,
    kind_words,
    look_in_place,
    sha256_file,
)
from shardeval.pipeline.io.fetch_partial import (
    HARD_LINK,
    NotOurs,
    Partial,
    locked_part,
    make_folder,
    put_in_place,
    remove_file,
)
from shardeval.pipeline.io.fetch_transfer import (
    Fatal,
    Progress,
    Restart,
    Transient,
    WrongSize,
    transfer,
)

#: The suffix of the partial file beside a target.
PART_SUFFIX = ".part"

#: Bytes read from the connection (and hashed, and written) at a time.
_CHUNK = 1 << 20
#: Seconds before the first retry of a transfer; the n-th waits n times as long.
_RETRY_DELAY = 1.0


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
        return in_place_result(item, here, started)
    created = make_folder(folder)
    part = target + PART_SUFFIX
    try:
        first = os.lstat(part)
    except FileNotFoundError:
        first = None
    if first is not None and (not stat.S_ISREG(first.st_mode) or first.st_nlink != 1):
        what = kind_words(first.st_mode)
        raise FetchError(_not_ours(item, part, what if what != "a file" else HARD_LINK))
    partial: Partial | None = None
    try:
        with locked_part(part, created) as (fh, made):
            try:
                partial = Partial(fh, _CHUNK)
                here = look_in_place(item)
                if here.kind != "missing":  # another run put it in place while this one waited
                    return in_place_result(item, here, started)
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
                    remove_file(part)
    except NotOurs as exc:
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


def _kept(partial: Partial, part: str) -> str:
    """What became of the partial file after a failure that does not prove it wrong."""
    if partial.size == 0:
        return "nothing was kept"
    return f"the partial file {part} ({size_text(partial.size)}) is kept: fetch again to resume"


def _download(
    item: Artifact,
    source: str,
    target: str,
    part: str,
    partial: Partial,
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
        partial.size == item.size and not digest_matches(item, partial.digest.hexdigest())
    ):
        why = (
            f"is longer than the pinned file ({partial.size:,} bytes, not {item.size:,})"
            if partial.size > item.size
            else f"is as long as the pinned file but its SHA-256 is "
            f"{partial.digest.hexdigest()}, not {expected_digest(item)}"
        )
        partial.cut(0, hashlib.sha256(), earlier=True)
        say(f"the partial file {part} {why}: not of this file, discarded")
    elif partial.resumed:
        say(f"resuming {part} at {size_text(partial.resumed)}")
    attempt = 0
    restarted = False  # asked from the first byte once: a mismatch then is final
    from_start = False
    while True:
        if partial.size == item.size and not from_start:
            # A partial file already whole (a run stopped before putting it in place) is not
            # downloaded again.
            partial.sync()
            if digest_matches(item, partial.digest.hexdigest()):
                break
            if partial.resumed and not restarted:
                # An earlier run's bytes and this server's do not make the file: ask for it from
                # its first byte, keeping what agrees with the server.
                say(f"{source} and the partial file do not make the file; asking for it whole")
                restarted = from_start = True
                continue
            found = partial.digest.hexdigest()
            partial.cut(0, hashlib.sha256(), earlier=partial.resumed > 0)
            remove_file(part)
            raise DigestMismatchError(
                f"{item.name}: {source} sent {size_text(item.size)} with SHA-256 {found}, not "
                f"{expected_digest(item)}; refused, nothing was kept"
            )
        try:
            transfer(item, source, partial, from_start, timeout, progress, say, _CHUNK)
            from_start = False
            if partial.size < item.size:
                raise Transient(
                    f"the transfer from {source} ended at {size_text(partial.size)}, short of the "
                    f"pinned {size_text(item.size)}"
                )
        except Restart:
            if restarted:
                raise TransferError(
                    f"{item.name}: {source} does not serve the byte range asked for, even from "
                    f"the start; {_kept(partial, part)}"
                ) from None
            restarted = from_start = True
        except Transient as exc:
            attempt += 1
            if attempt > retries:
                raise TransferError(
                    f"{item.name}: {exc} (after {attempt} attempt{'s' if attempt > 1 else ''}); "
                    f"{_kept(partial, part)}",
                    operating_failure=exc.operating_failure,
                ) from None
            say(f"{exc}; trying again ({attempt} of {retries})")
            time.sleep(_RETRY_DELAY * attempt)
        except Fatal as exc:
            raise TransferError(
                f"{item.name}: {exc}; {_kept(partial, part)}", operating_failure=False
            ) from None
        except WrongSize as exc:
            raise SizeMismatchError(f"{item.name}: {exc}; {_kept(partial, part)}") from None
    sha256 = partial.digest.hexdigest()
    if not put_in_place(part, target):
        here = look_in_place(item)
        if not here.pinned:
            raise FetchError(
                f"{item.name}: {target!r} appeared while this download ran (another program "
                f"wrote it: {here.words(item)}); it is not replaced. The checked download is "
                f"kept as {part!r}: move {target!r} aside and fetch again to put it in place"
            )
        remove_file(part)  # the same bytes as the file now in place
        return in_place_result(item, here, time.perf_counter())
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
