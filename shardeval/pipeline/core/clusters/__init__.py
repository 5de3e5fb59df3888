"""Start a Dask cluster from a spec file in ``cluster/``: local processes, GPU workers, SLURM or
Kubernetes. A spec is YAML, its keys and the extras of the optional back-ends described in
:mod:`~shardeval.pipeline.core.clusters.spec`.

A back-end that starts its scheduler on this machine (``local``, ``cuda``) serves it and its
dashboard on 127.0.0.1 unless the spec names another address: ``distributed`` binds its
dashboard to every interface by default, which shows the cluster, and what it reads, to the
network.

No run waits forever on a queue. Before a SLURM spec submits anything, the job script it
renders is checked against what ``scontrol`` says of the site (the partition exists and is up,
cores and memory fit one of its nodes, the walltime fits its limit, a requested GRES exists),
where the site lets us ask. After submitting, the run waits at most ``join_timeout`` seconds
for its first worker; it stops sooner when every job has ended, ``sbatch`` refused the job, or
SLURM says the jobs can never start (e.g. ``PartitionTimeLimit``). Either way the error is one
line naming the job IDs, their state and SLURM's reason, and the jobs are cancelled.

Where each part lives: the spec file (:mod:`.spec`); the back-ends whose scheduler runs here,
``local`` and ``cuda`` (:mod:`.local`); SLURM's jobs (:mod:`.slurm`) and the checks of a job
script against the site (:mod:`.slurm_fit`); starting a cluster and waiting for its first
worker (:mod:`.running`). ``kubernetes`` needs nothing of its own beyond its spec: the Dask
Kubernetes operator's ``KubeCluster`` takes the options.
"""

from __future__ import annotations

from shardeval.pipeline.core.clusters.local import (
    LOCAL_BACKENDS,
    LOOPBACK_DASHBOARD,
    check_options,
    cluster_options,
)
from shardeval.pipeline.core.clusters.running import (
    QUEUE_POLL_SECONDS,
    WorkersDidNotJoinError,
    make_cluster,
    running_cluster,
    wait_for_workers,
)
from shardeval.pipeline.core.clusters.slurm import (
    PERMANENT_REASONS,
    REASON_MEANING,
    SLURM_COMMAND_TIMEOUT,
    cancel_slurm_jobs,
    describe_slurm_jobs,
    slurm_job_states,
)
from shardeval.pipeline.core.clusters.slurm_fit import (
    check_slurm_fit,
    sbatch_directives,
    slurm_mebibytes,
    slurm_seconds,
)
from shardeval.pipeline.core.clusters.spec import (
    BACKENDS,
    DEFAULT_JOIN_TIMEOUT,
    ClusterSpec,
    cluster_class,
    load_spec,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_JOIN_TIMEOUT",
    "LOCAL_BACKENDS",
    "LOOPBACK_DASHBOARD",
    "PERMANENT_REASONS",
    "QUEUE_POLL_SECONDS",
    "REASON_MEANING",
    "SLURM_COMMAND_TIMEOUT",
    "ClusterSpec",
    "WorkersDidNotJoinError",
    "cancel_slurm_jobs",
    "check_options",
    "check_slurm_fit",
    "cluster_class",
    "cluster_options",
    "describe_slurm_jobs",
    "load_spec",
    "make_cluster",
    "running_cluster",
    "sbatch_directives",
    "slurm_job_states",
    "slurm_mebibytes",
    "slurm_seconds",
    "wait_for_workers",
]
