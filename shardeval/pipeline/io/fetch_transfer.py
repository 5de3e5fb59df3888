"""The HTTP transfer of a fetch: the rest of a partial file asked for with ``Range``, bounded by
the pinned size, and a body that starts before the partial file's end compared with it byte for
byte. Only ``http://`` and ``https://`` URLs are read (through the proxies the environment
names, as ``urllib`` reads them)."""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from shardeval.pipeline.io.fetch_artifacts import Artifact, size_text
from shardeval.pipeline.io.fetch_partial import Partial

#: HTTP statuses worth asking again: the server may answer next time.
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")

Progress = Callable[[int, int], None]


class Restart(Exception):
    """The server cannot continue the partial file (it sent another range): ask for the file
    from its first byte, comparing what the partial file holds."""


class Transient(Exception):
    """A transfer that may succeed if asked again (cut short, a 5xx, unreachable)."""

    def __init__(self, message: str, operating_failure: bool = True) -> None:
        super().__init__(message)
        self.operating_failure = operating_failure


class Fatal(Exception):
    """A transfer that asking again will not mend (a 4xx)."""


class WrongSize(Exception):
    """The server's file is not of the pinned size (announced, or sent)."""


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


def transfer(
    item: Artifact,
    source: str,
    partial: Partial,
    from_start: bool,
    timeout: float,
    progress: Progress | None,
    say: Callable[[str], None],
    chunk: int,
) -> None:
    """Append to ``partial`` what ``source`` holds beyond it, up to the pinned size and never
    past it. A body that starts before the partial file's end (``from_start``, or a server
    that ignores ``Range``) is compared with the partial file where they overlap: from the
    first byte that differs, the partial file's bytes are discarded (and said so) and the
    server's written. The connection is read ``chunk`` bytes at a time.

    Raises:
        Restart: the server cannot continue this partial file.
        Transient: unreachable, a transient HTTP error, or fewer bytes than announced.
        Fatal: another HTTP error.
        WrongSize: a length other than the pinned size, announced or sent.
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
            raise WrongSize(
                f"{source} has no bytes past {offset:,} (HTTP 416{has}): not the pinned file "
                f"of {item.size:,} bytes; refused"
            ) from None
        what = f"{source} answered HTTP {exc.code} {exc.reason}"
        if exc.code in _TRANSIENT:
            raise Transient(what) from None
        raise Fatal(what) from None
    except urllib.error.URLError as exc:
        raise Transient(f"{source} cannot be reached ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Transient(f"{source} cannot be reached ({exc})") from None
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        announced = int(length) if length and length.strip().isdigit() else None
        if status == 206 and offset:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                raise Restart()
            first, last, whole = match.groups()
            if (whole != "*" and int(whole) != item.size) or int(last) >= item.size:
                raise WrongSize(
                    f"{source} answers Content-Range {match.group(0)!r}: not the pinned file "
                    f"of {item.size:,} bytes; refused"
                )
            expected: int | None = int(last) - int(first) + 1
            start = offset
        elif status == 200:
            if announced is not None and announced != item.size:
                raise WrongSize(
                    f"{source} announces Content-Length {announced:,}: not the pinned "
                    f"{item.size:,} bytes; refused"
                )
            if offset:
                say(f"{source} does not resume downloads; comparing what it sends from the start")
            expected = announced
            start = 0
        else:
            raise Fatal(f"{source} answered HTTP {status} {response.reason}")
        wanted = item.size - start  # never more than the pinned file
        received = 0
        written_from: tuple[int, Any] | None = None  # size and digest before this body's writes
        compared = hashlib.sha256()  # of the server's bytes that agree with the partial file
        failed: BaseException | None = None
        while failed is None:
            block, failed = _read(
                response, min(chunk, wanted - received) if received < wanted else 1
            )
            if not block:
                break
            if received >= wanted:
                # More than the pinned file: what this body wrote is of another file.
                dropped = ""
                if written_from is not None:
                    dropped = (
                        f"; the {size_text(partial.size - written_from[0])} it sent are discarded"
                    )
                    partial.cut(*written_from, earlier=False)
                raise WrongSize(
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
            raise Transient(
                f"the transfer from {source} was cut at {size_text(start + received)} "
                f"({type(failed).__name__})"
            )
        if expected is not None and received < expected:
            raise Transient(
                f"{source} sent {size_text(start + received)} of the "
                f"{size_text(start + expected)} it announced (truncated)"
            )
