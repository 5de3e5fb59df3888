"""Block sizes for the Triton launchers, chosen in one place.

Powers of two (``tl.arange`` needs them), no larger than the problem rounded up, with small
caps under the interpreter so that CPU tests stay fast.
"""

from __future__ import annotations

import os
import tempfile

import triton

# Compiled kernels are cached per node: a home directory on a shared filesystem would make
# every worker of a cluster contend for one cache. Users who set it keep theirs.
os.environ.setdefault(
    "TRITON_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"shardeval-triton-{os.getuid()}")
)

from shardeval.kernels._dispatch import triton_interpreted


def block(size: int, cap: int, floor: int = 16) -> int:
    """Power-of-two block for an axis of ``size``: at least ``floor`` (``tl.dot`` needs 16),
    at most ``cap`` (smaller under the interpreter)."""
    if triton_interpreted():
        cap = min(cap, 32)
    return max(floor, min(cap, triton.next_power_of_2(max(1, size))))
