"""The run options' declarations: one :class:`Option` per option (its constraint, default,
help and ``--help`` group) in the one table :data:`OPTIONS`, and the views of it by name and by
group. The command line's flags, the job file's ``[run]`` keys and the API's keywords and
docstrings are made from this table. Nothing heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shardeval.pipeline.constraints import (
    COUNT,
    FAN_IN,
    POSITIVE,
    Either,
    Encoder,
    Flag,
    Function,
    Mode,
    OneOf,
    Path,
    Scheduler,
    Text,
)
from shardeval.pipeline.options import (
    BACKENDS,
    BANDWIDTH_RULES,
    DEFAULT_SPLIT_EVERY,
    DEVICES,
    GMM_COVARIANCES,
    GMM_MAX_ITER,
    GMM_REG_COVAR,
    GMM_TOL,
    NONFINITE_POLICIES,
    PRECISIONS,
    encoder_help,
    resize_help,
)


@dataclass(frozen=True)
class Option:
    """One run option.

    Attributes:
        name: the Python keyword, the job key and (dashed) the command-line flag.
        constraint: what a given value must be (checked once, at the boundary).
        help: one line for ``--help`` and docstrings.
        group: where ``--help`` shows it (``engine``, ``input``, ``kernels``, ``images``…).
        default: what applies when it is not given (``None``: decided where it is used, and
            ``default_text`` says how).
        default_text: the default as people read it.
        metavar: how the value is shown in a usage line.
        api_only: a Python value (a function, a client): no flag, no job key.
        cli_only: not a keyword of the API.
        job: a job file may set it (``[run]``).
    """

    name: str
    constraint: Any
    help: str | Callable[[], str]
    group: str
    default: Any = None
    default_text: str = ""
    metavar: str | None = None
    api_only: bool = False
    job: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_flag(self) -> bool:
        return isinstance(self.constraint, Flag)

    def problem(self, value: object) -> str | None:
        """Why ``value`` cannot be this option's (None: it can, or it was not given)."""
        return None if value is None else self.constraint.problem(value)

    def describe(self) -> str:
        """One line: what it is and its default."""
        text = self.help() if callable(self.help) else self.help
        default = self.default_text or (repr(self.default) if self.default is not None else "")
        return f"{text} (default {default})" if default else text


