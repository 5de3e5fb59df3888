"""Outputs: written atomically, and never over something the command did not create.

A write goes to a temporary sibling, which is renamed over the target once complete, so an
interrupted run leaves either the old output or the new one, never half of one. Before that,
:func:`claim_output` refuses a target that exists and is not of the kind the command writes
(a feature store where statistics were asked for, a README where a report was), and one of
the right kind unless the caller asked to overwrite it.

A stream is different (:func:`is_stream`: ``/dev/stdout``, a pipe, a FIFO, a terminal,
``/dev/null``): it is written in place, without being read first (reading ``/dev/stdout``
reads the command's own pipe, and opening a FIFO to read it waits for a writer: both hang)
and without a temporary file (nothing can be renamed onto a FIFO, and renaming onto
``/dev/stdout`` would replace the system's link). It holds nothing to replace.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from shardeval.pipeline.errors import ShardevalError


class OutputExistsError(ShardevalError):
    """The output path holds something the command may not replace."""


#: Paths of this process's standard descriptors.
_STANDARD_DESCRIPTORS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def descriptor_of(path: str | os.PathLike[str]) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout`` → 1, ``/dev/fd/3``
    → 3, ``/proc/self/fd/4`` → 4), or None. Decided from the path alone: these are links to
    whatever the descriptor is (a pipe, a terminal, or the file the shell redirected to)."""
    spelled = os.path.abspath(os.fspath(path))  # symbolic links left as they are
    if spelled in _STANDARD_DESCRIPTORS:
        return _STANDARD_DESCRIPTORS[spelled]
    pattern = rf"/(?:dev/fd|proc/self/fd|proc/thread-self/fd|proc/{os.getpid()}/fd)/(\d+)"
    match = re.fullmatch(pattern, spelled)
    return int(match.group(1)) if match else None


def is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether the output ``path`` is a stream: one of this process's descriptors, a pipe or
    FIFO, a character device (a terminal, ``/dev/null``) or a socket. Decided from the path and
    ``os.stat``, which open nothing (opening a FIFO can wait for ever)."""
    if descriptor_of(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def claim_output(
    path: str | os.PathLike[str],
    kind: str,
    is_kind: Callable[[str], bool],
    overwrite: bool,
    *,
    streams: bool = False,
) -> None:
    """Check that ``path`` may be written: absent, or of ``kind`` and ``overwrite`` given; or
    a stream (:func:`is_stream`) when the output is one file (``streams``), which is then
    neither read nor replaced.

    Args:
        path: the output location.
        kind: what the command writes, for the message (e.g. "statistics group").
        is_kind: whether an existing ``path`` is such an output (never raises).
        overwrite: the user asked to replace an existing output of that kind.
        streams: the output is a single file, which :func:`atomic_file` writes into a stream
            in place; otherwise (a folder) a stream is refused.

    Raises:
        OutputExistsError: ``path`` exists and may not be replaced, or is a stream and the
            output is a folder.
    """
    path = os.fspath(path)
    if is_stream(path):
        if streams:
            return  # never read: a pipe's reader is the user's (| jq), a FIFO may have none yet
        raise _stream_refused(path, kind)
    if not os.path.lexists(path):
        return
    if not is_kind(path):
        raise OutputExistsError(
            f"{path!r} already exists and is not a {kind}; shardeval replaces only what it "
            "wrote itself: choose another output path"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{path!r} already exists (a {kind}); pass «overwrite=True» to replace it"
        )


def _stream_refused(path: str, kind: str) -> OutputExistsError:
    return OutputExistsError(
        f"{path!r} is a pipe, FIFO or device, and a {kind} is a folder of files, which cannot "
        "be written into one: choose a path on disk"
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
def locked(
    lock_path: str, exclusive: bool, waiting: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold an advisory lock on ``lock_path`` (created beside what it guards) for the block:
    exclusive for a writer, shared for a reader. A reader in a place it cannot write goes
    without (nobody can be writing there either). ``waiting``, when given, is called once
    before this process waits for another that holds the lock (so it can say so).

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
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:  # another process holds it: say so, then wait
            if waiting is not None:
                waiting()
            fcntl.flock(fh, mode)
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


class _Forward(io.RawIOBase):
    """Bytes written forward only: no ``tell``, no ``seek``. Writers that would use them then
    write sequentially (``zipfile`` with data descriptors, ``np.save`` chunk by chunk), as a
    pipe needs; a device such as ``/dev/null`` claims to seek but reports position 0, which
    would corrupt a zip's offsets."""

    def __init__(self, sink: IO[bytes]):
        super().__init__()
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sink.write(data)
        return memoryview(data).nbytes


@contextlib.contextmanager
def _stream(path: str, mode: str) -> Iterator[Any]:
    """Write into a stream in place. A descriptor path (``/dev/stdout``) writes through a copy
    of this process's descriptor: where the shell pointed it, at its offset (``>> log`` keeps
    the log; reopening the path would truncate it), after what Python has buffered for it."""
    fd = descriptor_of(path)
    if fd is None:
        handle = open(path, mode)  # noqa: SIM115  # a FIFO opens once a reader is there
    else:
        for standard in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                standard.flush()
        handle = os.fdopen(os.dup(fd), mode)
    with handle as fh:
        yield _Forward(fh) if "b" in mode else fh
        fh.flush()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path``. A stream
    (:func:`is_stream`) is written in place instead: it cannot be renamed onto."""
    path = os.fspath(path)
    if is_stream(path):
        with _stream(path, mode) as fh:
            yield fh
        return
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

    Raises:
        OutputExistsError: ``path`` is a stream (a device is never moved aside).
    """
    path = os.fspath(path)
    if is_stream(path):
        raise _stream_refused(path, "store")
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
