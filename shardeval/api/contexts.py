"""The passes an evaluation shares: the context its metrics compute in, and the moments they
read, made for both sides at once before any metric computes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def metric_context(run: Any, instances: Sequence[Any], gen: Any, test: Any = None) -> Any:
    """The context the metrics ``instances`` compute in: the run's engine, options and
    progress, the pair metrics they want from one pass, whether «array» named what they
    read, and the held-out test set (a side, or None)."""
    from shardeval.pipeline.metrics import Context

    requests: dict[str, Any] = {}
    for m in instances:
        requests.update(m.sample_request())
    # «array», or an array passed in memory, names what every metric asked reads, when they
    # all read one kind (the Inception Score's logits, or features); else it is the features'.
    one_kind = len({m.reads for m in instances}) == 1
    in_memory = gen.in_memory
    array = run.options.get("array")
    named = (array is not None or in_memory) if one_kind else None
    return Context(
        run.engine,
        run.options["run_options"],
        run.progress,
        sample_requests=requests,
        named=named,
        test=test,
    )


def prefetch_passes(context: Any, instances: Sequence[Any], real: Any, gen: Any) -> None:
    """The moments every metric asked reads, of both sides at once (one task graph), unless
    another pass gives them (FID∞'s bands hold the generated side's)."""
    by_role = {"real": real, "gen": gen}
    wanted: dict[str, list[Any]] = {}
    for m in instances:
        for role in m.moment_roles():
            if by_role[role] is not None:
                wanted.setdefault(m.options.get("nonfinite", "error"), []).append(by_role[role])
    for m in instances:
        if m.name == "fid_inf":  # one read of GEN: FID∞'s bands, and GEN's moments for FID
            nonfinite = m.options["nonfinite"]
            together = gen in wanted.get(nonfinite, [])
            gen.bands(context, m.options["seed"], nonfinite, with_moments=together)
    for nonfinite, sides in wanted.items():
        context.prefetch_moments(list(dict.fromkeys(sides)), nonfinite)
