"""A history's versions on disk, switched in one step, and reading one whole.

``HISTORY`` is a symbolic link to a complete version under ``HISTORY.versions/``; a writer
writes the next version beside the current one (under a temporary name, renamed when complete),
then replaces the link with one ``rename``, which is atomic. A crash at any point leaves the old
history or the new one, and a link lost between steps is recovered from the newest complete
version. Writers hold an exclusive lock (``HISTORY.lock``); readers a shared one, so they always
see one whole version. The version before the current one is kept for readers that do not lock
(``xr.open_zarr(HISTORY)``). A Zarr store of another kind (features, statistics) is named for
what it is, never called a damaged history.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any

from shardeval.pipeline.errors import ShardevalError

FORMAT = "shardeval.history"
#: 3: per-metric provenance (``METRIC.provenance``); rows are merged, never replaced whole.
FORMAT_VERSION = 3

_VERSION = re.compile(r"^v(\d{6,})$")

#: History attribute: every chunk is stored (so a missing one is damage, not fill values).
ALL_CHUNKS_ATTR = "all_chunks_written"


class HistoryError(ShardevalError):
    """A history cannot be used: damaged, of another kind, or of other features."""


def _other_kind(where: str) -> tuple[str, str] | None:
    """What a Zarr store that is not a history is ("a feature store") and holds, or None when
    it may be a history (it says so, or cannot be opened as Zarr:
    :meth:`HistoryVersions._read` names that damage)."""
    import zarr

    from shardeval.api.stores import STATISTICS_FORMAT

    try:
        node = zarr.open(where, mode="r", use_consolidated=False)
    except Exception:  # zarr raises many types for a store it cannot open
        return None
    if isinstance(node, zarr.Array):
        return "a feature store", f"a Zarr array of shape {tuple(node.shape)}"
    kind = node.attrs.get("format")
    if kind == FORMAT:
        return None
    if kind == STATISTICS_FORMAT:
        return "a statistics group", "mean and m2, as `shardeval stats` writes them"
    try:
        arrays = dict(node.arrays())
    except Exception:
        return None
    if "name" in arrays and "fingerprint" in arrays:
        return None  # a history without its format attribute: _read says what it lacks
    features = sorted(name for name, array in arrays.items() if array.ndim == 2)
    if features:
        return "a feature store", f"a Zarr group holding {features}"
    return None


class HistoryVersions:
    """The versions of the history at ``path`` (a trailing slash is ignored): locking, the
    current version, switching to a new one, reading one whole."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.path.normpath(os.fspath(path))
        self.versions_dir = self.path + ".versions"
        self.lock_path = self.path + ".lock"

    def _locked(self, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        from shardeval.pipeline.io.atomic import locked

        return locked(self.lock_path, exclusive)

    def _versions(self) -> list[str]:
        """Complete versions, oldest first."""
        try:
            names = os.listdir(self.versions_dir)
        except FileNotFoundError:
            return []
        numbered = sorted((int(m.group(1)), n) for n in names if (m := _VERSION.match(n)))
        return [os.path.join(self.versions_dir, n) for _, n in numbered]

    def _current(self) -> str | None:
        """The directory holding the current version (the link's target, a history of the
        first format, or the newest complete version when a crash lost the link)."""
        if os.path.islink(self.path):
            target = os.path.realpath(self.path)
            ours = os.path.realpath(self.versions_dir)
            if os.path.dirname(target) != ours:
                # A link the user made (to a history elsewhere, or to a file): switching
                # versions would replace it and leave its target behind.
                raise HistoryError(
                    f"{self.path!r} is a symbolic link to {target!r}, not a history's own "
                    "version link; give the history's real path"
                )
            if os.path.isdir(target):
                return target
        elif os.path.isdir(self.path):
            return self.path
        elif os.path.lexists(self.path):
            raise HistoryError(f"{self.path!r} exists and is not a history; choose another path")
        found = self._versions()
        return found[-1] if found else None

    def _switch(self, version: str) -> None:
        """Point the history at ``version`` in one rename."""
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            # A history of the first format: keep it as version 0 (a crash right after this
            # rename is recovered by _current, which then finds the newest version).
            os.replace(self.path, os.path.join(self.versions_dir, f"v{0:06d}"))
        link = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.link")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(os.path.relpath(version, os.path.dirname(self.path) or "."), link)
        os.replace(link, self.path)

    def _collect(self, current: str) -> None:
        """Remove versions older than the one before ``current``, and unfinished ones."""
        found = self._versions()
        keep = set(found[-2:]) | {current}
        for version in found:
            if version not in keep:
                shutil.rmtree(version, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.versions_dir):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.versions_dir, name), ignore_errors=True)

    def _write_version(self, new: Any) -> None:
        """Write the Dataset ``new`` as the next version, then point the history at it and
        drop the versions no reader needs (under the caller's exclusive lock)."""
        os.makedirs(self.versions_dir, exist_ok=True)
        numbers = [int(os.path.basename(v)[1:]) for v in self._versions()]
        version = os.path.join(self.versions_dir, f"v{max(numbers, default=0) + 1:06d}")
        staging = os.path.join(self.versions_dir, f".tmp-{os.path.basename(version)}")
        shutil.rmtree(staging, ignore_errors=True)
        new.to_zarr(staging, mode="w", consolidated=False, zarr_format=2, write_empty_chunks=True)
        os.replace(staging, version)  # a version appears complete or not at all
        self._switch(version)
        self._collect(version)

    # -- reading ------------------------------------------------------------------------------

    def _read(self, where: str) -> Any:
        import xarray as xr

        self._refuse_other_kinds(where)
        self._check_complete(where)
        try:
            with xr.open_zarr(where, consolidated=False) as ds:
                loaded = ds.load()
        except Exception as exc:  # zarr, numcodecs and xarray raise many types
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise HistoryError(
                f"history {self.path!r} cannot be read ({reason}); it is damaged: move it aside "
                "and run the job again to start a new one"
            ) from exc
        if loaded.attrs.get("format") != FORMAT:
            raise HistoryError(
                f"{self.path!r} is a Zarr store but not a shardeval history (format="
                f"{loaded.attrs.get('format')!r}); choose another path"
            )
        missing = [v for v in ("name", "step", "fingerprint") if v not in loaded.variables]
        if missing:
            raise HistoryError(f"history {self.path!r} lacks {missing}; it is damaged")
        try:
            declared = json.loads(loaded.attrs.get("metrics", "{}"))
            int(loaded.attrs.get("d", 0))
            if not all(isinstance(v.get("outputs"), list) for v in declared.values()):
                raise ValueError("a metric declares no outputs")
        except (ValueError, TypeError, AttributeError) as exc:
            raise HistoryError(
                f"history {self.path!r} has damaged attributes ({exc}); move it aside and run "
                "the job again to start a new one"
            ) from exc
        return loaded

    def _refuse_other_kinds(self, where: str) -> None:
        """A Zarr store that is not a history (features, statistics) is named for what it is,
        not called a damaged history: the advice for damage (move it aside) would move the
        user's data.

        Raises:
            HistoryError: naming what ``where`` holds and what a history is.
        """
        other = _other_kind(where)
        if other is not None:
            kind, holding = other
            raise HistoryError(
                f"{self.path!r} is {kind}, not a history ({holding}); a history is the Zarr store "
                "`shardeval run JOB.toml` writes at the job's [job] history path (one row per "
                "evaluated entry): give that path, or run a job to make one"
            )

    def _check_complete(self, where: str) -> None:
        """Every chunk of every variable is stored: a missing one would read as the fill
        value (steps of 0, FIDs of NaN) and an entry as done. (Histories written before
        :data:`ALL_CHUNKS_ATTR` cannot be checked: their writer left chunks of fill values
        out.)"""
        import zarr

        from shardeval.api.stores import missing_chunks

        try:
            group = zarr.open_group(where, mode="r", use_consolidated=False)
            if not group.attrs.get(ALL_CHUNKS_ATTR):
                return  # written before every chunk was stored: a chunk of fill values is not
            arrays = list(group.arrays())
        except Exception:  # unreadable metadata: _read names it
            return
        for name, array in arrays:
            missing, total = missing_chunks(array, f"{self.path}/{name}")
            if missing:
                raise HistoryError(
                    f"history {self.path!r} is damaged: {len(missing)} of {total} chunks of "
                    f"{name!r} are missing (first: {missing[0][1]}); move it aside and run the "
                    "job again to start a new one"
                )
