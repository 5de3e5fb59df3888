"""The pair metrics, exact over all pairs of the full sets: ``kid``, ``cmmd``, ``prdc``, and
``metrics`` (several at once, sharing the passes). Options and defaults come from each
metric's plug-in declaration (:mod:`shardeval.pipeline.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from shardeval.api.functions import (
    Notes,
    _Run,
    refuse,
)
from shardeval.api.results import Report, features_made
from shardeval.pipeline.errors import OptionError

#: The settings a pair metric's report records.
_PAIR_SETTINGS = ("shard_rows", "array", "split_every", "device", "backend", "precision")

#: The run options a metric may take or not (:attr:`Metric.run_options`).
_RUN_OPTIONS = ("device", "backend", "precision")

#: The options of each pair metric (its declaration's), refused when it is not asked for.
_OWNED = {
    "kid": ("subsets", "subset_size", "seed"),
    "cmmd": ("sigma", "unbiased"),
    "prdc": ("k", "pr_k"),
}


def _declared(metric: str, given: dict[str, Any]) -> dict[str, Any]:
    """A metric's options as its plug-in declares them: given ones checked, defaults filled."""
    from shardeval.pipeline.metrics import METRICS

    cls = METRICS[metric]
    known = {p.name for p in cls.params}
    return cls({k: v for k, v in given.items() if k in known and v is not None}).options


def _params(wanted: Sequence[str], given: dict[str, Any]) -> dict[str, Any]:
    from shardeval.pipeline.pairwise.passes import CMMDParams, KIDParams, PRDCParams

    for metric, names in _OWNED.items():
        if metric not in wanted:
            # seed is fid_inf's too: metrics() words its own refusal
            shared = [n for n in names if n != "seed"]
            refuse(given, shared, f"apply to {metric}, which is not asked for")  # one metric
    params: dict[str, Any] = {}
    if "kid" in wanted:
        params["kid"] = KIDParams()
    if "cmmd" in wanted:
        cmmd = _declared("cmmd", given)
        params["cmmd"] = CMMDParams(sigma=cmmd["sigma"], unbiased=cmmd["unbiased"])
    if "prdc" in wanted:
        prdc = _declared("prdc", given)
        params["prdc"] = PRDCParams(k=prdc["k"], pr_k=prdc["pr_k"])
    return params


