"""Which encoder an extraction runs, checked before any compute, and the encoder each process
loads once.

:func:`plan_extraction` resolves an encoder (a registered name, ``timm:``/``open_clip:``/``hf:``
names, or a module given in Python: see :mod:`shardeval.kernels.encoders.registry`), its
preprocessing mode and its weights, which it finds and digests (loading nothing), into one
:class:`Extraction`. :func:`cached_encoder` is the encoder of this process for those settings:
a worker loads it for its first task and keeps it for the others. A module given in Python is
never loaded: it runs as it was given, where its tensors are. :func:`extract_chunk` is the task
that runs it on one chunk of images.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardeval._words import marked
from shardeval.pipeline.core.chunks import worker_device
from shardeval.pipeline.core.engine import available_cores
from shardeval.pipeline.errors import ShardevalError, StoreError

if TYPE_CHECKING:
    from shardeval.kernels.encoders import Encoder, EncoderSpec
    from shardeval.pipeline.images.reading import ImageRefs

#: Images per forward pass when the caller does not choose.
DEFAULT_BATCH_SIZE = 32

#: The array of an extraction store holding the class logits.
LOGITS_ARRAY = "logits"

#: The array of an extraction store holding sFID's spatial features (opt-in, «spatial»).
SPATIAL_ARRAY = "spatial"

_DECODE_THREADS = 8


class ExtractionError(ShardevalError):
    """An extraction cannot run as asked (an output holding other settings, nothing to keep)."""


class EncoderSetupError(ExtractionError):
    """The encoder cannot be set up: an unknown name, weights missing or wrong, a package
    missing."""


@dataclass(frozen=True)
class Extraction:
    """What decides an extraction's features besides the images: checked before any compute.

    Attributes:
        encoder: the encoder's name as features record it (``inception``, ``timm:NAME``,
            ``python:NAME``).
        weights: the weights the user gave (absolute; ``random:SEED`` for seeded random
            weights), or None for the standard cache.
        digest: the weights' digest (``sha256:<hex>``).
        resize: the preprocessing mode.
        dim: features per image (None: known once one image went through the encoder).
        located: the weights this process found (the file or folder read; for a worker of a
            cluster, its own copy must have the same digest); "" for a module given in Python.
        spec: the encoder's declaration (None: the registered one of that name).
    """

    encoder: str
    weights: str | None
    digest: str
    resize: str
    dim: int | None
    located: str = ""
    spec: EncoderSpec | None = field(default=None, compare=False, repr=False)

    @property
    def encoder_spec(self) -> EncoderSpec:
        """The encoder's declaration."""
        from shardeval.kernels.encoders import resolve_encoder

        return self.spec if self.spec is not None else resolve_encoder(self.encoder)

    @property
    def source(self) -> str:
        """Where the encoder comes from: ``shardeval``, ``timm``, ``open_clip``, ``hf`` or
        ``python``."""
        return self.encoder_spec.source

    @property
    def weights_status(self) -> str | None:
        """Whether the weights are the published file
        (:func:`shardeval.pipeline.images.provenance.weights_status`)."""
        from shardeval.pipeline.images.provenance import weights_status

        return weights_status(self.encoder, self.digest)


def plan_extraction(
    encoder: Any = "inception",
    weights: str | os.PathLike[str] | None = None,
    resize: str | None = None,
) -> Extraction:
    """Resolve an encoder's settings and find (and hash) its weights, loading nothing.

    Args:
        encoder: a registered name, ``timm:NAME``, ``open_clip:NAME:PRETRAINED``,
            ``hf:MODEL_ID``, an encoder's declaration, or a torch module or callable
            (:func:`~shardeval.kernels.encoders.declare.resolve_encoder`).
        weights: a weights file or folder; default: the standard cache of the encoder's
            weights source.
        resize: the preprocessing mode (default: the encoder's).

    Raises:
        EncoderSetupError: an unknown encoder (the message lists the known ones), a resize it
            does not take, weights missing, a library missing.
    """
    from shardeval.kernels.encoders import (
        EncoderError,
        locate_weights,
        random_seed,
        resolve_encoder,
    )
    from shardeval.kernels.encoders import weights_digest as digest_of

    try:
        spec = resolve_encoder(encoder)
        mode = spec.resolve_resize(resize)
        seed = random_seed(weights)
        # Absolute, so that workers with another working directory find the same file.
        given = os.path.abspath(os.path.expanduser(os.fspath(weights))) if weights else None
        if seed is not None:  # seeded random weights: named by their seed, no file
            given = locate_weights(spec, weights)
        located = locate_weights(spec, given)
        digest = spec.digest if spec.digest is not None else digest_of(located)
    except EncoderError as exc:
        raise EncoderSetupError(marked(exc)) from exc
    return Extraction(spec.name, given, digest, mode, spec.dim, located, spec)


