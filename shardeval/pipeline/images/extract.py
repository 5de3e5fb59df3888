"""Extraction: images → an encoder on each worker's device → a feature store in Zarr, chunk by
chunk, resumable, with the completion mark written last.

The store is a Zarr v3 group: ``features`` (N, d) float32, dims (sample, feature), one chunk per
task of ``chunk_rows`` rows (a whole number of batches), fill value NaN (a row never written
reads as NaN, which every reader rejects); for the Inception, ``logits`` (N, 1008) float32,
dims (sample, class), the class logits of the same forward pass (pool3 · Wᵀ without the bias,
what the Inception Score takes; :data:`LOGITS_NOTE`), chunked alike; ``names`` (N,) strings,
the image of each row; and attributes naming the encoder, the weights' digest, the resize, the
source and its fingerprint.

Logits are written by default: they cost one 2048 × 1008 product per image (about 0.04% of the
Inception's forward pass) and 1008 floats a row (a store half again as large), where a store
without them would have to be extracted again, every image through the network, to give an
Inception Score. ``logits=False`` leaves them out. They are not a setting: a store is resumed,
and reused, with the arrays it was created with (one made before logits were written has
none, and the Inception Score says so).
The group is created complete but for the chunks, in one atomic step (a temporary sibling
renamed into place), and carries ``shardeval_incomplete`` until every chunk is stored;
:func:`shardeval.pipeline.io.stores.open_features` refuses it until then. A re-run with the same
settings computes only the chunks the store's listing lacks; other settings are refused
(``overwrite`` starts again); something that is not an extraction store is never replaced. The batch
size and chunk rows are not settings of the features: a finished store is reused whatever they are
asked to be; an unfinished one is finished only with its own (its chunks are laid out by
them), and another is refused naming the value to pass.

The graph: one task per chunk, named ``shard-extract-…`` (the progress counts their images). A
task gets only names and locators of its images, reads and decodes them itself, runs the
encoder of its process (loaded once per worker process and kept, keyed by encoder, weights
digest and device), and writes its whole chunk, so no two tasks touch one chunk file. With
``skip_bad`` a decode pre-pass (tasks ``shard-check-…``) first lists the images that cannot be
read or decoded; the store then holds the others only, in order, and names the skipped ones
with the reason (a sentence naming the image). Without it, an image the listing already found
unreadable (a symbolic link whose target is gone) is refused before anything is written.

Messages mark the arguments that would fix them (``«skip_bad=True»``, ``«overwrite=True»``,
``«batch_size=N»``): a Python caller reads them as arguments, the CLI as its flags.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardeval._words import marked
from shardeval.pipeline.core.chunks import check_device, uses_gpu, worker_device
from shardeval.pipeline.core.engine import Engine, Progress, available_cores
from shardeval.pipeline.core.reduce import SHARD_PREFIX
from shardeval.pipeline.errors import ShardevalError, StoreError
from shardeval.pipeline.images.provenance import LEGACY_PREFIX
from shardeval.pipeline.images.sources import (
    IMAGE_ADVICE,
    ImageError,
    ImageRefs,
    ImageSource,
    open_images,
)
from shardeval.pipeline.io.atomic import atomic_dir, claim_output, locked
from shardeval.pipeline.io.stores import FEATURES_FORMAT, INCOMPLETE_ATTR

if TYPE_CHECKING:
    from shardeval.kernels.encoders import Encoder

#: Images per forward pass when the caller does not choose.
DEFAULT_BATCH_SIZE = 32

#: Images per task of the ``skip_bad`` decode pre-pass.
CHECK_ROWS = 256


#: What the incomplete mark says while chunks are still being written.
INCOMPLETE_NOTE = "extraction in progress; re-run to finish"

_KIND = "feature store written by `shardeval extract`"
_DECODE_THREADS = 8
_NAMES_CHUNK = 65536

#: Settings that decide a store's contents; a re-run must match them to resume.
SETTING_KEYS = ("encoder", "weights_digest", "resize", "source_fingerprint", "skip_bad")

#: The array of an extraction store holding the class logits, and the classes per encoder
#: that has them.
LOGITS_ARRAY = "logits"
LOGIT_CLASSES = {"inception": 1008}

#: What the logits are (the store's ``logits`` attribute and the array's ``description``).
LOGITS_NOTE = (
    "pool3 · fc.weightᵀ of the TF Inception graph, without the fc bias: the logits the "
    "Inception Score takes (Salimans et al.'s code, torch-fidelity's logits_unbiased)"
)


class ExtractionError(ShardevalError):
    """An extraction cannot run as asked (an output holding other settings, nothing to keep)."""


class EncoderSetupError(ExtractionError):
    """The encoder cannot be set up: weights missing or wrong, a package missing."""


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction did.

    Attributes:
        output: the store.
        encoder, feature_extractor, resize: what computed the features.
        images: images in the source; rows: rows in the store (images − skipped).
        dim: features per row.
        skipped: (name, reason) of images left out (``skip_bad``); the reason is a sentence
            naming the image (path, or member and archive) and what is wrong with it.
        chunks: chunks of the store; computed: by this run; present: stored before it.
        already_complete: the store was finished before; nothing was computed.
        resumed: an unfinished store was completed.
        devices: devices the tasks of this run used.
        seconds: wall time; check_seconds: of it, the decode pre-pass.
        classes: logits per row the store holds (0: none).
        weights_digest: the weights' digest (``sha256:<hex>``, ``random:<seed>``).
        weights_status: whether they are the published file (see
            :func:`shardeval.pipeline.images.provenance.weights_status`).
        weights_file: where they were read when the store was made (its ``weights_file``).
    """

    output: str
    encoder: str
    feature_extractor: str
    resize: str
    images: int
    rows: int
    dim: int
    skipped: tuple[tuple[str, str], ...]
    chunks: int
    computed: int
    present: int
    already_complete: bool
    resumed: bool
    devices: tuple[str, ...]
    seconds: float
    check_seconds: float
    classes: int = 0
    weights_digest: str = ""
    weights_status: str | None = None
    weights_file: str = ""


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk task returns: its index, rows, seconds and device."""

    chunk: int
    rows: int
    seconds: float
    device: str


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk task needs besides its images (small; pickled into each task).

    ``weights`` is what the user gave (None: each worker looks in its own cache), ``digest``
    what the weights must hash to on every worker; ``logits``: the store has a logits array,
    written beside the features.
    """

    output: str
    encoder: str
    weights: str | None
    digest: str
    resize: str
    device: str
    batch_size: int
    chunk_rows: int
    logits: bool = False


