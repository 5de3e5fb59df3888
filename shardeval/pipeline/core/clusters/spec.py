"""A cluster spec file: read, checked, and the back-end class it names.

A spec is YAML:

.. code-block:: yaml

    backend: local          # local | cuda | slurm | kubernetes
    options:                # keyword arguments of the backend's cluster class
      n_workers: 2
      threads_per_worker: 1
    scale: 4                # optional: workers (jobs) to ask for after start
    join_timeout: 600       # optional: seconds the first worker has to join (default 600)

Optional back-ends live in extras (``shardeval[cuda]``, ``[slurm]``, ``[kubernetes]``); a
missing one is a one-line error naming the extra.
"""

from __future__ import annotations

import importlib
import math
import os
import re
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
_KEYS = {"backend", "options", "scale", "join_timeout"}

#: Seconds a cluster's first worker has to join when the spec sets no ``join_timeout``: long
#: enough for a batch queue with free nodes to start a job and a worker to import its
#: libraries, short enough that a scheduled run whose jobs cannot start says so the same night.
DEFAULT_JOIN_TIMEOUT = 600.0


class _SpecLoader(yaml.SafeLoader):
    """YAML as a spec's writer means its numbers: ``1e3`` is a float. PyYAML reads YAML 1.1,
    whose floats need a dot (``1.0e3``), and took ``1e3`` for the string '1e3'."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _whole(value: Any) -> Any:
    """A float that is a whole number (``1e1`` in a spec) as an int; anything else as it is."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster spec as read from its file.

    Attributes:
        backend: one of :data:`BACKENDS`.
        options: keyword arguments of the backend's cluster class.
        scale: workers (jobs) to ask for after start; ``None`` leaves it to ``options``.
        path: the file it was read from (named in errors).
        join_timeout: seconds the first worker has to join before the run stops.
    """

    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: int | None = None
    path: str = ""
    join_timeout: float = DEFAULT_JOIN_TIMEOUT


def load_spec(path: str | os.PathLike[str]) -> ClusterSpec:
    """Read and check a cluster spec.

    Args:
        path: the YAML file.

    Returns:
        The spec.

    Raises:
        ClusterError: missing file, not YAML, unknown key or backend, wrong types.
    """
    path = os.fspath(path)
    try:
        with open(path) as fh:
            raw = yaml.load(fh, Loader=_SpecLoader)  # a SafeLoader: no object tags
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
    scale = _whole(raw.get("scale"))
    if scale is not None and (not isinstance(scale, int) or isinstance(scale, bool) or scale < 1):
        raise ClusterError(f"cluster spec {path!r}: 'scale' must be a positive integer")
    join_timeout = raw.get("join_timeout", DEFAULT_JOIN_TIMEOUT)
    if (
        isinstance(join_timeout, bool)
        or not isinstance(join_timeout, int | float)
        or not math.isfinite(join_timeout)
        or join_timeout <= 0
    ):
        raise ClusterError(
            f"cluster spec {path!r}: 'join_timeout' must be a positive number of seconds, "
            f"got {join_timeout!r}"
        )
    return ClusterSpec(backend, options, scale, path, float(join_timeout))


def cluster_class(backend: str) -> Any:
    """The cluster class of a back-end.

    Raises:
        ClusterError: its module is not installed (naming the extra that installs it).
    """
    module, name, extra = BACKENDS[backend]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ClusterError(
            f"backend {backend!r} needs {module}: pip install 'shardeval[{extra}]'"
        ) from exc
