"""The ``extract`` command: images → a Zarr feature store, through an encoder on each worker."""

from __future__ import annotations

import argparse
import os
from typing import Any

from shardeval.pipeline.runoptions import ENGINE
from shardeval.workflows.cli.common import api_options, must_exist, notice
from shardeval.workflows.cli.flags import add_run_options

DESCRIPTION = """\
Encode every image of IMAGES and write the features to a Zarr feature store: array `features`
(N x d float32, one chunk per batch), `names` (the image of each row) and attributes naming the
encoder, its weights' digest, the resize and the source. The store is marked complete last; a
killed run, re-run with the same arguments, computes only the chunks that are missing.

IMAGES: a folder (recursive, following symbolic links, each real folder once; png, jpg, jpeg,
webp, bmp), a .zip, a .npz (arr_0) or .npy of uint8 (N, H, W, 3) images, a .tar shard, or a
folder or quoted glob of .tar shards; taken in sorted order. macOS metadata (__MACOSX/, ._*)
is ignored. Every archive member is its own row: a second member of one name is named NAME#2.
Weights are never downloaded: --weights, or the cache the encoder's weights are kept in
(torch hub's checkpoint folder, the Hugging Face cache, timm's and open_clip's)."""

EPILOG = """\
examples:
  shardeval extract samples/ -o gen.zarr
  shardeval extract samples.npz -o gen.zarr --resize clean
  shardeval extract 'shards/*.tar' -o real.zarr --encoder dinov2-vitl14 --cluster cluster/cuda.yaml
  shardeval extract samples/ -o gen.zarr --encoder timm:convnext_small.fb_in22k
  shardeval fid real.zarr gen.zarr"""


def add_extract_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``extract`` command to the subparsers ``sub``; returns its parser."""
    p = sub.add_parser(
        "extract",
        help="extract image features (through an --encoder) into a Zarr feature store",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", metavar="IMAGES")
    p.add_argument("--output", "-o", required=True, metavar="FEATURES.zarr")
    add_run_options(
        p,
        (*ENGINE, "encoder", "resize", "weights", "batch_size", "device", "skip_bad"),
        helps={
            "batch_size": "images per forward pass and rows per chunk (default 32, or the "
            "store's own when resuming); a finished store is reused whatever it is; an "
            "unfinished one resumes only with its own (leave this out, or give that value)",
            "device": "where the encoder runs (default auto: a worker's GPU if it has one, "
            "else CPU)",
            "skip_bad": "leave out images that cannot be read or decoded (a decoding pass "
            "lists them first; the store names them with the reason) instead of stopping at "
            "the first",
        },
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--spatial",
        action="store_true",
        help="also write sFID's spatial features (the Inception's mixed_6/conv, channels 0-6: "
        "2,023 float32 per image, 7.9 KiB) beside the features, for `shardeval sfid`",
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


def cmd_extract(args: argparse.Namespace) -> int:
    """Run ``shardeval extract``; print a short summary. Returns the exit code."""
    import shardeval as se
    from shardeval.workflows.progress import ProgressBar

    if not any(c in args.images for c in "*?[") or os.path.exists(args.images):
        must_exist(args.images)
    options = api_options(args)
    options["progress"] = None if args.quiet else ProgressBar("images")
    report = se.extract(
        args.images,
        args.output,
        overwrite=args.overwrite,
        spatial=args.spatial,
        check_progress=None if args.quiet else ProgressBar("images checked"),
        **options,
    )
    skipped = report.results["extract"].skipped
    if skipped and not args.quiet:
        notice(f"{len(skipped)} bad image(s) left out (--skip-bad)")
    if args.json:
        from shardeval.workflows.report import to_json

        print(to_json(report.to_dict()), end="")
    else:
        print(report.summary())
    return 0
