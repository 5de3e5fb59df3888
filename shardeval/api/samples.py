"""The pair metrics, exact over all pairs of the full sets: ``kid``, ``cmmd``, ``prdc``, and
``metrics`` (several at once, sharing the passes). Options and defaults come from each
metric's plug-in declaration (:mod:`shardeval.pipeline.metrics`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from shardeval.api.functions import (
    Notes,
    Progress,
    _moments,
    _must_exist,
    _noted,
    _Run,
    _running,
    check_options,
    image_flags,
    refuse,
    with_features,
)
from shardeval.api.inputs import (
    arrays_for,
    describe_input,
    features,
    is_path,
    is_statistics,
    statistics,
)
from shardeval.api.results import Report, features_made
from shardeval.pipeline.errors import OptionError, ShapeError, StoreError

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


def _one(name: str, real: Any, gen: Any, options: dict[str, Any]) -> Report:
    from shardeval.pipeline.metrics import METRICS

    known = {p.name for p in METRICS[name].params} | {n for n, _, _ in _ENGINE_PARAMS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword arguments {unknown}")
    check_options(options)
    if name in ("kid", "cmmd"):
        _refuse_fp32_sums(options.get("precision"))
    if name == "kid":
        if not options.get("subsets"):
            refuse(options, ("seed",), "applies to the subset protocol («subsets»)")
            refuse(options, ("subset_size",), "applies with «subsets» (the subset protocol)")
        else:
            refuse(options, ("split_every",), "applies to the exact estimator, not to «subsets»")
            refuse(options, ("device", "backend"), "apply to the exact estimator, not to «subsets»")
    params = _params((name,), options)
    _must_exist(real, gen)
    images = image_flags([real, gen], options)
    with _noted() as notes, _running(options) as run:
        array, rows = run.options.get("array"), run.options.get("shard_rows")
        real, gen = with_features(run, [real, gen], images)
        names = arrays_for([real, gen], array)
        a, b = (
            features(x, array=n, shard_rows=rows) for x, n in zip((real, gen), names, strict=True)
        )
        return _report(run, _pairs(run, a, b, params), a, b, notes)


def _metric_function(name: str, text: str, example: str) -> Callable[..., Report]:
    """The API function of a pair metric: its keyword arguments (with their defaults and
    documentation) made from the metric's plug-in declaration, then the engine's."""
    import inspect

    from shardeval.pipeline.metrics import METRICS

    cls = METRICS[name]

    def function(real: Any, gen: Any, **options: Any) -> Report:
        return _one(name, real, gen, options)

    keyword = inspect.Parameter.KEYWORD_ONLY
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("real", positional), inspect.Parameter("gen", positional)]
    parameters += [
        inspect.Parameter(p.name, keyword, default=p.default, annotation=p.kind.__name__)
        for p in cls.params
    ]
    parameters += [
        inspect.Parameter(n, keyword, default=None, annotation=t) for n, t, _ in _ENGINE_PARAMS
    ]
    function.__signature__ = inspect.Signature(parameters, return_annotation="Report")  # type: ignore[attr-defined]
    args = "\n".join(f"        {p.name}: {p.describe()}." for p in cls.params)
    engine = "\n".join(f"        {n}: {h}." for n, _, h in _ENGINE_PARAMS)
    function.__doc__ = (
        f"{text}\n\n    Args:\n        real, gen: features (a store path, an array, a tensor…; see"
        f" :mod:`shardeval.api.inputs`).\n{args}\n{engine}\n\n    Returns:\n"
        f"        :class:`~shardeval.api.results.Report`: ``float()`` the {cls.outputs[0].name};"
        f" ``results[{name!r}]`` the typed result.\n\n    Raises:\n        ShapeError, "
        "NonFiniteError, NumericalError: bad inputs, named; OptionError, MetricOptionError: "
        f"options that do not apply or fit.\n\n    Example:\n{example}\n"
    )
    function.__name__ = function.__qualname__ = name
    function.__module__ = __name__
    return function


kid = _metric_function(
    "kid",
    """Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018): the
    squared MMD of ``real`` and ``gen`` under k(x, y) = (x·y/d + 1)³,

        KID = Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(n(n−1)) − 2 Σ k(x_i, y_j)/(mn),

    by default unbiased over ALL pairs of the full sets, with its standard error and a
    rigorous bound on its rounding; ``subsets`` gives the peers' protocol (torch-fidelity's).
    Its kernel sums take float64 products (``precision='fp32'`` is refused).""",
    """        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> r = se.kid(rng.normal(size=(300, 8)), rng.normal(0.3, 1.0, size=(300, 8)))
        >>> bool(0 < float(r) < 1), bool(r["kid"].standard_error > 0)
        (True, True)""",
)

cmmd = _metric_function(
    "cmmd",
    """CMMD (Jayasumana et al., "Rethinking FID", CVPR 2024): 1,000 × the squared MMD under
    exp(−‖x̂ − ŷ‖²/2σ²) on embeddings scaled to unit norm, over all pairs of the full sets (the
    reference's V-statistic, or the U-statistic). Its kernel sums take float64 products.""",
    """        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> r = se.cmmd(rng.normal(size=(200, 8)), rng.normal(0.5, 1.0, size=(200, 8)))
        >>> bool(float(r) > 0)
        True""",
)

