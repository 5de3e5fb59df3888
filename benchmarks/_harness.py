"""Run one method of a benchmark in a child process; report its time and peak memory.

The child imports what it needs, then times only the computation, so every method pays its
imports outside the measured region. Its peak memory is ``VmHWM`` of its own process (the
largest resident set since it started, imports included): not ``ru_maxrss``, which Linux keeps
across ``execve``, so that a child started (by ``vfork`` + ``execve``, as Python starts them)
from a parent that once held the data would report the parent's peak.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def peak_mib() -> float:
    """This process's peak resident memory since it started, in MiB (``VmHWM``)."""
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and the number of logical CPUs."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name
            )
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def child(methods: dict[str, Callable[..., Any]], name: str, args: list[str]) -> None:
    """In the child: run ``methods[name](*args)``, print one JSON line."""
    fn = methods[name]
    start = time.perf_counter()
    value = fn(*args)
    seconds = time.perf_counter() - start
    peak = peak_mib()
    print(json.dumps({"method": name, "value": value, "seconds": seconds, "peak_rss_mib": peak}))


def run_child(module: str, name: str, *args: Any) -> dict[str, Any]:
    """From the parent: run one method in a fresh interpreter."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", module, "--child", name, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over repeated runs of one method."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "value"]
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["value"] = runs[0]["value"]
    return out


def side_by_side(
    module: str, methods: list[str], tag: str, repeats: int, baseline: str
) -> dict[str, dict[str, Any]]:
    """Run ``methods`` of ``module`` on the data ``tag`` interleaved, ``repeats`` times each,
    print a table of their medians (value, seconds, peak memory, time over ``baseline``'s),
    and return the medians by method."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            runs[m].append(run_child(module, m, tag))
    med = {m: medians(rs) for m, rs in runs.items()}
    width = max(len(m) for m in methods) + 2
    print(f"{'method':<{width}} {'value':>14} {'seconds':>9} {'peak MiB':>9} {'ratio':>7}")
    for m, r in med.items():
        print(
            f"{m:<{width}} {r['value']['value']:>14.8g} {r['seconds']:>9.2f} "
            f"{r['peak_rss_mib']:>9.0f} {r['seconds'] / med[baseline]['seconds']:>7.3f}"
        )
    return med
