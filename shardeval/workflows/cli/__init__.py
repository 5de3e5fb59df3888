"""``shardeval``: FID, NLL and ESS over sharded stores, on one machine or a Dask cluster.

The parser imports nothing heavy; a command's module, and what it computes with, is imported
only when that command runs. Every failure the user can fix is one line on stderr and exit
code 2; an operating-system failure (disk full, permission) is one line and exit code 1.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

from shardeval._words import Worded
from shardeval.pipeline.errors import ShardevalError
from shardeval.workflows.cli.parser import parse
from shardeval.workflows.progress import end_open_lines

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
#: What a shell reports for a process ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141

#: command → (module, function)
_COMMANDS = {
    "extract": ("shardeval.workflows.cli.extract", "cmd_extract"),
    "fetch": ("shardeval.workflows.cli.fetch", "cmd_fetch"),
    "fid": ("shardeval.workflows.cli.measure", "cmd_fid"),
    "stats": ("shardeval.workflows.cli.measure", "cmd_stats"),
    "nll": ("shardeval.workflows.cli.measure", "cmd_nll"),
    "ess": ("shardeval.workflows.cli.measure", "cmd_ess"),
    "synth": ("shardeval.workflows.cli.measure", "cmd_synth"),
    "sfid": ("shardeval.workflows.cli.samples", "cmd_sfid"),
    "kid": ("shardeval.workflows.cli.samples", "cmd_kid"),
    "cmmd": ("shardeval.workflows.cli.samples", "cmd_cmmd"),
    "prdc": ("shardeval.workflows.cli.samples", "cmd_prdc"),
    "authpct": ("shardeval.workflows.cli.samples", "cmd_authpct"),
    "ct": ("shardeval.workflows.cli.samples", "cmd_ct"),
    "fld": ("shardeval.workflows.cli.samples", "cmd_fld"),
    "is": ("shardeval.workflows.cli.samples", "cmd_is"),
    "metrics": ("shardeval.workflows.cli.samples", "cmd_metrics"),
    "compare": ("shardeval.workflows.cli.compare", "cmd_compare"),
    "run": ("shardeval.workflows.cli.runs", "cmd_run"),
    "history": ("shardeval.workflows.cli.runs", "cmd_history"),
    "report": ("shardeval.workflows.cli.runs", "cmd_report"),
}


def _dispatch(args: object) -> int:
    module, name = _COMMANDS[args.command]  # type: ignore[attr-defined]
    command = getattr(importlib.import_module(module), name)
    cluster = getattr(args, "cluster", None)
    if cluster:
        from shardeval.api.engines import running_cluster
        from shardeval.workflows.cli.common import refuse

        refuse(args, ("scheduler", "threads"), "cannot be combined with --cluster")  # type: ignore[arg-type]
        with running_cluster(cluster) as address:
            args.scheduler = address  # type: ignore[attr-defined]
            return int(command(args))
    return int(command(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardeval`` console script; returns the exit code."""
    args = parse(argv)
    # A bar left open on a terminal (a run stopped mid-way) is ended before a message is
    # printed (end_open_lines below), so that each message starts on its own line.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            args._warnings = _LiveMessages(caught)
            code = _dispatch(args)
            sys.stdout.flush()  # a reader that went away fails here, not at interpreter exit
        end_open_lines()
        for w in caught:
            if issubclass(w.category, UserWarning):
                print(f"shardeval: warning: {_in_cli(w.message)}", file=sys.stderr)
        return code
    except ShardevalError as exc:
        end_open_lines()
        print(f"shardeval: error: {exc.cli_text()}", file=sys.stderr)
        # A scheduler that went away mid-run is an operating failure, as a full disk is:
        # nothing in the input would fix it.
        return EXIT_FAILED if getattr(exc, "operating_failure", False) else EXIT_BAD_INPUT
    except BrokenPipeError:
        # The reader went away (`shardeval ... | head -1`): stop quietly, as other tools do,
        # and keep the interpreter's final flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        end_open_lines()
        print(f"shardeval: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        end_open_lines()
        print("shardeval: interrupted", file=sys.stderr)
        return 130


def _in_cli(message: Warning | str) -> str:
    """A message in this command line's words (its marked options as flags)."""
    from shardeval._words import in_cli

    return in_cli(message.cli_text() if isinstance(message, Worded) else str(message))


class _LiveMessages:
    """The user warnings caught so far, as their messages (reports list them)."""

    def __init__(self, caught: list[warnings.WarningMessage]):
        self._caught = caught

    def __iter__(self) -> Iterator[str]:
        seen: list[str] = []
        for w in self._caught:
            text = str(w.message)
            if issubclass(w.category, UserWarning) and text not in seen:
                seen.append(text)
        return iter(seen)


if __name__ == "__main__":
    sys.exit(main())
