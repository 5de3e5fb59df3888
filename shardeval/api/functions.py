"""One function per command: ``shardeval.fid(real, gen)`` is ``shardeval fid REAL GEN``.

Each takes the command's options as keyword arguments, with the same defaults (``None``
means "not given": the default applies, and an option that cannot apply is refused only when
given), runs on the same engine, and returns a :class:`~shardeval.api.results.Report` whose
``to_dict()`` is the command's JSON report and ``float()`` its headline value. The command
line parses, calls these and formats: one code path.

Engine options of every computing function:
    scheduler: ``"threads"`` (default, in-process), ``"sync"``, a scheduler address
        (``"tcp://host:8786"``) or a ``distributed.Client``; default ``DASK_SCHEDULER_ADDRESS``.
    cluster: a cluster spec file (``cluster/local.yaml``…): started, used, closed.
    threads: threads of the threaded scheduler (default: all cores).
    performance_report: a file for Dask's HTML performance report (distributed only).
    progress: called with (done, total) as tasks finish.
    log: called with notices (the dashboard's address).

What the functions share (options, engine, notices) is in :mod:`~shardeval.api.calls`; the
functions of Gaussian statistics are in :mod:`~shardeval.api.moment_functions`, those of
likelihoods and weights in :mod:`~shardeval.api.likelihood_functions`; this module re-exports
their names.
"""

from __future__ import annotations

from shardeval.api.calls import (
    ENGINE_OPTIONS,
    INPUT_OPTIONS,
    SETTINGS,
    Notes,
    Progress,
    check_options,
    image_flags,
    refuse,
    with_features,
)
from shardeval.api.calls import _engine as _engine
from shardeval.api.calls import _must_exist as _must_exist
from shardeval.api.calls import _noted as _noted
from shardeval.api.calls import _Run as _Run
from shardeval.api.calls import _running as _running
from shardeval.api.likelihood_functions import ess, nll
from shardeval.api.moment_functions import _feature_side as _feature_side
from shardeval.api.moment_functions import _moments as _moments
from shardeval.api.moment_functions import _statistics_side as _statistics_side
from shardeval.api.moment_functions import frechet_distance, merge_stats, stats
from shardeval.pipeline.errors import ShardevalError

__all__ = [
    "ENGINE_OPTIONS",
    "INPUT_OPTIONS",
    "SETTINGS",
    "Notes",
    "Progress",
    "ShardevalError",
    "check_options",
    "ess",
    "frechet_distance",
    "image_flags",
    "merge_stats",
    "nll",
    "refuse",
    "stats",
    "with_features",
]
