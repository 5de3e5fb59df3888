"""Run one method of a benchmark in a child process; report its time and peak memory.

The child imports what it needs, then times only the computation, so every method pays its
imports outside the measured region; ``ru_maxrss`` of the child is that method's peak.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def child(methods: dict[str, Callable[..., Any]], name: str, args: list[str]) -> None:
    """In the child: run ``methods[name](*args)``, print one JSON line."""
    fn = methods[name]
    start = time.perf_counter()
    value = fn(*args)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
