"""The command line, made from the declarations: every command with the options it honours
(the run options its metrics take, their parameters), and nothing heavy imported, so that
``--help`` and a mistyped option answer at once.

Options default to None so that a command passes on only what the user gave; the API function
it calls applies the defaults and refuses what cannot apply.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from shardeval.pipeline.metrics import METRICS
from shardeval.pipeline.metrics.intervals import NORMAL_CI
from shardeval.pipeline.runoptions import (
    COUNT,
    ENGINE,
    POSITIVE,
    SEED_RANGE,
    Interval,
)
from shardeval.workflows.cli.flags import (
    add_output_options,
    add_param,
    add_run_options,
    cli_type,
    metric_list,
    metric_options,
)
from shardeval.workflows.cli.metric_commands import (
    METRIC_COMMANDS,
    READING,
    add_metric_command,
    metric_run_options,
)

DESCRIPTION = (
    "Image features, FID, KID, CMMD, precision/recall/density/coverage, NLL and ESS over "
    "sharded stores, exact over full sets, on one machine or a Dask cluster."
)

EPILOG = """\
examples:
  shardeval fetch                                     # the FID Inception weights, checked
  shardeval extract samples/ -o gen.zarr              # images -> Inception features
  shardeval synth real.zarr --n 50000 --d 2048 --seed 1
  shardeval synth gen.zarr --n 50000 --d 2048 --seed 2 --mean 0.05
  shardeval fid real.zarr gen.zarr --out fid.json
  shardeval metrics real.zarr gen.zarr --metrics fid,kid,prdc
  shardeval compare real.zarr gen-a.zarr gen-b.zarr --metrics fid,kid
  shardeval is gen.zarr --splits 10                   # Inception Score of extracted logits
  shardeval stats real.zarr -o real-stats.zarr
  shardeval fid real-stats.zarr gen.zarr              # statistics on either side
  shardeval fid fid_stats_a.npz fid_stats_b.npz       # two pytorch-fid statistics files
  shardeval stats merge part-1.zarr part-2.zarr -o all.zarr
  shardeval nll loglik.zarr --dims 3072
  shardeval ess logw.zarr --reff 0.4
  shardeval run examples/job.toml && shardeval report demo-data/runs/history.zarr -o report.html

