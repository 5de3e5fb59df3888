"""A job as its file is read (:mod:`shardeval.workflows.jobfile`): its entries, metrics,
reference, engine and run options, checked; and the digests that tell a run which results in
the history are already done (from the same inputs under the same options).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from shardeval.pipeline.errors import ShardevalError
from shardeval.pipeline.metrics import Metric

#: Settings recorded in a metric's digest already, or that do not move a value.
_KEPT = ("array", "device", "backend")


class JobError(ShardevalError):
    """A job file is wrong: unknown key or metric, wrong type, missing store, empty glob."""


@dataclass(frozen=True)
class Entry:
    """One thing to evaluate: a feature store, or (``images``) an image source whose features
    are extracted first."""

    name: str
    store: str
    step: int | None = None
    tags: tuple[str, ...] = ()
    images: bool = False


@dataclass(frozen=True)
class Job:
    path: str
    name: str
    history: str
    entries: tuple[Entry, ...]
    metrics: dict[str, Metric]
    reference_store: str | None = None
    reference_stats: str | None = None
    scheduler: str | None = None
    cluster: str | None = None
    reference_images: str | None = None
    extract: dict[str, Any] = field(default_factory=dict)
    #: The held-out test set (features) of the metrics that read one besides the reference.
    test_store: str | None = None
    #: The folder receiving each entry's per-sample values, one group per entry.
    per_sample: str | None = None
    #: The run options the file sets ([engine]'s kernels, [job]'s reading), checked.
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return str(self.settings.get("device", "auto"))

    @property
    def backend(self) -> str:
        return str(self.settings.get("backend", "auto"))

    @property
    def array(self) -> str | None:
        return self.settings.get("array")

    @property
    def shard_rows(self) -> int | None:
        return self.settings.get("shard_rows")

    @property
    def options_digest(self) -> str:
        """Identifies everything besides the stores that changes a value: the metrics and their
        options, and the array read from group stores. An entry computed under other options
        is computed again."""
        text = json.dumps(
            {
                "metrics": {k: m.options for k, m in sorted(self.metrics.items())},
                "array": self.array,
            },
            sort_keys=True,
        )
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def metric_digest(self, name: str) -> str:
        """Identifies what, besides the stores, changes one metric's values: its options and
        the array read from group stores. A result recorded under the same digest, from the
        same inputs, is not computed again; other metrics of the job do not enter it (a job
        that adds or drops a metric recomputes nothing else)."""
        recorded: dict[str, Any] = {
            "metric": name,
            "options": self.metrics[name].options,
            "array": self.array,
        }
        # Settings that move a value's last digits (fp64 products, other shards or merge
        # trees) enter it when the file sets them, so that files without them keep theirs.
        taken = set(self.metrics[name].run_options) | {"shard_rows", "split_every"}
        run = {k: v for k, v in self.settings.items() if k in taken and k not in _KEPT}
        if run:
            recorded["run"] = run
        text = json.dumps(recorded, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    @property
    def run_options(self) -> dict[str, Any]:
        """The job's run options, as the API takes them (the metrics' own ``nonfinite`` is
        theirs; «array» picks each store's variable where it is opened)."""
        return {k: v for k, v in self.settings.items() if k != "array"}

    def declarations(self) -> dict[str, Any]:
        return {name: metric.declaration() for name, metric in self.metrics.items()}
