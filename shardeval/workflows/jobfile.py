"""Job files: a reference, entries (checkpoints), metrics, an engine and a history, in TOML,
read and checked (:func:`load_job`) into a :class:`~shardeval.workflows.job_spec.Job`;
:mod:`shardeval.workflows.jobs` runs them.

.. code-block:: toml

    [job]
    name = "nightly"
    history = "runs/history.zarr"
    array = "features"                # optional: the variable inside group stores
    shard_rows = 65536                # optional: rows per shard (pair metrics: per block)
    split_every = 8                   # optional: fan-in of a balanced merge tree

    per_sample = "runs/per-sample"    # optional: each entry's per-sample values (metrics
                                      # asked with per_sample = true), one group per entry

    [reference]                       # not needed when no metric compares with one (is)
    store = "data/real.zarr"          # or: stats = "real-stats.zarr" (or a .npz)
    test = "data/test.zarr"           # held-out test set (features), for the metrics that
                                      # read one (ct): then store is the training set

    [engine]                          # optional; default: threaded scheduler in-process
    scheduler = "tcp://10.0.0.5:8786" # or: cluster = "cluster/slurm.yaml"
    device = "auto"                   # auto | cpu | cuda
    backend = "auto"                  # auto | triton | torch
    precision = "fp64"                # fp32 (default) | fp64: products inside a shard

    [[entries]]
    glob = "checkpoints/*/features.zarr"   # name: what * matched; step: its last digits

    [[entries]]
    name = "final"
    store = "final/features.zarr"
    step = 100000
    tags = ["release"]

    [[entries]]
    images = "samples/ckpt-*"         # image sources (folder, .zip, .npz, .tar): extracted
                                      # once into features-<digest>.zarr beside the history

    [extract]                         # optional; how image entries become features
    encoder = "inception"             # as extract's --encoder (its help lists them)
    resize = "clean"                  # inception only: legacy-pytorch (default) | clean
                                      # | legacy-tensorflow
    weights = "weights/pt_inception-2015-12-05-6726825d.pth"   # default: the standard caches;
                                      # "random" / "random:SEED": seeded random weights
    batch_size = 32
    skip_bad = false                  # true: leave undecodable images out (another input)

    [metrics.fid]
    [metrics.nll_gaussian]
    nonfinite = "drop"

Everything is checked before any compute: the file (keys, types, metric options), every store
(complete, readable, one feature dimension), every image source (listed, not empty), the
encoder's weights (found and hashed) and the history (readable, same dimension). The reference
may be images too (``[reference] images = ...``).
"""

from __future__ import annotations

import glob as globlib
import os
import re
import tomllib
from typing import Any

from shardeval.pipeline.metrics import METRICS, Metric, MetricOptionError
from shardeval.pipeline.runoptions import option_problem
from shardeval.workflows.job_spec import Entry, Job, JobError

__all__ = ["Entry", "Job", "JobError", "glob_name", "load_job"]


#: Run options a job file sets, by section, from their declarations
#: (:mod:`shardeval.pipeline.runoptions`): where kernels run and how in [engine], how stores are
#: read and reduced in [job]. ``nonfinite`` is an option of the metrics that take it.
_RUN_KEYS = {
    "engine": ("device", "backend", "precision"),
    "job": ("array", "shard_rows", "split_every"),
}

