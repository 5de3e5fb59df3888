"""Back-ends whose scheduler runs in this process, on this machine: ``local``
(``distributed.LocalCluster``) and ``cuda`` (``dask_cuda.LocalCUDACluster``, one worker per
GPU, a LocalCluster underneath).

Such a scheduler serves its dashboard on 127.0.0.1 unless the spec names another address:
``distributed`` binds its dashboard to every interface by default, which shows the cluster, and
what it reads, to the network. An option neither the cluster class nor its workers take is
refused before anything starts.
"""

from __future__ import annotations

from typing import Any

from shardeval.pipeline.core.clusters.spec import ClusterSpec
from shardeval.pipeline.errors import ClusterError

#: Back-ends whose scheduler runs in this process, on this machine.
LOCAL_BACKENDS = ("local", "cuda")

#: Where a local scheduler serves its dashboard unless the spec says otherwise (Dask's default,
#: ":8787", is every interface). A taken port falls back to a free one on the same host.
LOOPBACK_DASHBOARD = "127.0.0.1:8787"


def cluster_options(spec: ClusterSpec) -> dict[str, Any]:
    """The keyword arguments the spec's cluster class is called with: the spec's options, and
    for a local scheduler a dashboard on 127.0.0.1 when the spec names none. (The scheduler
    itself already listens on 127.0.0.1 unless ``host`` or ``interface`` says otherwise.)"""
    options = dict(spec.options)
    if spec.backend in LOCAL_BACKENDS:
        options.setdefault("dashboard_address", LOOPBACK_DASHBOARD)
    return options


def _parameters(*callables: Any) -> set[str]:
    """The keyword parameters of callables (``**kwargs`` and ``self`` left out)."""
    import inspect

    names: set[str] = set()
    for fn in callables:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        names |= {
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        }
    return names


def check_options(spec: ClusterSpec, cls: Any) -> None:
    """Refuse, before anything starts, an option that neither a local back-end's cluster class
    nor its workers take. (``LocalCluster`` hands the options it does not know to its workers,
    which then fail to start, each logging a traceback before the cluster gives up.) Batch
    back-ends check their options in their constructors, before they submit anything.

    Args:
        spec: the spec.
        cls: its back-end's cluster class.

    Raises:
        ClusterError: one line naming the option and the nearest options there are.
    """
    if spec.backend not in LOCAL_BACKENDS:
        return
    import difflib

    from distributed import Nanny, Worker
    from distributed.core import Server

    classes = [c for c in getattr(cls, "__mro__", (cls,)) if c is not object]
    known = _parameters(*(c.__init__ for c in classes), Nanny.__init__, Worker.__init__)
    known |= _parameters(Server.__init__)
    unknown = sorted(set(spec.options) - known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ClusterError(
            f"cluster spec {spec.path!r}: {cls.__name__} and its workers take no option "
            f"{', '.join(repr(n) for n in unknown)}{hint}"
        )
