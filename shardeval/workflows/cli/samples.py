"""The sample-metric commands: kid, cmmd, prdc, and metrics (several at once)."""

from __future__ import annotations

import argparse
from typing import Any

from shardeval.workflows.cli.common import api_options, claim_report, emit, must_exist


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) not in (None, False)}


def _one(args: argparse.Namespace, name: str, *metric_options: str) -> int:
    import shardeval as se

    must_exist(*args.stores)
    claim_report(args)
    function = getattr(se, name)
    report = function(*args.stores, **_given(args, *metric_options), **api_options(args))
    return emit(args, report.to_dict(), report.summary())


def cmd_kid(args: argparse.Namespace) -> int:
    return _one(args, "kid", "subsets", "subset_size", "seed")


def cmd_cmmd(args: argparse.Namespace) -> int:
    return _one(args, "cmmd", "sigma", "unbiased")


def cmd_prdc(args: argparse.Namespace) -> int:
    return _one(args, "prdc", "k", "pr_k")


def cmd_metrics(args: argparse.Namespace) -> int:
    import shardeval as se

    must_exist(*args.stores)
    claim_report(args)
    options = _given(args, "subsets", "subset_size", "seed", "sigma", "unbiased", "k", "pr_k")
    real, gen = args.stores
    report = se.metrics(real, gen, args.metrics, **options, **api_options(args))
    return emit(args, report.to_dict(), report.summary())
