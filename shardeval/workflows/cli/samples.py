"""The sample-metric commands: kid, cmmd, prdc, and metrics (several at once)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from shardeval.workflows.cli.common import (
    UsageError,
    claim_report,
    emit,
    engine,
    moments_of,
    must_exist,
    progress,
    refuse,
    report_tail,
)

if TYPE_CHECKING:
    from shardeval.pipeline.io.stores import FeatureSource

#: The options of each metric's parameters, by the metric they belong to.
_OWNED = {
    "kid": ("subsets", "subset_size"),
    "cmmd": ("unbiased", "sigma"),
    "prdc": ("k", "pr_k"),
}


def _sources(args: argparse.Namespace) -> tuple[FeatureSource, FeatureSource]:
    from shardeval.pipeline.io.stores import open_features

    must_exist(*args.stores)
    claim_report(args)
    real, gen = (
        open_features(p, array_name=args.array, shard_rows=args.shard_rows) for p in args.stores
    )
    return real, gen


def _params(args: argparse.Namespace, wanted: tuple[str, ...]) -> dict[str, Any]:
    from shardeval.pipeline.pairwise.passes import CMMDParams, KIDParams, PRDCParams

    for metric, options in _OWNED.items():
        if metric not in wanted:
            refuse(args, options, f"apply to {metric}, which is not asked for")
    if args.subset_size is not None and args.subsets is None:
        raise UsageError("--subset-size applies with --subsets (the subset protocol)")
    params: dict[str, Any] = {}
    if "kid" in wanted:
        params["kid"] = KIDParams()
    if "cmmd" in wanted:
        params["cmmd"] = CMMDParams(sigma=args.sigma or 10.0, unbiased=args.unbiased)
    if "prdc" in wanted:
        params["prdc"] = PRDCParams(k=args.k or 5, pr_k=args.pr_k or 3)
    return params


def _run(
    args: argparse.Namespace, real: FeatureSource, gen: FeatureSource, params: dict[str, Any]
) -> dict[str, Any]:
    """Compute the pair metrics asked for; KID by subsets when --subsets is given."""
    from shardeval.pipeline.pairwise.passes import kid_subsets, sample_metrics

    results: dict[str, Any] = {}
    eng, precision, bar = engine(args), args.precision or "fp32", progress(args)
    kid = params.pop("kid", None)
    device, backend = args.device or "auto", args.backend or "auto"
    if args.subsets is not None and kid is not None:
        results["kid"] = kid_subsets(
            real,
            gen,
            subsets=int(args.subsets),
            subset_size=args.subset_size or 1000,
            seed=2020 if args.seed is None else int(args.seed),
            params=kid,
            engine=eng,
            precision=precision,
            progress=bar,
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
                engine=eng,
                block_rows=args.shard_rows,
                precision=precision,
                split_every=args.split_every,
                device=device,
                backend=backend,
                progress=bar,
            )
        )
    return results


def _summary(name: str, result: Any) -> str:
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


def _report(
    args: argparse.Namespace,
    results: dict[str, Any],
    real: FeatureSource,
    gen: FeatureSource,
    start: float,
    extra: dict[str, Any] | None = None,
) -> int:
    data: dict[str, Any] = {"metric": ",".join(results)}
    for name, result in results.items():
        data[name] = result if isinstance(result, dict) else asdict(result)
    data.update(extra or {})
    data["inputs"] = {"real": real.describe(), "gen": gen.describe()}
    data.update(report_tail(args, start))
    lines = [_summary(name, result) for name, result in results.items()]
    lines.append(
        f"  real {real.location}  n={real.n:,}   gen {gen.location}  n={gen.n:,}   "
        f"d={real.d:,}   {data['seconds']:.2f} s"
    )
    return emit(args, data, "\n".join(lines))


def _refuse_fp32_sums(args: argparse.Namespace) -> None:
    """KID and CMMD alone: ``--precision fp64`` is what they do; fp32 they cannot honour."""
    if args.precision == "fp32":
        raise UsageError(
            "--precision fp32 cannot apply to kid and cmmd: their kernel sums always take "
            "float64 products of centred rows, since no bound on fp32 rounding holds their "
            "value to 1e-5 (README: Numerics); --precision applies to fid and prdc"
        )


def _one(args: argparse.Namespace, name: str) -> int:
    start = time.perf_counter()
    if name in ("kid", "cmmd"):
        _refuse_fp32_sums(args)
    params = _params(args, (name,))
    real, gen = _sources(args)
    if name != "kid":
        refuse(args, ("seed",), f"does not apply to {name}")
    return _report(args, _run(args, real, gen, params), real, gen, start)


def cmd_kid(args: argparse.Namespace) -> int:
    if args.subsets is None:
        refuse(args, ("seed",), "applies to the subset protocol (--subsets)")
    else:
        refuse(args, ("split_every",), "applies to the exact estimator, not to --subsets")
        refuse(args, ("device", "backend"), "apply to the exact estimator, not to --subsets")
    return _one(args, "kid")


def cmd_cmmd(args: argparse.Namespace) -> int:
    return _one(args, "cmmd")


def cmd_prdc(args: argparse.Namespace) -> int:
    return _one(args, "prdc")


def cmd_metrics(args: argparse.Namespace) -> int:
    from shardeval.pipeline.fid.frechet import frechet_distance, warn_if_rounding_reached_spectrum
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.fid.infinity import fid_infinity

    start = time.perf_counter()
    wanted = args.metrics
    pair = [m for m in wanted if m in ("kid", "cmmd", "prdc")]
    if pair and args.nonfinite == "drop":
        raise UsageError("--nonfinite drop cannot apply to kid, cmmd or prdc, which need every row")
    if args.subsets is not None and wanted == ("kid",):
        refuse(args, ("device", "backend"), "apply to the exact estimator, not to --subsets")
    if args.seed is not None and "fid_inf" not in wanted and args.subsets is None:
        raise UsageError("--seed applies to fid_inf or to KID's --subsets")
    if set(wanted) <= {"kid", "cmmd"}:
        _refuse_fp32_sums(args)
    params = _params(args, tuple(wanted))
    real, gen = _sources(args)
    results: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    device, backend = args.device or "auto", args.backend or "auto"
    if "fid" in wanted or "fid_inf" in wanted:
        ((real_moments, dropped),) = moments_of(args, [real])
        reference = Gaussian.from_moments(real_moments, real.location)
        if "fid_inf" in wanted:
            inf = fid_infinity(
                reference,
                gen,
                engine=engine(args),
                seed=0 if args.seed is None else int(args.seed),
                nonfinite=args.nonfinite or "error",
                split_every=args.split_every,
                progress=progress(args),
                device=device,
                backend=backend,
            )
            results["fid_inf"] = inf
            if "fid" in wanted:
                results["fid"] = {"fid": inf.fid}
        else:
            ((gen_moments, _),) = moments_of(args, [gen])
            fd = frechet_distance(reference, Gaussian.from_moments(gen_moments, gen.location))
            fp32 = (args.precision or "fp32") == "fp32" and max(real.n, gen.n) > real.d
            warn_if_rounding_reached_spectrum(fd, fp32)
            results["fid"] = {"fid": fd.fid, "mean_term": fd.mean_term, "trace_term": fd.trace_term}
        extra["nonfinite_dropped"] = {"real": dropped}
    results.update(_run(args, real, gen, params))
    return _report(args, {name: results[name] for name in wanted}, real, gen, start, extra)