# One encoder per (encoder, weights digest, device) per process: a worker loads it for its
# first task and keeps it for the others; the lock keeps two threads from loading it twice.
_ENCODERS: dict[tuple[str, str, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def cached_encoder(
    encoder: str, weights: str | None, digest: str, device: str, resize: str
) -> Encoder:
    """This process's encoder for these settings, loaded on first use.

    Args:
        encoder: an encoder name.
        weights: the weights the user gave, or None for the standard cache of this machine.
        digest: the weights must have this digest.
        device: ``cpu``, ``cuda`` or ``auto`` (decided here, on the worker).
        resize: the preprocessing mode.

    Raises:
        EncoderSetupError: weights missing, unreadable, not matching ``digest``; a package
            missing; this process would let the GPU round fp32 products to TF32.
    """
    import socket

    from shardeval.kernels.encoders import EncoderError, load_encoder, locate_weights

    where = worker_device(device)
    key = (encoder, digest, where)
    try:
        with _ENCODERS_LOCK:
            if key not in _ENCODERS:
                path = locate_weights(encoder, weights)
                _ENCODERS[key] = load_encoder(encoder, path, device=where, digest=digest)
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


def extract_chunk(job: ChunkJob, chunk: int, refs: ImageRefs) -> ChunkResult:
    """The task: read and decode a chunk's images, encode them, write the whole chunk.

    Raises:
        ImageError: an image cannot be decoded (the run stops; nothing of this chunk is
            written).
        EncoderSetupError: the encoder cannot be set up on this worker.
    """
    import zarr

    start = time.perf_counter()
    images = refs.read(threads=min(_DECODE_THREADS, available_cores()))
    model = cached_encoder(job.encoder, job.weights, job.digest, job.device, job.resize)
    if job.logits:
        from shardeval.kernels.encoders.inception import encode_with_logits

        features, logits = encode_with_logits(model, images, job.batch_size)
    else:
        features, logits = model.encode(images, job.batch_size), None
    lo = chunk * job.chunk_rows
    array = zarr.open_array(job.output, path="features", mode="r+")
    if lo + len(features) > array.shape[0] or len(features) != min(
        job.chunk_rows, array.shape[0] - lo
    ):
        raise StoreError(f"{job.output!r}: chunk {chunk} does not fit the store's rows")
    # A chunk of NaN rows (a broken network) is still written, so the listing stays exact.
    # The logits first: a chunk whose features are stored has its logits too, so the features'
    # listing alone says which chunks a killed run left.
    if logits is not None:
        scores = zarr.open_array(job.output, path=LOGITS_ARRAY, mode="r+")
        scores.with_config({"write_empty_chunks": True})[lo : lo + len(logits)] = logits
    array.with_config({"write_empty_chunks": True})[lo : lo + len(features)] = features
    return ChunkResult(chunk, len(features), time.perf_counter() - start, model.device)


def _check_chunk(refs: ImageRefs) -> list[tuple[int, str]]:
    return refs.check(threads=min(_DECODE_THREADS, available_cores()))


def is_extraction_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a feature store written by extraction (never raises)."""
    import zarr

    try:
        return zarr.open_group(os.fspath(path), mode="r").attrs.get("format") == FEATURES_FORMAT
    except Exception:  # anything that is not our group is simply not ours
        return False


def _run(
    engine: Engine,
    name: str,
    fn: Any,
    calls: list[tuple[Any, ...]],
    progress: Progress | None,
    gpu: bool = False,
) -> list[Any]:
    """One task per call; ``progress`` counts images (the last argument of each call is its
    :class:`ImageRefs`). ``gpu``: the tasks may use a worker's GPU, and reserve one on a cluster
    whose workers declare GPUs (the engine asks in the same session as it computes, so a
    scheduler lost at any point is reported as the engine reports it)."""
    from dask.base import tokenize
    from dask.delayed import delayed

    token = tokenize(name, calls)
    tasks = [
        delayed(fn, pure=False)(*args, dask_key_name=f"{SHARD_PREFIX}{name}-{token}-{i}")
        for i, args in enumerate(calls)
    ]
    sizes = [len(args[-1]) for args in calls]
    return engine.run_delayed(tasks, progress=progress, sizes=sizes, gpu=gpu) if tasks else []


def _counting(progress: Progress | None, what: str) -> Progress | None:
    """``progress`` told that it counts ``what``, when it takes such a word (a display whose
    label says "shards" by default, passed on by a measurement that extracts its inputs
    first); else ``progress`` as it is."""
    counting = getattr(progress, "counting", None)
    return counting(what) if callable(counting) else progress


def _create_store(
    output: str,
    attrs: dict[str, Any],
    names: list[str],
    dim: int,
    chunk_rows: int,
    classes: int = 0,
) -> None:
    """The whole store but its chunks, renamed into place in one step (with a ``logits``
    array of ``classes`` columns when ``classes``)."""
    import numpy as np
    import zarr

    with atomic_dir(output) as tmp:
        group = zarr.create_group(tmp, attributes=attrs)
        listed = group.create_array(
            "names",
            shape=(len(names),),
            dtype=str,
            chunks=(min(len(names), _NAMES_CHUNK),),
            dimension_names=("sample",),
        )
        listed[:] = np.asarray(names, dtype=object)
        group.create_array(
            "features",
            shape=(len(names), dim),
            dtype="float32",
            chunks=(chunk_rows, dim),
            fill_value=np.float32("nan"),
            dimension_names=("sample", "feature"),
        )
        if classes:
            # dims (sample, class): readers that pick "the" features of a group by their
            # dimension names keep picking ``features``.
            group.create_array(
                LOGITS_ARRAY,
                shape=(len(names), classes),
                dtype="float32",
                chunks=(chunk_rows, classes),
                fill_value=np.float32("nan"),
                dimension_names=("sample", "class"),
                attributes={"description": LOGITS_NOTE},
            )


def _remove_partial_writes(output: str) -> None:
    """Temporary chunk files a killed writer left in our store (zarr writes a chunk to a
    ``*.partial`` sibling and renames it)."""
    for folder, _dirs, files in os.walk(os.path.join(output, "features")):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


@dataclass(frozen=True)
class Extraction:
    """What decides an extraction's features besides the images: checked before any compute.

    Attributes:
        encoder: the encoder name.
        weights: the weights the user gave (absolute; ``random:SEED`` for seeded random
            weights), or None for the standard cache.
        digest: the weights' digest (``sha256:<hex>``).
        resize: the preprocessing mode.
        dim: features per image.
        located: the weights this process found (the file or folder read; for a worker of a
            cluster, its own copy must have the same digest).
    """

    encoder: str
    weights: str | None
    digest: str
    resize: str
    dim: int
    located: str = ""

    @property
    def weights_status(self) -> str | None:
        """Whether the weights are the published file
        (:func:`shardeval.pipeline.images.provenance.weights_status`)."""
        from shardeval.pipeline.images.provenance import weights_status

        return weights_status(self.encoder, self.digest)


def plan_extraction(
    encoder: str = "inception",
    weights: str | os.PathLike[str] | None = None,
    resize: str | None = None,
) -> Extraction:
    """Resolve an encoder's settings and find (and hash) its weights, loading nothing.

    Raises:
        EncoderSetupError: an unknown encoder, a resize it does not take, weights missing.
    """
    from shardeval.kernels.encoders import (
        ENCODERS,
        EncoderError,
        locate_weights,
        random_seed,
        resolve_resize,
    )
    from shardeval.kernels.encoders import weights_digest as digest_of

    try:
        seed = random_seed(weights)
        # Absolute, so that workers with another working directory find the same file.
        given = os.path.abspath(os.path.expanduser(os.fspath(weights))) if weights else None
        if seed is not None:  # seeded random weights: named by their seed, no file
            given = locate_weights(encoder, weights)
        mode = resolve_resize(encoder, resize)
        located = locate_weights(encoder, given)
        digest = digest_of(located)
    except EncoderError as exc:
        raise EncoderSetupError(marked(exc)) from exc
    return Extraction(encoder, given, digest, mode, ENCODERS[encoder].dim, located)


def extract_features(
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    encoder: str = "inception",
    weights: str | os.PathLike[str] | None = None,
    resize: str | None = None,
    batch_size: int | None = None,
    chunk_rows: int | None = None,
    device: str = "auto",
    skip_bad: bool = False,
    overwrite: bool = False,
    engine: Engine | None = None,
    progress: Progress | None = None,
    check_progress: Progress | None = None,
    logits: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Extract features of every image of a source into a Zarr feature store.

    Args:
        images: a folder, ``.zip``, ``.npz``/``.npy``, ``.tar`` shard or glob of shards (see
            :func:`shardeval.pipeline.images.sources.open_images`).
        output: a local path (shared by every worker on a cluster).
        encoder: ``inception``, ``dinov2-vitl14`` or ``clip-vitl14-336``.
        weights: the weights file / model folder; default: the standard caches;
            ``"random"`` (``"random:SEED"``): the Inception with seeded random weights, a smoke
            test (the store records ``weights_digest`` ``random:SEED``).
        resize: ``legacy-pytorch`` (default), ``clean`` or ``legacy-tensorflow`` for the
            Inception.
        batch_size: images per forward pass (default 32). A finished store is reused
            whatever it is; an unfinished one is finished with its own (default) only.
        chunk_rows: rows per chunk and task, a multiple of ``batch_size`` (default: one
            batch); for an existing store, as ``batch_size``.
        device: ``auto`` (each worker's GPU if it has one), ``cpu`` or ``cuda``.
        skip_bad: leave out images that cannot be read or decoded (a decode pre-pass lists
            them; :attr:`ExtractResult.skipped` names them with their reasons).
        overwrite: replace an extraction store already at ``output``, whatever its settings.
        engine: where tasks run (default: the threaded scheduler).
        progress: called with (images done, images to compute).
        check_progress: called with (images checked, images to check) of the ``skip_bad``
            pre-pass.
        logits: a new store of an encoder with class logits (the Inception) holds them too,
            from the same forward pass (default). An existing store keeps its own arrays.
        log: called with a notice when this run waits for another that is writing
            ``output`` (it holds the store's lock).

    Returns:
        What was done (:class:`ExtractResult`).

    Raises:
        ImageSourceError, ImageError: the source or one image cannot be read (an image
            without ``skip_bad``; one found unreadable by the listing before any work).
        EncoderSetupError: weights missing or wrong, ``transformers`` missing.
        OutputExistsError: ``output`` holds something that is not an extraction store.
        ExtractionError: ``output`` holds an extraction with other settings (without
            ``overwrite``), an unfinished one started with another batch size or chunk rows,
            or every image was skipped.
        EngineError, ClusterError: the engine cannot run.
    """
    import zarr

    from shardeval.kernels.encoders import ENCODERS
    from shardeval.pipeline.io.reader import missing_chunks

    start = time.perf_counter()
    engine = engine or Engine()
    output = os.path.abspath(os.fspath(output))
    check_device(device, "auto", local=not engine.is_distributed)
    for value, what in ((batch_size, "batch size"), (chunk_rows, "chunk rows")):
        if value is not None and value < 1:
            raise ExtractionError(f"{what} must be a positive integer, got {value}")
    plan = plan_extraction(encoder, weights, resize)
    given, digest, mode = plan.weights, plan.digest, plan.resize
    spec = ENCODERS[encoder]
    source = open_images(images)
    if source.unreadable and not skip_bad:
        # Known from the listing (a link whose target is gone): refused before any work.
        raise ImageError(f"{source.unreadable[0][1]}; {IMAGE_ADVICE}")
    claim_output(output, _KIND, is_extraction_store, overwrite=True)  # refuses foreign outputs
    wanted = {
        "encoder": encoder,
        "weights_digest": digest,
        "resize": mode,
        "source_fingerprint": source.fingerprint,
        "skip_bad": skip_bad,
    }
    # One writer per store: a second run on it waits here, then resumes or reuses what the
    # first one wrote (the lock file stays beside the store, as a history's does).
    with locked(output + ".lock", exclusive=True, waiting=waiting_notice(log, output, images)):
        attrs = None
        if not overwrite and os.path.exists(output) and not _unstarted(output):
            attrs = _existing(output, wanted)
            _check_layout(output, attrs, batch_size, chunk_rows)
        fresh, was_complete = attrs is None, attrs is not None and _complete(attrs)
        check_seconds = 0.0
        if attrs is None:
            t = time.perf_counter()
            attrs = _new_attrs(source, spec.feature_extractor, wanted, batch_size, chunk_rows)
            # For people reading the store; reports decide the status from the digest again.
            attrs["weights_status"] = plan.weights_status
            attrs["weights_file"] = plan.located
            if skip_bad:
                skipped = _bad_images(engine, source, check_progress)
                attrs["skipped"] = [{"name": n, "reason": r} for n, r in skipped]
                attrs["rows"] = len(source) - len(skipped)
                if attrs["rows"] == 0:
                    raise ExtractionError(
                        f"no image of {source.location!r} can be decoded; nothing to extract"
                    )
            check_seconds = time.perf_counter() - t
            keep = _kept(source, attrs)
            classes = LOGIT_CLASSES.get(encoder, 0) if logits else 0
            if classes:
                attrs[LOGITS_ARRAY] = LOGITS_NOTE
            _create_store(
                output,
                attrs,
                [source.names[i] for i in keep],
                spec.dim,
                attrs["chunk_rows"],
                classes,
            )
        else:
            keep = _kept(source, attrs)
            _remove_partial_writes(output)
        group = zarr.open_group(output, mode="r+")
        features = group["features"]
        if not isinstance(features, zarr.Array):
            raise StoreError(f"{output!r}: 'features' is not an array; pass «overwrite=True»")
        rows_per_chunk = int(attrs["chunk_rows"])
        if tuple(features.shape) != (len(keep), spec.dim) or features.chunks[0] != rows_per_chunk:
            raise StoreError(
                f"{output!r} has features of shape {tuple(features.shape)}, not the "
                f"{(len(keep), spec.dim)} its attributes promise; pass «overwrite=True» to start "
                "again"
            )
        scores = group.get(LOGITS_ARRAY)
        unwritten = {index[0] for index, _ in missing_chunks(features)[0]}
        classes = 0
        if scores is not None:
            classes = LOGIT_CLASSES.get(encoder, 0)
            if not isinstance(scores, zarr.Array) or (
                tuple(scores.shape) != (len(keep), classes) or scores.chunks[0] != rows_per_chunk
            ):
                raise StoreError(
                    f"{output!r} has logits that do not fit its features (rows, chunks or "
                    f"{classes or 'no'} classes); pass «overwrite=True» to start again"
                )
            unwritten |= {index[0] for index, _ in missing_chunks(scores)[0]}
        missing = sorted(unwritten)
        job = ChunkJob(
            output,
            encoder,
            given,
            digest,
            mode,
            device,
            int(attrs["batch_size"]),
            rows_per_chunk,
            logits=bool(classes),
        )
        calls = [
            (job, c, source.refs(keep[c * rows_per_chunk : (c + 1) * rows_per_chunk]))
            for c in missing
        ]
        if calls and not engine.is_distributed:
            # This process is the worker: load the encoder now, so a bad checkpoint fails before
            # any task runs, and every task finds it in the cache.
            cached_encoder(encoder, given, digest, device, mode)
        counted = _counting(progress, "images")
        results = _run(engine, "extract", extract_chunk, calls, counted, uses_gpu(device))
        left, chunks = missing_chunks(features)
        if scores is not None:
            left = left or missing_chunks(scores)[0]
        if left:
            raise StoreError(f"{output!r}: {len(left)} chunks are still missing after the run")
        if not _complete(attrs):
            final = {k: v for k, v in attrs.items() if k != INCOMPLETE_ATTR}
            group.attrs.put({**final, "complete": True})  # the completion mark, written last
        return ExtractResult(
            output=output,
            encoder=encoder,
            feature_extractor=spec.feature_extractor,
            resize=mode,
            images=len(source),
            rows=len(keep),
            dim=spec.dim,
            skipped=tuple((s["name"], s["reason"]) for s in attrs.get("skipped", [])),
            chunks=chunks,
            computed=len(missing),
            present=chunks - len(missing),
            already_complete=was_complete and not missing,
            resumed=not fresh and not was_complete and bool(missing),
            devices=tuple(sorted({r.device for r in results})),
            seconds=time.perf_counter() - start,
            check_seconds=check_seconds,
            classes=classes,
            weights_digest=digest,
            weights_status=plan.weights_status,
            weights_file=str(attrs.get("weights_file") or plan.located),
        )


def waiting_notice(
    log: Callable[[str], None] | None, output: str, images: str | os.PathLike[str]
) -> Callable[[], None] | None:
    """What tells ``log`` that this run waits for another one writing the store ``output``
    (it holds ``output``.lock), or None without ``log``."""
    if log is None:
        return None
    lock = output + ".lock"

    def say() -> None:
        log(
            f"waiting for another run that holds {lock} (it is writing the features of "
            f"{os.fspath(images)} there); this one goes on when it is done"
        )

    return say


def finished_result(output: str, attrs: dict[str, Any], seconds: float = 0.0) -> ExtractResult:
    """What a finished store holds, as :func:`extract_features` reports a store it found
    complete (nothing computed), from its attributes alone: nothing is written, no lock
    taken (a finished store is only ever read)."""
    from shardeval.kernels.encoders import ENCODERS
    from shardeval.pipeline.images.provenance import weights_status

    encoder, rows, chunk_rows = str(attrs["encoder"]), int(attrs["rows"]), int(attrs["chunk_rows"])
    chunks = -(-rows // chunk_rows)
    digest = str(attrs.get("weights_digest", ""))
    return ExtractResult(
        output=output,
        encoder=encoder,
        feature_extractor=str(attrs.get("feature_extractor", "")),
        resize=str(attrs.get("resize", "")),
        images=int(attrs.get("image_count", rows)),
        rows=rows,
        dim=ENCODERS[encoder].dim,
        skipped=tuple((s["name"], s["reason"]) for s in attrs.get("skipped", [])),
        chunks=chunks,
        computed=0,
        present=chunks,
        already_complete=True,
        resumed=False,
        devices=(),
        seconds=seconds,
        check_seconds=0.0,
        classes=LOGIT_CLASSES.get(encoder, 0) if LOGITS_ARRAY in attrs else 0,
        weights_digest=digest,
        weights_status=weights_status(encoder, digest),
        weights_file=str(attrs.get("weights_file", "")),
    )


def _check_layout(
    output: str, attrs: dict[str, Any], batch_size: int | None, chunk_rows: int | None
) -> None:
    """Refuse a batch size or chunk rows that an existing store of the same settings cannot
    be finished with. Features do not depend on either, so a finished store is taken whatever
    they are; an unfinished one has its rows laid out in chunks of its own chunk rows (a whole
    number of its batches), so its missing chunks are computed with its own only.

    Raises:
        ExtractionError: an unfinished store started with another batch size or chunk rows,
            naming the value to pass.
    """
    if _complete(attrs):
        return
    for value, key in ((batch_size, "batch_size"), (chunk_rows, "chunk_rows")):
        if value is not None and value != attrs.get(key):
            raise ExtractionError(
                f"{output!r} holds an unfinished extraction started with «{key}={attrs.get(key)}» "
                f"(its chunks are laid out by it), not {value}; re-run with "
                f"«{key}={attrs.get(key)}» to finish it, or pass «overwrite=True» to start again"
            )


def _unstarted(output: str) -> bool:
    """Our store, unfinished, with no chunk written (a run that failed on its first chunk):
    started afresh, whatever the settings it was created with."""
    import zarr

    from shardeval.pipeline.io.reader import missing_chunks

    group = zarr.open_group(output, mode="r")
    features = group.get("features")
    if _complete(dict(group.attrs)) or not isinstance(features, zarr.Array):
        return False
    missing, total = missing_chunks(features)
    return len(missing) == total


def _complete(attrs: dict[str, Any]) -> bool:
    return not attrs.get(INCOMPLETE_ATTR) and attrs.get("complete") is True


def _existing(output: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """The attributes of our store at ``output``, which must hold the same settings."""
    import zarr

    attrs = dict(zarr.open_group(output, mode="r").attrs)
    diff = ", ".join(
        f"{k} {attrs.get(k)!r} there, {wanted[k]!r} asked"
        for k in SETTING_KEYS
        if attrs.get(k) != wanted[k]
    )
    if not diff:
        return attrs
    recorded = str(attrs.get("weights_digest", ""))
    if recorded.startswith(LEGACY_PREFIX) and all(
        attrs.get(k) == wanted[k] for k in SETTING_KEYS if k != "weights_digest"
    ):
        raise ExtractionError(
            f"{output!r} was extracted before weights were digested with SHA-256 (it records "
            f"{recorded}), so whether these weights made it cannot be told; it is still read "
            "as it is (its weights 'not verified'); pass «overwrite=True» to extract it again"
        )
    if _complete(attrs):
        raise ExtractionError(
            f"{output!r} holds a finished extraction with other settings ({diff}); pass "
            "«overwrite=True» to replace it, or choose another output"
        )
    raise ExtractionError(
        f"{output!r} holds an unfinished extraction with other settings ({diff}); re-run with "
        "its settings to finish it, or pass «overwrite=True» to start again"
    )


def _new_attrs(
    source: ImageSource,
    feature_extractor: str,
    wanted: dict[str, Any],
    batch_size: int | None,
    chunk_rows: int | None,
) -> dict[str, Any]:
    batch = batch_size or DEFAULT_BATCH_SIZE
    rows_per_chunk = chunk_rows or batch
    if rows_per_chunk % batch:
        raise ExtractionError(
            f"chunk rows {rows_per_chunk} must be a multiple of the batch size {batch}"
        )
    return {
        "format": FEATURES_FORMAT,
        "feature_extractor": feature_extractor,
        **wanted,
        **source.describe(),
        "rows": len(source),
        "batch_size": batch,
        "chunk_rows": rows_per_chunk,
        "skipped": [],
        "torch_version": importlib.metadata.version("torch"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        INCOMPLETE_ATTR: INCOMPLETE_NOTE,
        "complete": False,
    }


def _bad_images(
    engine: Engine, source: ImageSource, progress: Progress | None
) -> list[tuple[str, str]]:
    """(name, reason) of every image that cannot be decoded, in source order."""
    calls = [
        (source.refs(range(i, min(i + CHECK_ROWS, len(source)))),)
        for i in range(0, len(source), CHECK_ROWS)
    ]
    counted = _counting(progress, "images checked")
    bad = [b for part in _run(engine, "check", _check_chunk, calls, counted) for b in part]
    return [(source.names[i], reason) for i, reason in sorted(bad)]


def _kept(source: ImageSource, attrs: dict[str, Any]) -> list[int]:
    """Positions in the source of the images the store holds, in order."""
    skipped = {s["name"] for s in attrs.get("skipped", [])}
    keep = [i for i, name in enumerate(source.names) if name not in skipped]
    if len(keep) != attrs.get("rows"):
        raise StoreError(
            f"the store records {attrs.get('rows')} rows but the source lists {len(keep)} "
            "images to keep; pass «overwrite=True» to start again"
        )
    return keep
