"""Run history: an xarray Dataset in Zarr, one row per evaluated entry (dim ``entry``), the
metrics' results side by side, provenance in variables and attributes.

Versions, switched in one step. ``HISTORY`` is a symbolic link to a complete version under
``HISTORY.versions/``; an append writes the next version beside the current one (under a
temporary name, renamed when complete), then replaces the link with one ``rename``, which is
atomic. A crash at any point leaves the old history or the new one, and a link lost between
steps is recovered from the newest complete version. Writers hold an exclusive lock
(``HISTORY.lock``); readers a shared one, so they always see one whole version. The version
before the current one is kept for readers that do not lock (``xr.open_zarr(HISTORY)``).

The history knows no metric by name: what each metric returned, with units and plots, is
described by the declarations that the metrics' plug-ins give and the history stores.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from pipeline.errors import ShardevalError
from workflows.provenance import now_iso, versions

FORMAT = "shardeval.history"
FORMAT_VERSION = 2

_VERSION = re.compile(r"^v(\d{6,})$")


#: History attribute: every chunk is stored (so a missing one is damage, not fill values).
ALL_CHUNKS_ATTR = "all_chunks_written"


class HistoryError(ShardevalError):
    """A history cannot be used: damaged, of another kind, or of other features."""


@dataclass(frozen=True)
class HistoryRow:
    """Provenance of one evaluated entry: what, against what, how and when.

    Attributes:
        name: the entry's name (unique in a job).
        store: the feature store evaluated.
        step: training step, or -1 when unknown.
        tags: labels from the job file.
        fingerprint: digest of the store's listing (:mod:`pipeline.fingerprint`).
        options: digest of everything else that changes a value (metric options, the array).
        reference: the reference's location.
        reference_fingerprint: digest of the reference (and the array read from it).
        job: the job's name.
        engine: where it ran (JSON).
        seconds: wall time of the entry's metrics.
        created: when the entry finished (UTC, ISO 8601).
        content_digest: digest of the store's bytes, when ``--verify`` computed it.
    """

    name: str
    store: str
    step: int
    tags: str
    fingerprint: str
    options: str
    reference: str
    reference_fingerprint: str
    job: str
    engine: str
    seconds: float
    created: str
    content_digest: str = ""

    def key(self) -> tuple[str, str, str, str]:
        """What decides that an entry is already done: the same name, store contents, options
        and reference."""
        return (self.name, self.fingerprint, self.options, self.reference_fingerprint)


PROVENANCE = tuple(f.name for f in fields(HistoryRow))


class History:
    """A history at ``path`` (a trailing slash is ignored)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.path.normpath(os.fspath(path))
        self.versions_dir = self.path + ".versions"
        self.lock_path = self.path + ".lock"

    # -- locking and versions -----------------------------------------------------------------

    def _locked(self, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        from pipeline.atomic import locked

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

    # -- reading ------------------------------------------------------------------------------

    def _read(self, where: str) -> Any:
        import xarray as xr

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

    def _check_complete(self, where: str) -> None:
        """Every chunk of every variable is stored: a missing one would read as the fill
        value (steps of 0, FIDs of NaN) and an entry as done. (Histories written before
        :data:`ALL_CHUNKS_ATTR` cannot be checked: their writer left chunks of fill values
        out.)"""
        import zarr

        from pipeline.reader import missing_chunks

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

    def load(self) -> Any:
        """The whole history in memory (one consistent version), or None when there is none.

        Raises:
            HistoryError: the path holds something else, or the history is damaged.
        """
        with self._locked(exclusive=False):
            where = self._current()
            return None if where is None else self._read(where)

    def check(self, d: int) -> None:
        """Before computing anything: the history, if there is one, is readable and holds
        features of dimension ``d``.

        Raises:
            HistoryError: damaged, not a history, or of another feature dimension.
        """
        ds = self.load()
        if ds is not None and "d" in ds.attrs and int(ds.attrs["d"]) != d:
            raise HistoryError(
                f"history {self.path!r} holds results for d={ds.attrs['d']} features; this job's "
                f"features have d={d}: use another history"
            )

    def contains(self, key: tuple[str, str, str, str], content_digest: str | None = None) -> bool:
        """Whether an entry with this :meth:`HistoryRow.key` is recorded (and, when
        ``content_digest`` is given, recorded with those bytes)."""
        ds = self.load()
        if ds is None:
            return False
        columns = ["name", "fingerprint", "options", "reference_fingerprint"]
        wanted = list(key)
        if content_digest is not None:
            columns.append("content_digest")
            wanted.append(content_digest)
        match = np.ones(ds.sizes["entry"], dtype=bool)
        for column, value in zip(columns, wanted, strict=True):
            if column not in ds.variables:
                return False
            match &= ds[column].values.astype(str) == value
        return bool(match.any())

    def declarations(self) -> dict[str, Any]:
        """Per metric, what it returned (outputs with units) and its plots."""
        ds = self.load()
        return json.loads(ds.attrs.get("metrics", "{}")) if ds is not None else {}

    def table(self, metric: str | None = None) -> list[dict[str, Any]]:
        """Rows as dicts, ordered by step: the entry's name, step, tags and when it ran, then
        every scalar result (of one metric only when ``metric`` is given).

        Raises:
            KeyError: ``metric`` is not in the history.
        """
        ds = self.load()
        if ds is None:
            return []
        declared = json.loads(ds.attrs.get("metrics", "{}"))
        if metric is not None and metric not in declared:
            raise KeyError(metric)
        names = [
            o["name"]
            for m, spec in declared.items()
            if metric in (None, m)
            for o in spec["outputs"]
            if not o["array"] and o["name"] in ds.variables
        ]
        rows = []
        for i in np.argsort(ds["step"].values, kind="stable"):
            row: dict[str, Any] = {
                "name": str(ds["name"].values[i]),
                "step": int(ds["step"].values[i]),
                "tags": str(ds["tags"].values[i]),
                "created": str(ds["created"].values[i]),
            }
            for name in names:
                value = float(ds[name].values[i])
                row[name] = value if math.isfinite(value) else None
            rows.append(row)
        return rows

    # -- writing ------------------------------------------------------------------------------

    def append(
        self,
        row: HistoryRow,
        values: dict[str, Any],
        declarations: dict[str, Any],
        d: int,
    ) -> None:
        """Add one entry (replacing an older row of the same name) as a new version.

        Args:
            row: the entry's provenance.
            values: the metrics' results by name (scalars, or 1-D arrays).
            declarations: per metric, :meth:`pipeline.metrics.Metric.declaration`.
            d: the feature dimension of the job.
        """
        import xarray as xr

        data: dict[str, Any] = {k: ("entry", [v]) for k, v in asdict(row).items()}
        for key, value in values.items():
            if np.ndim(value) == 1:
                data[key] = (("entry", f"{key}_component"), np.asarray(value, np.float64)[None])
            else:
                data[key] = ("entry", [float(value)])
        new = xr.Dataset(data)
        with self._locked(exclusive=True):
            current = self._current()
            old = self._read(current) if current is not None else None
            if old is not None and "d" in old.attrs and int(old.attrs["d"]) != d:
                raise HistoryError(
                    f"history {self.path!r} holds results for d={old.attrs['d']} features, "
                    f"not d={d}"
                )
            known: dict[str, Any] = {}
            if old is not None:
                known = json.loads(old.attrs.get("metrics", "{}"))
                old = old.isel(entry=np.flatnonzero(old["name"].values.astype(str) != row.name))
                new = xr.concat(
                    [old, new],
                    dim="entry",
                    join="outer",
                    data_vars="all",
                    coords="different",
                    compat="equals",
                )
            new.attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "d": int(d),
                "metrics": json.dumps({**known, **declarations}),
                "updated": now_iso(),
                "versions": json.dumps(versions()),
                # Every chunk is stored, empty or not, so a missing one means damage.
                ALL_CHUNKS_ATTR: True,
            }
            for name in new.variables:
                new[name].encoding = {}
            os.makedirs(self.versions_dir, exist_ok=True)
            numbers = [int(os.path.basename(v)[1:]) for v in self._versions()]
            version = os.path.join(self.versions_dir, f"v{max(numbers, default=0) + 1:06d}")
            staging = os.path.join(self.versions_dir, f".tmp-{os.path.basename(version)}")
            shutil.rmtree(staging, ignore_errors=True)
            new.to_zarr(
                staging, mode="w", consolidated=False, zarr_format=2, write_empty_chunks=True
            )
            os.replace(staging, version)  # a version appears complete or not at all
            self._switch(version)
            self._collect(version)
