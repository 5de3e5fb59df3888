"""Training-loop metrics: objects that take batches as a model produces them, every one on
one base (:class:`~.base.TrainingMetric`) made from its state.

:class:`FID` keeps, per side, the count, mean and centred co-moment of the rows it has seen:
batches gather in a bounded buffer on their device and go through
:func:`shardeval.kernels.shard_moments` there (Triton on CUDA, BLAS on a CPU), and the result is
folded into a running float64 state on that device by Chan, Golub & LeVeque's update; no more
rows than the buffer's are ever held. :class:`RowMetrics` (and :class:`KID`, :class:`CMMD`,
:class:`PRDC`, :class:`FIDInfinity`, :class:`InceptionScore`, :class:`GaussianNLL`) need every
row (pairs, nested subsets): they spill the rows to a Zarr array in a work folder, one chunk at
a time, and ``compute()`` runs the metrics' plug-ins over them; :class:`NLL` and :class:`ESS`
spill per-sample values and run :func:`shardeval.nll` and :func:`shardeval.ess` over them.
Memory stays flat in the rows either way.

They take 2-D features ``(B, d)`` (a tensor on any device, or a numpy array) or 4-D image
batches ``(B, 3, H, W)`` (uint8, or floats in [0, 1]) for one of ``extract``'s encoders (the
Inception by default). ``compute()`` returns the :class:`~shardeval.api.results.Report` that the
one-shot function (:func:`shardeval.fid`, :func:`shardeval.kid`…) gives for the same rows.

``torch.distributed`` (any backend): under a process group of more than one rank,
``compute()`` is a collective, as in torchmetrics (``sync_on_compute``): every rank of the group
calls it, and every rank gets the value over every rank's rows; no rank ever gets its own rows'
value by accident. ``compute(sync=False)`` gives that on purpose, and its report says so (a
``local`` entry in the JSON, a first line in the summary). ``sync(group)`` is the same gather,
called explicitly. :meth:`FID.sync` gathers every process's moments and merges them in rank
order with :meth:`Moments.merge <shardeval.pipeline.core.states.Moments.merge>`, so every rank
holds the same bits, equal to one process fed the ranks' batches in rank order up to rounding:
float64's with ``precision='fp64'``, fp32 products' (~1e-7 relative: which rows reach the kernel
together differs) by default, as :func:`shardeval.fid` with other shard sizes.
:meth:`RowMetrics.sync` sends every rank's rows to rank 0, chunk by chunk through
``torch.distributed`` (no shared file system is needed: one chunk is in memory at a time), in rank
order; rank 0 computes over exactly the rows one process would have seen and hands the result to
every rank. A ``compute()`` after which no rank has changed its rows returns the result kept, and
only the cheap agreement of the ranks runs. The ranks first meet through the process group's
store, with a deadline («sync_timeout», :data:`SYNC_TIMEOUT_SECONDS` by default): a rank that
calls ``compute()`` or ``sync()`` alone gets an :class:`~shardeval.pipeline.errors.EngineError`
instead of waiting forever. As with every ``torch.distributed`` collective, ranks call the
``compute()`` and ``sync()`` of their metrics in the same order; a metric is known across ranks
by its kind and the order in which its process made it (copies and unpickled metrics count as
made), so ranks make their metrics in the same order too, and a gather of metrics made in
other orders is refused on every rank. Metrics sync and merge only with metrics of the same
settings, reference and feature provenance (how their rows were made); anything else is
refused, naming what differs. A report says how its features were
made (``features_made_by``, its summary's lines and warnings) as :func:`shardeval.fid` and
:func:`shardeval.kid` say it of the same inputs.
"""

from shardeval.api.streaming.base import TrainingMetric
from shardeval.api.streaming.distributed import (
    MAX_SYNC_TIMEOUT_SECONDS,
    MIN_SYNC_TIMEOUT_SECONDS,
    SYNC_TIMEOUT_SECONDS,
)
from shardeval.api.streaming.fid import FID
from shardeval.api.streaming.likelihood import ESS, NLL
from shardeval.api.streaming.named import (
    CMMD,
    KID,
    PRDC,
    FIDInfinity,
    GaussianNLL,
    InceptionScore,
    PairMetrics,
)
from shardeval.api.streaming.rows import RowMetrics

__all__ = [
    "CMMD",
    "ESS",
    "FID",
    "KID",
    "MAX_SYNC_TIMEOUT_SECONDS",
    "MIN_SYNC_TIMEOUT_SECONDS",
    "NLL",
    "PRDC",
    "SYNC_TIMEOUT_SECONDS",
    "FIDInfinity",
    "GaussianNLL",
    "InceptionScore",
    "PairMetrics",
    "RowMetrics",
    "TrainingMetric",
]
