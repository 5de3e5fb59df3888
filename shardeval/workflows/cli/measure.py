"""The measurement commands: fid, stats (and stats merge), nll, ess, synth."""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import TYPE_CHECKING, Any

from shardeval.workflows.cli.common import (
    ENGINE_OPTIONS,
    INPUT_OPTIONS,
    UsageError,
    claim_report,
    emit,
    engine,
    moments_of,
    must_exist,
    progress,
    refuse,
    report_tail,
    say,
    settings,
)

if TYPE_CHECKING:
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.io.stores import FeatureSource
    from shardeval.workflows.report import Side


def _open(args: argparse.Namespace, location: str, **kw: Any) -> FeatureSource:
    from shardeval.pipeline.io.stores import open_features

    return open_features(location, array_name=args.array, shard_rows=args.shard_rows, **kw)


def _frechet(
    inputs: list[str],
    stats: dict[str, tuple[Gaussian, Side]],
    sources: list[FeatureSource],
    computed: dict[str, Any],
) -> tuple[Any, list[Gaussian], list[Side], list[str]]:
    """The Fréchet distance of the two inputs (statistics as given, stores as computed), the
    Gaussians and report sides, and notes on the inputs."""
    from shardeval.pipeline.fid.frechet import frechet_distance
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.workflows.report import Side

    gaussians, sides, notes = [], [], []
    for path in inputs:
        if path in stats:
            gaussian, side = stats[path]
            if not gaussian.mergeable:
                notes.append(
                    f"{path!r} has mu/sigma without n: usable for FID, but it cannot be merged "
                    "with other statistics"
                )
        else:
            src = next(s for s in sources if s.location == path)
            moments, dropped = computed[path]
            gaussian = Gaussian.from_moments(moments, path)
            side = Side(
                "", path, moments.n, src.d, src.shards, "features", True, dropped, src.describe()
            )
        gaussians.append(gaussian)
        sides.append(side)
    return frechet_distance(gaussians[0], gaussians[1]), gaussians, sides, notes


def _statistics_side(location: str) -> tuple[Gaussian, Side]:
    from shardeval.pipeline.fid.gaussian import as_gaussian
    from shardeval.pipeline.io.statsio import load_stats, stats_provenance
    from shardeval.workflows.report import Side

    stats = as_gaussian(load_stats(location), location)
    side = Side(
        "",
        location,
        stats.n,
        stats.d,
        0,
        "statistics",
        stats.mergeable,
        0,
        stats_provenance(location),
    )
    return stats, side


