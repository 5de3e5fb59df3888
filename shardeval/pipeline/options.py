"""The choices of the options that metrics and commands share, in a module that imports
nothing, so that parsing arguments and validating job files stay instant."""

from __future__ import annotations

#: Rows with NaN/inf: fail naming them, or leave them out and count them.
NONFINITE_POLICIES = ("error", "drop")

#: Products inside a shard: fp32 (the kernels' contract) or fp64 (upcast first).
PRECISIONS = ("fp32", "fp64")

#: Where chunk steps run: ``auto`` is decided on each worker (its GPU if it has one).
DEVICES = ("auto", "cpu", "cuda")

#: Kernel implementations (:data:`shardeval.kernels.BACKENDS`; a test checks they agree).
BACKENDS = ("auto", "triton", "torch")

#: Image encoders of ``extract`` (:data:`shardeval.kernels.encoders.ENCODERS`; a test checks they
#: agree).
ENCODER_NAMES = ("clip-vitl14-336", "dinov2-vitl14", "inception")

#: The Inception's resize modes (:data:`shardeval.kernels.encoders.INCEPTION_RESIZES`),
#: default first.
INCEPTION_RESIZES = ("legacy-pytorch", "clean", "legacy-tensorflow")

#: Fan-in of the balanced merge tree on a distributed cluster.
DEFAULT_SPLIT_EVERY = 4

#: Seeds of subset draws: numpy's legacy generator (the peers' KID subsets) takes [0, 2^32).
MAX_SEED = 2**32 - 1


def seed_problem(value: int) -> str | None:
    """Why ``value`` cannot seed a subset draw, or None when it can."""
    if 0 <= value <= MAX_SEED:
        return None
    return f"a seed is an integer in [0, {MAX_SEED}], got {value}"


def is_given(value: object) -> bool:
    """Whether an option's value says the caller gave it: anything but None (not given) and
    False (a flag left off). Not ``value not in (None, False)``: 0 == False, and a seed of 0
    or a count of 0 is a value."""
    return value is not None and value is not False
