"""The option checks of the training-loop pair metrics (:class:`shardeval.api.streaming.
PairMetrics`): each metric's options as its plug-in declares them, refused where the metric is
not asked for; what they compute goes through the plug-ins (:mod:`shardeval.api.evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shardeval.api.functions import (
    refuse,
)

#: The options of each pair metric (its declaration's), refused when it is not asked for.
_OWNED = {
    "kid": ("subsets", "subset_size", "seed"),
    "cmmd": ("sigma", "unbiased"),
    "prdc": ("k", "pr_k"),
}


def _declared(metric: str, given: dict[str, Any]) -> dict[str, Any]:
    """A metric's options as its plug-in declares them: given ones checked, defaults filled."""
    from shardeval.pipeline.metrics import METRICS

    cls = METRICS[metric]
    known = {p.name for p in cls.params}
    return cls({k: v for k, v in given.items() if k in known and v is not None}).options


def _params(wanted: Sequence[str], given: dict[str, Any]) -> dict[str, Any]:
    from shardeval.pipeline.pairwise.passes import CMMDParams, KIDParams, PRDCParams

    for metric, names in _OWNED.items():
        if metric not in wanted:
            # seed is fid_inf's too: metrics() words its own refusal
            shared = [n for n in names if n != "seed"]
            refuse(given, shared, f"apply to {metric}, which is not asked for")  # one metric
    params: dict[str, Any] = {}
    if "kid" in wanted:
        params["kid"] = KIDParams()
    if "cmmd" in wanted:
        cmmd = _declared("cmmd", given)
        params["cmmd"] = CMMDParams(sigma=cmmd["sigma"], unbiased=cmmd["unbiased"])
    if "prdc" in wanted:
        prdc = _declared("prdc", given)
        params["prdc"] = PRDCParams(k=prdc["k"], pr_k=prdc["pr_k"])
    return params


def _refuse_fp32_sums(chosen: Sequence[str], precision: str | None) -> None:
    """KID and CMMD alone: fp64 is what they do; fp32 they cannot honour (the one-shot
    functions' refusal, in their words)."""
    from shardeval.api.evaluate import _refuse_untaken, metric_instances

    _refuse_untaken(metric_instances(list(chosen), {}), {"precision": precision})


#: The engine and input options of the pair-metric functions, after the metric's own.
_ENGINE_PARAMS = (
    ("encoder", "str | None", "the encoder of image inputs (inception, dinov2-vitl14, …)"),
    ("resize", "str | None", "the Inception's resize of image inputs"),
    ("weights", "str | None", "the encoder's weights (default: the standard caches)"),
    ("batch_size", "int | None", "images per forward pass (default 32)"),
    ("cache_root", "str | None", "the feature cache of image inputs"),
    (
        "verify",
        "bool | None",
        "reuse cached features of images only if the images' bytes match (reads them once)",
    ),
    ("skip_bad", "bool | None", "leave out images that cannot be decoded (named in the report)"),
    ("shard_rows", "int | None", "rows per block, one task each (default: about 32 MiB a block)"),
    ("array", "str | None", "the variable inside a Zarr group, xarray dataset or .npz"),
    ("split_every", "int | None", "fan-in of a balanced merge tree"),
    ("device", "str | None", "where kernels run: auto (default), cpu or cuda"),
    ("backend", "str | None", "auto (default), triton or torch"),
    ("precision", "str | None", "products of the PRDC decisions: fp32 (default) or fp64"),
    ("scheduler", "Any", "threads (default), sync, an address or a distributed.Client"),
    ("cluster", "str | None", "a cluster spec file: started, used, closed"),
    ("threads", "int | None", "threads of the threaded scheduler"),
    ("performance_report", "str | None", "file for Dask's performance report"),
    ("progress", "Callable[[int, int], None] | None", "called with (done, total)"),
    ("log", "Callable[[str], None] | None", "called with notices"),
)
