"""The benchmarks' memory figure is the measured process's own peak.

``ru_maxrss`` is not: Linux keeps it across ``execve``, and Python starts children by
``vfork`` + ``execve``, so a child started by a parent that once held much memory reports the
parent's peak. The reference here is what each process allocates and touches itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

MIB = 2**20


def _child_peaks(parent_mib: int, child_mib: int) -> dict[str, float]:
    """Start a parent that touches ``parent_mib`` MiB and frees it, then starts a child that
    touches ``child_mib`` MiB and reports ``benchmarks._harness.peak_mib()``; return the
    child's figure and the parent's own (VmHWM), both in MiB."""
    script = textwrap.dedent(
        f"""
        import json, subprocess, sys
        from benchmarks._harness import peak_mib

        def touch(mib):
            block = bytearray(mib * {MIB})
            for i in range(0, len(block), 4096):
                block[i] = 1
            return block

        del_me = touch({parent_mib})
        del del_me
        child = (
            "from benchmarks._harness import peak_mib\\n"
            "import json\\n"
            "block = bytearray({child_mib} * {MIB})\\n"
            "for i in range(0, len(block), 4096): block[i] = 1\\n"
            "print(json.dumps(peak_mib()))\\n"
        )
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             check=True)
        print(json.dumps({{"child": json.loads(out.stdout), "parent": peak_mib()}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_peak_is_the_process_own_not_its_parents() -> None:
    peaks = _child_peaks(parent_mib=600, child_mib=0)
    assert peaks["parent"] >= 600  # the parent did hold it
    assert peaks["child"] < 200, peaks  # an interpreter alone: tens of MiB


def test_peak_counts_what_the_process_allocates() -> None:
    peaks = _child_peaks(parent_mib=0, child_mib=300)
    assert 300 <= peaks["child"] < 300 + 200, peaks