# One encoder per (encoder, weights digest, device) per process: a worker loads it for its
# first task and keeps it for the others; the lock keeps two threads from loading it twice.
_ENCODERS: dict[tuple[str, str, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def cached_encoder(
    encoder: Any, weights: str | None, digest: str, device: str, resize: str
) -> Encoder:
    """This process's encoder for these settings, loaded on first use.

    Args:
        encoder: an encoder (a name, declaration or module: see :func:`plan_extraction`).
        weights: the weights the user gave, or None for the standard cache of this machine.
        digest: the weights must have this digest.
        device: ``cpu``, ``cuda`` or ``auto`` (decided here, on the worker); a module given in
            Python runs where its tensors are (``auto``, or that device).
        resize: the preprocessing mode.

    Raises:
        EncoderSetupError: weights missing, unreadable, not matching ``digest``; a package
            missing; a module given in Python on another device than ``device``; this process
            would let the GPU round fp32 products to TF32.
    """
    import socket

    from shardeval.kernels.encoders import (
        EncoderError,
        load_encoder,
        locate_weights,
        module_device,
        resolve_encoder,
    )

    try:
        spec = resolve_encoder(encoder)
        if spec.source == "python":  # the user's module: nothing to load, nothing to keep
            where = device if module_device(spec.module) else worker_device(device)
            loaded = load_encoder(spec, "", resize=resize, device=where, digest=digest)
        else:
            where = worker_device(device)
            key = (spec.name, digest, where)
            with _ENCODERS_LOCK:
                if key not in _ENCODERS:
                    path = locate_weights(spec, weights)
                    _ENCODERS[key] = load_encoder(spec, path, device=where, digest=digest)
                loaded = _ENCODERS[key]
    except EncoderError as exc:
        raise EncoderSetupError(marked(exc)) from exc
    if loaded.fp32_products != "ieee":
        raise EncoderSetupError(
            f"{socket.gethostname()}: PyTorch lets fp32 convolutions on {loaded.device} round to "
            "TF32 (its default on Ampere and later GPUs; inputs keep 10 mantissa bits): start "
            "the Dask workers with --preload shardeval.pipeline.core.ieee_fp32, as "
            "cluster/cuda.yaml, slurm.yaml and kubernetes/ do (from Python, call "
            "shardeval.kernels.use_ieee_fp32() first)"
        )
    return loaded if loaded.resize == resize else loaded.with_resize(resize)


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk task returns: its index, rows, seconds and device."""

    chunk: int
    rows: int
    seconds: float
    device: str


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk task needs besides its images.

    ``encoder`` is the encoder's declaration (a module given in Python rides in it: the job is
    then one key of the graph, shipped once to each worker); ``weights`` is what the user gave
    (None: each worker looks in its own cache), ``digest`` what the weights must hash to on
    every worker; ``logits``: the store has a logits array, written beside the features;
    ``spatial``: the store has a spatial array (sFID's), likewise.
    """

    output: str
    encoder: str | EncoderSpec
    weights: str | None
    digest: str
    resize: str
    device: str
    batch_size: int
    chunk_rows: int
    logits: bool = False
    spatial: bool = False


def extract_chunk(job: ChunkJob, chunk: int, refs: ImageRefs) -> ChunkResult:
    """The task: read and decode a chunk's images, encode them, write the whole chunk.

    Raises:
        ImageError: an image cannot be decoded (the run stops; nothing of this chunk is
            written).
        EncoderSetupError: the encoder cannot be set up on this worker.
        EncoderError: the encoder returned something other than (B, d) rows.
    """
    import zarr

    start = time.perf_counter()
    images = refs.read(threads=min(_DECODE_THREADS, available_cores()))
    model = cached_encoder(job.encoder, job.weights, job.digest, job.device, job.resize)
    if job.logits or job.spatial:
        features, logits, spatial = model.encode_arrays(
            images, job.batch_size, logits=job.logits, spatial=job.spatial
        )
    else:
        features, logits, spatial = model.encode(images, job.batch_size), None, None
    lo = chunk * job.chunk_rows
    array = zarr.open_array(job.output, path="features", mode="r+")
    if lo + len(features) > array.shape[0] or len(features) != min(
        job.chunk_rows, array.shape[0] - lo
    ):
        raise StoreError(f"{job.output!r}: chunk {chunk} does not fit the store's rows")
    # A chunk of NaN rows (a broken network) is still written, so the listing stays exact.
    # The logits and spatial features first: a chunk whose features are stored has them too,
    # so the features' listing alone says which chunks a killed run left.
    for name, values in ((LOGITS_ARRAY, logits), (SPATIAL_ARRAY, spatial)):
        if values is not None:
            beside = zarr.open_array(job.output, path=name, mode="r+")
            beside.with_config({"write_empty_chunks": True})[lo : lo + len(values)] = values
    array.with_config({"write_empty_chunks": True})[lo : lo + len(features)] = features
    return ChunkResult(chunk, len(features), time.perf_counter() - start, model.device)


def check_chunk(refs: ImageRefs) -> list[tuple[int, str]]:
    return refs.check(threads=min(_DECODE_THREADS, available_cores()))
