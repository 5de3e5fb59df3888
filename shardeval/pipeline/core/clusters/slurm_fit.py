"""Checks of a SLURM job script against the site before anything is submitted: the partition
exists and is up, cores and memory fit one of its nodes, the walltime fits its limit, a
requested GRES exists; where the site lets ``scontrol`` tell."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence

from shardeval.pipeline.core.clusters import slurm
from shardeval.pipeline.core.clusters.spec import ClusterSpec
from shardeval.pipeline.errors import ClusterError

#: sbatch short options that take a value (so ``-p gpu`` and ``-pgpu`` both parse).
_SHORT = {"p": "partition", "c": "cpus-per-task", "t": "time", "n": "ntasks", "N": "nodes"}
#: Long options read here; any other is skipped with its value when it has one.
_LONG = {"partition", "mem", "mem-per-cpu", "cpus-per-task", "time", "gres", "ntasks", "nodes"}


def sbatch_directives(script: str) -> dict[str, str]:
    """The ``#SBATCH`` options of a job script that decide whether it fits the site; a later
    line wins, as with sbatch.

    Args:
        script: the job script.

    Returns:
        long option name → value (``partition``, ``mem``, ``mem-per-cpu``, ``cpus-per-task``,
        ``time``, ``gres``, ``ntasks``, ``nodes``).
    """
    found: dict[str, str] = {}
    for line in script.splitlines():
        if not line.startswith("#SBATCH"):
            continue
        try:
            words = shlex.split(line[len("#SBATCH") :])
        except ValueError:
            continue
        i = 0
        while i < len(words):
            word = words[i]
            name, value = None, None
            if word.startswith("--"):
                name, equals, value = word[2:].partition("=")
                if not equals and name in _LONG and i + 1 < len(words):
                    value = words[i + 1]
                    i += 1
            elif word.startswith("-") and len(word) > 1 and word[1] in _SHORT:
                name = _SHORT[word[1]]
                value = word[2:]
                if not value and i + 1 < len(words):
                    value = words[i + 1]
                    i += 1
            if name in _LONG and value:
                found[name] = value
            i += 1
    return found


def slurm_seconds(text: str) -> float | None:
    """A SLURM time (``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``,
    ``days-hours[:minutes[:seconds]]``, ``UNLIMITED``) in seconds; ``None`` if unreadable."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return math.inf
    try:
        if "-" in text:
            days, _, rest = text.partition("-")
            parts = [int(p) for p in rest.split(":")] if rest else [0]
            parts += [0] * (3 - len(parts))
            return float(int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2])
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        return None
    if len(parts) == 1:
        return float(parts[0] * 60)
    if len(parts) == 2:
        return float(parts[0] * 60 + parts[1])
    if len(parts) == 3:
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    return None


