"""The measurement commands: fid, stats (and stats merge), nll, ess, synth."""

from __future__ import annotations

import argparse

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

    modes = [m for m in ("iw", "gaussian", "parzen", "gmm") if getattr(args, m) is not None]
    if len(modes) > 1:
        raise UsageError(f"choose one of --iw, --gaussian, --parzen, --gmm; got {', '.join(modes)}")
    mode = modes[0] if modes else "loglik"
    want = {"iw": 0, "gmm": 2}.get(mode, 1)
    if len(args.stores) != want:
        raise UsageError(f"nll {mode} takes {_NLL_USAGE[mode]}; got {len(args.stores)} store(s)")
    must_exist(*args.stores, *(getattr(args, m) for m in modes if m != "gmm"))
    claim_report(args)
    report = se.nll(
        *args.stores,
        iw=args.iw,
        gaussian=args.gaussian,
        parzen=args.parzen,
        ci=args.ci,
        gmm=args.gmm,
        **api_options(args, "seed"),
    )
    return emit(args, report.to_dict(), report.summary())


_NLL_USAGE = {
    "loglik": "LOGLIK",
    "iw": "no positional store (--iw LOGW)",
    "gaussian": "TEST (--gaussian STATS TEST)",
    "parzen": "TEST (--parzen SAMPLES TEST)",
    "gmm": "STORE TEST (--gmm K STORE TEST)",
}


def cmd_ess(args: argparse.Namespace) -> int:
    import shardeval as se

    must_exist(args.store)
    claim_report(args)
    report = se.ess(args.store, ci=args.ci, **api_options(args))
    return emit(args, report.to_dict(), report.summary())


def cmd_synth(args: argparse.Namespace) -> int:
    from shardeval.api.synthesis import synth

    written = synth(
        args.output,
        args.n,
        args.d,
        chunk_rows=args.chunk_rows,
        seed=args.seed,
        mean=args.mean,
        scale=args.scale,
        overwrite=args.overwrite,
    )
    say(f"wrote {args.n:,} x {args.d:,} synthetic features to {written}", args.output)
    return 0
