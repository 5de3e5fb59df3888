"""What the commands share: the engine from the options, the progress bar, refusing options
that do not apply, opening inputs, and printing or writing a report."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.errors import ShardevalError, StoreError

if TYPE_CHECKING:
    from shardeval.workflows.progress import ProgressBar


class UsageError(ShardevalError):
    """Arguments that parse but do not fit together."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def given(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """The options among ``names`` that the user gave."""
    from shardeval.pipeline.runoptions import is_given

    return [n for n in names if is_given(getattr(args, n, None))]


def refuse(args: argparse.Namespace, names: Iterable[str], why: str) -> None:
    """Options that cannot apply are an error, never silently ignored."""
    bad = given(args, names)
    if bad:
        if len(bad) == 1:  # the message is written for several options
            for plural, singular in (("apply ", "applies "), ("do not ", "does not ")):
                if why.startswith(plural):
                    why = singular + why[len(plural) :]
        raise UsageError(f"{', '.join(flag(n) for n in bad)} {why}")


def notice(message: str) -> None:
    print(f"shardeval: {message}", file=sys.stderr)


def is_stdout(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is where this command's standard output goes (``/dev/stdout``, or the
    pipe or file stdout is redirected to); never raises, opens nothing."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False  # no such path, or a stdout without a descriptor (captured)


def say(text: str, *outputs: str) -> None:
    """Print a command's closing line on stdout, or on stderr when one of ``outputs`` is
    stdout: the output (a report piped into jq, say) then stays whole."""
    print(text, file=sys.stderr if any(is_stdout(o) for o in outputs) else sys.stdout)


def must_exist(*locations: str) -> None:
    """Fail at once, before anything heavy is imported, on a local input that is not there."""
    for location in locations:
        if "://" not in location and not os.path.exists(location):
            raise StoreError(f"{location!r} does not exist")


def api_options(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """The command's run options (:mod:`shardeval.pipeline.runoptions`) as keyword arguments
    of its API function (None where not given, so that the function applies its defaults),
    with the progress bar and the notices. The engine is built by the function (``--cluster``
    was started by the dispatcher and stands in ``scheduler``)."""
    from shardeval.workflows.cli.flags import run_flags

    options = run_flags(args)
    options.pop("cluster", None)  # started by the dispatcher: its address is «scheduler»
    options.update({n: getattr(args, n) for n in extra if hasattr(args, n)})
    options["progress"] = progress(args)
    options["log"] = None if args.quiet else notice
    return options


def progress(args: argparse.Namespace) -> ProgressBar | None:
    from shardeval.workflows.progress import ProgressBar

    return None if args.quiet else ProgressBar()


def claim_report(args: argparse.Namespace, inputs: Iterable[str] = ()) -> None:
    """Before computing: the JSON report may be written where --out says, and the per-sample
    group where --per-sample says (a command that has it; not inside ``inputs``)."""
    per_sample = getattr(args, "per_sample", None)
    if per_sample:
        from shardeval.api.per_sample import claim_per_sample

        if args.out and os.path.abspath(args.out) == os.path.abspath(per_sample):
            raise UsageError(f"--out and --per-sample both name {per_sample!r}: give two paths")
        claim_per_sample(per_sample, list(inputs), args.overwrite)
    if args.out:
        from shardeval.workflows.report import claim_json

        claim_json(args.out, args.overwrite)
    elif args.overwrite and not per_sample:
        also = " and the per-sample group written with --per-sample"
        raise UsageError(
            "--overwrite applies to the report written with --out"
            + (also if hasattr(args, "per_sample") else "")
        )


def save_per_sample(args: argparse.Namespace, report: Any) -> None:
    """Write the report's per-row values where --per-sample says (a command that has it),
    and say so."""
    per_sample = getattr(args, "per_sample", None)
    if not per_sample:
        return
    import shardeval as se

    written = se.save_per_sample(report, per_sample, overwrite=args.overwrite)
    if not args.quiet:
        notice(f"per-sample values written to {written}")


def emit(args: argparse.Namespace, data: dict[str, Any], summary: str) -> int:
    """Write the JSON report (--out), then print the summary or the JSON (--json). When --out
    is stdout itself (``--out /dev/stdout | jq``), stdout gets the report alone, once: the
    summary goes to stderr."""
    from shardeval.workflows.report import to_json, write_json

    if args.out:
        write_json(args.out, data, overwrite=args.overwrite)
        if is_stdout(args.out):
            if not args.json:
                print(summary, file=sys.stderr)
            return 0
    print(to_json(data) if args.json else summary, end="" if args.json else "\n")
    return 0
