"""Extraction: images → an encoder on each worker's device → a feature store in Zarr, chunk by
chunk, resumable, with the completion mark written last.

The store's layout, and what decides whether an existing one is resumed, reused or refused,
is :mod:`shardeval.pipeline.images.store`; which encoder runs, and the one each process loads,
:mod:`shardeval.pipeline.images.encoding` (their names are importable from here too). The
encoder is any of :mod:`shardeval.kernels.encoders.registry`: a registered name, a library's
model from the local cache (``timm:NAME`` ...), or a module given in Python; the store records
its name, its source and its weights' digest. An encoder whose dimension its declaration does
not give (a user's) runs once on the first image, in this process, to size the store.

Logits are written by default for an encoder that has them (the Inception's): they cost one
2048 × 1008 product per image (about 0.04% of the Inception's forward pass) and 1008 floats a
row (a store half again as large), where a store without them would have to be extracted
again, every image through the network, to give an Inception Score. ``logits=False`` leaves
them out. They are not a setting: a store is resumed, and reused, with the arrays it was
created with (one made before logits were written has none, and the Inception Score says so).
sFID's spatial features (``spatial``: 2,023 values, 7.9 KiB a row, of the same pass; see
docs/sfid.md) are written only when asked for (``spatial=True``), likewise not a setting.
:func:`shardeval.pipeline.io.stores.open_features` refuses a store until it is complete. A
re-run with the same settings computes only the chunks the store's listing lacks; other
settings are refused (``overwrite`` starts again); something that is not an extraction store is
never replaced. The batch size and chunk rows are not settings of the features: a finished
store is reused whatever they are asked to be; an unfinished one is finished only with its own
(its chunks are laid out by them), and another is refused naming the value to pass.

The graph: one task per chunk, named ``shard-extract-…`` (the progress counts their images). A
task gets only names and locators of its images, reads and decodes them itself, runs the
encoder of its process (loaded once per worker process and kept, keyed by encoder, weights
digest and device; a module given in Python is shipped once, as one key of the graph), and
writes its whole chunk, so no two tasks touch one chunk file. With ``skip_bad`` a decode
pre-pass (tasks ``shard-check-…``) first lists the images that cannot be read or decoded; the
store then holds the others only, in order, and names the skipped ones with the reason (a
sentence naming the image). Without it, an image the listing already found unreadable (a
symbolic link whose target is gone) is refused before anything is written.

Messages mark the arguments that would fix them (``«skip_bad=True»``, ``«overwrite=True»``,
``«batch_size=N»``): a Python caller reads them as arguments, the CLI as its flags.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.core.chunks import check_device, uses_gpu
from shardeval.pipeline.core.engine import Engine, Progress, counting
from shardeval.pipeline.core.reduce import SHARD_PREFIX
from shardeval.pipeline.errors import StoreError
from shardeval.pipeline.images.encoding import (
    DEFAULT_BATCH_SIZE,
    LOGITS_ARRAY,
    SPATIAL_ARRAY,
    ChunkJob,
    ChunkResult,
    EncoderSetupError,
    Extraction,
    ExtractionError,
    cached_encoder,
    check_chunk,
    extract_chunk,
    plan_extraction,
)
from shardeval.pipeline.images.sources import (
    IMAGE_ADVICE,
    ImageError,
    ImageSource,
    open_images,
)
from shardeval.pipeline.images.store import (
    INCOMPLETE_NOTE,
    SETTING_KEYS,
    ExtractResult,
    check_layout,
    complete,
    create_store,
    existing_settings,
    finished_result,
    is_extraction_store,
    kept,
    new_attrs,
    remove_partial_writes,
    unstarted,
    waiting_notice,
)
from shardeval.pipeline.io.atomic import claim_output, locked
from shardeval.pipeline.io.stores import INCOMPLETE_ATTR

if TYPE_CHECKING:
    pass

__all__ = [
    "CHECK_ROWS",
    "DEFAULT_BATCH_SIZE",
    "INCOMPLETE_NOTE",
    "LOGITS_ARRAY",
    "SETTING_KEYS",
    "SPATIAL_ARRAY",
    "ChunkJob",
    "ChunkResult",
    "EncoderSetupError",
    "ExtractResult",
    "Extraction",
    "ExtractionError",
    "cached_encoder",
    "extract_chunk",
    "extract_features",
    "feature_dim",
    "finished_result",
    "is_extraction_store",
    "plan_extraction",
    "waiting_notice",
]

#: Images per task of the ``skip_bad`` decode pre-pass.
CHECK_ROWS = 256

#: Images tried, in order, for one that shows a user's encoder its output's width.
_PROBE_TRIES = 16

_KIND = "feature store written by `shardeval extract`"


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


def extract_features(
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    encoder: Any = "inception",
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
    spatial: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Extract features of every image of a source into a Zarr feature store.

    Args:
        images: a folder, ``.zip``, ``.npz``/``.npy``, ``.tar`` shard or glob of shards (see
            :func:`shardeval.pipeline.images.sources.open_images`).
        output: a local path (shared by every worker on a cluster).
        encoder: a name of :data:`~shardeval.kernels.encoders.ENCODERS`, ``timm:NAME``,
            ``open_clip:NAME:PRETRAINED``, ``hf:MODEL_ID``, an encoder's declaration, or a
            torch module or callable (see :func:`plan_extraction`).
        weights: the weights file / model folder; default: the standard caches;
            ``"random"`` (``"random:SEED"``): the Inception with seeded random weights, a smoke
            test (the store records ``weights_digest`` ``random:SEED``).
        resize: the encoder's preprocessing mode (default: its first; the Inception's
            ``legacy-pytorch``, ``clean`` or ``legacy-tensorflow``).
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
        spatial: a new store holds sFID's spatial features too (``spatial``, 2,023 float32 a
            row, 7.9 KiB), from the same forward pass; only an encoder that has them (the
            Inception) takes it. An existing store keeps its own arrays.
        log: called with a notice when this run waits for another that is writing
            ``output`` (it holds the store's lock).

    Returns:
        What was done (:class:`ExtractResult`).

    Raises:
        ImageSourceError, ImageError: the source or one image cannot be read (an image
            without ``skip_bad``; one found unreadable by the listing before any work).
        EncoderSetupError: an unknown encoder, weights missing or wrong, a package missing.
        EncoderError: the encoder returned something other than (B, d) rows.
        OutputExistsError: ``output`` holds something that is not an extraction store.
        ExtractionError: ``output`` holds an extraction with other settings (without
            ``overwrite``), an unfinished one started with another batch size or chunk rows,
            or every image was skipped.
        EngineError, ClusterError: the engine cannot run.
    """
    import zarr

    from shardeval.pipeline.io.reader import missing_chunks

    start = time.perf_counter()
    engine = engine or Engine()
    output = os.path.abspath(os.fspath(output))
    check_device(device, "auto", local=not engine.is_distributed)
    for value, what in ((batch_size, "batch size"), (chunk_rows, "chunk rows")):
        if value is not None and value < 1:
            raise ExtractionError(f"{what} must be a positive integer, got {value}")
    plan = plan_extraction(encoder, weights, resize)
    spec = plan.encoder_spec
    if spatial and not spec.spatial:
        raise ExtractionError(
            f"the {spec.name} encoder has no spatial features (sFID's are the Inception's); "
            "leave out «spatial=True» or extract with «encoder='inception'»"
        )
    given, digest, mode = plan.weights, plan.digest, plan.resize
    source = open_images(images)
    if source.unreadable and not skip_bad:
        # Known from the listing (a link whose target is gone): refused before any work.
        raise ImageError(f"{source.unreadable[0][1]}; {IMAGE_ADVICE}")
    claim_output(output, _KIND, is_extraction_store, overwrite=True)  # refuses foreign outputs
    wanted = {
        "encoder": plan.encoder,
        "weights_digest": digest,
        "resize": mode,
        "source_fingerprint": source.fingerprint,
        "skip_bad": skip_bad,
    }
    # One writer per store: a second run on it waits here, then resumes or reuses what the
    # first one wrote (the lock file stays beside the store, as a history's does).
    with locked(output + ".lock", exclusive=True, waiting=waiting_notice(log, output, images)):
        attrs = None
        if not overwrite and os.path.exists(output) and not unstarted(output):
            attrs = existing_settings(output, wanted)
            check_layout(output, attrs, batch_size, chunk_rows)
        fresh, was_complete = attrs is None, attrs is not None and complete(attrs)
        check_seconds = 0.0
        if attrs is None:
            t = time.perf_counter()
            attrs = new_attrs(source, spec.feature_extractor, wanted, batch_size, chunk_rows)
            attrs["encoder_source"] = spec.source
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
            keep = kept(source, attrs)
            classes = spec.logits if logits else 0
            if classes:
                attrs[LOGITS_ARRAY] = spec.logits_note
            # A user's encoder: one image through it, here (on a cluster, on this CPU).
            probe = "cpu" if engine.is_distributed and spec.module is None else device
            dim = feature_dim(plan, source, probe, keep[0])
            names = [source.names[i] for i in keep]
            positions = spec.spatial if spatial else 0
            if positions:
                attrs[SPATIAL_ARRAY] = spec.spatial_note
            create_store(
                output,
                attrs,
                names,
                dim,
                attrs["chunk_rows"],
                classes,
                spec.logits_note,
                positions,
                spec.spatial_note,
            )
        else:
            keep = kept(source, attrs)
            remove_partial_writes(output)
        group = zarr.open_group(output, mode="r+")
        features = group["features"]
        if not isinstance(features, zarr.Array):
            raise StoreError(f"{output!r}: 'features' is not an array; pass «overwrite=True»")
        rows_per_chunk = int(attrs["chunk_rows"])
        dim = plan.dim or int(features.shape[1])
        if tuple(features.shape) != (len(keep), dim) or features.chunks[0] != rows_per_chunk:
            raise StoreError(
                f"{output!r} has features of shape {tuple(features.shape)}, not the "
                f"{(len(keep), dim)} its attributes promise; pass «overwrite=True» to start "
                "again"
            )
        scores = group.get(LOGITS_ARRAY)
        unwritten = {index[0] for index, _ in missing_chunks(features)[0]}
        classes = 0
        if scores is not None:
            classes = spec.logits
            if not isinstance(scores, zarr.Array) or (
                tuple(scores.shape) != (len(keep), classes) or scores.chunks[0] != rows_per_chunk
            ):
                raise StoreError(
                    f"{output!r} has logits that do not fit its features (rows, chunks or "
                    f"{classes or 'no'} classes); pass «overwrite=True» to start again"
                )
            unwritten |= {index[0] for index, _ in missing_chunks(scores)[0]}
        beside = group.get(SPATIAL_ARRAY)
        positions = 0
        if beside is not None:
            positions = spec.spatial
            if not isinstance(beside, zarr.Array) or (
                tuple(beside.shape) != (len(keep), positions) or beside.chunks[0] != rows_per_chunk
            ):
                raise StoreError(
                    f"{output!r} has spatial features that do not fit its features (rows, "
                    f"chunks or {positions or 'no'} values a row); pass «overwrite=True» to "
                    "start again"
                )
            unwritten |= {index[0] for index, _ in missing_chunks(beside)[0]}
        missing = sorted(unwritten)
        job: Any = ChunkJob(
            output,
            spec,
            given,
            digest,
            mode,
            device,
            int(attrs["batch_size"]),
            rows_per_chunk,
            logits=bool(classes),
            spatial=bool(positions),
        )
        if spec.module is not None and engine.is_distributed:
            from dask.delayed import delayed

            job = delayed(job, pure=True)  # the user's module: one key, not one copy a task
        calls = [
            (job, c, source.refs(keep[c * rows_per_chunk : (c + 1) * rows_per_chunk]))
            for c in missing
        ]
        if calls and not engine.is_distributed:
            # This process is the worker: load the encoder now, so a bad checkpoint fails before
            # any task runs, and every task finds it in the cache.
            cached_encoder(spec, given, digest, device, mode)
        counted = counting(progress, "images")
        results = _run(engine, "extract", extract_chunk, calls, counted, uses_gpu(device))
        left, chunks = missing_chunks(features)
        for extra in (scores, beside):
            if extra is not None:
                left = left or missing_chunks(extra)[0]
        if left:
            raise StoreError(f"{output!r}: {len(left)} chunks are still missing after the run")
        if not complete(attrs):
            final = {k: v for k, v in attrs.items() if k != INCOMPLETE_ATTR}
            group.attrs.put({**final, "complete": True})  # the completion mark, written last
        return ExtractResult(
            output=output,
            encoder=plan.encoder,
            feature_extractor=spec.feature_extractor,
            resize=mode,
            images=len(source),
            rows=len(keep),
            dim=dim,
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
            spatial=positions,
            weights_digest=digest,
            weights_status=plan.weights_status,
            weights_file=str(attrs.get("weights_file") or plan.located),
            encoder_source=spec.source,
        )


