"""What the commands share: the engine from the options, the progress bar, refusing options
that do not apply, opening inputs, and printing or writing a report."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.errors import ShardevalError, StoreError

if TYPE_CHECKING:
    from shardeval.pipeline.core.engine import Engine
    from shardeval.pipeline.io.stores import FeatureSource
    from shardeval.workflows.progress import ProgressBar

#: Options of the engine and input groups; a command that runs nothing must not take them.
ENGINE_OPTIONS = ("scheduler", "cluster", "performance_report", "threads")
INPUT_OPTIONS = (
    "shard_rows",
    "array",
    "split_every",
    "device",
    "backend",
    "precision",
    "nonfinite",
)


class UsageError(ShardevalError):
    """Arguments that parse but do not fit together."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def given(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """The options among ``names`` that the user gave."""
    return [n for n in names if getattr(args, n, None) not in (None, False)]


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


def engine(args: argparse.Namespace) -> Engine:
    """The engine the options describe (built once per command)."""
    from shardeval.pipeline.core.engine import Engine

    cached = getattr(args, "_engine", None)
    if cached is not None:
        return cached
    scheduler = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
    built = Engine(
        scheduler,
        num_workers=args.threads,
        log=None if args.quiet else notice,
        performance_report=args.performance_report,
    )
    if args.performance_report and not built.is_distributed:
        raise UsageError(
            "--performance-report needs a distributed cluster: pass --scheduler ADDRESS or "
            "--cluster SPEC"
        )
    if args.threads is not None and scheduler != "threads":
        raise UsageError(f"--threads sets the threaded scheduler's threads, not {scheduler!r}'s")
    args._engine = built
    return built


def progress(args: argparse.Namespace) -> ProgressBar | None:
    from shardeval.workflows.progress import ProgressBar

    return None if args.quiet else ProgressBar()


def moments_of(
    args: argparse.Namespace, sources: list[FeatureSource], precision: str | None = None
) -> list[Any]:
    """Each source's (moments, non-finite rows dropped) under the command's engine options,
    in one pass; ``precision`` overrides ``--precision``."""
    from shardeval.pipeline.fid.moments import feature_moments

    return feature_moments(
        sources,
        engine=engine(args),
        split_every=args.split_every,
        device=args.device or "auto",
        backend=args.backend or "auto",
        nonfinite=args.nonfinite or "error",
        precision=precision or args.precision or "fp32",
        progress=progress(args),
    )


def claim_report(args: argparse.Namespace) -> None:
    """Before computing: the JSON report may be written where --out says."""
    if args.out:
        from shardeval.workflows.report import claim_json

        claim_json(args.out, args.overwrite)
    elif args.overwrite:
        raise UsageError("--overwrite applies to the report written with --out")


#: The computation settings a report records, with the value each takes when not given.
SETTINGS = {
    "shard_rows": "whole stored chunks",
    "array": None,
    "split_every": "chain of merges (one machine)",
    "device": "auto",
    "backend": "auto",
    "precision": "fp32",
    "nonfinite": "error",
    "reff": 1.0,
    "bandwidth": "silverman",
    "dims": None,
}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings this command took, as they were applied (defaults filled in)."""
    out = {}
    for name, default in SETTINGS.items():
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = default if value is None else value
    if out.get("split_every") == SETTINGS["split_every"] and engine(args).is_distributed:
        from shardeval.pipeline.options import DEFAULT_SPLIT_EVERY

        out["split_every"] = DEFAULT_SPLIT_EVERY
    return out


def report_tail(args: argparse.Namespace, start: float) -> dict[str, Any]:
    from shardeval.pipeline.io.provenance import now_iso, versions

    return {
        "settings": settings(args),
        "warnings": [str(w) for w in getattr(args, "_warnings", [])],
        "engine": engine(args).describe(),
        "seconds": time.perf_counter() - start,
        "created": now_iso(),
        "versions": versions(),
    }


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
