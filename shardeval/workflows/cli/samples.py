"""The sample-metric commands: kid, cmmd, prdc, authpct, ct, fld, is (the Inception Score of one
set), and metrics (several at once); prdc, authpct and metrics write per-row values with
--per-sample."""

from __future__ import annotations

import argparse

from shardeval.workflows.cli.common import (
    UsageError,
    api_options,
    claim_report,
    emit,
    must_exist,
    save_per_sample,
)
from shardeval.workflows.cli.flags import metric_flags


def _one(args: argparse.Namespace, name: str) -> int:
    import shardeval as se

    must_exist(*args.stores)
    claim_report(args, args.stores)
    function = getattr(se, name)
    report = function(*args.stores, **metric_flags(args, (name,)), **api_options(args))
    save_per_sample(args, report)
    return emit(args, report.to_dict(), report.summary())


def cmd_sfid(args: argparse.Namespace) -> int:
    return _one(args, "sfid")


def cmd_kid(args: argparse.Namespace) -> int:
    return _one(args, "kid")


def cmd_cmmd(args: argparse.Namespace) -> int:
    return _one(args, "cmmd")


def cmd_prdc(args: argparse.Namespace) -> int:
    return _one(args, "prdc")


def cmd_authpct(args: argparse.Namespace) -> int:
    return _one(args, "authpct")


def cmd_ct(args: argparse.Namespace) -> int:
    return _one(args, "ct")


def cmd_fld(args: argparse.Namespace) -> int:
    return _one(args, "fld")


def cmd_is(args: argparse.Namespace) -> int:
    import shardeval as se

    must_exist(args.store)
    claim_report(args)
    report = se.inception_score(args.store, **metric_flags(args, ("is",)), **api_options(args))
    return emit(args, report.to_dict(), report.summary())


def cmd_metrics(args: argparse.Namespace) -> int:
    import shardeval as se

    must_exist(*args.stores)
    claim_report(args, args.stores)
    from shardeval.pipeline.metrics import METRICS

    options = metric_flags(args, tuple(METRICS))
    if len(args.stores) > 2:
        raise UsageError(f"metrics takes REAL GEN (or GEN alone); got {len(args.stores)} stores")
    real, gen = args.stores if len(args.stores) == 2 else (None, args.stores[0])
    if args.test is not None:
        must_exist(args.test)
    report = se.metrics(real, gen, args.metrics, test=args.test, **options, **api_options(args))
    save_per_sample(args, report)
    return emit(args, report.to_dict(), report.summary())