_SECTIONS: dict[str, set[str] | None] = {
    "job": {"name", "history", "per_sample", *_RUN_KEYS["job"]},
    "reference": {"store", "stats", "images", "test"},
    "engine": {"scheduler", "cluster", *_RUN_KEYS["engine"]},
    "extract": {"encoder", "resize", "weights", "batch_size", "skip_bad"},
    "entries": None,
    "metrics": None,
}
_ENTRY_KEYS = {"name", "store", "glob", "images", "step", "tags"}
_GLOB_CHARS = "*?["


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise JobError(f"{where} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise JobError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return table


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise JobError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _resolve(base: str, path: str) -> str:
    return path if "://" in path or os.path.isabs(path) else os.path.join(base, path)


def _must_exist(where: str, path: str) -> str:
    if "://" not in path and not os.path.exists(path):
        raise JobError(f"{where}: {path!r} does not exist")
    return path


def glob_name(pattern: str, match: str) -> str:
    """The path components of ``match`` where ``pattern`` has wildcards, joined by ``/``
    (``ckpt/*/f.zarr`` matching ``ckpt/step-100/f.zarr`` → ``step-100``). Both must be spelled
    alike (both absolute, or both relative to one base)."""
    pattern_parts = os.path.normpath(pattern).split(os.sep)
    match_parts = os.path.normpath(match).split(os.sep)
    parts = [
        m for p, m in zip(pattern_parts, match_parts, strict=False) if any(c in p for c in "*?[")
    ]
    return "/".join(parts) or os.path.basename(match)


def _entries(path: str, base: str, raw: Any) -> tuple[Entry, ...]:
    if not isinstance(raw, list) or not raw:
        raise JobError(f"{path}: [[entries]] must list at least one entry")
    out: list[Entry] = []
    for i, item in enumerate(raw):
        where = f"{path}: entries[{i}]"
        item = _check_keys(where, item, _ENTRY_KEYS)
        tags = item.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise JobError(f"{where}.tags must be a list of strings")
        step = item.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            raise JobError(f"{where}.step must be an integer, got {step!r}")
        kinds = [k for k in ("store", "glob", "images") if k in item]
        if len(kinds) != 1:
            raise JobError(f"{where} needs exactly one of 'store', 'glob' or 'images'")
        (kind,) = kinds
        value = _resolve(base, _string(f"{where}.{kind}", item[kind]))
        images = kind == "images"
        if kind == "store" or (images and not any(c in value for c in _GLOB_CHARS)):
            value = _must_exist(f"{where}.{kind}", value)
            name = item.get("name") or os.path.basename(os.path.normpath(value))
            out.append(Entry(_string(f"{where}.name", name), value, step, tuple(tags), images))
            continue
        if "name" in item:
            raise JobError(
                f"{where}: a {kind} pattern names its entries by what * matched; "
                "'name' applies to a single store"
            )
        pattern = item[kind]
        # The job file's folder is a place, not a pattern: '[1]' in it must match '[1]'.
        relative = not ("://" in pattern or os.path.isabs(pattern))
        search = os.path.join(globlib.escape(base), pattern) if relative else value
        matches = sorted(globlib.glob(search))
        if not matches:
            raise JobError(f"{where}.{kind} {item[kind]!r} matches nothing")
        for match in matches:
            name = glob_name(pattern, os.path.relpath(match, base) if relative else match)
            digits = re.findall(r"\d+", name)
            if digits and step is not None:
                raise JobError(
                    f"{where}: 'step' would be ignored: the step of {match!r} is "
                    "the last digits of what * matched"
                )
            found = int(digits[-1]) if digits else step
            if found is not None and found >= 2**63:
                raise JobError(f"{where}: the step {found} of {match!r} exceeds a 64-bit integer")
            out.append(Entry(name, match, found, tuple(tags), images))
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise JobError(f"{path}: entry names must be unique; repeated: {dupes}")
    return tuple(out)


def _metrics(path: str, raw: Any) -> dict[str, Metric]:
    if not isinstance(raw, dict) or not raw:
        raise JobError(f"{path}: [metrics] must name at least one of {sorted(METRICS)}")
    metrics = {}
    for name, options in raw.items():
        if name not in METRICS:
            raise JobError(f"{path}: [metrics.{name}] is not a metric; known: {sorted(METRICS)}")
        if not isinstance(options, dict):
            raise JobError(f"{path}: [metrics.{name}] must be a table of options")
        try:
            metrics[name] = METRICS[name](options)
        except MetricOptionError as exc:
            raise JobError(f"{path}: {exc}") from None  # a job names options as its file does
    return metrics


def _random_weights(where: str, weights: str) -> bool:
    """Whether ``weights`` asks for seeded random weights (``random``, ``random:SEED``), as
    ``shardeval extract --weights`` takes them (a file named so is given as ``./random``).

    Raises:
        JobError: ``random:`` followed by something that is not a seed (refused here, where
            the job names it, rather than by the encoder as if it were a command's option).
    """
    if weights == "random":
        return True
    if not weights.startswith("random:"):
        return False
    seed = weights.removeprefix("random:")
    if not seed.isdigit() or int(seed) >= 2**63:  # numpy's and torch's seeds: 63 bits
        raise JobError(
            f'{where}: {weights!r} is not random weights of a seed: give "random" (seed 0), '
            '"random:SEED" with SEED a non-negative integer, or "./random" for a file so named'
        )
    return True


def _extract(path: str, base: str, raw: Any) -> dict[str, Any]:
    """The [extract] table as keyword arguments of
    :func:`shardeval.api.images.extraction_plan`, the batch size and
    ``skip_bad`` (types checked here; values when the weights are looked up)."""
    table = _check_keys(f"{path}: [extract]", raw or {}, _SECTIONS["extract"] or set())
    out: dict[str, Any] = {}
    for key in ("encoder", "resize", "weights"):
        if key in table:
            out[key] = _string(f"{path}: extract.{key}", table[key])
    if "weights" in out and not _random_weights(f"{path}: extract.weights", out["weights"]):
        out["weights"] = _must_exist(f"{path}: extract.weights", _resolve(base, out["weights"]))
    if "skip_bad" in table:
        if not isinstance(table["skip_bad"], bool):
            raise JobError(
                f"{path}: extract.skip_bad must be true or false, got {table['skip_bad']!r}"
            )
        out["skip_bad"] = table["skip_bad"]
    if "batch_size" in table:
        size = table["batch_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise JobError(f"{path}: extract.batch_size must be a positive integer, got {size!r}")
        out["batch_size"] = size
    return out


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a job file; nothing is computed or written.

    Raises:
        JobError: one line naming the bad key, metric, option, type or store.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise JobError(f"job file {path!r} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"job file {path!r} is not valid TOML: {exc}") from exc
    base = os.path.dirname(os.path.abspath(path))
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise JobError(
            f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(_SECTIONS)}"
        )
    job = _check_keys(f"{path}: [job]", raw.get("job", {}), _SECTIONS["job"] or set())
    ref = _check_keys(
        f"{path}: [reference]", raw.get("reference", {}), _SECTIONS["reference"] or set()
    )
    engine = _check_keys(f"{path}: [engine]", raw.get("engine", {}), _SECTIONS["engine"] or set())
    ref = dict(ref)
    test = ref.pop("test", None)
    if len(ref) > 1 or ("reference" in raw and not ref):
        raise JobError(f"{path}: [reference] needs exactly one of 'store', 'stats' or 'images'")
    ref_kind, ref_path = next(iter(ref.items()), (None, None))
    if ref_kind is not None:
        ref_path = _must_exist(
            f"{path}: reference.{ref_kind}",
            _resolve(base, _string(f"{path}: reference.{ref_kind}", ref_path)),
        )
    history = _string(f"{path}: job.history", job.get("history", ""))
    scheduler = engine.get("scheduler")
    if scheduler is not None:
        from shardeval.api import engines
        from shardeval.pipeline.errors import EngineError

        try:
            engines.engine(scheduler)
        except EngineError as exc:
            raise JobError(f"{path}: engine.scheduler: {exc}") from None
    cluster = engine.get("cluster")
    if cluster is not None:
        cluster = _must_exist(
            f"{path}: engine.cluster", _resolve(base, _string(f"{path}: engine.cluster", cluster))
        )
    if scheduler is not None and cluster is not None:
        raise JobError(f"{path}: [engine] takes 'scheduler' or 'cluster', not both")
    settings = _settings(path, {"job": job, "engine": engine})
    metrics = _metrics(path, raw.get("metrics"))
    _check_settings(path, metrics, settings)
    test = _test_set(path, base, metrics, test)
    per_sample = _per_sample(path, base, metrics, job.get("per_sample"))
    compared = sorted(name for name, m in metrics.items() if m.needs_reference)
    if ref_kind is None and compared:
        raise JobError(
            f"{path}: metrics {compared} compare each entry with a reference: [reference] "
            "needs one of 'store', 'stats' or 'images'"
        )
    entries = _entries(path, base, raw.get("entries"))
    extract = _extract(path, base, raw.get("extract"))
    if "extract" in raw and ref_kind != "images" and not any(e.images for e in entries):
        raise JobError(
            f"{path}: [extract] applies to image entries or reference, and there are none"
        )
    if ref_kind == "stats":
        pairs = sorted(name for name, m in metrics.items() if m.needs_reference_features)
        if pairs:
            raise JobError(
                f"{path}: metrics {pairs} compare rows of the entries with rows of the "
                "reference: give [reference] store (features), not stats"
            )
    return Job(
        path=path,
        name=_string(
            f"{path}: job.name", job.get("name", os.path.splitext(os.path.basename(path))[0])
        ),
        history=os.path.normpath(_resolve(base, history)),
        entries=entries,
        metrics=metrics,
        reference_store=ref_path if ref_kind == "store" else None,
        reference_stats=ref_path if ref_kind == "stats" else None,
        scheduler=scheduler,
        cluster=cluster,
        settings=settings,
        reference_images=ref_path if ref_kind == "images" else None,
        extract=extract,
        test_store=test,
        per_sample=per_sample,
    )


def _test_set(path: str, base: str, metrics: dict[str, Metric], given: Any) -> str | None:
    """The held-out test set ([reference] test), given exactly when a metric of the job reads
    one, as features (:func:`shardeval.api.heldout.check_test`'s checks)."""
    from shardeval._words import marked
    from shardeval.api.heldout import check_test
    from shardeval.pipeline.errors import ShardevalError

    test = None if given is None else _resolve(base, _string(f"{path}: reference.test", given))
    try:
        check_test(list(metrics.values()), test)
    except ShardevalError as exc:
        words = marked(exc).replace("«test»", "'test' in [reference]")
        raise JobError(f"{path}: reference.test: {words}") from None
    return test


def gives_per_sample(metric: Metric) -> bool:
    """Whether ``metric``, as its options ask, gives values per generated row."""
    return any(o.per_row for o in metric.outputs) and bool(metric.options.get("per_sample", True))


def _per_sample(path: str, base: str, metrics: dict[str, Metric], given: Any) -> str | None:
    """The folder of the entries' per-sample groups ([job] per_sample): local, and only where
    a metric of the job gives such values (else it would be ignored)."""
    if given is None:
        asked = sorted(n for n, m in metrics.items() if m.options.get("per_sample"))
        if asked:  # else its per-row values would be computed and dropped
            raise JobError(
                f"{path}: metrics.{asked[0]}.per_sample = true: a job keeps per-sample values "
                'only in per-sample groups: give [job] per_sample = "DIR" (one group per '
                "entry), or leave per_sample out"
            )
        return None
    folder = _string(f"{path}: job.per_sample", given)
    if "://" in folder:
        raise JobError(
            f"{path}: job.per_sample {folder!r}: per-sample groups are written on a local path"
        )
    if not any(gives_per_sample(m) for m in metrics.values()):
        takers = sorted(n for n, cls in METRICS.items() if any(o.per_row for o in cls.outputs))
        raise JobError(
            f"{path}: job.per_sample is where per-sample values go, and no metric of the job "
            f"gives them: set per_sample = true in [metrics.NAME] (NAME one of {takers})"
        )
    return os.path.normpath(_resolve(base, folder))


def _settings(path: str, sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run options the file sets, each checked by its declaration."""
    settings: dict[str, Any] = {}
    for section, keys in _RUN_KEYS.items():
        for key in keys:
            value = sections[section].get(key)
            if value is None:
                continue
            problem = option_problem(key, value)
            if problem:
                raise JobError(f"{path}: {section}.{key}: {problem}")
            settings[key] = value
    return settings


def _check_settings(path: str, metrics: dict[str, Metric], settings: dict[str, Any]) -> None:
    """Refuse a run option that none of the job's metrics takes (it would be ignored)."""
    from shardeval.api.evaluate import Evaluation
    from shardeval.pipeline.errors import OptionError

    try:
        Evaluation(list(metrics.values()), run_options={**settings, "array": None})
    except (OptionError, MetricOptionError) as exc:
        raise JobError(f"{path}: {exc}") from None
