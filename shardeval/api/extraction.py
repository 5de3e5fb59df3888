"""Images into features: ``shardeval.extract(images, output)`` is ``shardeval extract``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from shardeval.api.functions import Progress, _noted, _running, check_options, refuse
from shardeval.api.inputs import describe_input, extract_pixels, image_pixels, is_path
from shardeval.api.results import Report


def _left_out(result: Any, shown: int = 5) -> list[str]:
    """Summary lines naming the images left out as bad, with their reasons."""
    lines = [f"  left out: {reason}" for _, reason in result.skipped[:shown]]
    more = len(result.skipped) - shown
    if more > 0:
        lines.append(f"  left out: {more} more (every one in the store's attribute 'skipped')")
    return lines


def made_by_result(result: Any) -> Any:
    """How an extraction's features were made
    (:class:`~shardeval.pipeline.images.provenance.MadeBy`)."""
    from shardeval.pipeline.images.provenance import MadeBy

    return MadeBy(
        result.feature_extractor,
        result.encoder,
        result.resize,
        result.weights_digest,
        result.weights_status,
        result.weights_file,
        result.encoder_source,
    )


def extraction_summary(result: Any, described: dict[str, Any]) -> str:
    """What an extraction did, for people: counts (images left out named with reasons),
    chunks, time and where it ran."""
    where = (
        f"{described['scheduler']} scheduler"
        + (f" ({described['threads']} threads)" if "threads" in described else "")
        + (f" at {described['address']}" if "address" in described else "")
    )
    from shardeval.pipeline.images.provenance import weights_text, weights_warning

    weights = [f"  weights {weights_text(result.weights_status, result.weights_digest)}"]
    warned = weights_warning("features", made_by_result(result))
    weights += [f"  warning: {warned}"] if warned else []
    bad = len(result.skipped)
    left_out = f"{bad} bad image{'s' if bad != 1 else ''} left out" if bad else ""
    if result.already_complete:
        done = (
            f"{result.output} already holds these features ({result.rows:,} x {result.dim:,}, "
            f"{result.feature_extractor}, resize {result.resize}"
            f"{'; ' + left_out if bad else ''}); nothing computed"
        )
        return "\n".join([done, *weights])
    images = f"{result.images:,} image{'s' if result.images != 1 else ''}"
    counts = f"{result.rows:,} of {images} ({left_out})" if bad else images
    lines = [
        f"extracted {counts} -> {result.output}: {result.rows:,} x "
        f"{result.dim:,} float32 ({result.feature_extractor}, resize {result.resize})",
        f"  chunks: {result.computed} computed, {result.present} already there "
        f"({result.chunks} in all){' - resumed' if result.resumed else ''}",
        *_left_out(result),
    ]
    devices = ", ".join(result.devices) or "-"
    lines.append(f"  {result.seconds:.2f} s on {where}, device {devices}")
    return "\n".join([*lines, *weights])


def encoder(
    module: Any,
    *,
    name: str | None = None,
    digest: str | None = None,
    size: int | None = None,
    dim: int | None = None,
    input: str = "float",
) -> Any:
    """Declare a torch module or callable as an encoder, for ``encoder=`` of :func:`extract`,
    the metric functions that take images and the training-loop metrics.

    It is called on (B, 3, H, W) images, float32 in [0, 1] (``input="float"``) or uint8
    (``input="uint8"``), on the device its tensors are on, in inference mode, and returns
    (B, d) rows; it is never moved or put in another mode (give it in eval mode). Its
    features record ``encoder`` ``python:NAME``, ``encoder_source`` ``python`` and its
    weights' digest (status ``unpinned``), and the feature cache keys its entries by them.
    A module given as ``encoder=`` directly is declared the same way at each call.

    Args:
        module: a ``torch.nn.Module`` (in eval mode) or a callable.
        name: what features record (``python:NAME``); default: its class's qualified name.
        digest: its weights' digest; default for a module: the SHA-256 of its state dict's
            tensors (name, dtype, shape, bytes, in name order), computed now, once: declare
            it again after changing its weights. Required for a callable that is no module
            (any string that changes when its weights do).
        size: images are resized to ``size`` × ``size`` (PIL's antialiased bicubic) first;
            default: as they are (the images of one batch must then share a size).
        dim: features per image, where known (default: one image through it tells).
        input: ``float`` (default) or ``uint8``.

    Returns:
        The encoder's declaration (:class:`~shardeval.kernels.encoders.EncoderSpec`).

    Raises:
        EncoderSetupError: not callable, a module in training mode, a callable without
            ``digest``, a name/size/dim/input that cannot be.

    Example:
        >>> import torch, shardeval as se
        >>> mean_rgb = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> spec = se.encoder(mean_rgb.eval(), name="mean-rgb", dim=3)
        >>> spec.name, spec.source
        ('python:mean-rgb', 'python')
    """
    from shardeval._words import marked
    from shardeval.kernels.encoders import EncoderError, python_encoder
    from shardeval.pipeline.images.extract import EncoderSetupError

    try:
        return python_encoder(module, name=name, digest=digest, size=size, dim=dim, input=input)
    except EncoderError as exc:
        raise EncoderSetupError(marked(exc)) from exc


def extract(
    images: Any,
    output: str | os.PathLike[str],
    *,
    encoder: Any = None,
    resize: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    skip_bad: bool = False,
    spatial: bool = False,
    overwrite: bool = False,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    check_progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Extract features of ``images`` (a folder, zip, tar shard(s), or a uint8 (N, H, W, 3)
    ``.npy``/``.npz``; or images in memory, a 4-D numpy array or torch tensor, uint8 or floats
    in [0, 1], (N, H, W, 3) or (N, 3, H, W)) into the Zarr feature store ``output``,
    resumably. Images in memory are staged beside ``output`` as a ``.npy`` named by their
    digest while they are extracted (a killed run resumes from it), then the file is removed.

    Args:
        encoder: a name of :data:`~shardeval.kernels.encoders.ENCODERS` (default
            ``inception``, the FID Inception, 2,048-d); ``timm:NAME``,
            ``open_clip:NAME:PRETRAINED`` or ``hf:MODEL_ID`` (a model of that library from
            the local cache); or a torch module or callable taking (B, 3, H, W) images, as
            it is or declared with :func:`shardeval.encoder` (its name, size, digest). The
            report names it (``encoder``, ``encoder_source``, ``weights_digest``).
        resize: the encoder's preprocessing mode (default: its first); the Inception's
            ``legacy-pytorch`` (default, pytorch-fid's), ``clean`` (clean-fid's) or
            ``legacy-tensorflow`` (TF 1.x bilinear, torch-fidelity's).
        weights: the weights' file or folder (default: torch hub's / the Hugging Face cache;
            nothing is downloaded); ``"random"`` or ``"random:SEED"``: the Inception with
            seeded random weights, a smoke test of the image path (its numbers measure
            nothing, and every report says so).
        batch_size: images per forward pass and rows per chunk (default 32).
        device: where the encoder runs (``auto``: a worker's GPU if it has one).
        skip_bad: leave unreadable images out (named in the report) instead of stopping.
        spatial: also write sFID's spatial features (the Inception's; array ``spatial``,
            2,023 float32 a row, 7.9 KiB, from the same forward pass; docs/sfid.md) into a
            new store. A store keeps the arrays it was made with.
        overwrite: replace an extraction store written before (never anything else).
        check_progress: called as the images are checked (with ``skip_bad``).

    Returns:
        :class:`~shardeval.api.results.Report` (``float()`` the rows written;
        ``results["extract"]`` the extraction's result).

    Raises:
        ImageSourceError, ImageError, ExtractionError, EncoderSetupError: named, one line.

    Example:
        >>> import os, tempfile, numpy as np, torch, shardeval as se
        >>> from shardeval.kernels.encoders.inception import random_state_dict
        >>> tmp = tempfile.mkdtemp()
        >>> images = os.path.join(tmp, "images.npy")       # uint8 (N, H, W, 3)
        >>> np.save(images, np.random.default_rng(0).integers(0, 256, (3, 32, 40, 3), np.uint8))
        >>> weights = os.path.join(tmp, "inception.pth")   # random weights, for the example
        >>> torch.save(random_state_dict(0), weights)
        >>> report = se.extract(images, os.path.join(tmp, "gen.zarr"), weights=weights)
        >>> float(report), report.to_dict()["encoder"]
        (3.0, 'inception')
    """
    options = dict(locals())
    check_options(options)
    from shardeval.pipeline.core.ieee_fp32 import set_in_this_process
    from shardeval.pipeline.images.extract import extract_features, plan_extraction
    from shardeval.pipeline.images.provenance import weights_warning
    from shardeval.pipeline.io.provenance import now_iso, versions

    # The encoder (and its weights, resize) checked before any image is read.
    plan = plan_extraction("inception" if encoder is None else encoder, weights, resize)
    in_memory = not is_path(images)
    if in_memory:
        refuse(options, ("skip_bad", "check_progress"), "apply to image files; these are in memory")
        pixels = image_pixels(images, describe_input(images))
    with _noted() as notes, _running(options) as run:
        set_in_this_process(run.engine, device or "auto")
        if in_memory:
            target = os.path.abspath(os.fspath(output))
            result = extract_pixels(
                pixels,
                target,
                os.path.dirname(target),
                plan,
                batch_size=batch_size,
                device=device or "auto",
                engine=run.engine,
                progress=run.progress,
                overwrite=overwrite,
                spatial=spatial,
                log=log,
            )
        else:
            result = extract_features(
                os.fspath(images),
                os.fspath(output),
                encoder=plan.encoder_spec,
                weights=plan.weights,
                resize=plan.resize,
                batch_size=batch_size,
                device=device or "auto",
                skip_bad=skip_bad,
                overwrite=overwrite,
                engine=run.engine,
                progress=run.progress,
                check_progress=check_progress,
                spatial=spatial,
                log=log,
            )
        described = run.engine.describe()
        warned = weights_warning("features", made_by_result(result))
        notes.extend([warned] if warned else [])
        warnings = notes.messages()
    data = {
        **asdict(result),
        "warnings": warnings,
        "engine": described,
        "created": now_iso(),
        "versions": versions(),
    }
    text = extraction_summary(result, described)
    return Report("extract", {"extract": result}, data, text, float(result.rows))
