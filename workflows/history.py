"""Run history: an xarray Dataset in Zarr, one row per evaluated entry (dim ``entry``), metric
variables side by side, provenance in variables and attributes.

Appends are read–modify–write under an exclusive lock file (``HISTORY.lock``, ``fcntl.flock``),
and the new version is written beside the old and renamed over it, so concurrent runs cannot
interleave and an interrupted write leaves the previous history intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from pipeline.atomic import atomic_dir
from workflows.report import now_iso, versions

if TYPE_CHECKING:
    from workflows.jobs import Entry
    from workflows.metrics import Reference

#: Row variables that are not metrics.
PROVENANCE = (
    "name",
    "store",
    "step",
    "tags",
    "fingerprint",
    "options",
    "reference_fingerprint",
    "seconds",
    "created",
    "job",
    "engine",
    "n",
    "nonfinite_dropped",
)


class History:
    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        with open(self.path + ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self) -> xr.Dataset | None:
        """The whole history in memory, or None when there is none yet."""
        if not os.path.exists(self.path):
            return None
        with xr.open_zarr(self.path, consolidated=False) as ds:
            return ds.load()

    def contains(self, name: str, fingerprint: str, options: str, reference: str) -> bool:
        ds = self.load()
        if ds is None:
            return False
        return bool(
            (
                (ds["name"] == name)
                & (ds["fingerprint"] == fingerprint)
                & (ds["options"] == options)
                & (ds["reference_fingerprint"] == reference)
            ).any()
        )

    def append(
        self,
        *,
        entry: Entry,
        values: dict[str, Any],
        fingerprint: str,
        options: str,
        reference: Reference,
        seconds: float,
        job: str,
        engine: dict[str, Any],
        headline: tuple[str, ...] = (),
    ) -> None:
        """Add one row atomically (replacing an older row of the same entry name).

        ``headline`` names the metrics that reports plot over steps."""
        row: dict[str, Any] = {
            "name": ("entry", [entry.name]),
            "store": ("entry", [entry.store]),
            "step": ("entry", [-1 if entry.step is None else entry.step]),
            "tags": ("entry", [",".join(entry.tags)]),
            "fingerprint": ("entry", [fingerprint]),
            "options": ("entry", [options]),
            "reference_fingerprint": ("entry", [reference.fingerprint]),
            "seconds": ("entry", [seconds]),
            "created": ("entry", [now_iso()]),
            "job": ("entry", [job]),
            "engine": ("entry", [str(engine)]),
        }
        for key, value in values.items():
            if np.ndim(value) == 1:
                row[key] = (("entry", "component"), np.asarray(value, dtype=np.float64)[None])
            else:
                row[key] = ("entry", [value])
        new = xr.Dataset(row)
        with self._locked():
            old = self.load()
            if old is not None:
                old = old.isel(entry=np.flatnonzero(old["name"].values != entry.name))
                new = xr.concat(
                    [old, new],
                    dim="entry",
                    join="outer",
                    data_vars="all",
                    coords="different",
                    compat="equals",
                )
            new = new.assign({"reference_spectrum": ("component", reference.spectrum)})
            known = list(old.attrs.get("headline", [])) if old is not None else []
            new.attrs.update(
                {
                    "format": "shardeval.history",
                    "versions": str(versions()),
                    "updated": now_iso(),
                    "headline": sorted({*known, *headline}),
                }
            )
            for name in new.data_vars:
                new[name].encoding = {}
            with atomic_dir(self.path) as tmp:
                new.to_zarr(tmp, mode="w", consolidated=False, zarr_format=2)

    def headline(self) -> list[str]:
        """The metrics plotted over steps (one per metric plug-in: fid, nll_gaussian, …)."""
        ds = self.load()
        return list(ds.attrs.get("headline", [])) if ds is not None else []

    def table(self, metric: str | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (entry name, step, tags and every metric scalar), ordered by step."""
        ds = self.load()
        if ds is None:
            return []
        metrics = [
            str(v)
            for v in ds.data_vars
            if v not in PROVENANCE and "component" not in ds[v].dims and v != "reference_spectrum"
        ]
        if metric is not None:
            if metric not in metrics:
                raise KeyError(metric)
            metrics = [metric]
        rows = []
        for i in np.argsort(ds["step"].values, kind="stable"):
            row: dict[str, Any] = {
                "name": str(ds["name"].values[i]),
                "step": int(ds["step"].values[i]),
                "tags": str(ds["tags"].values[i]),
            }
            row.update({m: float(ds[m].values[i]) for m in metrics})
            rows.append(row)
        return rows
