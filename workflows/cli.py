"""``shardeval``: FID, NLL and ESS over sharded stores, on one machine or a Dask cluster.

Examples:
    shardeval synth real.zarr --n 50000 --d 2048 --seed 1
    shardeval synth gen.zarr --n 50000 --d 2048 --seed 2 --mean 0.05
    shardeval fid real.zarr gen.zarr --out fid.json
    shardeval stats real.zarr -o real-stats.zarr
    shardeval fid gen.zarr --ref real-stats.zarr
    shardeval fid gen.zarr --ref fid_stats_inception.npz      # pytorch-fid / clean-fid file
    shardeval nll loglik.zarr --dims 3072
    shardeval ess logw.zarr
    shardeval run examples/job.toml && shardeval report runs/history.zarr -o report.html
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from kernels import BACKENDS
from pipeline import (
    Engine,
    FeatureSource,
    Gaussian,
    ShapeError,
    ShardevalError,
    as_gaussian,
    check_same_dim,
    feature_moments,
    frechet_distance,
    load_stats,
    open_features,
    save_stats,
)
from pipeline.clusters import running_cluster
from pipeline.ess import ess_of
from pipeline.gaussian import nll_gaussian
from pipeline.nll import nll_from_loglik, nll_importance
from pipeline.parzen import nll_parzen
from pipeline.reduce import DEFAULT_SPLIT_EVERY
from pipeline.statsio import stats_provenance
from pipeline.synthetic import gaussian_features, write_features
from workflows.history import History
from workflows.htmlreport import write_report
from workflows.jobs import Job, RunSummary, load_job, run_job
from workflows.progress import ProgressBar
from workflows.report import (
    FIDReport,
    Side,
    ess_dict,
    ess_summary,
    nll_dict,
    nll_summary,
    now_iso,
    to_json,
    versions,
    write_json,
)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class UsageError(ShardevalError):
    """Arguments that parse but do not fit together."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _engine_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("engine")
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="'threads' (default), 'sync', or a distributed scheduler address "
        "(tcp://host:8786); default from DASK_SCHEDULER_ADDRESS if set",
    )
    g.add_argument(
        "--cluster",
        metavar="SPEC",
        help="start a Dask cluster from a spec file (cluster/local.yaml, cuda.yaml, slurm.yaml), "
        "run on it, then close it",
    )
    g.add_argument(
        "--performance-report",
        metavar="FILE.html",
        help="save Dask's performance report (needs --scheduler ADDRESS or --cluster)",
    )
    g.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="Dask threads for the threaded scheduler (default: all cores)",
    )
    g.add_argument(
        "--shard-rows",
        type=_positive_int,
        metavar="N",
        help="rows per shard (default: whole stored chunks, about 64 MiB a shard)",
    )
    g.add_argument(
        "--split-every",
        type=int,
        metavar="K",
        help="fan-in of a balanced merge tree (default: a chain of merges on one "
        f"machine, fan-in {DEFAULT_SPLIT_EVERY} on a cluster)",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where shard kernels run; auto: CUDA where the worker has it",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="kernel backend (auto: Triton on CUDA, BLAS on CPU)",
    )
    g.add_argument(
        "--precision",
        choices=("fp32", "fp64"),
        default="fp32",
        help="products inside a shard: fp32 (fast; float64 data stay float64) or "
        "fp64 (2x slower; results independent of shard sizes to ~1e-12)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    io = p.add_argument_group("input")
    io.add_argument(
        "--array", metavar="NAME", help="variable inside a Zarr group / xarray dataset / .npz"
    )
    io.add_argument(
        "--nonfinite",
        choices=("error", "drop"),
        default="error",
        help="rows with NaN/inf: fail (default) or drop and count them",
    )
    return p


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", metavar="REPORT.json", help="write the JSON report here")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardeval",
        description=__doc__.split("\n\n")[0],
        epilog="Stores: Zarr array or group (path or fsspec URL), xarray dataset in Zarr, "
        ".npy or .npz. Statistics: a Zarr group from `shardeval stats` (exact, "
        "mergeable) or a pytorch-fid/clean-fid .npz with mu and sigma.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _engine_options()

    fid = sub.add_parser(
        "fid",
        parents=[common],
        help="Fréchet distance between two feature sets",
        description="Fréchet Inception Distance between REAL and GEN feature stores, or GEN "
        "against reference statistics (--ref).",
        epilog="examples:\n  shardeval fid real.zarr gen.zarr --out fid.json\n"
        "  shardeval fid gen.zarr --ref real-stats.zarr\n"
        "  shardeval fid real.zarr gen.zarr --scheduler tcp://10.0.0.5:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fid.add_argument(
        "stores", nargs="+", metavar="STORE", help="REAL GEN, or only GEN when --ref is given"
    )
    fid.add_argument("--ref", metavar="STATS", help="reference statistics instead of REAL")
    _report_options(fid)
    fid.set_defaults(func=cmd_fid)

    stats = sub.add_parser(
        "stats",
        parents=[common],
        help="compute and save statistics of one store",
        description="Compute exact, mergeable statistics (n, mean, m2) of STORE once and "
        "save them: a Zarr group (ours) or, for a name ending in .npz, a "
        "pytorch-fid style file with mu, sigma (and n).",
    )
    stats.add_argument("store", metavar="STORE")
    stats.add_argument("--output", "-o", required=True, metavar="STATS")
    stats.set_defaults(func=cmd_stats)

    nll = sub.add_parser(
        "nll",
        parents=[common],
        help="negative log-likelihood reports",
        description="Mean NLL (nats) with its standard error, from per-sample log-likelihoods, "
        "importance log-weights (IWAE-style), a Gaussian of saved statistics, or a "
        "Parzen window (Gaussian KDE) of sample features.",
        epilog="examples:\n  shardeval nll loglik.zarr --dims 3072\n"
        "  shardeval nll --iw logw.zarr\n"
        "  shardeval nll --gaussian real-stats.zarr test.zarr\n"
        "  shardeval nll --parzen samples.zarr test.zarr --bandwidth cv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nll.add_argument(
        "stores",
        nargs="*",
        metavar="STORE",
        help="LOGLIK (N,), or TEST features with --gaussian/--parzen",
    )
    nll.add_argument("--iw", metavar="LOGW", help="importance log-weights (N, K)")
    nll.add_argument("--gaussian", metavar="STATS", help="statistics from `shardeval stats`")
    nll.add_argument("--parzen", metavar="SAMPLES", help="feature store of kernel centres")
    nll.add_argument(
        "--bandwidth",
        type=_bandwidth,
        default="silverman",
        metavar="H",
        help="Parzen bandwidth: a number, 'silverman' (default) or 'cv'",
    )
    nll.add_argument(
        "--dims",
        type=_positive_int,
        metavar="D",
        help="dimensions per sample, for bits/dim (e.g. 3072 for 32x32 RGB)",
    )
    _report_options(nll)
    nll.set_defaults(func=cmd_nll)

    ess = sub.add_parser(
        "ess",
        parents=[common],
        help="effective sample size and Pareto k of log-weights",
        description="ESS = (Σw)²/Σw², ESS/N, the largest normalised weight and the PSIS Pareto "
        "k̂ (< 0.5 good, < 0.7 usable, ≥ 0.7 unreliable) of log-weights (N,) or "
        "(N, K) (then also per row, summarised).",
    )
    ess.add_argument("store", metavar="LOGW")
    _report_options(ess)
    ess.set_defaults(func=cmd_ess)

    run = sub.add_parser(
        "run",
        help="run an evaluation job file (resumable, idempotent)",
        description="Evaluate every entry of JOB.toml that is not yet in its history, "
        "committing each as soon as it is done; see examples/job.toml.",
    )
    run.add_argument("job", metavar="JOB.toml")
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="distributed scheduler (overrides the job's [engine])",
    )
    run.add_argument("--force", action="store_true", help="recompute entries already done")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    run.set_defaults(func=cmd_run)

    hist = sub.add_parser(
        "history",
        help="print a run history",
        description="Entries of a history with their metrics, by step.",
    )
    hist.add_argument("history", metavar="HISTORY")
    hist.add_argument("--metric", help="only this metric")
    hist.add_argument("--format", choices=("table", "csv", "json"), default="table")
    hist.set_defaults(func=cmd_history)

    rep = sub.add_parser(
        "report",
        help="write the HTML (and Markdown) report of a history",
        description="A self-contained HTML file with the table of entries x "
        "metrics, metrics over steps and eigen-spectra; a "
        "Markdown summary is written beside it.",
    )
    rep.add_argument("history", metavar="HISTORY")
    rep.add_argument("--output", "-o", required=True, metavar="REPORT.html")
    rep.set_defaults(func=cmd_report)

    synth = sub.add_parser(
        "synth",
        help="write synthetic Gaussian features (demo, tests, benchmarks)",
        description="Write an (N, D) float32 Zarr array (or .npy) of Gaussian features with "
        "covariance scale²(I + B Bᵀ), B a fixed D x 16 matrix.",
    )
    synth.add_argument("output", metavar="OUT")
    synth.add_argument("--n", type=_positive_int, default=10_000, help="rows (default 10000)")
    synth.add_argument("--d", type=_positive_int, default=256, help="features (default 256)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--mean", type=float, default=0.0, help="every coordinate's mean")
    synth.add_argument("--scale", type=float, default=1.0, help="standard-deviation scale")
    synth.add_argument("--chunk-rows", type=_positive_int, default=4096)
    synth.set_defaults(func=cmd_synth)
    return parser