def feature_dim(plan: Extraction, source: ImageSource, device: str = "auto", first: int = 0) -> int:
    """Features per image of ``plan``'s encoder: its declaration's, else (a user's encoder)
    the width of its output for the first image from ``first`` on that can be read, computed
    in this process (where a module given in Python is; ``device``, ``auto`` by default).

    Raises:
        ImageError: none of the first images can be read (the first one's problem).
        EncoderSetupError: the encoder cannot be set up here.
    """
    if plan.dim is not None:
        return plan.dim
    problem = None
    for index in range(first, min(len(source), first + _PROBE_TRIES)):
        try:
            image = source.refs([index]).read()
        except ImageError as exc:
            problem = problem or exc
            continue
        model = cached_encoder(plan.encoder_spec, plan.weights, plan.digest, device, plan.resize)
        return int(model.encode(image, 1).shape[1])
    raise problem or ImageError(f"{source.location!r} holds no image to run the encoder on")


def _bad_images(
    engine: Engine, source: ImageSource, progress: Progress | None
) -> list[tuple[str, str]]:
    """(name, reason) of every image that cannot be decoded, in source order."""
    calls = [
        (source.refs(range(i, min(i + CHECK_ROWS, len(source)))),)
        for i in range(0, len(source), CHECK_ROWS)
    ]
    counted = counting(progress, "images checked")
    bad = [b for part in _run(engine, "check", check_chunk, calls, counted) for b in part]
    return [(source.names[i], reason) for i, reason in sorted(bad)]
