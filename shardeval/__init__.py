"""shardeval: distributed, exact evaluation of generative models.

``import shardeval as se`` costs nothing until a function runs: names are imported on first
use. One function per command (``se.fid``, ``se.kid``, ``se.cmmd``, ``se.prdc``,
``se.authpct``, ``se.fid_infinity``, ``se.sfid``, ``se.metrics``, ``se.compare``, ``se.stats``,
``se.merge_stats``, ``se.nll``, ``se.ess``, ``se.inception_score``, ``se.extract``;
``se.frechet_distance`` in pytorch-fid's
argument order), each returning a typed report (``float()`` the headline, ``.to_dict()`` the
JSON report; ``se.save_per_sample`` writes its per-row values beside the rows' names), and
training-loop metrics (``se.FID``…) that accumulate mergeable states and ``sync()`` under
``torch.distributed``.

``shardeval.pipeline`` holds the mathematics and the task graph, ``shardeval.kernels`` the
per-shard compute on one device, ``shardeval.workflows`` the command line, job files, history
and reports; ``shardeval.api`` the functions above (``workflows → api → pipeline → kernels``).
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

#: public name → module that defines it
_EXPORTS = {
    **dict.fromkeys(
        ("frechet_distance", "stats", "merge_stats", "nll", "ess"),
        "shardeval.api.functions",
    ),
    **dict.fromkeys(
        (
            "fid",
            "fid_infinity",
            "sfid",
            "kid",
            "cmmd",
            "prdc",
            "authpct",
            "ct",
            "fld",
            "metrics",
            "inception_score",
        ),
        "shardeval.api.verbs",
    ),
    **dict.fromkeys(("extract", "encoder"), "shardeval.api.extraction"),
    "fetch": "shardeval.api.fetching",
    **dict.fromkeys(("per_sample_arrays", "save_per_sample"), "shardeval.api.per_sample"),
    "compare": "shardeval.api.compare",
    "Report": "shardeval.api.results",
    # Training-loop metrics: classes beside the functions of the same name in lower case
    # (se.FID() accumulates batches, se.fid(real, gen) computes at once).
    **dict.fromkeys(
        (
            "ESS",
            "FID",
            "FIDInfinity",
            "KID",
            "CMMD",
            "PRDC",
            "InceptionScore",
            "GaussianNLL",
            "NLL",
            "RowMetrics",
            "PairMetrics",
        ),
        "shardeval.api.streaming",
    ),
    **dict.fromkeys(
        (
            "ShardevalError",
            "OptionError",
            "StoreError",
            "ShapeError",
            "DtypeError",
            "NonFiniteError",
            "NumericalError",
            "RoundingWarning",
        ),
        "shardeval.pipeline.errors",
    ),
}

__all__ = [
    "CMMD",
    "ESS",
    "FID",
    "KID",
    "NLL",
    "PRDC",
    "DtypeError",
    "FIDInfinity",
    "GaussianNLL",
    "InceptionScore",
    "NonFiniteError",
    "NumericalError",
    "OptionError",
    "PairMetrics",
    "Report",
    "RoundingWarning",
    "RowMetrics",
    "ShapeError",
    "ShardevalError",
    "StoreError",
    "authpct",
    "cmmd",
    "compare",
    "ct",
    "encoder",
    "ess",
    "extract",
    "fetch",
    "fid",
    "fid_infinity",
    "fld",
    "frechet_distance",
    "inception_score",
    "kid",
    "merge_stats",
    "metrics",
    "nll",
    "per_sample_arrays",
    "prdc",
    "save_per_sample",
    "sfid",
    "stats",
]

if _TYPE_CHECKING:
    from shardeval.api.compare import compare
    from shardeval.api.extraction import encoder, extract
    from shardeval.api.fetching import fetch
    from shardeval.api.functions import ess, frechet_distance, merge_stats, nll, stats
    from shardeval.api.per_sample import per_sample_arrays, save_per_sample
    from shardeval.api.results import Report
    from shardeval.api.streaming import (
        CMMD,
        ESS,
        FID,
        KID,
        NLL,
        PRDC,
        FIDInfinity,
        GaussianNLL,
        InceptionScore,
        PairMetrics,
        RowMetrics,
    )
    from shardeval.api.verbs import (
        authpct,
        cmmd,
        ct,
        fid,
        fid_infinity,
        fld,
        inception_score,
        kid,
        metrics,
        prdc,
        sfid,
    )
    from shardeval.pipeline.errors import (
        DtypeError,
        NonFiniteError,
        NumericalError,
        OptionError,
        RoundingWarning,
        ShapeError,
        ShardevalError,
        StoreError,
    )


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shardeval' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names only (what ``__all__`` lists), as a notebook's completion shows them."""
    return sorted(__all__)
