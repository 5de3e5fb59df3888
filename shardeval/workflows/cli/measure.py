"""The measurement commands: fid, stats (and stats merge), nll, ess, synth."""

from __future__ import annotations

import argparse
import os

from shardeval.pipeline.runoptions import OPTIONS
from shardeval.workflows.cli.common import (
    UsageError,
    api_options,
    claim_report,
    emit,
    must_exist,
    refuse,
    say,
)
from shardeval.workflows.cli.flags import metric_flags


def cmd_fid(args: argparse.Namespace) -> int:
    import shardeval as se

    inputs = ([args.ref] if args.ref is not None else []) + list(args.stores)
    if len(inputs) != 2:
        raise UsageError(
            f"give REAL and GEN (each a feature store or statistics); got {len(inputs)} inputs"
        )
    must_exist(*inputs)
    claim_report(args)
    report = se.fid(
        *inputs,
        infinity=args.infinity or None,
        real_is_statistics=args.ref is not None or None,
        **metric_flags(args, ("fid", "fid_inf")),
        **api_options(args),
    )
    return emit(args, report.to_dict(), report.summary())


def cmd_stats(args: argparse.Namespace) -> int:
    import shardeval as se

    if args.inputs[0] == "merge":
        computing = [o.name for o in OPTIONS if o.group != "python"]
        refuse(args, computing, "do not apply to `stats merge`")
        must_exist(*args.inputs[1:])
        report = se.merge_stats(args.inputs[1:], args.output, overwrite=args.overwrite)
    else:
        if len(args.inputs) != 1:
            raise UsageError(
                f"stats takes one STORE (or `merge A B ...`); got {len(args.inputs)} inputs"
            )
        must_exist(args.inputs[0])
        report = se.stats(
            args.inputs[0], args.output, overwrite=args.overwrite, **api_options(args)
        )
    say(report.summary(), args.output)
    return 0


def cmd_nll(args: argparse.Namespace) -> int:
    import shardeval as se

    modes = [m for m in ("iw", "gaussian", "parzen") if getattr(args, m) is not None]
    if len(modes) > 1:
        raise UsageError(f"choose one of --iw, --gaussian, --parzen; got {', '.join(modes)}")
    mode = modes[0] if modes else "loglik"
    want = 0 if mode == "iw" else 1
    if len(args.stores) != want:
        raise UsageError(f"nll {mode} takes {_NLL_USAGE[mode]}; got {len(args.stores)} store(s)")
    must_exist(*args.stores, *(getattr(args, m) for m in modes))
    claim_report(args)
    report = se.nll(
        args.stores[0] if args.stores else None,
        iw=args.iw,
        gaussian=args.gaussian,
        parzen=args.parzen,
        **api_options(args),
    )
    return emit(args, report.to_dict(), report.summary())


_NLL_USAGE = {
    "loglik": "LOGLIK",
    "iw": "no positional store (--iw LOGW)",
    "gaussian": "TEST (--gaussian STATS TEST)",
    "parzen": "TEST (--parzen SAMPLES TEST)",
}


def cmd_ess(args: argparse.Namespace) -> int:
    import shardeval as se

    must_exist(args.store)
    claim_report(args)
    report = se.ess(args.store, **api_options(args))
    return emit(args, report.to_dict(), report.summary())


def _is_synthetic(path: str) -> bool:
    """Whether ``path`` holds features that ``synth`` wrote (never raises). A ``.npy`` cannot
    say who wrote it (any float32 feature dump looks the same), so it never counts as ours."""
    try:
        import zarr

        from shardeval.pipeline.io.synthetic import FEATURE_EXTRACTOR

        node = zarr.open_array(path, mode="r")
        return node.attrs.get("feature_extractor") == FEATURE_EXTRACTOR
    except Exception:
        return False


def cmd_synth(args: argparse.Namespace) -> int:
    from shardeval.pipeline.io.atomic import atomic_dir, atomic_file, claim_output, is_stream
    from shardeval.pipeline.io.synthetic import gaussian_features, synthetic_attrs, write_features

    claim_output(
        args.output, "synthetic feature store", _is_synthetic, args.overwrite, streams=True
    )
    x = gaussian_features(
        args.n, args.d, shard_rows=args.chunk_rows, seed=args.seed, mean=args.mean, scale=args.scale
    )
    attrs = synthetic_attrs(args.n, args.d, seed=args.seed, mean=args.mean, scale=args.scale)
    if args.output.endswith(".npy") or is_stream(args.output):  # a pipe takes one file
        import numpy as np

        with atomic_file(args.output, "wb") as fh:
            np.save(fh, x.compute())
    else:
        with atomic_dir(args.output) as tmp:
            write_features(tmp, x, chunk_rows=args.chunk_rows, attrs=attrs)
    say(
        f"wrote {args.n:,} x {args.d:,} synthetic features to {os.fspath(args.output)}",
        args.output,
    )
    return 0
