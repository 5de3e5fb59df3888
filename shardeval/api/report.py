"""One report for every route: the JSON shape and the summary of an evaluation, made from the
metrics' declarations (their outputs, units and summary lines), so that a metric's section is
the same in the command's report, ``metrics``', a job's history and a training-loop metric's.

The JSON report::

    {"metric": "fid,kid",                    # the metrics, in the order asked
     "fid": {"fid": …, "fid_mean_term": …},  # each metric's declared outputs
     "kid": {"kid": …, …},
     "options": {"fid": {…}, "kid": {…}},    # each metric's options as applied
     "inputs": {"real": {…}, "gen": {…}},    # where the sides came from
     "features_made_by": {…}, "feature_cache": […],
     "settings": {…},                        # the run options taken, defaults filled in
     "warnings": […], "engine": {…}, "seconds": …, "created": …, "versions": {…}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardeval.api.results import Report, engine_text, features_made, jsonable
from shardeval.api.spatial_inputs import reads_spatial, spatial_provenance


def side_line(side: Any, label: str | None = None) -> str:
    """One line for a side: where it came from, its rows and features, and its kind;
    ``label`` names it (default: its role)."""
    n = f"{side.n:,}" if side.n is not None else "unknown"
    shards = side.provenance.get("shards")
    where = f" shards={shards}" if shards is not None else ""
    return f"  {label or side.role:<4} {side.shown}  n={n} d={side.d:,}{where} ({side.kind})"


def build_report(
    instances: Sequence[Any],
    results: dict[str, dict[str, Any]],
    real: Any,
    gen: Any,
    run: Any,
    notes: Any,
    taken: Sequence[str],
    *,
    extra: dict[str, Any] | None = None,
    test: Any = None,
) -> Report:
    """The report of ``results`` (each metric's checked outputs) for ``gen`` against ``real``.

    Args:
        instances: the metrics computed, in the order asked.
        results: their outputs by metric name.
        real, gen: the sides (real None for metrics of one set).
        run: the call's engine and options (:class:`~shardeval.api.functions._Run`).
        notes: the report's warnings.
        taken: the run options the metrics took (recorded as ``settings``).
        extra: fields a route adds (a training loop's ``processes``, ``local``).
        test: the held-out test set's side (C_T's), or None.
    """
    data: dict[str, Any] = {"metric": ",".join(results)}
    for name, outputs in results.items():
        data[name] = jsonable(outputs)
    data["options"] = {m.name: dict(m.options) for m in instances}
    sides = {s.role: s for s in (real, gen, test) if s is not None}
    relabel = spatial_provenance if reads_spatial(instances) else (lambda described: described)
    data["inputs"] = {role: relabel(s.provenance) for role, s in sides.items()}
    made_from = dict(data["inputs"])
    statistics = getattr(real, "provenance", {}).get("statistics") if real is not None else None
    if isinstance(statistics, dict) and real is not None and real.kind == "features":
        # rows from a file that holds statistics too (a guided-diffusion reference batch)
        made_from = {
            "real": made_from["real"],
            "real statistics": relabel(statistics),
            "gen": made_from["gen"],
            **({"test": made_from["test"]} if test is not None else {}),
        }
    for side in sides.values():
        if side.kind == "statistics" and side.n is None:
            notes.append(
                f"{side.location!r} has mu/sigma without n: usable for FID, but it cannot be "
                "merged with other statistics"
            )
    made = features_made(made_from, run.cached)
    notes.extend(made.warnings)
    data.update(made.data)
    data.update(extra or {})
    data["settings"] = _settings(run, instances, taken)
    tail = run.tail(notes)
    if all(s.kind == "statistics" for s in sides.values()):
        tail["engine"] = {"scheduler": "none (statistics only)"}
    data.update(tail)
    lines = [line for m in instances for line in m.summary_lines(results[m.name])]
    lines += [side_line(s) for s in sides.values()]
    lines += made.lines
    if "scheduler" in tail["engine"] and tail["engine"]["scheduler"].startswith("none"):
        lines.append(f"  {tail['seconds']:.2f} s (statistics only: nothing computed on an engine)")
    else:
        lines.append(f"  {tail['seconds']:.2f} s {engine_text(tail['engine'])}")
    first = instances[0]
    value = float(results[first.name][first.outputs[0].name])
    return Report(data["metric"], results, data, "\n".join(lines), value)


#: KID and CMMD take float64 products whatever «precision» says: their settings say fp64.
_FLOAT64 = "fp64"


def _settings(run: Any, instances: Sequence[Any], taken: Sequence[str]) -> dict[str, Any]:
    """The run options the metrics took, as applied (defaults filled in); ``precision`` per
    metric where they differ in it (KID and CMMD always take float64 products)."""
    settings = run.settings(taken)
    fixed = {m.name: m.products for m in instances if getattr(m, "products", None)}
    if fixed:
        asked = settings.get("precision", run.settings(["precision"])["precision"])
        by_metric = {m.name: fixed.get(m.name, asked) for m in instances}
        values = set(by_metric.values())
        # one value when every metric's products are fixed alike; else each metric's
        alike = len(values) == 1 and all(m.name in fixed for m in instances)
        settings["precision"] = values.pop() if alike else by_metric
    return settings


def fed_inputs(side: Any) -> dict[str, Any]:
    """A side of a training-loop metric (:class:`~shardeval.api.results.Side`) as the report's
    ``inputs`` describe a side: its kind, where its rows came from, their shape and shards."""
    described: dict[str, Any] = {"kind": side.kind, "source": side.location}
    if side.kind == "statistics":
        described |= {"n": side.n, "d": side.d, "mergeable": side.mergeable}
    else:
        described |= {"shape": [side.n, side.d], "shards": side.shards}
    return {**described, "nonfinite_dropped": side.nonfinite_dropped, **side.provenance}


def fid_report(
    result: Any,
    gaussians: tuple[Any, Any],
    sides: tuple[Any, Any],
    nonfinite: str,
    settings: dict[str, Any],
    extra: dict[str, Any],
    notes: Any,
    engine: dict[str, Any],
    seconds: float,
) -> Report:
    """The report of a training-loop FID (``result`` of the Gaussians ``gaussians``, real and
    generated, whose rows the ``sides`` describe), in the shape of :func:`build_report`'s:
    the FID plug-in's outputs and summary lines, the same inputs and provenance."""
    from shardeval.pipeline.fid.metrics import FID
    from shardeval.pipeline.io.provenance import now_iso, versions

    plugin = FID({"nonfinite": nonfinite})
    (real, gen), (real_side, gen_side) = gaussians, sides
    outputs = plugin.check_outputs(
        plugin.outputs_of(
            result, real, gen, real_side.nonfinite_dropped, gen_side.nonfinite_dropped
        )
    )
    made = features_made({s.role: s.provenance for s in sides})
    notes.extend(made.warnings)
    data: dict[str, Any] = {"metric": "fid", "fid": jsonable(outputs)}
    data["options"] = {"fid": dict(plugin.options)}
    data["inputs"] = {s.role: fed_inputs(s) for s in sides}
    data.update(made.data)
    data.update(extra)
    data["settings"] = settings
    data.update(
        warnings=notes.messages(),
        engine=engine,
        seconds=seconds,
        created=now_iso(),
        versions=versions(),
    )
    lines = [*plugin.summary_lines(outputs)]
    for s in sides:
        n = f"{s.n:,}" if s.n is not None else "unknown"
        lines.append(f"  {s.role:<4} {s.shown}  n={n} d={s.d:,} shards={s.shards} ({s.kind})")
    lines += made.lines
    lines.append(f"  {seconds:.2f} s {engine_text(engine)}")
    return Report("fid", {"fid": outputs}, data, "\n".join(lines), float(result.fid))
