"""The ``extract`` command: images → a Zarr feature store, through an encoder on each worker."""

from __future__ import annotations

import argparse
import os
from typing import Any

from shardeval.pipeline.options import (
    DEVICES,
    encoder_help,
    encoder_problem,
    resize_choices,
    resize_help,
)
from shardeval.workflows.cli.common import api_options, must_exist, notice
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
Weights are never downloaded: --weights, or the cache the encoder's weights are kept in
(torch hub's checkpoint folder, the Hugging Face cache, timm's and open_clip's)."""

EPILOG = """\
examples:
  shardeval extract samples/ -o gen.zarr
  shardeval extract samples.npz -o gen.zarr --resize clean
  shardeval extract 'shards/*.tar' -o real.zarr --encoder dinov2-vitl14 --cluster cluster/cuda.yaml
  shardeval extract samples/ -o gen.zarr --encoder timm:convnext_small.fb_in22k
  shardeval fid real.zarr gen.zarr"""


def encoder_name(text: str) -> str:
    """The ``--encoder`` value, refused in one line listing the encoders it may name."""
    problem = encoder_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def encoder_options(g: Any) -> None:
    """The encoder's options (``--encoder``, ``--resize``, ``--weights``, ``--batch-size``),
    for ``extract`` and for the commands that take images as inputs; the names, modes and
    their help come from the encoders' declarations."""
    g.add_argument("--encoder", type=encoder_name, metavar="ENCODER", help=encoder_help())
    g.add_argument("--resize", choices=resize_choices(), help=resize_help())
    g.add_argument(
        "--weights",
        metavar="PATH",
        help="weights file (inception, timm, open_clip) or Hugging Face model folder (ViTs, "
        "hf:); default: the standard caches. 'random' (or random:SEED): the Inception with "
        "seeded random weights, a smoke test of the image path without the published file "
        "(every number it gives is marked as such; a file named random is ./random)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help="images per forward pass and rows per chunk (default 32, or the store's own when "
        "resuming); a finished store is reused whatever it is; an unfinished one resumes only "
        "with its own (leave this out, or give that value)",
    )


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
        help="extract image features (through an --encoder) into a Zarr feature store",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", metavar="IMAGES")
    p.add_argument("--output", "-o", required=True, metavar="FEATURES.zarr")
    g = p.add_argument_group("encoder")
    encoder_options(g)
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