prdc = _metric_function(
    "prdc",
    """Precision and recall (Kynkäänniemi et al., NeurIPS 2019) and density and coverage (Naeem
    et al., ICML 2020), exact over the full sets: every distance decision is exact in float64.""",
    """        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> r = se.prdc(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)))
        >>> bool(0 < r["prdc"].recall <= 1)
        True""",
)


def metrics(
    real: Any,
    gen: Any,
    names: str | Sequence[str],
    *,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    nonfinite: str | None = None,
    encoder: str | None = None,
    resize: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    cache_root: str | None = None,
    verify: bool | None = None,
    skip_bad: bool | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Report:
    """Several metrics at once, by their plug-ins (:mod:`shardeval.pipeline.metrics`), as a
    job computes them for one entry against a reference: ``real`` is the reference, ``gen``
    the entry. The features' passes are shared: the entry's moments once for every metric
    that needs them, the pair metrics' block pairs once for KID, CMMD and PRDC together.

    Args:
        real, gen: features (see :mod:`shardeval.api.inputs`); ``real`` is None when every
            metric named measures the set alone (``is``, whose plug-in needs no reference).
        names: registered metric names (``fid``, ``fid_inf``, ``kid``, ``cmmd``, ``prdc``,
            ``nll_gaussian``, ``is``, and any registered since), as a list or as the command
            line's comma-separated text (``"fid,kid"``).
        **options: the metrics' own options by name, as their declarations give them. An
            option several asked metrics declare, such as ``seed``, goes to each of them it
            means something to: beside ``fid_inf``, an exact KID (no ``subsets``) draws no
            subsets and is not given the seed; one that means nothing to any is refused.
        nonfinite: rows with NaN or inf: ``error`` (default) or ``drop`` (metrics that take
            it; the pair metrics need every row).
        encoder, resize, weights, batch_size, cache_root, verify, skip_bad: how image inputs
            become features, as for :func:`shardeval.fid`.
        shard_rows, array, split_every, device, backend, precision, scheduler, cluster,
            threads, performance_report, progress, log: as for :func:`shardeval.fid`.

    Returns:
        :class:`~shardeval.api.results.Report`: each metric's declared outputs under its
        name; ``float()`` the first metric's headline.

    Raises:
        OptionError: an unknown metric, or an option no metric asked for takes.
        MetricOptionError: an option's value its declaration refuses.

    Example:
        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(300, 4)), rng.normal(0.3, 1.0, size=(300, 4))
        >>> r = se.metrics(a, b, ["fid", "kid"])
        >>> sorted(r.results), bool(float(r) > 0)
        (['fid', 'kid'], True)
    """
    from shardeval.pipeline.metrics import METRICS, metric_names

    given = dict(locals())
    check_options(given)
    wanted = metric_names(names)
    declared = {m: {p.name for p in METRICS[m].params} for m in wanted}
    for option, value in options.items():
        if value is None or any(option in d for d in declared.values()):
            continue
        owners = [m for m in METRICS if option in {p.name for p in METRICS[m].params}]
        if not owners:
            raise OptionError(f"no metric takes «{option}»")
        verb = "is" if len(owners) == 1 else "are"
        raise OptionError(f"«{option}» applies to {', '.join(owners)}, which {verb} not asked for")
    asked = f"the metrics asked ({', '.join(wanted)})"
    untaken = [o for o in _RUN_OPTIONS if all(o not in METRICS[m].run_options for m in wanted)]
    refuse(given, untaken, f"do not apply to {asked}")
    pair = [m for m in wanted if METRICS[m].needs_reference_features]
    if pair and nonfinite == "drop":
        raise OptionError(
            f"«nonfinite='drop'» cannot apply to {', '.join(pair)}, which "
            f"need{'s' if len(pair) == 1 else ''} every row"
        )
    if nonfinite == "drop" and all("nonfinite" not in declared[m] for m in wanted):
        one = len(wanted) == 1
        raise OptionError(
            f"«nonfinite='drop'» cannot apply to {', '.join(wanted)}, which "
            f"take{'s' if one else ''} every row"
        )
    if set(wanted) <= {"kid", "cmmd"}:
        _refuse_fp32_sums(precision)
    if wanted == ("kid",) and options.get("subsets"):
        refuse(given, ("device", "backend"), "apply to the exact estimator, not to «subsets»")
    given_to: dict[str, dict[str, Any]] = {}
    for m in wanted:
        given_to[m] = {k: v for k, v in options.items() if k in declared[m] and v is not None}
    for option in sorted({k for m in wanted for k in given_to[m]}):
        owners = [m for m in wanted if option in given_to[m]]
        if len(owners) < 2:
            continue  # one metric's own: it refuses a value that means nothing to it
        # An option several asked metrics declare (``seed``) goes to those it means something
        # to: beside fid_inf, an exact KID (no «subsets») draws no subsets and takes no seed.
        takers = [m for m in owners if METRICS[m].applies(option, given_to[m])]
        if not takers:
            raise OptionError(
                f"«{option}» means nothing to {', '.join(owners)} as asked (it applies with "
                f"{', '.join(sorted({_needed(m, option) for m in owners}))})"
            )
        for m in set(owners) - set(takers):
            del given_to[m][option]
    instances = []
    for m in wanted:
        mine = given_to[m]
        if nonfinite is not None and "nonfinite" in declared[m]:
            mine["nonfinite"] = nonfinite
        instances.append(METRICS[m](mine))
    compared = [m for m in wanted if METRICS[m].needs_reference]
    if real is None and compared:
        raise OptionError(
            f"{', '.join(compared)} compare{'s' if len(compared) == 1 else ''} the set with a "
            "reference, and none was given"
        )
    if real is not None and not compared:
        one = len(wanted) == 1
        raise OptionError(
            f"{', '.join(wanted)} measure{'s' if one else ''} the set alone and "
            f"take{'s' if one else ''} no reference: give the set alone"
        )
    _must_exist(real, gen)
    # Statistics hold the reference's Gaussian only: enough unless a metric sums over the
    # reference's rows. A guided-diffusion reference batch holds both: its mu/sigma (the
    # whole dataset's, which FID takes) and images (extracted for the rows).
    from shardeval.pipeline.io.statsio import is_adm_reference

    given_stats = real is not None and is_statistics(real)
    rows = [m for m in wanted if METRICS[m].needs_reference_features]
    adm = given_stats and is_path(real) and is_adm_reference(os.fspath(real))
    if given_stats and rows and not adm:
        raise StoreError(
            f"{describe_input(real)!r} holds statistics, but {', '.join(rows)} "
            f"need{'s' if len(rows) == 1 else ''} the reference's features: give its "
            "feature store"
        )
    stats_only = given_stats and not rows
    images = image_flags([None if stats_only else real, gen], given)
    held = None  # what the reference's statistics record of how they were made
    if given_stats and is_path(real):
        from shardeval.pipeline.io.statsio import stats_provenance

        held = stats_provenance(os.fspath(real))
    with _noted() as notes, _running(given) as run:
        gaussian = statistics(real) if given_stats else None
        real, gen = with_features(run, [real, gen], images)
        # The array named names what the metrics read, when they all read one kind of input
        # (the Inception Score's logits, or features); else it is the features'.
        one_kind = len({METRICS[m].reads for m in wanted}) == 1
        real_rows = real is not None and not stats_only
        arrays = arrays_for([real, gen] if real_rows else [gen], array)
        if one_kind and METRICS[wanted[0]].reads == "logits":  # of GEN alone: no reference
            from shardeval.pipeline.inception_score.logits import array_of_logits

            arrays = [array_of_logits(gen, array)]
        a = features(real, array=arrays[0], shard_rows=shard_rows) if real_rows else gaussian
        b = features(gen, array=arrays[-1], shard_rows=shard_rows)
        in_memory = not (images[1] or is_path(gen))  # images become an extraction store
        named = (array is not None or in_memory) if one_kind else None
        return _by_plug_ins(run, instances, a, b, notes, gaussian=gaussian, named=named, held=held)


def _needed(metric: str, option: str) -> str:
    """The option without which ``option`` means nothing to ``metric`` (marked)."""
    from shardeval.pipeline.metrics import METRICS

    param = next(p for p in METRICS[metric].params if p.name == option)
    return f"«{param.applies_with}» for {metric}" if param.applies_with else metric


def _by_plug_ins(
    run: _Run,
    instances: list[Any],
    real: Any,
    gen: Any,
    notes: Notes,
    gaussian: Any = None,
    named: bool | None = None,
    held: dict[str, Any] | None = None,
) -> Report:
    """``instances`` computed for ``gen`` against ``real`` (features, or statistics when no
    instance needs the reference's rows) through the plug-in interface; ``gaussian``, when
    given, is the reference's Gaussian (a file's statistics beside the rows it holds), and
    ``held`` what its file records of how its features were made."""
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.stores import check_same_dim
    from shardeval.pipeline.metrics import Context, Reference

    o = run.options
    extra: dict[str, Any] = {}
    if real is None:  # metrics of the set alone (no reference)
        source, location, n, described = None, "", None, None
    elif isinstance(real, Gaussian):
        if real.d != gen.d:
            raise ShapeError(
                f"feature dimensions differ: {real.source!r} has d={real.d}, "
                f"{gen.location!r} has d={gen.d}; compare features of one model"
            )
        gaussian, source = real, None
        location, n, described = real.source, real.n, {"statistics": real.source, "n": real.n}
    else:
        check_same_dim(real, gen)
        source, location, n, described = real, real.location, real.n, real.describe()
        if gaussian is not None:
            described = {**described, "statistics": gaussian.source}
    requests: dict[str, Any] = {}
    for m in instances:
        requests.update(m.sample_request())
    context = Context(
        Reference(gaussian, "", location, source),
        run.engine,
        run.progress,
        o.get("device") or "auto",
        o.get("backend") or "auto",
        requests,
        precision=o.get("precision") or "fp32",
        split_every=o.get("split_every"),
        block_rows=o.get("shard_rows"),
        named=named,
    )
    for m in instances:  # before any pass: the reference's moments are one
        m.check(gen, context)
    if gaussian is None and any(
        m.needs_reference and not m.needs_reference_features for m in instances
    ):
        ((moments, dropped),) = _moments(run, [real])
        gaussian = Gaussian.from_moments(moments, real.location)
        extra["nonfinite_dropped"] = {"real": dropped}
        context.reference = Reference(gaussian, "", location, source)
    results = {m.name: m.check_outputs(m.compute(gen, context)) for m in instances}
    shown = real.shown if source is not None else location
    data: dict[str, Any] = {"metric": ",".join(results), **results, **extra}
    data["options"] = {m.name: m.options for m in instances}
    data["inputs"] = {"real": described, "gen": gen.describe()}
    sides: dict[str, Any] = {"real": held} if source is None else {"real": source.describe()}
    if source is not None and held:  # rows from a file that holds statistics too
        sides["real statistics"] = held
    sides["gen"] = data["inputs"]["gen"]
    made = features_made(sides if real is not None else {"gen": sides["gen"]}, run.cached)
    notes.extend(made.warnings)
    data.update(made.data)
    # The kernels' and products' settings where a metric asked takes them; every metric
    # reads rows (shard_rows, array, split_every) and refuses non-finite ones or drops them.
    taken = {o for m in instances for o in m.run_options}
    settings = run.settings(
        [s for s in (*_PAIR_SETTINGS, "nonfinite") if s not in _RUN_OPTIONS or s in taken]
    )
    data["settings"] = _applied_precision(settings, [m.name for m in instances])
    data.update(run.tail(notes))
    lines = [_plug_in_line(m, results[m.name]) for m in instances]
    lines.append(
        (f"  real {shown}  n={n if n is None else format(n, ',')}" if real is not None else "")
        + f"   gen {gen.shown}  n={gen.n:,}   d={gen.d:,}   {data['seconds']:.2f} s"
    )
    lines += made.lines
    first = instances[0]
    value = float(results[first.name][first.outputs[0].name])
    return Report(data["metric"], results, data, "\n".join(lines), value)


def _plug_in_line(metric: Any, outputs: dict[str, Any]) -> str:
    """A metric's scalar outputs on one line, by its declaration (names and units)."""
    shown = []
    for out in metric.outputs:
        if out.array or outputs[out.name] is None:  # None: not asked for by the options
            continue
        value = outputs[out.name]
        number = f"{value:,}" if isinstance(value, int) else f"{float(value):.6g}"
        shown.append(f"{out.name} {number}{' ' + out.unit if out.unit else ''}")
    return f"{metric.title}: " + ", ".join(shown)