def cmd_fid(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    inputs = ([args.ref] if args.ref is not None else []) + list(args.stores)
    if len(inputs) != 2:
        raise UsageError(
            f"give REAL and GEN (each a feature store or statistics); got {len(inputs)} inputs"
        )
    must_exist(*inputs)
    claim_report(args)
    from shardeval.pipeline.fid.moments import products_precision
    from shardeval.pipeline.io.statsio import is_stats
    from shardeval.pipeline.io.stores import check_same_dim
    from shardeval.workflows.report import FIDReport, Side

    kinds = ["statistics" if is_stats(p) else "features" for p in inputs]
    if args.ref is not None:
        kinds[0] = "statistics"  # --ref names statistics, whatever they look like
    if args.infinity and kinds[1] != "features":
        raise UsageError("--infinity needs GEN as a feature store (its rows form the subsets)")
    if not args.infinity:
        refuse(args, ("seed",), "applies to --infinity")
    feature_paths = [p for p, k in zip(inputs, kinds, strict=True) if k == "features"]
    if not feature_paths:
        refuse(
            args,
            (*ENGINE_OPTIONS, *INPUT_OPTIONS),
            "apply to feature stores; both inputs are statistics",
        )
    sources = [_open(args, p) for p in feature_paths]
    stats = {
        p: _statistics_side(p) for p, k in zip(inputs, kinds, strict=True) if k == "statistics"
    }
    dims = {p: side.d for p, (_, side) in stats.items()} | {s.location: s.d for s in sources}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{p!r} has d={d}" for p, d in dims.items())
        raise UsageError(f"feature dimensions differ: {listing}; compare features of one model")
    check_same_dim(*sources)
    bands = None
    if args.infinity:
        # GEN's nested-subset bands, in one pass; merged, they are GEN's moments.
        from shardeval.pipeline.fid.infinity import merged, nested_moments

        bands = nested_moments(
            sources[-1],
            engine=engine(args),
            seed=args.seed or 0,
            nonfinite=args.nonfinite or "error",
            device=args.device or "auto",
            backend=args.backend or "auto",
            split_every=args.split_every,
            progress=progress(args),
        )
        first = moments_of(args, sources[:-1]) if len(sources) > 1 else []
        computed = dict(
            zip(feature_paths, [*first, (merged(bands), bands.nonfinite.count)], strict=True)
        )
    else:
        computed = dict(
            zip(feature_paths, moments_of(args, sources) if sources else [], strict=True)
        )
    result, gaussians, sides, notes = _frechet(inputs, stats, sources, computed)
    requested = args.precision or "fp32"
    fp32_used = any(products_precision(src, requested) == "fp32" for src in sources)
    if result.clamped_count and fp32_used:
        # fp32 rounding reached the spectrum: a covariance of lower rank than d (a collapsed
        # set repeats few rows) has zero eigenvalues that fp32 products cannot tell from
        # their rounding (1e-3 off here), float64 products can. Recompute, then say so.
        clamped = result.clamped_count
        again = dict(zip(feature_paths, moments_of(args, sources, "fp64"), strict=True))
        result, gaussians, sides, notes = _frechet(inputs, stats, sources, again)
        warnings.warn(
            f"recomputed with float64 products: with fp32 products {clamped} eigenvalues fell "
            "below zero (a covariance of lower rank than d, as a set of repeated rows has)",
            UserWarning,
            stacklevel=2,
        )
    real, gen = (
        Side(**{**vars(s), "role": role}) for s, role in zip(sides, ("real", "gen"), strict=True)
    )
    described = engine(args).describe() if sources else {"scheduler": "none (statistics only)"}
    notes += [str(w) for w in getattr(args, "_warnings", [])]
    report = FIDReport(result, real, gen, time.perf_counter() - start, described, tuple(notes))
    data = report.to_dict()
    summary = report.summary()
    if bands is not None:
        from dataclasses import asdict

        from shardeval.pipeline.fid.infinity import fit_bands

        inf = fit_bands(gaussians[0], bands, args.seed or 0, inputs[1])
        data["fid_infinity"] = asdict(inf)
        summary += (
            f"\nFID∞ {inf.fid_infinity:.6g}   (least squares of FID_N over {len(inf.sizes)} nested "
            f"subsets of GEN, {inf.sizes[0]:,} to {inf.sizes[-1]:,} rows: slope {inf.slope:.4g}, "
            f"R² {inf.r2:.3f}; seed {inf.seed})"
        )
    if sources:
        data["settings"] = settings(args)
    return emit(args, data, summary)


def cmd_stats(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.inputs[0] == "merge":
        return _merge(args)
    if len(args.inputs) != 1:
        raise UsageError(
            f"stats takes one STORE (or `merge A B ...`); got {len(args.inputs)} inputs"
        )
    must_exist(args.inputs[0])
    from shardeval.pipeline.io.atomic import check_outside, claim_output
    from shardeval.pipeline.io.provenance import now_iso, versions
    from shardeval.pipeline.io.statsio import is_stats, save_stats

    check_outside(args.output, args.inputs)
    claim_output(args.output, "statistics file", is_stats, args.overwrite, streams=True)
    source = _open(args, args.inputs[0])
    ((moments, dropped),) = moments_of(args, [source])
    provenance = {
        **source.describe(),
        "settings": settings(args),
        "nonfinite_dropped": dropped,
        "created": now_iso(),
        "versions": versions(),
    }
    save_stats(args.output, moments, provenance, overwrite=args.overwrite)
    say(
        f"statistics of {source.location}: n={moments.n:,} d={moments.d:,} "
        f"shards={source.shards} -> {args.output} ({time.perf_counter() - start:.2f} s)",
        args.output,
    )
    return 0


def _merge(args: argparse.Namespace) -> int:
    refuse(args, (*ENGINE_OPTIONS, *INPUT_OPTIONS), "do not apply to `stats merge`")
    paths = args.inputs[1:]
    must_exist(*paths)
    from shardeval.pipeline.io.atomic import check_outside, claim_output
    from shardeval.pipeline.io.provenance import now_iso, versions
    from shardeval.pipeline.io.statsio import is_stats, merge_stats, save_stats

    check_outside(args.output, paths)
    claim_output(args.output, "statistics file", is_stats, args.overwrite, streams=True)
    merged, provenance = merge_stats(paths)
    save_stats(
        args.output,
        merged,
        {**provenance, "created": now_iso(), "versions": versions()},
        overwrite=args.overwrite,
    )
    say(
        f"merged {len(paths)} statistics: n={merged.n:,} d={merged.d:,} -> {args.output}",
        args.output,
    )
    return 0


#: nll: which options apply to which mode
_NLL_MODES = {
    "dims": ("loglik", "iw"),
    "reff": ("iw",),
    "bandwidth": ("parzen",),
    "device": ("iw", "gaussian", "parzen"),
    "backend": ("iw", "gaussian", "parzen"),
    "split_every": ("loglik", "iw", "gaussian"),
}
_NLL_USAGE = {
    "loglik": "LOGLIK",
    "iw": "no positional store (--iw LOGW)",
    "gaussian": "TEST (--gaussian STATS TEST)",
    "parzen": "TEST (--parzen SAMPLES TEST)",
}


def cmd_nll(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    modes = [m for m in ("iw", "gaussian", "parzen") if getattr(args, m) is not None]
    if len(modes) > 1:
        raise UsageError(f"choose one of --iw, --gaussian, --parzen; got {', '.join(modes)}")
    mode = modes[0] if modes else "loglik"
    want = 0 if mode == "iw" else 1
    if len(args.stores) != want:
        raise UsageError(f"nll {mode} takes {_NLL_USAGE[mode]}; got {len(args.stores)} store(s)")
    for option, applies in _NLL_MODES.items():
        if mode not in applies:
            refuse(args, (option,), f"does not apply to nll {mode}")
    must_exist(*args.stores, *(getattr(args, m) for m in modes))
    claim_report(args)
    from shardeval.workflows.report import nll_dict, nll_summary

    eng, bar, nonfinite = engine(args), progress(args), args.nonfinite or "error"
    device, backend = args.device or "auto", args.backend or "auto"
    inputs: dict[str, Any] = {}
    if mode == "loglik":
        from shardeval.pipeline.likelihood.nll import nll_from_loglik

        source = _open(args, args.stores[0], min_rows=1, ndims=(1,))
        result = nll_from_loglik(
            source,
            engine=eng,
            nonfinite=nonfinite,
            dims=args.dims,
            split_every=args.split_every,
            progress=bar,
        )
        inputs["loglik"] = source.describe()
    elif mode == "iw":
        from shardeval.pipeline.likelihood.nll import nll_importance

        source = _open(args, args.iw, min_rows=1, ndims=(2,))
        result = nll_importance(
            source,
            engine=eng,
            nonfinite=nonfinite,
            dims=args.dims,
            reff=args.reff or 1.0,
            device=device,
            backend=backend,
            split_every=args.split_every,
            progress=bar,
        )
        inputs["log_weights"] = source.describe()
    elif mode == "gaussian":
        from shardeval.pipeline.fid.gaussian import as_gaussian
        from shardeval.pipeline.io.statsio import load_stats
        from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian

        stats = as_gaussian(load_stats(args.gaussian), args.gaussian)
        source = _open(args, args.stores[0])
        result = nll_gaussian(
            stats,
            source,
            engine=eng,
            nonfinite=nonfinite,
            device=device,
            backend=backend,
            split_every=args.split_every,
            progress=bar,
        )
        inputs.update(statistics=args.gaussian, test=source.describe())
    else:
        from shardeval.pipeline.likelihood.parzen import nll_parzen

        samples, test = _open(args, args.parzen), _open(args, args.stores[0])
        result = nll_parzen(
            samples,
            test,
            args.bandwidth or "silverman",
            engine=eng,
            nonfinite=nonfinite,
            device=device,
            backend=backend,
            progress=bar,
        )
        inputs.update(samples=samples.describe(), test=test.describe())
    data = {"metric": "nll", **nll_dict(result), "inputs": inputs, **report_tail(args, start)}
    data["settings"] = {
        k: v for k, v in data["settings"].items() if mode in _NLL_MODES.get(k, (mode,))
    }
    return emit(args, data, nll_summary(result, data["seconds"]))


def cmd_ess(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    must_exist(args.store)
    claim_report(args)
    from shardeval.pipeline.likelihood.ess import ess_of
    from shardeval.workflows.report import ess_dict, ess_summary

    source = _open(args, args.store, min_rows=1, ndims=(1, 2))
    result = ess_of(
        source,
        engine=engine(args),
        nonfinite=args.nonfinite or "error",
        reff=args.reff or 1.0,
        device=args.device or "auto",
        backend=args.backend or "auto",
        split_every=args.split_every,
        progress=progress(args),
    )
    data = {
        "metric": "ess",
        **ess_dict(result),
        "inputs": {"log_weights": source.describe()},
        **report_tail(args, start),
    }
    return emit(args, data, ess_summary(result, data["seconds"]))


def _is_synthetic(path: str) -> bool:
    """Whether ``path`` holds features that ``synth`` wrote (never raises). A ``.npy`` cannot
    say who wrote it (any float32 feature dump looks the same), so it never counts as ours."""
    try:
        import zarr

        node = zarr.open_array(path, mode="r")
        return node.attrs.get("feature_extractor") == "synthetic-gaussian"
    except Exception:
        return False


def cmd_synth(args: argparse.Namespace) -> int:
    from shardeval.pipeline.io.atomic import atomic_dir, atomic_file, claim_output, is_stream
    from shardeval.pipeline.io.synthetic import gaussian_features, write_features

    claim_output(
        args.output, "synthetic feature store", _is_synthetic, args.overwrite, streams=True
    )
    x = gaussian_features(
        args.n, args.d, shard_rows=args.chunk_rows, seed=args.seed, mean=args.mean, scale=args.scale
    )
    attrs = {
        "feature_extractor": "synthetic-gaussian",
        "seed": args.seed,
        "mean": args.mean,
        "scale": args.scale,
    }
    if args.output.endswith(".npy") or is_stream(args.output):  # a pipe takes one file
        import numpy as np

        with atomic_file(args.output, "wb") as fh:
            np.save(fh, x.compute())
    else:
        with atomic_dir(args.output) as tmp:
            write_features(tmp, x, chunk_rows=args.chunk_rows, attrs=attrs)
    say(
        f"wrote {args.n:,} x {args.d:,} synthetic features to {os.fspath(args.output)}",
        args.output,
    )
    return 0
