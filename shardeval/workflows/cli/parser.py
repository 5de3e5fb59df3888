"""The command line: every command with the options it honours, and nothing heavy imported, so
that ``--help`` and a mistyped option answer at once.

Options are shared through parent parsers (engine, shards, kernels, products, non-finite
policy, outputs); a command takes only the groups that apply to it. Options default to None
so that the commands can tell what the user gave and refuse what cannot apply.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from shardeval.pipeline.errors import OptionError
from shardeval.pipeline.metrics import METRICS, MetricOptionError, Param, metric_names
from shardeval.pipeline.options import (
    BACKENDS,
    BANDWIDTH_RULES,
    DEFAULT_SPLIT_EVERY,
    DEVICES,
    NONFINITE_POLICIES,
    PRECISIONS,
    bandwidth_problem,
    count_problem,
    fan_in_problem,
    positive_number_problem,
    seed_problem,
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


def _checked(value: Any, problem: str | None) -> Any:
    """``value`` when its check (one of :mod:`shardeval.pipeline.options`, the API's too)
    found no problem."""
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    return _checked(value, count_problem(value))


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    return _checked(value, seed_problem(value))


def fan_in(text: str) -> int:
    value = positive_int(text)
    return _checked(value, fan_in_problem(value))


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    return _checked(value, positive_number_problem(value))


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def bandwidth(text: str) -> float | str:
    if text in BANDWIDTH_RULES:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if bandwidth_problem(value):
        raise argparse.ArgumentTypeError(bandwidth_problem(text))  # in the words typed
    return value


def _group(title: str) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    parent = argparse.ArgumentParser(add_help=False)
    return parent, parent.add_argument_group(title)


def engine_options() -> argparse.ArgumentParser:
    p, g = _group("engine")
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="'threads' (default, in-process), 'sync', or a running distributed scheduler "
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
        type=positive_int,
        metavar="N",
        help="Dask threads of the threaded scheduler (default: all cores)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notices")
    return p


def shard_options() -> argparse.ArgumentParser:
    p, g = _group("input")
    g.add_argument(
        "--shard-rows",
        type=positive_int,
        metavar="N",
        help="rows per shard (default: whole stored chunks, about 64 MiB a shard)",
    )
    g.add_argument(
        "--array", metavar="NAME", help="the variable inside a Zarr group / xarray dataset / .npz"
    )
    return p


def tree_options() -> argparse.ArgumentParser:
    p, g = _group("merge tree")
    g.add_argument(
        "--split-every",
        type=fan_in,
        metavar="K",
        help="fan-in of a balanced merge tree (default: a chain of merges on one machine, "
        f"fan-in {DEFAULT_SPLIT_EVERY} on a cluster)",
    )
    return p


def kernel_options() -> argparse.ArgumentParser:
    p, g = _group("shardeval.kernels")
    g.add_argument(
        "--device",
        choices=DEVICES,
        help="where shard kernels run (default auto: a worker's GPU if it has one, else CPU)",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        help="kernel implementation (default auto: Triton on GPU, BLAS/torch on CPU)",
    )
    return p


def precision_options() -> argparse.ArgumentParser:
    p, g = _group("products")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="products inside a shard: fp32 (default; float64 and wide-integer data stay "
        "exact) or fp64 (2x slower; results independent of shard sizes to ~1e-12)",
    )
    return p


def image_options() -> argparse.ArgumentParser:
    """How image inputs (folders, zips, tar shards, uint8 arrays) become features: the
    encoder's options of ``extract``, and the feature cache they are kept in."""
    from shardeval.workflows.cli.extract import encoder_options

    p, g = _group("image inputs (extracted into the feature cache, then reused)")
    encoder_options(g)
    g.add_argument(
        "--cache-root",
        metavar="FOLDER",
        help="the feature cache (default $SHARDEVAL_CACHE, else $XDG_CACHE_HOME/shardeval or "
        "~/.cache/shardeval)",
    )
    g.add_argument(
        "--verify",
        action="store_true",
        help="reuse cached features of images only if the images' bytes are those they were "
        "extracted from (reads every image once); without it their listing (names, sizes, "
        "modification times) decides, and the report says so",
    )
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be read or decoded, as extract does (the report "
        "names them; a cache entry of its own)",
    )
    return p


def nonfinite_options() -> argparse.ArgumentParser:
    p, g = _group("non-finite values")
    g.add_argument(
        "--nonfinite",
        choices=NONFINITE_POLICIES,
        help="rows with NaN/inf: fail naming them (default) or drop and count them",
    )
    return p


def output_options() -> argparse.ArgumentParser:
    p, g = _group("output")
    g.add_argument("--out", "-o", metavar="REPORT.json", help="write the JSON report here")
    g.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    g.add_argument(
        "--overwrite", action="store_true", help="replace an existing JSON report at --out"
    )
    return p


def reff_option() -> argparse.ArgumentParser:
    p, g = _group("importance sampling")
    g.add_argument(
        "--reff",
        type=positive_float,
        metavar="R",
        help="relative efficiency of the draws for the PSIS tail, as az.loo computes it "
        "(default 1: independent draws; < 1 for MCMC)",
    )
    return p


#: Options of the metrics verbs that are the command's own, not a metric's.
_VERB_OPTIONS = ("nonfinite",)


def metric_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of registered metrics (checked as :func:`shardeval.metrics`
    checks its names)."""
    try:
        return metric_names(text)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _param_type(metric: str, param: Param) -> Callable[[str], Any]:
    """The argparse type of a metric's option: its kind, then the declaration's own checks."""

    def convert(text: str) -> Any:
        try:
            value = param.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {param.kind.__name__}, got {text!r}"
            ) from None
        try:
            return param.validate(metric, value)
        except MetricOptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def metric_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The options of the metrics ``names``, made from their plug-ins' declarations: one flag
    per option name (``--seed`` serves every metric that declares a seed), a switch for a
    ``bool``, the declaration's type, checks, help and default. Defaults are None here, so
    that the command passes on only what was given and the declaration fills in the rest."""
    owners: dict[str, list[str]] = {}
    for name in names:
        for param in METRICS[name].params:
            owners.setdefault(param.name, []).append(name)
    made: set[str] = set()
    for name in names:
        cls = METRICS[name]
        group = None
        for param in cls.params:
            if param.name in made or param.name in _VERB_OPTIONS:
                continue
            made.add(param.name)
            group = group or parser.add_argument_group(cls.title)
            others = [m for m in owners[param.name] if m != name]
            shared = f"; also {', '.join(others)}'s" if others else ""
            text = f"{param.help} (default {param.default!r}{shared})"
            flag = "--" + param.name.replace("_", "-")
            if param.kind is bool:
                group.add_argument(flag, action="store_true", default=None, help=text)
            else:
                group.add_argument(
                    flag,
                    type=_param_type(name, param),
                    choices=param.choices,
                    metavar=param.metavar or param.name.upper(),
                    help=text,
                )


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
    engine, shards, tree = engine_options(), shard_options(), tree_options()
    kernels, products = kernel_options(), precision_options()
    nonfinite, output, reff = nonfinite_options(), output_options(), reff_option()
    features = [engine, shards, tree, kernels, products, nonfinite]
    images = image_options()

    # Imported here: the extract module imports this one for its option types.
    from shardeval.workflows.cli.extract import add_extract_parser
    from shardeval.workflows.cli.fetch import add_fetch_parser

    add_extract_parser(sub, [engine])
    add_fetch_parser(sub)

    fid = sub.add_parser(
        "fid",
        parents=[*features, images, output],
        help="Fréchet distance between two feature sets or statistics",
        description="Fréchet Inception Distance between REAL and GEN. Each may be a feature "
        "store or statistics (ours, or a pytorch-fid .npz); feature stores are streamed "
        "through the engine, statistics are read. A guided-diffusion (ADM) reference batch, "
        "VIRTUAL_*.npz, is read as its mu/sigma: pool_3 features of the TF Inception graph, "
        "so extract GEN with --resize legacy-tensorflow to compare with it.",
        epilog="examples:\n  shardeval fid real.zarr gen.zarr --out fid.json\n"
        "  shardeval fid real-stats.zarr gen.zarr\n"
        "  shardeval fid a.npz b.npz\n"
        "  shardeval fid real.zarr gen.zarr --scheduler tcp://10.0.0.5:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fid.add_argument("stores", nargs="+", metavar="STORE", help="REAL GEN (or GEN with --ref)")
    fid.add_argument(
        "--ref", metavar="STATS", help="REAL given as statistics (the same as `fid STATS GEN`)"
    )
    fid.add_argument(
        "--infinity",
        action="store_true",
        help="also FID∞ (Chong & Forsyth 2020): FID at 15 nested subset sizes of GEN, the "
        "intercept of a least-squares line in 1/N (one pass; GEN must be a feature store)",
    )
    metric_options(fid, ("fid_inf",))  # --seed, of the nested subsets of --infinity

    pairs = [engine, shards, tree, kernels, products, images, output]
    kid = sub.add_parser(
        "kid",
        parents=pairs,
        help="Kernel Inception Distance, exact over all pairs",
        description="KID (Bińkowski et al. 2018): the squared MMD of REAL and GEN under the "
        "kernel (x·y/d + 1)³. By default the unbiased estimator over ALL pairs of the full sets "
        "with its standard error, computed block pair by block pair (no N x N matrix). "
        "--subsets/--subset-size/--seed: the peers' protocol (torch-fidelity's, mean and "
        "standard deviation over random subsets), so numbers compare with published ones.",
        epilog="examples:\n  shardeval kid real.zarr gen.zarr\n"
        "  shardeval kid real.zarr gen.zarr --subsets 100 --subset-size 1000 --seed 2020",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kid.add_argument("stores", nargs=2, metavar="STORE", help="REAL GEN")
    metric_options(kid, ("kid",))

    cmmd = sub.add_parser(
        "cmmd",
        parents=pairs,
        help="CMMD: RBF-kernel MMD of CLIP embeddings, exact over all pairs",
        description="CMMD (Jayasumana et al. 2024): 1000 x the squared MMD of REAL and GEN "
        "under exp(-|x-y|²/2σ²), σ = 10, on embeddings scaled to unit norm (done here); the "
        "biased V-statistic of the reference code, or --unbiased for the U-statistic.",
    )
    cmmd.add_argument("stores", nargs=2, metavar="STORE", help="REAL GEN")
    metric_options(cmmd, ("cmmd",))

    prdc = sub.add_parser(
        "prdc",
        parents=pairs,
        help="precision, recall, density and coverage, exact over all pairs",
        description="Precision and recall (Kynkäänniemi et al. 2019; radius: distance to the "
        "--pr-k-th nearest other point, inside means <=) and density and coverage (Naeem et "
        "al. 2020; --k, strict <), over the full sets; every decision exact in float64.",
    )
    prdc.add_argument("stores", nargs=2, metavar="STORE", help="REAL GEN")
    metric_options(prdc, ("prdc",))

    inception = sub.add_parser(
        "is",
        parents=[engine, shards, tree, images, output],
        help="Inception Score of logits, exact over all samples (and the peers' splits)",
        description="Inception Score (Salimans et al. 2016), exp(E KL(p(y|x) ‖ p(y))), of "
        "LOGITS: an (N, C) array or store of logits, an extraction store of the Inception (its "
        "1,008 logits, pool3·Wᵀ without the bias as torch-fidelity's logits_unbiased), or "
        "images (extracted with the Inception into the feature cache). By default over ALL "
        "samples, exactly, with its standard error (delta method on log IS); --splits S adds "
        "the peers' protocol (torch-fidelity's isc: mean and std over S splits of the rows "
        "shuffled by --seed), so numbers compare with published ones.",
        epilog="examples:\n  shardeval is gen.zarr\n  shardeval is gen.zarr --splits 10\n"
        "  shardeval is logits.npy --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inception.add_argument("store", metavar="LOGITS", help="logits, an extraction store or images")
    metric_options(inception, ("is",))

    metrics = sub.add_parser(
        "metrics",
        parents=[*features, images, output],
        help=f"several metrics at once ({', '.join(METRICS)}), sharing the passes",
        description="The metrics named by --metrics, computed together: one pass over the "
        "shards for FID and FID∞, one over each set's own block pairs and one over the cross "
        "pairs for KID, CMMD and PRDC (each block pair's product serves all of them).",
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
    metric_options(metrics, tuple(METRICS))

    stats = sub.add_parser(
        "stats",
        parents=[*features, images],
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

    nll = sub.add_parser(
        "nll",
        parents=[*features[:3], kernels, nonfinite, output, reff],
        help="negative log-likelihood reports",
        description="Mean NLL (nats) with its standard error, from per-sample log-likelihoods, "
        "importance log-weights (IWAE-style), a Gaussian of saved statistics, or a Parzen "
        "window (Gaussian KDE) of sample features. Options that do not apply to the chosen "
        "mode are refused: --dims (loglik, --iw), --reff (--iw), --bandwidth (--parzen), "
        "--device/--backend (not loglik), --split-every (not --parzen).",
        epilog="examples:\n  shardeval nll loglik.zarr --dims 3072\n"
        "  shardeval nll --iw logw.zarr\n"
        "  shardeval nll --gaussian real-stats.zarr test.zarr\n"
        "  shardeval nll --parzen samples.zarr test.zarr --bandwidth cv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nll.add_argument(
        "stores", nargs="*", metavar="STORE", help="LOGLIK (N,), or TEST with --gaussian/--parzen"
    )
    nll.add_argument("--iw", metavar="LOGW", help="importance log-weights (N, K)")
    nll.add_argument("--gaussian", metavar="STATS", help="statistics from `shardeval stats`")
    nll.add_argument("--parzen", metavar="SAMPLES", help="feature store of kernel centres")
    nll.add_argument(
        "--bandwidth",
        type=bandwidth,
        metavar="H",
        help="Parzen bandwidth: a number, 'silverman' (default) or 'cv'",
    )
    nll.add_argument(
        "--dims",
        type=positive_int,
        metavar="D",
        help="dimensions per sample, for bits/dim (e.g. 3072 for 32x32 RGB)",
    )

    sub.add_parser(
        "ess",
        parents=[*features[:4], nonfinite, output, reff],
        help="effective sample size and Pareto k of log-weights",
        description="ESS = (Σw)²/Σw², ESS/N, the largest normalised weight and the PSIS Pareto "
        "k̂ (< 0.5 good, < 0.7 usable, ≥ 0.7 unreliable) of log-weights (N,) or (N, K) (then "
        "also per row, summarised).",
    ).add_argument("store", metavar="LOGW")

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
        help="distributed scheduler (overrides the job's [engine])",
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

    synth = sub.add_parser(
        "synth",
        help="write synthetic Gaussian features (demo, tests, benchmarks)",
        description="Write an (N, D) float32 Zarr array (or .npy) of Gaussian features with "
        "covariance scale²(I + B Bᵀ), B a fixed D x 16 matrix.",
    )
    synth.add_argument("output", metavar="OUT")
    synth.add_argument("--n", type=positive_int, default=10_000, help="rows (default 10000)")
    synth.add_argument("--d", type=positive_int, default=256, help="features (default 256)")
    synth.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--mean", type=finite_float, default=0.0, help="every coordinate's mean (default 0)"
    )
    synth.add_argument(
        "--scale", type=positive_float, default=1.0, help="standard-deviation scale (default 1)"
    )
    synth.add_argument("--chunk-rows", type=positive_int, default=4096, help="rows per chunk")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace synthetic features written before"
    )
    return parser
