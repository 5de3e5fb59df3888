"""Start a Dask cluster from a spec file in ``cluster/``: local processes, GPU workers, SLURM or
Kubernetes. A spec is YAML:

.. code-block:: yaml

    backend: local          # local | cuda | slurm | kubernetes
    options:                # keyword arguments of the backend's cluster class
      n_workers: 2
      threads_per_worker: 1
    scale: 4                # optional: workers (jobs) to ask for after start

Optional back-ends live in extras (``shardeval[cuda]``, ``[slurm]``, ``[kubernetes]``); a
missing one is a one-line error naming the extra.

A back-end that starts its scheduler on this machine (``local``, ``cuda``) serves it and its
dashboard on 127.0.0.1 unless the spec names another address: ``distributed`` binds its
dashboard to every interface by default, which shows the cluster, and what it reads, to the
network.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from shardeval.pipeline.errors import ClusterError

#: backend → (module, class, extra that installs it).
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "local": ("distributed", "LocalCluster", None),
    "cuda": ("dask_cuda", "LocalCUDACluster", "cuda"),
    "slurm": ("dask_jobqueue", "SLURMCluster", "slurm"),
    "kubernetes": ("dask_kubernetes.operator", "KubeCluster", "kubernetes"),
}
_KEYS = {"backend", "options", "scale"}

#: Back-ends whose scheduler runs in this process, on this machine.
LOCAL_BACKENDS = ("local", "cuda")

#: Where a local scheduler serves its dashboard unless the spec says otherwise (Dask's default,
#: ":8787", is every interface). A taken port falls back to a free one on the same host.
LOOPBACK_DASHBOARD = "127.0.0.1:8787"


@dataclass(frozen=True)
class ClusterSpec:
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: int | None = None
    path: str = ""


def load_spec(path: str | os.PathLike[str]) -> ClusterSpec:
    """Read and check a cluster spec.

    Raises:
        ClusterError: missing file, not YAML, unknown key or backend, wrong types.
    """
    path = os.fspath(path)
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise ClusterError(f"cluster spec {path!r} cannot be read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ClusterError(f"cluster spec {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ClusterError(f"cluster spec {path!r} must be a mapping with key 'backend'")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ClusterError(
            f"cluster spec {path!r} has unknown key(s) {sorted(unknown)}; expected {sorted(_KEYS)}"
        )
    backend = raw.get("backend")
    if backend not in BACKENDS:
        raise ClusterError(
            f"cluster spec {path!r}: backend {backend!r} is not one of {sorted(BACKENDS)}"
        )
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise ClusterError(f"cluster spec {path!r}: 'options' must be a mapping")
    scale = raw.get("scale")
    if scale is not None and (not isinstance(scale, int) or scale < 1):
        raise ClusterError(f"cluster spec {path!r}: 'scale' must be a positive integer")
    return ClusterSpec(backend, options, scale, path)


def cluster_class(backend: str) -> Any:
    module, name, extra = BACKENDS[backend]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ClusterError(
            f"backend {backend!r} needs {module}: pip install 'shardeval[{extra}]'"
        ) from exc


def cluster_options(spec: ClusterSpec) -> dict[str, Any]:
    """The keyword arguments the spec's cluster class is called with: the spec's options, and
    for a local scheduler a dashboard on 127.0.0.1 when the spec names none. (The scheduler
    itself already listens on 127.0.0.1 unless ``host`` or ``interface`` says otherwise.)"""
    options = dict(spec.options)
    if spec.backend in LOCAL_BACKENDS:
        options.setdefault("dashboard_address", LOOPBACK_DASHBOARD)
    return options


def make_cluster(spec: ClusterSpec) -> Any:
    """Construct (and so start) the cluster a spec describes; the caller closes it."""
    cls = cluster_class(spec.backend)
    try:
        cluster = cls(**cluster_options(spec))
    except (TypeError, ValueError, RuntimeError) as exc:
        # LocalCluster hands unknown options to its workers, which then fail to start.
        cause = exc.__cause__ or exc.__context__ or exc
        raise ClusterError(
            f"cluster spec {spec.path!r}: bad option for {cls.__name__}: {cause}"
        ) from exc
    if spec.scale:
        cluster.scale(spec.scale)
    return cluster


@contextlib.contextmanager
def running_cluster(path: str | os.PathLike[str]) -> Iterator[str]:
    """Start the cluster of a spec file, yield its scheduler address, close it afterwards."""
    cluster = make_cluster(load_spec(path))
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
