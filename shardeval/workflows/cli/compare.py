"""The ``compare`` command: two generated sets against one reference, each metric's difference
a − b with a standard error and an interval that count the shared reference
(:func:`shardeval.compare`). Its flags come from the declarations: the comparable metrics'
run options, and the options of their intervals (those that apply with «ci»)."""

from __future__ import annotations

import argparse

from shardeval.pipeline.metrics.base import Param
from shardeval.pipeline.runoptions import Interval
from shardeval.workflows.cli.common import api_options, claim_report, emit, must_exist
from shardeval.workflows.cli.flags import (
    add_output_options,
    add_run_options,
    cli_type,
    metric_list,
)


def _interval_params() -> list[Param]:
    """The parameters of the comparable metrics' intervals (FID's ``ci_groups``,
    ``ci_seed``), once each. «se_target» is not one: it answers for one set's value, not for
    a difference."""
    from shardeval.pipeline.metrics import METRICS
    from shardeval.pipeline.metrics.paired import comparable

    seen: dict[str, Param] = {}
    for name in comparable():
        for param in METRICS[name].params:
            if param.applies_with == "ci" and param.name != "se_target":
                seen.setdefault(param.name, param)
    return list(seen.values())


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    from shardeval.pipeline.metrics.paired import DEFAULT_LEVEL, comparable
    from shardeval.workflows.cli.metric_commands import metric_run_options

    names = comparable()
    p = sub.add_parser(
        "compare",
        help="two generated sets against one reference: each metric's difference a - b, "
        "with a standard error that counts the shared reference",
        description="Each metric of GEN_A and of GEN_B against REF, their difference a - b, "
        "its standard error and an interval, and a verdict (a is lower, a is higher, within "
        "noise: the interval holds 0). Both values share REF, so they move together when its "
        "rows vary; the standard error counts that. FID: the delete-a-group jackknife, group "
        "g of rows dropped from REF and both sets at once (REF given as statistics is held "
        "fixed: the interval is conditional on it). KID: the Hoeffding decomposition of its "
        f"U-statistics (REF's own term cancels). Metrics: {', '.join(names)}.",
        epilog="examples:\n  shardeval compare real.zarr gen-a.zarr gen-b.zarr\n"
        "  shardeval compare real.zarr gen-a.zarr gen-b.zarr --metrics fid,kid --ci 0.9 "
        "--out compare.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stores", nargs=3, metavar="STORE", help="REF GEN_A GEN_B")
    p.add_argument(
        "--metrics",
        type=metric_list,
        metavar="NAMES",
        help=f"comma-separated, from {', '.join(names)} (default fid)",
    )
    group = p.add_argument_group("interval")
    group.add_argument(
        "--ci",
        type=cli_type(Interval(float, None, None)),
        metavar="LEVEL",
        help=f"confidence level of the interval, in (0, 1) (default {DEFAULT_LEVEL})",
    )
    for param in _interval_params():
        group.add_argument(
            "--" + param.name.replace("_", "-"),
            type=cli_type(param.constraint),
            metavar=param.metavar or param.name.upper(),
            help=f"{param.help} (default {param.default!r})",
        )
    add_run_options(p, metric_run_options(names))
    add_output_options(p)


def cmd_compare(args: argparse.Namespace) -> int:
    import shardeval as se
    from shardeval.pipeline.runoptions import is_given

    must_exist(*args.stores)
    claim_report(args)
    names = [param.name for param in _interval_params()]
    options = {n: getattr(args, n) for n in names if is_given(getattr(args, n, None))}
    ref, gen_a, gen_b = args.stores
    report = se.compare(
        ref, gen_a, gen_b, args.metrics or "fid", ci=args.ci, **options, **api_options(args)
    )
    return emit(args, report.to_dict(), report.summary())
