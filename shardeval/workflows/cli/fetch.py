"""The ``fetch`` command: download what the encoders read, checked against pinned digests."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from shardeval.pipeline.runoptions import POSITIVE
from shardeval.workflows.cli.common import UsageError, notice
from shardeval.workflows.cli.flags import cli_type
from shardeval.workflows.progress import ProgressBar

DESCRIPTION = """\
Download the files the encoders read into the place `extract` reads them from, each checked
against a SHA-256 pinned in shardeval. Nothing is ever downloaded otherwise: not at import,
not by `extract`, which fails in one line naming this command when its weights are missing.

NAME (default: all of them; --list shows each with its URL, digest and place):
  inception   pytorch-fid's FID Inception weights, pt_inception-2015-12-05-6726825d.pth
              (91.2 MiB), from pytorch-fid's GitHub release into torch hub's checkpoint
              folder, $TORCH_HOME/hub/checkpoints (TORCH_HOME defaults to
              $XDG_CACHE_HOME/torch, else ~/.cache/torch). Full SHA-256 checked.
The DINOv2 and CLIP encoders' Hugging Face snapshots are not fetched here: no public source
pins their files' digests (see `shardeval extract --help` for where they are read from).

How: the file is streamed to NAME.part beside its target and hashed as it arrives, then
put into place once its digest is right. No more than the pinned size is ever written: a
server announcing another length, or sending more, is refused. An interrupted or failed run
(unreachable server, HTTP error, transfer cut short) keeps the .part file and the next run
asks only for the rest (HTTP Range); a .part file is discarded only when it is proven not of
this file (longer than it, differing from the server's bytes, or a wrong digest at the end),
and fetch says so. A failure is one line on stderr (exit 1; 2 for a 4xx answer, a wrong
digest or size). Whatever is in place is never replaced nor written through: a file with
another digest, a folder or a symbolic link leading to no file is refused, and so is a .part
name holding something fetch did not make.

--list says for each file whether the one in place is the pinned file: a file of another size
is told at once; one of the pinned size is read whole for its SHA-256 (about 0.1-0.5 s for
the Inception's 91 MiB; not cached, so a file rewritten in place is never taken for the
pinned one)."""

EPILOG = """\
environment:
  SHARDEVAL_FETCH_URL_INCEPTION   the URL to download the Inception weights from
  SHARDEVAL_FETCH_MIRROR          a base URL serving every file by its name (a local mirror)
  TORCH_HOME                      moves torch hub's folder (and so the Inception weights)
  https_proxy, no_proxy           as urllib reads them

examples:
  shardeval fetch                         # everything, or verify what is there
  shardeval fetch inception --list
  shardeval fetch inception --url https://mirror.example/pt_inception-2015-12-05-6726825d.pth
  shardeval extract samples/ -o gen.zarr  # then reads the fetched weights"""


def add_fetch_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``fetch`` command to the subparsers ``sub``; returns its parser."""
    p = sub.add_parser(
        "fetch",
        help="download the encoders' weights, checked against pinned SHA-256 digests",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="what to fetch (default: all)")
    p.add_argument(
        "--url",
        metavar="URL",
        help="download from this http(s) URL instead (one NAME); the pinned digest is checked "
        "all the same",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="list what can be fetched (URL, digest and its source, place, and whether the file "
        "there is the pinned one) and download nothing",
    )
    p.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="further attempts after a cut transfer, a 5xx answer or an unreachable server, "
        "each resuming where the last stopped (default 2)",
    )
    p.add_argument(
        "--timeout",
        type=cli_type(POSITIVE),
        metavar="SECONDS",
        help="how long a connection may stay silent (default 60)",
    )
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notices")
    return p


class ByteProgress(ProgressBar):
    """The progress bar in MiB: redrawn in place on a terminal, a line every tenth of the way
    in a log file."""

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        frac = min(1.0, done / total) if total else 1.0
        sizes = f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB"
        if self.tty:
            filled = round(frac * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            end = "\n" if done >= total else ""
            self.stream.write(f"\r{self.label} [{bar}] {sizes} {elapsed:6.1f}s{end}")
            self._open = not end
        else:
            tenth = int(frac * 10)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(f"{self.label}: {sizes}, {elapsed:.1f}s\n")
        self.stream.flush()

    def close(self) -> None:
        """End a line left open on a terminal (a failure mid-way), so that the error that
        follows starts on its own line."""
        if getattr(self, "_open", False):
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _listing(rows: list[dict[str, Any]], out: TextIO) -> None:
    for row in rows:
        check = "full SHA-256" if row["verified"] == "sha256" else "SHA-256 prefix in its name"
        out.write(
            f"{row['name']}: {row['title']}\n"
            f"  file    {row['file']} ({row['in_place']})\n"
            f"  place   {row['path']}\n"
            f"  url     {row['url']}\n"
            f"  digest  {row['sha256']} ({check})\n"
            f"  size    {row['size']:,} bytes\n"
            f"  pinned  {row['digest_source']}\n"
        )


def cmd_fetch(args: argparse.Namespace) -> int:
    """Run ``shardeval fetch``. Returns the exit code."""
    from shardeval.api.fetching import fetch, fetchable, fetchable_names

    known = fetchable_names()
    names = list(dict.fromkeys(args.names)) or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"nothing called {', '.join(map(repr, unknown))} can be fetched; known: "
            f"{', '.join(known)}"
        )
    if args.list:
        if args.url or args.retries is not None or args.timeout is not None:
            raise UsageError("--url, --retries and --timeout apply to downloads, not to --list")
        rows = fetchable(names)
        if args.json:
            from shardeval.workflows.report import to_json

            print(to_json({"fetchable": rows}), end="")
        else:
            _listing(rows, sys.stdout)
        return 0
    if args.url and len(names) != 1:
        raise UsageError(
            "--url gives the URL of one file: name it (`shardeval fetch NAME --url URL`)"
        )
    if args.retries is not None and args.retries < 0:
        raise UsageError(f"--retries must be at least 0, got {args.retries}")
    results = []
    for name in names:
        bar = None if args.quiet else ByteProgress(name)
        try:
            result = fetch(
                name,
                url=args.url,
                retries=2 if args.retries is None else args.retries,
                timeout=args.timeout or 60.0,
                progress=bar,
                log=None if args.quiet else notice,
            )
        finally:
            if bar is not None:
                bar.close()
        results.append(result)
        if not args.json:
            print(result.summary())
    if args.json:
        from shardeval.workflows.report import to_json

        print(to_json({"fetched": [r.to_dict() for r in results]}), end="")
    return 0
