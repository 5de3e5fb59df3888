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


#: Larger than any row count, and still an int64 (dask's chunk sizes are).
MAX_COUNT = 2**62


#: Bandwidth rules of the Parzen window.
BANDWIDTH_RULES = ("silverman", "cv")
