"""What identifies a store's contents, so that a re-run can tell what it has already computed.

* :func:`listing_digest` (the default): BLAKE2b over every stored file's path, size and
  modification time. A listing, not a read: a nightly re-run over terabytes costs a directory
  walk. Writing a chunk changes its size or mtime, so a changed store gets a new digest.
* :func:`content_digest` (``--verify``): BLAKE2b over every file's bytes as stored
  (compressed chunks are hashed compressed, never decoded). It also catches a change that kept
  sizes and times (a copy that preserved them), at the price of reading everything once.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from shardeval.pipeline.errors import StoreError


def _files(location: str) -> tuple[Any, str, list[str]]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(location)
    if not fs.exists(root):
        raise StoreError(f"store {location!r} does not exist")
    files = sorted(fs.find(root)) if fs.isdir(root) else [root]
    return fs, root, files


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root) if path != root else os.path.basename(path)


def listing_digest(location: str) -> str:
    """Digest of a store's listing: each file's relative path, size and modification time."""
    fs, root, files = _files(location)
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        info = fs.info(path)
        mtime = info.get("mtime", info.get("LastModified", info.get("last_modified", "")))
        etag = info.get("ETag", info.get("etag", ""))
        digest.update(f"{_relative(path, root)}\0{info.get('size')}\0{mtime}\0{etag}\n".encode())
    return digest.hexdigest()


def content_digest(location: str) -> str:
    """Digest of a store's bytes: every stored file's relative path and contents."""
    fs, root, files = _files(location)
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(_relative(path, root).encode())
        with fs.open(path, "rb") as fh:
            while chunk := fh.read(1 << 23):
                digest.update(chunk)
    return digest.hexdigest()
