"""The ``extract`` command: images → a Zarr feature store, through an encoder on each worker."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from typing import Any

from shardeval.pipeline.options import DEVICES, ENCODER_NAMES, INCEPTION_RESIZES
from shardeval.workflows.cli.common import UsageError, engine, must_exist, notice
from shardeval.workflows.cli.parser import positive_int

DESCRIPTION = """\
Encode every image of IMAGES and write the features to a Zarr feature store: array `features`
(N x d float32, one chunk per batch), `names` (the image of each row) and attributes naming the
encoder, its weights' digest, the resize and the source. The store is marked complete last; a
killed run, re-run with the same arguments, computes only the chunks that are missing.

IMAGES: a folder (recursive, following symbolic links, each real folder once; png, jpg, jpeg,
webp, bmp), a .zip, a .npz (arr_0) or .npy of uint8 (N, H, W, 3) images, a .tar shard, or a
folder or quoted glob of .tar shards; taken in sorted order. macOS metadata (__MACOSX/, ._*)
is ignored. Every archive member is its own row: a second member of one name is named NAME#2.
Weights are never downloaded: --weights, or torch hub's checkpoint folder
(inception) / the Hugging Face cache (dinov2-vitl14, clip-vitl14-336)."""

EPILOG = """\
examples:
  shardeval extract samples/ -o gen.zarr
  shardeval extract samples.npz -o gen.zarr --resize clean
  shardeval extract 'shards/*.tar' -o real.zarr --encoder dinov2-vitl14 --cluster cluster/cuda.yaml
  shardeval fid real.zarr gen.zarr"""


def add_extract_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``extract`` command to the subparsers ``sub``.

    Args:
        sub: the action ``ArgumentParser.add_subparsers`` returned.
        parents: shared option groups to include (the engine options).

    Returns:
        The command's parser.
    """
    p = sub.add_parser(
        "extract",
        parents=parents,
        help="extract image features (Inception, DINOv2, CLIP) into a Zarr feature store",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", metavar="IMAGES")
    p.add_argument("--output", "-o", required=True, metavar="FEATURES.zarr")
    g = p.add_argument_group("encoder")
    g.add_argument(
        "--encoder",
        choices=ENCODER_NAMES,
        help="inception (default: FID's 2048-d pool3), dinov2-vitl14 (1024-d CLS, as dgm-eval), "
        "clip-vitl14-336 (768-d unit-norm embeddings, as CMMD)",
    )
    g.add_argument(
        "--resize",
        choices=INCEPTION_RESIZES,
        help="inception only: legacy-pytorch (default; pytorch-fid's bilinear resize, its "
        "features exactly) or clean (clean-fid's PIL bicubic)",
    )
    g.add_argument(
        "--weights",
        metavar="PATH",
        help="weights file (inception) or Hugging Face model folder (ViTs); default: the "
        "standard caches",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help="images per forward pass and rows per chunk (default 32, or the store's own when "
        "resuming); a finished store is reused whatever it is; an unfinished one resumes only "
        "with its own (leave this out, or give that value)",
    )
    g.add_argument(
        "--device",
        choices=DEVICES,
        help="where the encoder runs (default auto: a worker's GPU if it has one, else CPU)",
    )
    o = p.add_argument_group("images and output")
    o.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be read or decoded (a decoding pass lists them first; "
        "the store names them with the reason) instead of stopping at the first",
    )
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an extraction store already at --output (whatever its settings)",
    )
    o.add_argument(
        "--json", action="store_true", help="print what was done as JSON instead of a summary"
    )
    return p


#: Reasons of left-out images printed in the summary (the store lists them all).
_REASONS_SHOWN = 5


def _left_out(result: Any) -> list[str]:
    """Summary lines naming the images ``--skip-bad`` left out, with their reasons."""
    lines = [f"  left out: {reason}" for _, reason in result.skipped[:_REASONS_SHOWN]]
    more = len(result.skipped) - _REASONS_SHOWN
    if more > 0:
        lines.append(f"  left out: {more} more (every one in the store's attribute 'skipped')")
    return lines


def _summary(result: Any, described: dict[str, Any]) -> str:
    """What an extraction did, for people: counts (images left out named with reasons),
    chunks, time and where it ran."""
    where = (
        f"{described['scheduler']} scheduler"
        + (f" ({described['threads']} threads)" if "threads" in described else "")
        + (f" at {described['address']}" if "address" in described else "")
    )
    bad = len(result.skipped)
    left_out = f"{bad} bad image{'s' if bad != 1 else ''} left out" if bad else ""
    if result.already_complete:
        return (
            f"{result.output} already holds these features ({result.rows:,} x {result.dim:,}, "
            f"{result.feature_extractor}, resize {result.resize}"
            f"{'; ' + left_out if bad else ''}); nothing computed"
        )
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
    return "\n".join(lines)


def cmd_extract(args: argparse.Namespace) -> int:
    """Run ``shardeval extract``; print a short summary. Returns the exit code."""
    if not any(c in args.images for c in "*?[") or os.path.exists(args.images):
        must_exist(args.images)
    encoder = args.encoder or "inception"
    if args.resize is not None and encoder != "inception":
        raise UsageError(
            f"--resize applies to --encoder inception; {encoder}'s preprocessing is fixed to "
            "match its reference"
        )
    from shardeval.pipeline.core.ieee_fp32 import set_in_this_process
    from shardeval.pipeline.images.extract import extract_features
    from shardeval.workflows.progress import ProgressBar

    set_in_this_process(engine(args), args.device or "auto")
    bar = None if args.quiet else ProgressBar("chunks")
    result = extract_features(
        args.images,
        args.output,
        encoder=encoder,
        weights=args.weights,
        resize=args.resize,
        batch_size=args.batch_size,
        device=args.device or "auto",
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        engine=engine(args),
        progress=bar,
        check_progress=None if args.quiet else ProgressBar("images checked"),
    )
    if result.skipped and not args.quiet:
        notice(f"{len(result.skipped)} bad image(s) left out (--skip-bad)")
    described = engine(args).describe()
    if args.json:
        from shardeval.pipeline.io.provenance import now_iso, versions
        from shardeval.workflows.report import to_json

        data = {**asdict(result), "engine": described, "created": now_iso(), "versions": versions()}
        print(to_json(data), end="")
    else:
        print(_summary(result, described))
    return 0
