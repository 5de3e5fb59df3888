"""Typed results → JSON (machines) and a short summary (people)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.io.atomic import atomic_file, claim_output
from shardeval.pipeline.io.provenance import now_iso, versions

if TYPE_CHECKING:
    from shardeval.pipeline.fid.frechet import FrechetDistance
    from shardeval.pipeline.likelihood.ess import ESSResult
    from shardeval.pipeline.likelihood.nll import NLLResult


@dataclass(frozen=True)
class Side:
    """One input of a comparison: where from, how big, and whether its statistics merge."""

    role: str
    location: str
    n: int | None
    d: int
    shards: int
    kind: str  # "features" or "statistics"
    mergeable: bool = True
    nonfinite_dropped: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FIDReport:
    result: FrechetDistance
    real: Side
    gen: Side
    seconds: float
    engine: dict[str, Any]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "metric": "fid",
            "fid": r.fid,
            "mean_term": r.mean_term,
            "trace_term": r.trace_term,
            "trace_real": r.trace_real,
            "trace_gen": r.trace_gen,
            "trace_sqrt_product": r.trace_sqrt,
            "n_real": self.real.n,
            "n_gen": self.gen.n,
            "d": self.real.d,
            "shards": {"real": self.real.shards, "gen": self.gen.shards},
            "eigenvalues_clamped": {"count": r.clamped_count, "max_abs": r.clamped_max},
            "inputs": {"real": _side_dict(self.real), "gen": _side_dict(self.gen)},
            "warnings": list(dict.fromkeys([*r.warnings, *self.notes])),
            "engine": self.engine,
            "seconds": self.seconds,
            "created": now_iso(),
            "versions": versions(),
        }

    def summary(self) -> str:
        r = self.result
        lines = [
            f"FID {r.fid:.6g}   (mean term {r.mean_term:.6g} + trace term {r.trace_term:.6g})",
            f"  trace term = tr Σr {r.trace_real:.6g} + tr Σg {r.trace_gen:.6g} "
            f"- 2 tr √(Σr Σg) {r.trace_sqrt:.6g}",
        ]
        for side in (self.real, self.gen):
            n = f"{side.n:,}" if side.n is not None else "unknown"
            lines.append(
                f"  {side.role:<4} {side.location}  n={n} d={side.d:,} "
                f"shards={side.shards} ({side.kind})"
            )
        lines.append(
            f"  eigenvalues clamped: {r.clamped_count}"
            + (f" (largest {r.clamped_max:.3g})" if r.clamped_count else "")
        )
        lines.append(f"  {self.seconds:.2f} s on {_engine_text(self.engine)}")
        return "\n".join(lines)


def _side_dict(side: Side) -> dict[str, Any]:
    return {
        "location": side.location,
        "kind": side.kind,
        "n": side.n,
        "d": side.d,
        "shards": side.shards,
        "mergeable": side.mergeable,
        "nonfinite_dropped": side.nonfinite_dropped,
        "provenance": side.provenance,
    }


def _engine_text(engine: dict[str, Any]) -> str:
    if engine.get("scheduler") == "distributed":
        return f"distributed scheduler {engine.get('address')}"
    return f"{engine.get('scheduler')} scheduler ({engine.get('threads')} threads)"


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than emit invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n"


def is_json_report(path: str) -> bool:
    """Whether ``path`` holds a shardeval JSON report (never raises)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "metric" in data and "versions" in data


def claim_json(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Before computing: ``path`` may receive a JSON report (see :func:`claim_output`; a pipe,
    FIFO or device such as ``/dev/stdout`` is written in place, never read)."""
    claim_output(path, "shardeval JSON report", is_json_report, overwrite, streams=True)


def write_json(path: str | os.PathLike[str], data: dict[str, Any], overwrite: bool = False) -> None:
    """Write a report atomically; an existing file must be a report and ``overwrite`` given."""
    claim_json(path, overwrite)
    with atomic_file(path, "w") as fh:
        fh.write(to_json(data))


def nll_dict(r: NLLResult) -> dict[str, Any]:
    data = asdict(r)
    data["nonfinite_dropped"] = data.pop("nonfinite")
    extra = data.pop("extra")
    return {**data, "nats_per_dim": r.nats_per_dim, "bits_per_dim": r.bits_per_dim, **extra}


def _per_row_line(per_row: dict[str, Any]) -> str:
    q, c = per_row["ess_over_k_quantiles"], per_row["khat_counts"]
    return (
        f"  per row (K={per_row['k']}): ESS/K median {q[0.5]:.3g}, 5% {q[0.05]:.3g}; "
        f"k̂ good {c['good']}, usable {c['usable']}, unreliable {c['unreliable']}"
        + (f", undetermined {c['undetermined']}" if c.get("undetermined") else "")
    )


def nll_summary(r: NLLResult, seconds: float) -> str:
    lines = [
        f"NLL {r.nll:.6g} nats/sample ± {r.standard_error:.3g} (s.e.)   [{r.method}, n={r.n:,}]"
    ]
    if r.dims:
        lines.append(
            f"  {r.nats_per_dim:.6g} nats/dim, {r.bits_per_dim:.6g} bits/dim (D={r.dims:,})"
        )
    lines.append(
        f"  log-likelihood min {r.min_loglik:.6g}, max {r.max_loglik:.6g}; "
        f"non-finite dropped: {r.nonfinite}"
    )
    if "bandwidth" in r.extra:
        lines.append(
            f"  Parzen bandwidth {r.extra['bandwidth']:.6g} over {r.extra['samples']:,} samples"
            f" (non-finite samples dropped: {r.extra.get('samples_nonfinite_dropped', 0)})"
        )
    if "per_row" in r.extra:
        lines.append(_per_row_line(r.extra["per_row"]))
    lines.append(f"  {seconds:.2f} s")
    return "\n".join(lines)


def ess_dict(r: ESSResult) -> dict[str, Any]:
    data = asdict(r)
    data["nonfinite_dropped"] = data.pop("nonfinite")
    return data


def ess_summary(r: ESSResult, seconds: float) -> str:
    lines = [
        f"ESS {r.ess:,.1f} of {r.n:,} weights (ESS/N {r.ess_fraction:.4g}); "
        f"largest normalised weight {r.max_weight:.3g}",
        f"  Pareto k̂ {r.khat:.3f} ({r.khat_reading}; tail of {r.tail:,}"
        + (f", r_eff {r.reff:g})" if r.reff != 1.0 else ")"),
    ]
    if r.per_row:
        lines.append(_per_row_line(r.per_row))
    lines.append(f"  {seconds:.2f} s")
    return "\n".join(lines)
