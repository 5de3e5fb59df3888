"""Outputs: written atomically, and never over something the command did not create.

A write goes to a temporary sibling, which is renamed over the target once complete, so an
interrupted run leaves either the old output or the new one, never half of one. Before that,
:func:`claim_output` refuses a target that exists and is not of the kind the command writes
(a feature store where statistics were asked for, a README where a report was), and one of
the right kind unless the caller asked to overwrite it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from pipeline.errors import ShardevalError


class OutputExistsError(ShardevalError):
    """The output path holds something the command may not replace."""


def claim_output(
    path: str | os.PathLike[str], kind: str, is_kind: Callable[[str], bool], overwrite: bool
) -> None:
    """Check that ``path`` may be written: absent, or of ``kind`` and ``overwrite`` given.

    Args:
        path: the output location.
        kind: what the command writes, for the message (e.g. "statistics group").
        is_kind: whether an existing ``path`` is such an output (never raises).
        overwrite: the user asked to replace an existing output of that kind.

    Raises:
        OutputExistsError: ``path`` exists and may not be replaced.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    if not is_kind(path):
        raise OutputExistsError(
            f"{path!r} already exists and is not a {kind}; shardeval replaces only what it "
            "wrote itself: choose another output path"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{path!r} already exists (a {kind}); pass --overwrite to replace it"
        )


def check_outside(output: str | os.PathLike[str], inputs: list[str]) -> None:
    """Refuse an output at or inside one of the command's inputs: writing it would change
    the input (a statistics group written into the feature store it describes, say).

    Raises:
        OutputExistsError: naming the output and the input.
    """
    out = os.path.realpath(os.fspath(output))
    for given in inputs:
        if "://" in given:
            continue  # a remote store: its path cannot be a local output's parent
        source = os.path.realpath(given)
        if out == source or out.startswith(source.rstrip(os.sep) + os.sep):
            raise OutputExistsError(
                f"{os.fspath(output)!r} is inside the input {given!r}: writing it would change "
                "the input; choose an output outside it"
            )


@contextlib.contextmanager
def locked(lock_path: str, exclusive: bool) -> Iterator[None]:
    """Hold an advisory lock on ``lock_path`` (created beside what it guards) for the block:
    exclusive for a writer, shared for a reader. A reader in a place it cannot write goes
    without (nobody can be writing there either).

    Raises:
        OSError: a writer cannot create the lock file.
    """
    import fcntl

    try:
        os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
        fh = open(lock_path, "a")  # noqa: SIM115  # held for the whole block
    except OSError:
        if exclusive:
            raise
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _umask() -> int:
    """This process's file-creation mask (read from /proc where it can be, without changing
    it; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _parent(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return parent


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path``."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=_parent(path)
    )
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path``.

    Callers check with :func:`claim_output` first that an existing ``path`` is theirs to
    replace.
    """
    path = os.fspath(path)
    parent = _parent(path)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # as mkdir would create it, not mkdtemp's 0700
        yield tmp
        if os.path.exists(path):
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
