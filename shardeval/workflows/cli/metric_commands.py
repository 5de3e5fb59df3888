"""The metric commands (fid, sfid, kid, cmmd, prdc, authpct, ct, fld, is): each one's inputs and
words; their options come from the metrics' declarations and the run options they take, so a
new parameter of a metric is a flag of its command without another edit.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from shardeval.pipeline.metrics import METRICS
from shardeval.pipeline.runoptions import ENGINE, IMAGES, run_option_names
from shardeval.workflows.cli.flags import add_output_options, add_run_options, metric_options

#: Run options every command that reads rows takes: how they are read and merged.
READING = ("shard_rows", "array", "split_every")


def metric_run_options(names: Sequence[str]) -> tuple[str, ...]:
    """The run options of a command of the metrics ``names``: the engine's, reading rows, each
    metric's declared ones, and the image inputs' (not for sFID alone: the feature cache of
    images does not keep its spatial features; nor for C_T alone: its held-out test set is
    features)."""
    taken = {*ENGINE, *READING}
    if any(METRICS[n].reads != "spatial" and not METRICS[n].needs_test for n in names):
        taken.update(IMAGES)
    for name in names:
        cls = METRICS[name]
        taken.update(cls.run_options)
        if cls.products:  # accepted when it names what they always do
            taken.add("precision")
    return tuple(
        o for o in run_option_names(("engine", "input", "kernels", "images")) if o in taken
    )


@dataclass(frozen=True)
class MetricCommand:
    """A command of one or more metrics: its inputs and words; its options come from the
    metrics' declarations."""

    name: str
    metrics: tuple[str, ...]
    inputs: tuple[str, str, str]  # (nargs, metavar, help)
    help: str
    description: str
    epilog: str = ""


