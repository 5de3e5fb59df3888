"""Command-line flags made from the declarations: the run options
(:mod:`shardeval.pipeline.runoptions`) and the metrics' parameters
(:mod:`shardeval.pipeline.metrics`), with the declaration's constraint as the argument's type,
its help and default as the flag's help. Nothing here imports anything heavy.

Flags default to None (a switch: None when left off), so that a command passes on only what
the user gave and the declaration fills in the rest.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from shardeval.pipeline.runoptions import BY_NAME, OPTIONS, Constraint, Flag, OneOf

#: The titles of the run options' groups in ``--help``.
GROUP_TITLES = {
    "engine": "engine",
    "input": "input",
    "kernels": "kernels",
    "images": "image inputs (extracted into the feature cache, then reused)",
    "likelihood": "likelihoods and weights",
}


def cli_type(constraint: Constraint) -> Callable[[str], Any]:
    """The argparse type of a declaration's constraint: the text parsed, then checked, so that
    the command line refuses what the API refuses, in the same words."""

    def convert(text: str) -> Any:
        try:
            value = constraint.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        problem = constraint.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def add_option(group: Any, name: str, help_text: str | None = None) -> None:
    """The flag of the run option ``name`` in ``group``."""
    option = BY_NAME[name]
    text = help_text or option.describe()
    if isinstance(option.constraint, Flag):
        group.add_argument(option.flag, action="store_true", default=None, help=text)
    elif isinstance(option.constraint, OneOf):
        group.add_argument(option.flag, choices=option.constraint.values, help=text)
    else:
        group.add_argument(
            option.flag, type=cli_type(option.constraint), metavar=option.metavar, help=text
        )


def add_run_options(
    parser: argparse.ArgumentParser,
    names: Sequence[str],
    *,
    quiet: bool = True,
    helps: dict[str, str] | None = None,
) -> None:
    """The run options ``names`` as flags, grouped as declared (Python-only ones left out),
    with ``--quiet`` in the engine group."""
    wanted = set(names)
    groups: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name not in wanted or option.api_only:
            continue
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(GROUP_TITLES[option.group])
        add_option(groups[option.group], option.name, (helps or {}).get(option.name))
    if quiet:
        group = groups.get("engine") or parser.add_argument_group("engine")
        group.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notices")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Where the JSON report goes: ``--out``, ``--json``, ``--overwrite``."""
    g = parser.add_argument_group("output")
    g.add_argument("--out", "-o", metavar="REPORT.json", help="write the JSON report here")
    g.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    g.add_argument("--overwrite", action="store_true", help="replace an existing JSON report")


def metric_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of registered metrics (checked as :func:`shardeval.metrics`
    checks its names)."""
    from shardeval.pipeline.errors import OptionError
    from shardeval.pipeline.metrics import metric_names

    try:
        return metric_names(text)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: The metrics' parameter that asks for one value per generated row: on the command line it
#: names where they are written (``--per-sample OUT``), which asks for them.
PER_SAMPLE = "per_sample"


def metric_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The parameters of the metrics ``names``, made from their declarations: one flag per
    name (``--seed`` serves every metric that declares a seed), a switch for a flag, the
    declaration's constraint as the type. A parameter that is a run option (``nonfinite``)
    is the run's flag; :data:`PER_SAMPLE` is ``--per-sample OUT``, the Zarr group the
    per-row values go to."""
    from shardeval.pipeline.metrics import METRICS

    owners: dict[str, list[str]] = {}
    for name in names:
        for param in METRICS[name].params:
            owners.setdefault(param.name, []).append(name)
    made: set[str] = set()
    for name in names:
        cls = METRICS[name]
        group = None
        for param in cls.params:
            if param.name in made or param.name in BY_NAME:
                continue
            made.add(param.name)
            group = group or parser.add_argument_group(cls.title)
            others = [m for m in owners[param.name] if m != name]
            shared = f"; also {', '.join(others)}'s" if others else ""
            if param.name == PER_SAMPLE:
                group.add_argument(
                    "--per-sample",
                    metavar="OUT",
                    help=f"{param.help}{shared}, written to the Zarr group OUT row for row with "
                    "GEN, with its names (an extraction store's); --overwrite replaces one "
                    "written before",
                )
                continue
            add_param(group, param, f"{param.help} (default {param.default!r}{shared})")


def add_param(group: Any, param: Any, help_text: str | None = None) -> None:
    """The flag of a declared parameter (:class:`~shardeval.pipeline.metrics.base.Param`):
    ``--name``, a switch for a flag, the declaration's constraint as the type."""
    text = help_text or param.describe()
    flag = "--" + param.name.replace("_", "-")
    if param.kind is bool:
        group.add_argument(flag, action="store_true", default=None, help=text)
    else:
        group.add_argument(
            flag,
            type=cli_type(param.constraint),
            choices=param.choices,
            metavar=param.metavar or param.name.upper(),
            help=text,
        )


def metric_flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The metrics' parameters the command line gave (by their declarations)."""
    from shardeval.pipeline.metrics import METRICS
    from shardeval.pipeline.runoptions import is_given

    params = {p.name for m in names for p in METRICS[m].params} - set(BY_NAME)
    given = {n: getattr(args, n) for n in params if is_given(getattr(args, n, None))}
    if PER_SAMPLE in given:  # a path: the values are asked for
        given[PER_SAMPLE] = True
    return given


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run options the command line gave, as keyword arguments (None where not given)."""
    return {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