#: Every run option, in the order ``--help`` shows them.
OPTIONS: tuple[Option, ...] = (
    # engine
    Option(
        "scheduler",
        Scheduler(),
        "'threads' (in-process), 'sync', or a running distributed scheduler (tcp://host:8786); "
        "DASK_SCHEDULER_ADDRESS when not given",
        "engine",
        default_text="threads",
        metavar="ADDRESS",
    ),
    Option(
        "cluster",
        Path(),
        "start a Dask cluster from a spec file (cluster/local.yaml, cuda.yaml, slurm.yaml), "
        "run on it, then close it",
        "engine",
        metavar="SPEC",
    ),
    Option(
        "threads",
        COUNT,
        "Dask threads of the threaded scheduler",
        "engine",
        default_text="all cores",
        metavar="N",
    ),
    Option(
        "performance_report",
        Path(),
        "save Dask's HTML performance report (needs a distributed scheduler or a cluster)",
        "engine",
        metavar="FILE.html",
        job=False,
    ),
    # reading inputs
    Option(
        "shard_rows",
        COUNT,
        "rows per shard (pair metrics: rows per block, one task each)",
        "input",
        default_text="whole stored chunks, about 64 MiB a shard; 32 MiB a block",
        metavar="N",
    ),
    Option(
        "array",
        Text(),
        "the variable inside a Zarr group, xarray dataset or .npz",
        "input",
        metavar="NAME",
    ),
    Option(
        "split_every",
        FAN_IN,
        "fan-in of a balanced merge tree",
        "input",
        default_text=f"a chain of merges on one machine, {DEFAULT_SPLIT_EVERY} on a cluster",
        metavar="K",
    ),
    Option(
        "nonfinite",
        OneOf(NONFINITE_POLICIES),
        "rows with NaN/inf: fail naming them, or drop and count them",
        "input",
        default="error",
    ),
    # kernels
    Option(
        "device",
        OneOf(DEVICES),
        "where shard kernels run (auto: a worker's GPU if it has one, else its CPU)",
        "kernels",
        default="auto",
    ),
    Option(
        "backend",
        OneOf(BACKENDS),
        "kernel implementation (auto: Triton on GPU, BLAS/torch on CPU)",
        "kernels",
        default="auto",
    ),
    Option(
        "precision",
        OneOf(PRECISIONS),
        "products inside a shard: fp32 (float64 and wide-integer data stay exact) or fp64",
        "kernels",
        default="fp32",
    ),
    # image inputs
    Option("encoder", Encoder(), encoder_help, "images", metavar="ENCODER"),
    Option("resize", Mode(), resize_help, "images", metavar="MODE"),
    Option(
        "weights",
        Path(),
        "weights file (inception, timm, open_clip) or Hugging Face model folder (ViTs, hf:); "
        "'random' (or "
        "random:SEED): the Inception with seeded random weights, a smoke test of the image path "
        "without the published file (every number it gives is marked as such; a file named "
        "random is ./random)",
        "images",
        default_text="torch hub's checkpoints / the Hugging Face cache",
        metavar="PATH",
    ),
    Option(
        "batch_size",
        COUNT,
        "images per forward pass and rows per chunk of an extraction store",
        "images",
        default_text="32",
        metavar="B",
    ),
    Option(
        "cache_root",
        Path(),
        "the feature cache of image inputs",
        "images",
        default_text="$SHARDEVAL_CACHE, else $XDG_CACHE_HOME/shardeval or ~/.cache/shardeval",
        metavar="FOLDER",
    ),
    Option(
        "verify",
        Flag(),
        "reuse cached features of images only if the images' bytes are those they were "
        "extracted from (reads every image once); otherwise their listing decides",
        "images",
        default=False,
    ),
    Option(
        "skip_bad",
        Flag(),
        "leave out images that cannot be read or decoded (the report names them)",
        "images",
        default=False,
    ),
    # likelihoods and weights (nll, ess)
    Option(
        "reff",
        POSITIVE,
        "relative efficiency of the draws for the PSIS tail, as az.loo computes it (< 1 for MCMC)",
        "likelihood",
        default=1.0,
        metavar="R",
    ),
    Option(
        "dims",
        COUNT,
        "dimensions per sample, for bits/dim (e.g. 3072 for 32x32 RGB)",
        "likelihood",
        metavar="D",
    ),
    Option(
        "bandwidth",
        Either((POSITIVE, OneOf(BANDWIDTH_RULES))),
        "Parzen bandwidth: a number, 'silverman' or 'cv' (held-out likelihood on a log grid)",
        "likelihood",
        default="silverman",
        metavar="H",
    ),
    Option(
        "covariance",
        OneOf(GMM_COVARIANCES),
        "Gaussian mixture: each component's covariance, full or diagonal",
        "likelihood",
        default="full",
    ),
    Option(
        "reg_covar",
        POSITIVE,
        "Gaussian mixture: added to every covariance's diagonal (a floor on the variances)",
        "likelihood",
        default=GMM_REG_COVAR,
        metavar="R",
    ),
    Option(
        "tol",
        POSITIVE,
        "Gaussian mixture: EM stops when the mean log-likelihood per row changes by less (nats)",
        "likelihood",
        default=GMM_TOL,
        metavar="T",
    ),
    Option(
        "max_iter",
        COUNT,
        "Gaussian mixture: at most this many EM iterations (passes over the store)",
        "likelihood",
        default=GMM_MAX_ITER,
        metavar="N",
    ),
    # Python only
    Option(
        "progress",
        Function(),
        "called with (done, total) as tasks finish",
        "python",
        api_only=True,
        job=False,
    ),
    Option("log", Function(), "called with notices", "python", api_only=True, job=False),
)


#: The options by name.
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


#: The options of the engine (what a computation on statistics alone does not take).
ENGINE = tuple(o.name for o in OPTIONS if o.group == "engine")


#: How image inputs become features.
IMAGES = tuple(o.name for o in OPTIONS if o.group == "images")


#: How feature stores are read and reduced, and where kernels run: metrics declare which of
#: these they take.
READING = tuple(o.name for o in OPTIONS if o.group in ("input", "kernels"))


def run_option_names(groups: Iterable[str]) -> tuple[str, ...]:
    """The options of the groups named, in declaration order."""
    wanted = set(groups)
    return tuple(o.name for o in OPTIONS if o.group in wanted)
