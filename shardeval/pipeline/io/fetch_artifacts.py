"""What :func:`shardeval.pipeline.io.fetch.fetch` can download: the pinned table (each file's
URL, SHA-256 and size), where a file is downloaded from, and what a fetch returns or raises.

Where from: ``url=`` given to :func:`~shardeval.pipeline.io.fetch.fetch`; else the environment
variable ``SHARDEVAL_FETCH_URL_<NAME>`` (``SHARDEVAL_FETCH_URL_INCEPTION``); else, when
``SHARDEVAL_FETCH_MIRROR`` is set, ``<mirror>/<file name>`` (a local mirror of the files, or a
test server); else the URL the artifact is published at. The digest and size checked are the
pinned ones whatever the URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from shardeval.kernels.encoders.weights import INCEPTION_FILE, inception_path
from shardeval.pipeline.errors import ShardevalError

#: The environment variable naming a base URL that serves every artifact by its file name.
MIRROR_ENV = "SHARDEVAL_FETCH_MIRROR"

#: Prefix of the environment variables giving one artifact's URL (``..._INCEPTION``).
URL_ENV_PREFIX = "SHARDEVAL_FETCH_URL_"

_HEX = re.compile(r"[0-9a-f]+")


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
    """A file :func:`~shardeval.pipeline.io.fetch.fetch` can download.

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

#: Everything :func:`~shardeval.pipeline.io.fetch.fetch` can download, by name. The ViT
#: encoders' Hugging Face snapshots are not here: no public source pins their files' digests.
ARTIFACTS: dict[str, Artifact] = {INCEPTION.name: INCEPTION}


@dataclass(frozen=True)
class FetchResult:
    """What :func:`~shardeval.pipeline.io.fetch.fetch` did.

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
        resumed = f", resumed at {size_text(self.resumed_from)}" if self.resumed_from else ""
        discarded = (
            f", {size_text(self.discarded)} of an earlier partial file that were not of this "
            "file discarded"
            if self.discarded
            else ""
        )
        return (
            f"{self.name}: {self.path} ({size_text(self.size)}, {check} verified{resumed}"
            f"{discarded}) from {self.url} in {self.seconds:.1f} s"
        )


def size_text(n: int) -> str:
    """``n`` bytes for a message: in MiB from 1 MiB, else in bytes."""
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


def digest_matches(item: Artifact, found: str) -> bool:
    """Whether the SHA-256 ``found`` is the pinned one (or starts with the pinned prefix)."""
    return found == item.sha256 if item.full_digest else found.startswith(item.sha256)


def expected_digest(item: Artifact) -> str:
    """The pinned digest, in words, for a message."""
    if item.full_digest:
        return f"SHA-256 {item.sha256}"
    return (
        f"a SHA-256 starting {item.sha256} (the prefix its name carries; no full digest is pinned)"
    )
