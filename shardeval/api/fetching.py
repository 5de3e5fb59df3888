"""Downloads the encoders need: ``shardeval.fetch("inception")`` is ``shardeval fetch
inception``. Nothing is downloaded anywhere else, at import or implicitly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardeval.pipeline.io.fetch import FetchResult


def fetch(
    name: str = "inception",
    *,
    url: str | None = None,
    retries: int = 2,
    timeout: float = 60.0,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FetchResult:
    """Download a file the encoders read into the place they read it from, checked against
    its pinned SHA-256; or verify the one already there.

    ``inception``: pytorch-fid's FID Inception weights,
    ``pt_inception-2015-12-05-6726825d.pth``, into torch hub's checkpoint folder
    (``$TORCH_HOME/hub/checkpoints``), where :func:`shardeval.extract` finds them.

    The download goes to a partial file beside the target, is hashed as it arrives, and is
    put into place only once its digest is right; no more than the pinned size is ever
    written. An interrupted or failed download keeps its partial file and the next call
    resumes where it stopped (HTTP ``Range``); a partial file is discarded only when it is
    proven not of this file (and the result or error says so). A wrong digest or size raises
    and leaves nothing; something in place that is not the pinned file is refused, never
    replaced.

    Args:
        name: what to fetch (:func:`fetchable` lists the names).
        url: download from this URL instead (a mirror); default ``$SHARDEVAL_FETCH_URL_<NAME>``,
            else ``$SHARDEVAL_FETCH_MIRROR/<file name>``, else where the file is published.
        retries: further attempts after a transfer cut short, a 5xx answer or an unreachable
            server (each resuming where the last stopped).
        timeout: seconds a connection may stay silent.
        progress: called with (bytes so far, bytes in all).
        log: called with notices (resuming, retrying).

    Returns:
        :class:`~shardeval.pipeline.io.fetch.FetchResult`: ``path``, ``sha256``,
        ``verified`` (``sha256``, or ``sha256-prefix`` where only the 8 hex digits in the
        name are pinned), ``already_present``, ``resumed_from``, ``discarded``; ``to_dict()``,
        ``summary()``.

    Raises:
        DigestMismatchError, SizeMismatchError, TransferError, FetchError: see
            :func:`shardeval.pipeline.io.fetch.fetch`; none puts anything in place.
    """
    from shardeval.pipeline.io.fetch import fetch as fetch_file

    return fetch_file(name, url=url, retries=retries, timeout=timeout, progress=progress, log=log)


def fetchable_names() -> list[str]:
    """The names :func:`fetch` accepts (``inception``), without looking at any file."""
    from shardeval.pipeline.io.fetch import ARTIFACTS

    return list(ARTIFACTS)


def fetchable(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """What :func:`fetch` can download, and what is in its place now.

    Each row: name, title, file, URL (the one that would be used, environment overrides
    included), pinned digest and size, the digest's source, where it goes; and what is there:
    ``present`` (something is), ``pinned_in_place`` (it is the pinned file: its size and
    SHA-256 are the pinned ones), ``in_place`` (that state in words), ``found_size`` and
    ``found_sha256`` (of a file there; the SHA-256 only when its size is the pinned one),
    ``check_seconds`` (what the check cost: it reads a file of the pinned size whole, about
    0.1 to 0.5 s for the Inception's 91 MiB).

    Args:
        names: only these (default: all).

    Returns:
        One dict per artifact, JSON-ready.

    Raises:
        FetchError: a name that is not fetchable.

    Example:
        >>> from shardeval.api.fetching import fetchable
        >>> [(row["name"], row["in_place"]) for row in fetchable()]  # doctest: +SKIP
        [('inception', 'present, the pinned file: SHA-256 of 95,628,359 bytes checked in 0.2 s')]
    """
    from shardeval.pipeline.io.fetch import ARTIFACTS, artifact, look_in_place, resolve_url

    items = [artifact(n) for n in names] if names is not None else list(ARTIFACTS.values())
    rows = []
    for item in items:
        row = item.describe()
        row["url"] = resolve_url(item)
        here = look_in_place(item)
        row["present"] = here.kind != "missing"
        row["pinned_in_place"] = here.pinned
        row["in_place"] = here.words(item)
        row["found_size"] = here.size
        row["found_sha256"] = here.sha256
        row["check_seconds"] = here.seconds
        rows.append(row)
    return rows
