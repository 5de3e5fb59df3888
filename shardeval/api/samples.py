"""The pair metrics, exact over all pairs of the full sets: ``kid``, ``cmmd``, ``prdc``, and
``metrics`` (several at once, sharing the passes). Options and defaults come from each
metric's plug-in declaration (:mod:`shardeval.pipeline.metrics`)."""

from __future__ import annotations

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
    refuse,
)
from shardeval.api.inputs import features
from shardeval.api.results import Report
from shardeval.pipeline.errors import OptionError

#: The metrics ``metrics`` computes, and the options of each pair metric.
SAMPLE_METRICS = ("fid", "fid_inf", "kid", "cmmd", "prdc")
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
            refuse(given, shared, f"apply to {metric}, which is not asked for")
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
        return (
            f"FID∞ {result.fid_infinity:.6g}   (FID at N = {result.sizes[-1]:,}: {result.fid:.6g}; "
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
    data["settings"] = run.settings()
    data.update(run.tail(notes))
    lines = [summary_line(name, result) for name, result in results.items()]
    lines.append(
        f"  real {real.location}  n={real.n:,}   gen {gen.location}  n={gen.n:,}   "
        f"d={real.d:,}   {data['seconds']:.2f} s"
    )
    first = next(iter(results))
    return Report(data["metric"], results, data, "\n".join(lines), _HEADLINE[first](results[first]))


def _refuse_fp32_sums(precision: str | None) -> None:
    """KID and CMMD alone: fp64 is what they do; fp32 they cannot honour."""
    if precision == "fp32":
        raise OptionError(
            "«precision='fp32'» cannot apply to kid and cmmd: their kernel sums always take "
            "float64 products of centred rows, since no bound on fp32 rounding holds their "
            "value to 1e-5 (README: Numerics); «precision» applies to fid and prdc"
        )


def _one(name: str, real: Any, gen: Any, options: dict[str, Any]) -> Report:
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
    with _noted() as notes, _running(options) as run:
        o = run.options
        a, b = (
            features(x, array=o.get("array"), shard_rows=o.get("shard_rows")) for x in (real, gen)
        )
        return _report(run, _pairs(run, a, b, params), a, b, notes)


def _documented(function: Callable[..., Report]) -> Callable[..., Report]:
    """Put the engine options' lines into the docstring where it says ``{engine}``."""
    function.__doc__ = (function.__doc__ or "").replace("{engine}", _ENGINE_DOC)
    return function


_ENGINE_DOC = """
        shard_rows: rows per block, one task each (default: about 32 MiB a block).
        array, split_every, device, backend: see the README's option table.
        scheduler, cluster, threads, performance_report, progress, log: the engine (see
            :mod:`shardeval.api.functions`)."""


@_documented
def kid(
    real: Any,
    gen: Any,
    *,
    subsets: int | None = None,
    subset_size: int | None = None,
    seed: int | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018): the
        squared MMD of ``real`` and ``gen`` under k(x, y) = (x·y/d + 1)³.

        .. math:: \\mathrm{KID} = \\frac{\\sum_{i\\ne j} k(x_i,x_j)}{m(m-1)}
                  + \\frac{\\sum_{i\\ne j} k(y_i,y_j)}{n(n-1)} - \\frac{2\\sum_{i,j} k(x_i,y_j)}{mn}

        By default the unbiased estimator over ALL pairs, with its standard error and a rigorous
        rounding bound; ``subsets`` gives the peers' protocol (torch-fidelity's).

        Args:
            real, gen: features (a store path, an array, a tensor… see :mod:`shardeval.api.inputs`).
            subsets: the peers' protocol: this many random subsets (default: all pairs).
            subset_size: rows per subset (default 1000).
            seed: seed of the subsets (default 2020, torch-fidelity's).
            precision: ``fp64`` only (the kernel sums are float64; ``fp32`` is refused).
    {engine}

        Returns:
            :class:`~shardeval.api.results.Report` (``float()`` the KID; ``results["kid"]`` the
            :class:`~shardeval.pipeline.mmd.kid.KIDResult`).

        Raises:
            ShapeError, NonFiniteError, NumericalError: bad inputs, named; OptionError.

        Example:
            >>> import numpy as np, shardeval as se
            >>> rng = np.random.default_rng(0)
            >>> r = se.kid(rng.normal(size=(300, 8)), rng.normal(0.3, 1.0, size=(300, 8)))
            >>> 0 < float(r) < 1, r["kid"].standard_error > 0
            (True, True)
    """
    return _one("kid", real, gen, dict(locals()))


@_documented
def cmmd(
    real: Any,
    gen: Any,
    *,
    sigma: float | None = None,
    unbiased: bool | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """CMMD (Jayasumana et al., "Rethinking FID", CVPR 2024): 1,000 × the squared MMD under
        exp(−‖x̂ − ŷ‖²/2σ²) on embeddings scaled to unit norm, over all pairs.

        Args:
            sigma: RBF bandwidth on unit embeddings (default 10).
            unbiased: the U-statistic (default: the reference's V-statistic).
            precision: ``fp64`` only (the kernel sums are float64; ``fp32`` is refused).
    {engine}

        Returns:
            :class:`~shardeval.api.results.Report` (``float()`` the CMMD).

        Example:
            >>> import numpy as np, shardeval as se
            >>> rng = np.random.default_rng(0)
            >>> r = se.cmmd(rng.normal(size=(200, 8)), rng.normal(0.5, 1.0, size=(200, 8)))
            >>> float(r) > 0
            True
    """
    return _one("cmmd", real, gen, dict(locals()))


@_documented
def prdc(
    real: Any,
    gen: Any,
    *,
    k: int | None = None,
    pr_k: int | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
        2020), exact over the full sets: every distance decision is exact in float64.

        Args:
            k: neighbours for density and coverage (default 5).
            pr_k: neighbours for precision and recall (default 3).
    {engine}

        Returns:
            :class:`~shardeval.api.results.Report` (``float()`` the precision).

        Example:
            >>> import numpy as np, shardeval as se
            >>> rng = np.random.default_rng(0)
            >>> r = se.prdc(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)))
            >>> 0 < r["prdc"].recall <= 1
            True
    """
    return _one("prdc", real, gen, dict(locals()))


def metrics(
    real: Any,
    gen: Any,
    names: Sequence[str],
    *,
    subsets: int | None = None,
    subset_size: int | None = None,
    seed: int | None = None,
    sigma: float | None = None,
    unbiased: bool | None = None,
    k: int | None = None,
    pr_k: int | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    nonfinite: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Several metrics at once (``names`` from fid, fid_inf, kid, cmmd, prdc), sharing the
    passes: one over the shards for FID and FID∞, one over each set's own block pairs and one
    over the cross pairs for KID, CMMD and PRDC.

    Returns:
        :class:`~shardeval.api.results.Report` (``float()`` the first metric's headline).

    Example:
        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(300, 4)), rng.normal(0.3, 1.0, size=(300, 4))
        >>> r = se.metrics(a, b, ["fid", "kid"])
        >>> sorted(r.results)
        ['fid', 'kid']
    """
    options = dict(locals())
    wanted = tuple(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in SAMPLE_METRICS]
    if not wanted or unknown:
        raise OptionError(f"«names» must be from {', '.join(SAMPLE_METRICS)}; got {list(names)}")
    pair = [m for m in wanted if m in ("kid", "cmmd", "prdc")]
    if pair and nonfinite == "drop":
        raise OptionError(
            "«nonfinite='drop'» cannot apply to kid, cmmd or prdc, which need every row"
        )
    if set(wanted) <= {"kid", "cmmd"}:
        _refuse_fp32_sums(precision)
    params = _params(wanted, options)  # first: options of metrics not asked for
    if subsets is not None and wanted == ("kid",):
        refuse(options, ("device", "backend"), "apply to the exact estimator, not to «subsets»")
    if seed is not None and "fid_inf" not in wanted and subsets is None:
        raise OptionError("«seed» applies to fid_inf or to KID's «subsets»")
    if subset_size is not None and subsets is None:
        raise OptionError("«subset_size» applies with «subsets» (the subset protocol)")
    _must_exist(real, gen)
    with _noted() as notes, _running(options) as run:
        a, b = (features(x, array=array, shard_rows=shard_rows) for x in (real, gen))
        results, extra = _fids(run, wanted, a, b, seed)
        results.update(_pairs(run, a, b, params))
        return _report(run, {name: results[name] for name in wanted}, a, b, notes, extra)


def _fids(
    run: _Run, wanted: Sequence[str], real: Any, gen: Any, seed: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    from shardeval.pipeline.fid.frechet import (
        frechet_distance,
        warn_if_rounding_reached_spectrum,
    )
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.fid.infinity import fid_infinity

    results: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if "fid" not in wanted and "fid_inf" not in wanted:
        return results, extra
    o = run.options
    ((real_moments, dropped),) = _moments(run, [real])
    reference = Gaussian.from_moments(real_moments, real.location)
    if "fid_inf" in wanted:
        inf = fid_infinity(
            reference,
            gen,
            engine=run.engine,
            seed=0 if seed is None else int(seed),
            nonfinite=o.get("nonfinite") or "error",
            split_every=o.get("split_every"),
            progress=run.progress,
            device=o.get("device") or "auto",
            backend=o.get("backend") or "auto",
        )
        results["fid_inf"] = inf
        if "fid" in wanted:
            results["fid"] = {"fid": inf.fid}
    else:
        ((gen_moments, _),) = _moments(run, [gen])
        fd = frechet_distance(reference, Gaussian.from_moments(gen_moments, gen.location))
        fp32 = (o.get("precision") or "fp32") == "fp32" and max(real.n, gen.n) > real.d
        warn_if_rounding_reached_spectrum(fd, fp32)
        results["fid"] = {"fid": fd.fid, "mean_term": fd.mean_term, "trace_term": fd.trace_term}
    extra["nonfinite_dropped"] = {"real": dropped}
    return results, extra