Stores: Zarr array or group (path or fsspec URL), xarray dataset in Zarr, .npy or .npz.
Statistics: a Zarr group from `shardeval stats` (exact, mergeable) or a pytorch-fid/clean-fid
.npz with mu and sigma. Bad input: one line on stderr, exit code 2, nothing written."""


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line. An argument the command does not take is refused with that
    command's usage (not the top-level one), and an option of other commands says which.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The parsed arguments.

    Raises:
        SystemExit: 2, after argparse's usage and one error line on stderr.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = _commands(parser)
        commands[args.command].error(_unrecognized(extra, commands, args.command))
    return args


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, by name."""
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _unrecognized(
    extra: Sequence[str], commands: dict[str, argparse.ArgumentParser], command: str
) -> str:
    """argparse's message for arguments a command does not take, and for each option among
    them the commands that do take it."""
    hints = []
    for word in extra:
        option = word.split("=", 1)[0]
        if not option.startswith("--"):
            continue
        owners = [
            name
            for name, p in commands.items()
            if name != command and option in p._option_string_actions
        ]
        if owners:
            hints.append(f"{option}: an option of {', '.join(owners)}, not of {command}")
    text = f"unrecognized arguments: {' '.join(extra)}"
    return f"{text} ({'; '.join(hints)})" if hints else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardeval",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from shardeval.workflows.cli.extract import add_extract_parser
    from shardeval.workflows.cli.fetch import add_fetch_parser

    add_extract_parser(sub)
    add_fetch_parser(sub)
    for spec in METRIC_COMMANDS:
        add_metric_command(sub, spec)

    metrics = sub.add_parser(
        "metrics",
        help=f"several metrics at once ({', '.join(METRICS)}), sharing the passes",
        description="The metrics named by --metrics, computed together: one pass over the "
        "shards for FID and FID∞, one over each set's own block pairs and one over the cross "
        "pairs for KID, CMMD, PRDC and AuthPct (each block pair's product serves all of them).",
        epilog="example:\n  shardeval metrics real.zarr gen.zarr --metrics fid,kid,prdc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    metrics.add_argument(
        "stores",
        nargs="+",
        metavar="STORE",
        help="REAL GEN, or GEN alone when no metric named compares with a reference (is)",
    )
    metrics.add_argument(
        "--metrics",
        type=metric_list,
        required=True,
        metavar="NAMES",
        help=f"comma-separated, from {', '.join(METRICS)}",
    )
    metrics.add_argument(
        "--test",
        metavar="STORE",
        help="a held-out test set (features of the training distribution not trained on), for "
        "the metrics that compare with one ("
        + ", ".join(m for m in METRICS if METRICS[m].needs_test)
        + "; REAL is then the training set)",
    )
    add_run_options(metrics, metric_run_options(tuple(METRICS)))
    metric_options(metrics, tuple(METRICS))
    add_output_options(metrics)

    from shardeval.workflows.cli.compare import add_compare_parser

    add_compare_parser(sub)

    stats = sub.add_parser(
        "stats",
        help="compute and save statistics of a store, or merge statistics files",
        description="Compute exact, mergeable statistics (n, mean, m2) of STORE once and save "
        "them: a Zarr group (ours) or, for a name ending in .npz, a pytorch-fid style file "
        "with mu, sigma and n. `stats merge A B ... -o OUT` merges statistics of disjoint "
        "row sets (each must record n); engine and input options do not apply to merge.",
        epilog="examples:\n  shardeval stats real.zarr -o real-stats.zarr\n"
        "  shardeval stats real.zarr -o fid_stats.npz\n"
        "  shardeval stats merge shard-0.zarr shard-1.zarr -o all.zarr\n"
        "(a store literally named 'merge' is given as ./merge)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("inputs", nargs="+", metavar="STORE", help="STORE, or merge A B ...")
    stats.add_argument("--output", "-o", required=True, metavar="STATS")
    stats.add_argument(
        "--overwrite", action="store_true", help="replace existing statistics at --output"
    )
    add_run_options(stats, metric_run_options(("fid",)))

    nll = sub.add_parser(
        "nll",
        help="negative log-likelihood reports",
        description="Mean NLL (nats) with its standard error, from per-sample log-likelihoods, "
        "importance log-weights (IWAE-style), a Gaussian of saved statistics, a Parzen "
        "window (Gaussian KDE) of sample features, or a K-component Gaussian mixture fitted "
        "by EM to STORE (one pass over its shards per iteration). Options that do not apply "
        "to the chosen mode are refused: --dims (loglik, --iw), --reff (--iw), --bandwidth "
        "(--parzen), --device/--backend (--iw, --gaussian, --parzen), --split-every (not "
        "--parzen), --covariance/--reg-covar/--tol/--max-iter/--seed (--gmm).",
        epilog="examples:\n  shardeval nll loglik.zarr --dims 3072\n"
        "  shardeval nll --iw logw.zarr\n"
        "  shardeval nll --gaussian real-stats.zarr test.zarr\n"
        "  shardeval nll --parzen samples.zarr test.zarr --bandwidth cv\n"
        "  shardeval nll --gmm 10 train.zarr test.zarr --covariance diag",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nll.add_argument(
        "stores",
        nargs="*",
        metavar="STORE",
        help="LOGLIK (N,); TEST with --gaussian/--parzen; STORE TEST with --gmm",
    )
    nll.add_argument("--iw", metavar="LOGW", help="importance log-weights (N, K)")
    nll.add_argument("--gaussian", metavar="STATS", help="statistics from `shardeval stats`")
    nll.add_argument("--parzen", metavar="SAMPLES", help="feature store of kernel centres")
    add_param(nll.add_argument_group("interval of the mean NLL"), NORMAL_CI)
    nll.add_argument(
        "--gmm",
        type=cli_type(COUNT),
        metavar="K",
        help="components of a Gaussian mixture fitted to STORE by EM",
    )
    nll.add_argument(
        "--seed",
        type=cli_type(SEED_RANGE),
        help="seed of the Gaussian mixture's k-means++ initialisation (default 0)",
    )
    add_run_options(
        nll,
        (
            *ENGINE, *READING, "nonfinite", "device", "backend", "reff", "dims", "bandwidth",
            "covariance", "reg_covar", "tol", "max_iter",
        ),
    )  # fmt: skip
    add_output_options(nll)

    ess = sub.add_parser(
        "ess",
        help="effective sample size and Pareto k of log-weights",
        description="ESS = (Σw)²/Σw², ESS/N, the largest normalised weight and the PSIS Pareto "
        "k̂ (< 0.5 good, < 0.7 usable, ≥ 0.7 unreliable) of log-weights (N,) or (N, K) (then "
        "also per row, summarised). --ci adds the standard error and interval of ESS (delta "
        "method; of the whole set's; given only while k̂ < 0.25 and Σw⁴/max w⁴ ≥ 60).",
    )
    ess.add_argument("store", metavar="LOGW")
    add_param(ess.add_argument_group("interval of the ESS"), NORMAL_CI)
    add_run_options(ess, (*ENGINE, *READING, "nonfinite", "device", "backend", "reff"))
    add_output_options(ess)

    _add_runs(sub)
    _add_synth(sub)
    return parser


def _add_runs(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run an evaluation job file (resumable, idempotent)",
        description="Evaluate every entry of JOB.toml that is not yet in its history, "
        "committing each as soon as it is done; see examples/job.toml. Metrics: "
        + ", ".join(sorted(METRICS))
        + ".",
    )
    run.add_argument("job", metavar="JOB.toml")
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="distributed scheduler (overrides the job's [run] scheduler)",
    )
    run.add_argument("--force", action="store_true", help="recompute entries already done")
    run.add_argument(
        "--verify",
        action="store_true",
        help="decide what is done from the stores' bytes too (reads each entry once), not "
        "only their listings (sizes and modification times)",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    hist = sub.add_parser(
        "history",
        help="print a run history",
        description="Entries of a history with their results, by step.",
    )
    hist.add_argument("history", metavar="HISTORY")
    hist.add_argument("--metric", help="only this metric's results")
    hist.add_argument("--format", choices=("table", "csv", "json"), default="table")

    rep = sub.add_parser(
        "report",
        help="write the HTML (and Markdown) report of a history",
        description="A self-contained HTML file: what was evaluated and how, the entries, and "
        "one section per metric with its results and plots; a Markdown summary is written "
        "beside it (same name, .md).",
    )
    rep.add_argument("history", metavar="HISTORY")
    rep.add_argument("--output", "-o", required=True, metavar="REPORT.html")
    rep.add_argument("--overwrite", action="store_true", help="replace a report written before")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    count = cli_type(COUNT)
    synth = sub.add_parser(
        "synth",
        help="write synthetic Gaussian features (demo, tests, benchmarks)",
        description="Write an (N, D) float32 Zarr array (or .npy) of Gaussian features with "
        "covariance scale²(I + B Bᵀ), B a fixed D x 16 matrix.",
    )
    synth.add_argument("output", metavar="OUT")
    synth.add_argument("--n", type=count, default=10_000, help="rows (default 10000)")
    synth.add_argument("--d", type=count, default=256, help="features (default 256)")
    synth.add_argument(
        "--seed", type=cli_type(SEED_RANGE), default=0, help="random seed (default 0)"
    )
    synth.add_argument(
        "--mean",
        type=cli_type(Interval(float, None, None)),
        default=0.0,
        help="every coordinate's mean (default 0)",
    )
    synth.add_argument(
        "--scale", type=cli_type(POSITIVE), default=1.0, help="standard-deviation scale (default 1)"
    )
    synth.add_argument("--chunk-rows", type=count, default=4096, help="rows per chunk")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace synthetic features written before"
    )