def slurm_mebibytes(text: str) -> float | None:
    """A SLURM memory size (``2G``, ``1954M``, ``100`` = MiB) in MiB; ``None`` if unreadable."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text, re.I)
    if not match:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2).upper()]
    return float(match.group(1)) * scale


def _option_named(spec: ClusterSpec, flags: Sequence[str], standard: str) -> str:
    """The spec option a directive came from: a ``job_extra_directives`` line naming one of
    ``flags`` (it overrides), else the standard option."""
    extra = spec.options.get("job_extra_directives") or []
    if any(str(line).strip().startswith(tuple(flags)) for line in extra):
        return "job_extra_directives"
    return standard


def check_slurm_fit(script: str, spec: ClusterSpec) -> None:
    """Check a SLURM job script against the site before submitting it: its partition exists
    and is up, its cores and memory fit one node of the partition, its walltime fits the
    partition's limit, and a GRES it asks for exists there. Skipped (silently) where
    ``scontrol`` cannot be run or answers nothing: the deadline still applies.

    Args:
        script: the job script dask-jobqueue renders (``cluster.job_script()``).
        spec: its spec (named in errors, with the option to change).

    Raises:
        ClusterError: one line naming the value that does not fit and the site's limit.
    """
    partitions = slurm.scontrol_records(slurm.run_slurm(["scontrol", "-o", "show", "partition"]))
    nodes = slurm.scontrol_records(slurm.run_slurm(["scontrol", "-o", "show", "node"]))
    if not partitions or not nodes:
        return
    where = f"cluster spec {spec.path!r}"
    want = sbatch_directives(script)
    by_name = {p.get("PartitionName", ""): p for p in partitions}
    if "partition" in want:
        names = want["partition"].split(",")
        option = _option_named(spec, ("-p", "--partition"), "queue")
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ClusterError(
                f"{where}: SLURM partition {missing[0]!r} (option '{option}') does not exist "
                f"here; partitions: {', '.join(sorted(by_name))}"
            )
    else:
        names = [n for n, p in by_name.items() if p.get("Default") == "YES"]
        if not names:
            raise ClusterError(
                f"{where}: the job names no partition and this site has no default one: set "
                f"option 'queue' to one of {', '.join(sorted(by_name))}"
            )
    # With several partitions, sbatch runs the job in whichever can start it first: it fits
    # when it fits one of them.
    problems = [_partition_problem(by_name[n], nodes, want, spec) for n in names]
    if all(problems):
        raise ClusterError(f"{where}: {problems[0]}")


def _partition_problem(
    partition: dict[str, str], nodes: list[dict[str, str]], want: dict[str, str], spec: ClusterSpec
) -> str | None:
    """Why a job does not fit a partition (``None`` when it fits)."""
    name = partition.get("PartitionName", "")
    state = partition.get("State", "UP")
    if state != "UP":
        return (
            f"SLURM partition {name!r} is {state}: its jobs would wait until an administrator "
            "brings it up; choose another 'queue'"
        )
    members = [n for n in nodes if name in n.get("Partitions", "").split(",")]
    if not members:
        return f"SLURM partition {name!r} has no nodes"
    limit = partition.get("MaxTime", "UNLIMITED")
    wall = slurm_seconds(want.get("time", ""))
    allowed = slurm_seconds(limit)
    if wall is not None and allowed is not None and wall > allowed:
        option = _option_named(spec, ("-t", "--time"), "walltime")
        return (
            f"walltime {want['time']} (option '{option}') is above the time limit "
            f"{limit} of SLURM partition {name!r}; lower it or choose another 'queue'"
        )
    cpus = _int(want.get("cpus-per-task", "1")) or 1
    if "mem" in want:
        mem = slurm_mebibytes(want["mem"])
        mem_text = f"--mem={want['mem']}"
    elif "mem-per-cpu" in want:
        per_cpu = slurm_mebibytes(want["mem-per-cpu"])
        mem = None if per_cpu is None else per_cpu * cpus
        mem_text = f"--mem-per-cpu={want['mem-per-cpu']} x {cpus} cores"
    else:
        mem, mem_text = None, ""
    if mem == 0:
        mem = None  # --mem=0: all of a node's memory, whatever it is
    cap_cpus = _int(partition.get("MaxCPUsPerNode", ""))
    cap_mem = _int(partition.get("MaxMemPerNode", ""))

    def node_cpus(node: dict[str, str]) -> int:
        have = _int(node.get("CPUEfctv", "")) or _int(node.get("CPUTot", "")) or 0
        return min(have, cap_cpus) if cap_cpus else have

    def node_mem(node: dict[str, str]) -> int:
        have = (_int(node.get("RealMemory", "")) or 0) - (_int(node.get("MemSpecLimit", "")) or 0)
        return min(have, cap_mem) if cap_mem else have

    most_cpus = max(node_cpus(n) for n in members)
    if cpus > most_cpus:
        option = _option_named(spec, ("-c", "--cpus-per-task"), "cores")
        return (
            f"{cpus} cores per job (option '{option}') is more than any node of SLURM partition "
            f"{name!r} has (largest: {most_cpus}); lower it or choose another 'queue'"
        )
    if mem is not None:
        most_mem = max(node_mem(n) for n in members)
        option = _option_named(spec, ("--mem",), "memory")
        if mem > most_mem:
            return (
                f"{mem_text} per job (option '{option}') is more memory than any node of SLURM "
                f"partition {name!r} has (largest: {most_mem}M); lower it or choose another "
                "'queue'"
            )
        if not any(node_cpus(n) >= cpus and node_mem(n) >= mem for n in members):
            return (
                f"no node of SLURM partition {name!r} has both {cpus} cores and {mem_text}; "
                f"lower 'cores' or '{option}'"
            )
    gres = want.get("gres")
    if gres:
        problem = _gres_problem(gres, members)
        if problem:
            return f"{problem} in SLURM partition {name!r} (option 'job_extra_directives')"
    return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _gres_problem(gres: str, nodes: list[dict[str, str]]) -> str | None:
    """Why no node gives ``--gres`` (``gpu:1``, ``gpu:a100:2``, comma-separated); ``None`` if
    one does or the request is not one read here."""
    for item in gres.split(","):
        parts = item.split(":")
        kind = parts[0]
        count = _int(parts[-1]) if len(parts) > 1 else 1
        if count is None:  # gpu:a100 (a type, count 1)
            count = 1
        kind_type = parts[1] if len(parts) == 3 else None
        best = 0
        for node in nodes:
            for have in node.get("Gres", "").split(","):
                have = have.split("(")[0]  # gpu:a100:4(S:0-1)
                fields = have.split(":")
                if fields[0] != kind or (kind_type and (len(fields) < 3 or fields[1] != kind_type)):
                    continue
                best = max(best, _int(fields[-1]) or 0)
        if best < count:
            wanted = f"{kind}:{kind_type}" if kind_type else kind
            return f"--gres={item} asks for {count} {wanted} per node but no node has " + (
                f"more than {best}" if best else "any"
            )
    return None
