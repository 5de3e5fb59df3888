"""The choices of the options that metrics and commands share, in a module that imports
nothing, so that parsing arguments and validating job files stay instant. The options
themselves are declared in :mod:`shardeval.pipeline.runoptions`."""

from __future__ import annotations

#: Rows with NaN/inf: fail naming them, or leave them out and count them.
NONFINITE_POLICIES = ("error", "drop")

#: Products inside a shard: fp32 (the kernels' contract) or fp64 (upcast first).
PRECISIONS = ("fp32", "fp64")

#: Where chunk steps run: ``auto`` is decided on each worker (its GPU if it has one).
DEVICES = ("auto", "cpu", "cuda")

#: Kernel implementations (:data:`shardeval.kernels.BACKENDS`; a test checks they agree).
BACKENDS = ("auto", "triton", "torch")

#: Fan-in of the balanced merge tree on a distributed cluster.
DEFAULT_SPLIT_EVERY = 4

#: Seeds of subset draws: numpy's legacy generator (the peers' KID subsets) takes [0, 2^32).
MAX_SEED = 2**32 - 1


#: Larger than any row count, and still an int64 (dask's chunk sizes are).
MAX_COUNT = 2**62


#: Bandwidth rules of the Parzen window.
BANDWIDTH_RULES = ("silverman", "cv")

#: A Gaussian mixture's covariance types, and its fit's defaults (scikit-learn's
#: ``GaussianMixture``'s): the floor added to the covariances' diagonals, the tolerance on the
#: change of the mean log-likelihood per row, the cap on EM iterations.
GMM_COVARIANCES = ("full", "diag")
GMM_REG_COVAR = 1e-6
GMM_TOL = 1e-3
GMM_MAX_ITER = 100


# The encoders' names, modes and help come from their declarations
# (:mod:`shardeval.kernels.encoders.registry`, which imports nothing heavy), read when an
# encoder option is checked or its help written.


def encoder_problem(value: object) -> str | None:
    """Why ``value`` cannot be the ``encoder`` option (one line listing the names it may
    take), or None: a registered name, ``timm:NAME``, ``open_clip:NAME:PRETRAINED``,
    ``hf:MODEL_ID``, or in Python a torch module or callable (checked when it is declared)."""
    from shardeval.kernels.encoders.registry import EncoderSpec, name_problem

    return None if callable(value) or isinstance(value, EncoderSpec) else name_problem(value)


def encoder_help() -> str:
    """The ``encoder`` option's help: every registered encoder and the forms of the others."""
    from shardeval.kernels.encoders.registry import encoder_help as help_text

    return help_text()


def resize_choices() -> tuple[str, ...]:
    """Every registered encoder's preprocessing modes (which one takes which is checked
    against the encoder)."""
    from shardeval.kernels.encoders.registry import resize_names

    return tuple(dict.fromkeys(resize_names()))


def resize_help() -> str:
    """The ``resize`` option's help: each registered encoder's modes, its default first."""
    from shardeval.kernels.encoders.registry import resize_help as help_text

    return help_text()