def _pairs(run: _Run, real: Any, gen: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The pair metrics asked for; KID by subsets when ``subsets`` is given."""
    from shardeval.pipeline.pairwise.passes import kid_subsets, sample_metrics

    o = run.options
    results: dict[str, Any] = {}
    precision = o.get("precision") or "fp32"
    kid = params.pop("kid", None)
    if o.get("subsets") and kid is not None:
        declared = _declared("kid", o)
        results["kid"] = kid_subsets(
            real,
            gen,
            subsets=declared["subsets"],
            subset_size=declared["subset_size"],
            seed=declared["seed"],
            params=kid,
            engine=run.engine,
            precision=precision,
            progress=run.progress,
        )
        kid = None
    if kid is not None or params:
        results.update(
            sample_metrics(
                real,
                gen,
                kid=kid,
                cmmd=params.get("cmmd"),
                prdc=params.get("prdc"),
                engine=run.engine,
                block_rows=o.get("shard_rows"),
                precision=precision,
                split_every=o.get("split_every"),
                device=o.get("device") or "auto",
                backend=o.get("backend") or "auto",
                progress=run.progress,
            )
        )
    return results


def summary_line(name: str, result: Any) -> str:
    """One metric's line of a summary."""
    if name == "kid":
        how = (
            f"mean ± std over {result.subsets} subsets of {result.subset_size} (seed {result.seed})"
            if result.estimator == "subsets"
            else "unbiased, all pairs"
        )
        return (
            f"KID {result.kid:.6g} ± {result.standard_error:.3g}   [{how}; kernel "
            f"(x·y/{1 / result.gamma:g} + {result.coef0:g})^{result.degree}; rounding ≤ "
            f"{result.rounding_bound:.2g}]"
        )
    if name == "cmmd":
        clamped = "; below 0 by rounding: 0" if result.clamped else ""
        return (
            f"CMMD {result.cmmd:.6g}   [{result.estimator}, σ = {result.sigma:g} on unit-norm "
            f"embeddings, ×{result.scale:g}; rounding ≤ {result.rounding_bound:.2g}{clamped}]"
        )
    if name == "prdc":
        return (
            f"precision {result.precision:.4f}  recall {result.recall:.4f}  (k = {result.pr_k})\n"
            f"density {result.density:.4f}  coverage {result.coverage:.4f}  (k = {result.k})"
        )
    if name == "fid_inf":
        below = " (below 0: see the warning)" if result.fid_infinity < 0 else ""
        return (
            f"FID∞ {result.fid_infinity:.6g}{below}   (FID at N = {result.sizes[-1]:,}: "
            f"{result.fid:.6g}; "
            f"slope {result.slope:.4g}, R² {result.r2:.3f} over {len(result.sizes)} sizes)"
        )
    return f"FID {result['fid']:.6g}"


#: The headline of each metric's result.
_HEADLINE = {
    "kid": lambda r: r.kid,
    "cmmd": lambda r: r.cmmd,
    "prdc": lambda r: r.precision,
    "fid_inf": lambda r: r.fid_infinity,
    "fid": lambda r: r["fid"],
}


#: Metrics whose kernel sums take float64 products whatever «precision» says.
_FLOAT64_SUMS = ("kid", "cmmd")


def _applied_precision(settings: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``settings`` with ``precision`` as it was applied: ``fp64`` for KID and CMMD, whose
    sums always take float64 products; per metric when the asked metrics differ in it."""
    fixed = [n for n in names if n in _FLOAT64_SUMS]
    if "precision" in settings and fixed:
        asked = settings["precision"]
        by_metric = {n: "fp64" if n in _FLOAT64_SUMS else asked for n in names}
        settings["precision"] = "fp64" if len(fixed) == len(names) else by_metric
    return settings


def _report(
    run: _Run,
    results: dict[str, Any],
    real: Any,
    gen: Any,
    notes: Notes,
    extra: dict[str, Any] | None = None,
) -> Report:
    data: dict[str, Any] = {"metric": ",".join(results)}
    for name, result in results.items():
        data[name] = result if isinstance(result, dict) else asdict(result)
    data.update(extra or {})
    data["inputs"] = {"real": real.describe(), "gen": gen.describe()}
    made = features_made(data["inputs"], run.cached)
    notes.extend(made.warnings)
    data.update(made.data)
    data["settings"] = _applied_precision(run.settings(_PAIR_SETTINGS), list(results))
    data.update(run.tail(notes))
    lines = [summary_line(name, result) for name, result in results.items()]
    lines.append(
        f"  real {real.shown}  n={real.n:,}   gen {gen.shown}  n={gen.n:,}   "
        f"d={real.d:,}   {data['seconds']:.2f} s"
    )
    lines += made.lines
    first = next(iter(results))
    return Report(data["metric"], results, data, "\n".join(lines), _HEADLINE[first](results[first]))


def _takes_precision() -> str:
    """The metrics whose products «precision» sets (by their declarations)."""
    from shardeval.pipeline.metrics import METRICS

    takers = [m for m in METRICS if "precision" in METRICS[m].run_options]
    return ", ".join(m for m in takers if m not in _FLOAT64_SUMS)


def _refuse_fp32_sums(precision: str | None) -> None:
    """KID and CMMD alone: fp64 is what they do; fp32 they cannot honour."""
    if precision == "fp32":
        raise OptionError(
            "«precision='fp32'» cannot apply to kid or cmmd: their kernel sums always take "
            "float64 products of centred rows, since no bound on fp32 rounding holds their "
            f"value to 1e-5 (docs/numerics.md); «precision» applies to {_takes_precision()}"
        )


#: The engine and input options of the pair-metric functions, after the metric's own.
_ENGINE_PARAMS = (
    ("encoder", "str | None", "the encoder of image inputs (inception, dinov2-vitl14, …)"),
    ("resize", "str | None", "the Inception's resize of image inputs"),
    ("weights", "str | None", "the encoder's weights (default: the standard caches)"),
    ("batch_size", "int | None", "images per forward pass (default 32)"),
    ("cache_root", "str | None", "the feature cache of image inputs"),
    (
        "verify",
        "bool | None",
        "reuse cached features of images only if the images' bytes match (reads them once)",
    ),
    ("skip_bad", "bool | None", "leave out images that cannot be decoded (named in the report)"),
    ("shard_rows", "int | None", "rows per block, one task each (default: about 32 MiB a block)"),
    ("array", "str | None", "the variable inside a Zarr group, xarray dataset or .npz"),
    ("split_every", "int | None", "fan-in of a balanced merge tree"),
    ("device", "str | None", "where kernels run: auto (default), cpu or cuda"),
    ("backend", "str | None", "auto (default), triton or torch"),
    ("precision", "str | None", "products of the PRDC decisions: fp32 (default) or fp64"),
    ("scheduler", "Any", "threads (default), sync, an address or a distributed.Client"),
    ("cluster", "str | None", "a cluster spec file: started, used, closed"),
    ("threads", "int | None", "threads of the threaded scheduler"),
    ("performance_report", "str | None", "file for Dask's performance report"),
    ("progress", "Callable[[int, int], None] | None", "called with (done, total)"),
    ("log", "Callable[[str], None] | None", "called with notices"),
)