def _notice(message: str) -> None:
    print(f"shardeval: {message}", file=sys.stderr)


def _engine(args: argparse.Namespace) -> Engine:
    scheduler = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
    engine = Engine(
        scheduler,
        num_workers=args.threads,
        log=None if args.quiet else _notice,
        performance_report=args.performance_report,
    )
    if args.performance_report and not engine.is_distributed:
        raise UsageError(
            "--performance-report needs a distributed cluster: pass "
            "--scheduler ADDRESS or --cluster SPEC"
        )
    return engine


def _open(args: argparse.Namespace, location: str) -> FeatureSource:
    return open_features(location, array_name=args.array, shard_rows=args.shard_rows)


def _progress(args: argparse.Namespace) -> ProgressBar | None:
    return None if args.quiet else ProgressBar()


def _moments(args: argparse.Namespace, sources: Sequence[FeatureSource]) -> list[Any]:
    if args.split_every is not None and args.split_every < 2:
        raise UsageError(f"--split-every must be at least 2, got {args.split_every}")
    return feature_moments(
        sources,
        engine=_engine(args),
        split_every=args.split_every,
        device=args.device,
        backend=args.backend,
        nonfinite=args.nonfinite,
        precision=args.precision,
        progress=_progress(args),
    )


def cmd_fid(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.ref is not None and len(args.stores) != 1:
        raise UsageError(f"with --ref give only GEN; got {len(args.stores)} stores")
    if args.ref is None and len(args.stores) != 2:
        raise UsageError(f"give REAL and GEN (or GEN with --ref STATS); got {len(args.stores)}")
    sources = [_open(args, s) for s in args.stores]
    ref: Gaussian | None = None
    if args.ref is not None:
        ref = as_gaussian(load_stats(args.ref), args.ref)
        if ref.d != sources[0].d:
            raise ShapeError(
                f"feature dimensions differ: reference {args.ref!r} has d={ref.d}, "
                f"{sources[0].location!r} has d={sources[0].d}"
            )
    check_same_dim(*sources)
    computed = _moments(args, sources)
    sides = []
    gaussians = []
    for source, (moments, dropped) in zip(sources, computed, strict=True):
        gaussians.append(Gaussian.from_moments(moments, source.location))
        sides.append(
            Side(
                "",
                source.location,
                moments.n,
                source.d,
                source.shards,
                "features",
                True,
                dropped,
                source.describe(),
            )
        )
    if ref is not None:
        gaussians.insert(0, ref)
        sides.insert(
            0,
            Side(
                "",
                args.ref,
                ref.n,
                ref.d,
                0,
                "statistics",
                ref.mergeable,
                0,
                stats_provenance(args.ref),
            ),
        )
    real_side, gen_side = (
        Side(**{**s.__dict__, "role": role}) for s, role in zip(sides, ("real", "gen"), strict=True)
    )
    notes = []
    if ref is not None and not ref.mergeable:
        notes.append(
            f"reference {args.ref!r} has mu/sigma without n: usable for FID, "
            "but it cannot be merged with other statistics"
        )
    result = frechet_distance(gaussians[0], gaussians[1])
    report = FIDReport(
        result,
        real_side,
        gen_side,
        time.perf_counter() - start,
        _engine(args).describe(),
        tuple(notes),
    )
    return _emit(args, report.to_dict(), report.summary())


def _emit(args: argparse.Namespace, data: dict[str, Any], summary: str) -> int:
    """Write the JSON report (--out), then print the summary or the JSON (--json)."""
    if args.out:
        write_json(args.out, data)
    print(to_json(data) if args.json else summary, end="" if args.json else "\n")
    return 0


def _report_tail(args: argparse.Namespace, start: float) -> dict[str, Any]:
    return {
        "engine": _engine(args).describe(),
        "seconds": time.perf_counter() - start,
        "created": now_iso(),
        "versions": versions(),
    }


def _open_values(args: argparse.Namespace, location: str, ndims: tuple[int, ...]) -> FeatureSource:
    return open_features(
        location, array_name=args.array, shard_rows=args.shard_rows, min_rows=1, ndims=ndims
    )


def _bandwidth(text: str) -> float | str:
    if text in ("silverman", "cv"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, 'silverman' or 'cv', got {text!r}"
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"bandwidth must be positive and finite, got {text}")
    return value


def cmd_nll(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    modes = [m for m in ("iw", "gaussian", "parzen") if getattr(args, m) is not None]
    if len(modes) > 1:
        raise UsageError(f"choose one of --iw, --gaussian, --parzen; got {', '.join(modes)}")
    mode = modes[0] if modes else "loglik"
    want = {"loglik": 1, "iw": 0, "gaussian": 1, "parzen": 1}[mode]
    if len(args.stores) != want:
        usage = {
            "loglik": "LOGLIK",
            "iw": "no positional store (--iw LOGW)",
            "gaussian": "TEST (--gaussian STATS TEST)",
            "parzen": "TEST (--parzen SAMPLES TEST)",
        }
        raise UsageError(f"nll {mode} takes {usage[mode]}; got {len(args.stores)} store(s)")
    engine, bar = _engine(args), _progress(args)
    inputs: dict[str, Any] = {}
    if mode == "loglik":
        source = _open_values(args, args.stores[0], (1,))
        result = nll_from_loglik(
            source, nonfinite=args.nonfinite, dims=args.dims, engine=engine, progress=bar
        )
        inputs["loglik"] = source.describe()
    elif mode == "iw":
        source = _open_values(args, args.iw, (2,))
        result = nll_importance(
            source, nonfinite=args.nonfinite, dims=args.dims, engine=engine, progress=bar
        )
        inputs["log_weights"] = source.describe()
    elif mode == "gaussian":
        stats = as_gaussian(load_stats(args.gaussian), args.gaussian)
        source = _open(args, args.stores[0])
        result = nll_gaussian(
            stats, source, nonfinite=args.nonfinite, device=args.device, engine=engine, progress=bar
        )
        inputs.update(statistics=args.gaussian, test=source.describe())
    else:
        samples, test = _open(args, args.parzen), _open(args, args.stores[0])
        result = nll_parzen(samples, test, args.bandwidth, engine=engine, progress=bar)
        inputs.update(samples=samples.describe(), test=test.describe())
    data = {"metric": "nll", **nll_dict(result), "inputs": inputs, **_report_tail(args, start)}
    return _emit(args, data, nll_summary(result, data["seconds"]))


def cmd_ess(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    source = _open_values(args, args.store, (1, 2))
    result = ess_of(
        source, engine=_engine(args), nonfinite=args.nonfinite, progress=_progress(args)
    )
    data = {
        "metric": "ess",
        **ess_dict(result),
        "inputs": {"log_weights": source.describe()},
        **_report_tail(args, start),
    }
    return _emit(args, data, ess_summary(result, data["seconds"]))


def cmd_stats(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    source = _open(args, args.store)
    ((moments, dropped),) = _moments(args, [source])
    provenance = {
        **source.describe(),
        "nonfinite_dropped": dropped,
        "created": now_iso(),
        "versions": versions(),
    }
    save_stats(args.output, moments, provenance)
    print(
        f"statistics of {source.location}: n={moments.n:,} d={moments.d:,} "
        f"shards={source.shards} -> {args.output} ({time.perf_counter() - start:.2f} s)"
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    x = gaussian_features(
        args.n, args.d, shard_rows=args.chunk_rows, seed=args.seed, mean=args.mean, scale=args.scale
    )
    attrs = {
        "feature_extractor": "synthetic-gaussian",
        "seed": args.seed,
        "mean": args.mean,
        "scale": args.scale,
    }
    if args.output.endswith(".npy"):
        import numpy as np

        from pipeline.atomic import atomic_file

        with atomic_file(args.output, "wb") as fh:
            np.save(fh, x.compute())
    else:
        write_features(args.output, x, chunk_rows=args.chunk_rows, attrs=attrs)
    print(f"wrote {args.n:,} x {args.d:,} synthetic features to {args.output}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    job = load_job(args.job)  # validates everything before any compute
    scheduler = args.scheduler or job.scheduler
    log = (lambda message: None) if args.quiet else _notice
    if job.cluster and not args.scheduler:
        with running_cluster(job.cluster) as address:
            summary = _run(job, Engine(address, log=log), args)
    else:
        engine = Engine(scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads", log=log)
        summary = _run(job, engine, args)
    print(
        f"job {job.name}: {len(summary.computed)} computed, {len(summary.skipped)} already "
        f"done, {len(job.entries)} entries; history {job.history} ({summary.seconds:.1f} s)"
    )
    return 0


def _run(job: Job, engine: Engine, args: argparse.Namespace) -> RunSummary:
    return run_job(
        job,
        engine=engine,
        force=args.force,
        progress=None if args.quiet else ProgressBar(),
        log=(lambda message: None) if args.quiet else _notice,
    )


def cmd_history(args: argparse.Namespace) -> int:
    history = History(args.history)
    if history.load() is None:
        raise UsageError(f"no history at {args.history!r}; `shardeval run JOB.toml` makes one")
    try:
        rows = history.table(args.metric)
    except KeyError:
        raise UsageError(f"{args.history!r} has no metric {args.metric!r}") from None
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        keys = list(rows[0]) if rows else ["name"]
        widths = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for r in rows:
            print("  ".join(_cell(r[k]).ljust(widths[k]) for k in keys))
    return 0


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        page, md = write_report(args.history, args.output)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {page} and {md}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardeval`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            if getattr(args, "cluster", None):
                with running_cluster(args.cluster) as address:
                    args.scheduler = address
                    code = int(args.func(args))
            else:
                code = int(args.func(args))
        for w in caught:
            if issubclass(w.category, UserWarning):
                print(f"shardeval: warning: {w.message}", file=sys.stderr)
        return code
    except ShardevalError as exc:
        print(f"shardeval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"shardeval: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("shardeval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