METRIC_COMMANDS = (
    MetricCommand(
        "fid",
        ("fid", "fid_inf"),
        ("+", "STORE", "REAL GEN (or GEN with --ref)"),
        "Fréchet distance between two feature sets or statistics",
        "Fréchet Inception Distance between REAL and GEN. Each may be a feature store or "
        "statistics (ours, or a pytorch-fid .npz); feature stores are streamed through the "
        "engine, statistics are read. A guided-diffusion (ADM) reference batch, VIRTUAL_*.npz, "
        "is read as its mu/sigma: pool_3 features of the TF Inception graph, so extract GEN with "
        "--resize legacy-tensorflow to compare with it.",
        "examples:\n  shardeval fid real.zarr gen.zarr --out fid.json\n"
        "  shardeval fid real-stats.zarr gen.zarr\n  shardeval fid a.npz b.npz\n"
        "  shardeval fid real.zarr gen.zarr --scheduler tcp://10.0.0.5:8786",
    ),
    MetricCommand(
        "sfid",
        ("sfid",),
        ("2", "STORE", "REAL GEN"),
        "sFID: FID of the Inception's spatial features (guided-diffusion's)",
        "sFID (Nash et al. 2021): the Fréchet distance of the Inception's spatial features, the "
        "first 7 channels of the TF graph's mixed_6/conv (17 x 17 x 7 = 2,023 values per "
        "image), as guided-diffusion's evaluator computes it. REAL and GEN: extraction stores "
        "made with `shardeval extract --spatial` (their spatial array is read), stores of one "
        "array of spatial features, or for REAL a guided-diffusion reference batch "
        "(VIRTUAL_*.npz: its mu_s/sigma_s). The layer and its sources: docs/sfid.md.",
        "examples:\n  shardeval extract gen/ -o gen.zarr --spatial\n"
        "  shardeval sfid VIRTUAL_imagenet256_labeled.npz gen.zarr",
    ),
    MetricCommand(
        "kid",
        ("kid",),
        ("2", "STORE", "REAL GEN"),
        "Kernel Inception Distance, exact over all pairs",
        "KID (Bińkowski et al. 2018): the squared MMD of REAL and GEN under the kernel "
        "(x·y/d + 1)³. By default the unbiased estimator over ALL pairs of the full sets with "
        "its standard error, computed block pair by block pair (no N x N matrix). "
        "--subsets/--subset-size/--seed: the peers' protocol (torch-fidelity's, mean and "
        "standard deviation over random subsets), so numbers compare with published ones.",
        "examples:\n  shardeval kid real.zarr gen.zarr\n"
        "  shardeval kid real.zarr gen.zarr --subsets 100 --subset-size 1000 --seed 2020",
    ),
    MetricCommand(
        "cmmd",
        ("cmmd",),
        ("2", "STORE", "REAL GEN"),
        "CMMD: RBF-kernel MMD of CLIP embeddings, exact over all pairs",
        "CMMD (Jayasumana et al. 2024): 1000 x the squared MMD of REAL and GEN under "
        "exp(-|x-y|²/2σ²), σ = 10, on embeddings scaled to unit norm (done here); the biased "
        "V-statistic of the reference code, or --unbiased for the U-statistic.",
    ),
    MetricCommand(
        "prdc",
        ("prdc",),
        ("2", "STORE", "REAL GEN"),
        "precision, recall, density and coverage, exact over all pairs",
        "Precision and recall (Kynkäänniemi et al. 2019; radius: distance to the --pr-k-th "
        "nearest other point, inside means <=) and density and coverage (Naeem et al. 2020; "
        "--k, strict <), over the full sets; every decision exact in float64. --per-sample "
        "OUT writes each generated row's realism score (Kynkäänniemi et al., Sec. 5) to the "
        "Zarr group OUT, beside GEN's names.",
        "examples:\n  shardeval prdc real.zarr gen.zarr\n"
        "  shardeval prdc real.zarr gen.zarr --per-sample gen-realism.zarr",
    ),
    MetricCommand(
        "authpct",
        ("authpct",),
        ("2", "STORE", "TRAIN GEN"),
        "AuthPct: authenticity of the generated set against the training set, exact",
        "AuthPct (Alaa et al. 2022, as dgm-eval computes it): the percentage of GEN's rows "
        "farther from their nearest TRAIN row than that row is from its own nearest other "
        "TRAIN row. TRAIN is the model's training set. Exact over the full sets: every "
        "nearest-neighbour decision exact in float64. --per-sample OUT writes each generated "
        "row's nearest training row (distance, index) and authentic flag to the Zarr group "
        "OUT, beside GEN's names.",
        "examples:\n  shardeval authpct train.zarr gen.zarr\n"
        "  shardeval authpct train.zarr gen.zarr --per-sample gen-nearest.zarr",
    ),
    MetricCommand(
        "ct",
        ("ct",),
        ("3", "STORE", "TRAIN TEST GEN"),
        "data-copying C_T against the training set and a held-out test set",
        "C_T (Meehan, Chaudhuri & Dasgupta 2020), with dgm-eval's choices: TRAIN is cut into "
        "--cells k-means cells; in each, the Z-scored Mann-Whitney U of GEN's distances to "
        "their nearest TRAIN row against TEST's (a held-out set of TRAIN's distribution), "
        "averaged over the cells holding more than --tau-rows GEN rows, weighted by TEST's "
        "fractions. Near 0 without copying (each Z_U about N(0, 1)); below 0: GEN lies closer "
        "to TRAIN than fresh rows do, i.e. copies it. Nearest rows are exact over the full "
        "sets; defaults are dgm-eval's (docs/metrics.md).",
        "examples:\n  shardeval ct train.zarr test.zarr gen.zarr\n"
        "  shardeval ct train.zarr test.zarr gen.zarr --cells 20 --ties",
    ),
    MetricCommand(
        "fld",
        ("fld",),
        ("3", "STORE", "TRAIN TEST GEN"),
        "feature likelihood divergence FLD against the training set and a held-out test set",
        "FLD (Jiralerspong et al. 2023), with the authors' defaults: after standardising every "
        "set by TEST's mean and standard deviation, a mixture of Gaussians centred on "
        "--gen-rows rows of GEN (a seeded sample when it has more), one bandwidth each fitted "
        "to TRAIN by 50 epochs of Adam, scores TEST; FLD = 100 x (its NLL per dimension - a "
        "baseline's: a mixture on half of TRAIN fitted to the other half). Lower is better, "
        "about 0 for a generator as good as the training data; copies of TRAIN score high. "
        "--evaluate train scores TRAIN instead, --evaluate gap gives 100 x (train NLL - test "
        "NLL), below 0 when GEN copies TRAIN. Float64, in this process (docs/metrics.md).",
        "examples:\n  shardeval fld train.zarr test.zarr gen.zarr\n"
        "  shardeval fld train.zarr test.zarr gen.zarr --evaluate gap --json",
    ),
    MetricCommand(
        "is",
        ("is",),
        ("1", "LOGITS", "logits, an extraction store or images"),
        "Inception Score of logits, exact over all samples (and the peers' splits)",
        "Inception Score (Salimans et al. 2016), exp(E KL(p(y|x) ‖ p(y))), of LOGITS: an "
        "(N, C) array or store of logits, an extraction store of the Inception (its 1,008 "
        "logits, pool3·Wᵀ without the bias as torch-fidelity's logits_unbiased), or images "
        "(extracted with the Inception into the feature cache). By default over ALL samples, "
        "exactly, with its standard error (delta method on log IS); --splits S adds the peers' "
        "protocol (torch-fidelity's isc: mean and std over S splits of the rows shuffled by "
        "--seed), so numbers compare with published ones.",
        "examples:\n  shardeval is gen.zarr\n  shardeval is gen.zarr --splits 10\n"
        "  shardeval is logits.npy --json",
    ),
)


def add_metric_command(sub: argparse._SubParsersAction, spec: MetricCommand) -> None:
    p = sub.add_parser(
        spec.name,
        help=spec.help,
        description=spec.description,
        epilog=spec.epilog or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nargs, metavar, text = spec.inputs
    if nargs == "1":
        p.add_argument("store", metavar=metavar, help=text)
    else:
        p.add_argument(
            "stores", nargs=int(nargs) if nargs.isdigit() else nargs, metavar=metavar, help=text
        )
    if spec.name == "fid":
        p.add_argument(
            "--ref", metavar="STATS", help="REAL given as statistics (the same as `fid STATS GEN`)"
        )
        p.add_argument(
            "--infinity",
            action="store_true",
            help="also FID∞ (Chong & Forsyth 2020): FID at 15 nested subset sizes of GEN, the "
            "intercept of a least-squares line in 1/N (one read of GEN; it must be features)",
        )
    add_run_options(p, metric_run_options(spec.metrics))
    metric_options(p, spec.metrics)
    add_output_options(p)
