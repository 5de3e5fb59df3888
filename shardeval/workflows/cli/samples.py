"""The sample-metric commands: kid, cmmd, prdc, is (the Inception Score of one set), and
metrics (several at once)."""

from __future__ import annotations

import argparse
from typing import Any

from shardeval.workflows.cli.common import (
    UsageError,
    api_options,
    claim_report,
    emit,
    must_exist,
)


def _given(args: argparse.Namespace, *metrics: str) -> dict[str, Any]:
    """The options of ``metrics`` (by their declarations) that the command line gave."""
    from shardeval.pipeline.metrics import METRICS

    names = {p.name for m in metrics for p in METRICS[m].params} - {"nonfinite"}
    from shardeval.pipeline.options import is_given

    return {n: getattr(args, n) for n in names if is_given(getattr(args, n, None))}


def _one(args: argparse.Namespace, name: str) -> int:
    import shardeval as se

    must_exist(*args.stores)
    claim_report(args)
    function = getattr(se, name)
    report = function(*args.stores, **_given(args, name), **api_options(args))
    return emit(args, report.to_dict(), report.summary())


def cmd_kid(args: argparse.Namespace) -> int:
    return _one(args, "kid")


def cmd_cmmd(args: argparse.Namespace) -> int:
    return _one(args, "cmmd")


def cmd_prdc(args: argparse.Namespace) -> int:
    return _one(args, "prdc")


def cmd_is(args: argparse.Namespace) -> int:
    import shardeval as se

    must_exist(args.store)
    claim_report(args)
    report = se.inception_score(args.store, **_given(args, "is"), **api_options(args))
    return emit(args, report.to_dict(), report.summary())


def cmd_metrics(args: argparse.Namespace) -> int:
    import shardeval as se

    must_exist(*args.stores)
    claim_report(args)
    from shardeval.pipeline.metrics import METRICS

    options = _given(args, *METRICS)
    if len(args.stores) > 2:
        raise UsageError(f"metrics takes REAL GEN (or GEN alone); got {len(args.stores)} stores")
    real, gen = args.stores if len(args.stores) == 2 else (None, args.stores[0])
    report = se.metrics(real, gen, args.metrics, **options, **api_options(args))
    return emit(args, report.to_dict(), report.summary())
