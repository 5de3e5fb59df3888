"""Typed, frozen results: ``float(result)`` is the headline value, ``result.to_dict()`` the
JSON report's content exactly (no NaN or inf: JSON has none; they are ``None``), and
``result.summary()`` a few lines for people."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from shardeval.pipeline.likelihood.ess import ESSResult
    from shardeval.pipeline.likelihood.nll import NLLResult


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON would hold it: dicts, lists, str, int, float, bool, None; non-finite
    floats as None, numpy scalars and arrays as Python numbers and lists, dataclasses as
    dicts of their fields."""
    if isinstance(obj, Result):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass(frozen=True)
class Result:
    """Base of every result: subclasses name their headline field in ``headline``."""

    headline: ClassVar[str] = ""

    def __float__(self) -> float:
        return float(getattr(self, self.headline))

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's content."""
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)}

    def summary(self) -> str:
        return f"{self.headline} {float(self):.6g}"


#: What a report's repr shows beside its headline, when its JSON has them.
_REPR_FIELDS = ("n", "n_real", "n_gen", "d", "output")


@dataclass(frozen=True)
class Report(Result):
    """What a command computed: its typed results, and the JSON report built from them once
    (so ``to_dict()`` is the very content ``--out`` writes).

    Attributes:
        metric: what was computed (``fid``, ``kid``, ``nll``…; several joined by commas).
        results: the typed result of each metric by name (e.g. a
            :class:`~shardeval.pipeline.mmd.kid.KIDResult` under ``kid``).
        data: the JSON report.
        text: the summary for people.
        value: the headline value (``float(report)``); None where there is none (statistics:
            ``float()`` then raises a TypeError saying what to read instead).

    Example:
        >>> r = Report("toy", {}, {"metric": "toy", "toy": 1.5}, "toy 1.5", 1.5)
        >>> float(r), r.to_dict()["toy"], r.summary()
        (1.5, 1.5, 'toy 1.5')
    """

    metric: str
    results: dict[str, Any]
    data: dict[str, Any] = field(repr=False)
    text: str = field(repr=False)
    value: float | None = math.nan

    headline: ClassVar[str] = "value"

    def __float__(self) -> float:
        if self.value is None:
            # Statistics summarise rows; no one number stands for them, and the row count
            # passed for one would read as a metric's value.
            raise TypeError(
                f"a {self.metric} report has no headline number: read report['moments'] "
                "(its n, mean and m2) or report.to_dict()['n'] (the rows summarised)"
            )
        return float(self.value)

    def __repr__(self) -> str:
        """Short, for a notebook: the metric, its headline and a few sizes (never arrays)."""
        shown = [f"metric={self.metric!r}"]
        if self.value is not None:
            shown.append(f"value={self.value:.6g}")
        first = self.metric.split(",")[0]
        section = self.data.get(first)
        fields = {key: self.data.get(key) for key in _REPR_FIELDS}
        if isinstance(section, dict):  # a metric's section: its sizes, named without prefix
            fields |= {k: section.get(f"{first}_{k}") for k in ("n", "n_real")}
        for key, value in fields.items():
            if isinstance(value, int | float | str) and not isinstance(value, bool):
                shown.append(f"{key}={value!r}")
        return f"Report({', '.join(shown)})"

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(jsonable(self.data))

    def summary(self) -> str:
        return self.text

    def __getitem__(self, name: str) -> Any:
        return self.results[name]


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
    given: str = ""  # the input as the user gave it, when not the store read (images)

    @property
    def shown(self) -> str:
        """How the summary names it: images by the source given, not their cache entry."""
        return self.given or self.location


@dataclass(frozen=True)
class MadeNotes:
    """What a report says of how its features were made and where they came from.

    Attributes:
        data: the JSON report's ``features_made_by`` (role → network, encoder, resize, weights
            digest, file and status, or None when nothing is recorded) and, when image inputs
            went through the feature cache, ``feature_cache`` (one entry per image input).
        warnings: for the report's ``warnings``.
        lines: for the summary.
    """

    data: dict[str, Any]
    warnings: list[str]
    lines: list[str]


def cache_use(cached: Any) -> dict[str, Any]:
    """One image input's use of the feature cache, for the JSON report: the images, the entry
    and its key, whether it was reused, what decided that (``checked``: ``listing`` — names,
    sizes, modification times — or ``bytes`` with ``verify``), whether it was extracted again
    in its place, and the images left out with ``skip_bad``."""
    result = cached.extraction
    return {
        "images": cached.images,
        "entry": cached.path,
        "key": cached.key,
        "reused": cached.reused,
        "checked": "bytes" if cached.content is not None else "listing",
        "extracted_again": cached.stale,
        "skipped": [{"name": name, "reason": reason} for name, reason in result.skipped],
    }


def features_made(sides: dict[str, Any], cached: Sequence[Any] = ()) -> MadeNotes:
    """How each side's features were made, from what it records (a feature source's
    description, a statistics file's attributes), and how image inputs went through the
    feature cache (:class:`~shardeval.pipeline.images.cache.CachedFeatures`).

    The summary gets one line per side when any records how its features were made, a line
    per cache entry reused on its listing alone (its images' bytes not read), and each
    warning: weights that are not the published file, sides made differently, images left
    out as unreadable.

    Example:
        >>> notes = features_made({"real": {}, "gen": None})
        >>> notes.data, notes.warnings, notes.lines
        ({'features_made_by': {'real': None, 'gen': None}}, [], [])
    """
    from shardeval.pipeline.images.provenance import made_by, provenance_warnings

    made = {role: made_by(described) for role, described in sides.items()}
    warned = provenance_warnings(made)
    lines = []
    if any(m is not None for m in made.values()):
        width = max(len(role) for role in made)
        lines = [
            f"  {role:<{width}} made by {m.text() if m is not None else 'not recorded'}"
            for role, m in made.items()
        ]
    data: dict[str, Any] = {
        "features_made_by": {r: None if m is None else m.to_dict() for r, m in made.items()}
    }
    if cached:
        data["feature_cache"] = [cache_use(c) for c in cached]
    for use in data.get("feature_cache", []):
        if use["reused"] and use["checked"] == "listing":
            lines.append(
                f"  {use['images']}: features reused from the cache on its listing alone "
                "(names, sizes, modification times; the images' bytes were not read, as "
                "verify would)"
            )
        if use["skipped"]:
            first = use["skipped"][0]["reason"]
            more = len(use["skipped"]) - 1
            warned.append(
                f"{len(use['skipped'])} image(s) of {use['images']} left out as unreadable "
                f"(skip_bad): {first}" + (f"; and {more} more (feature_cache)" if more else "")
            )
    lines += [f"  warning: {w}" for w in warned]
    return MadeNotes(data, warned, lines)


def engine_text(engine: dict[str, Any]) -> str:
    """Where a report's numbers were computed, after its seconds ("on threads scheduler (2
    threads)"); statistics on both sides ran nothing on an engine."""
    scheduler = str(engine.get("scheduler"))
    if scheduler == "distributed":
        return f"on distributed scheduler {engine.get('address')}"
    if scheduler.startswith("none"):  # {"scheduler": "none (statistics only)"}
        return "(statistics only: nothing computed on an engine)"
    return f"on {scheduler} scheduler ({engine.get('threads')} threads)"


def nll_dict(r: NLLResult, interval: tuple[float, float] | None = None) -> dict[str, Any]:
    """The report's figures of an NLL, with the ends of its interval (None without «ci»)."""
    data = asdict(r)
    data["nonfinite_dropped"] = data.pop("nonfinite")
    extra = data.pop("extra")
    low, high = interval or (None, None)
    return {
        **data,
        "nats_per_dim": r.nats_per_dim,
        "bits_per_dim": r.bits_per_dim,
        **extra,
        "ci_low": low,
        "ci_high": high,
    }


def _per_row_line(per_row: dict[str, Any]) -> str:
    q, c = per_row["ess_over_k_quantiles"], per_row["khat_counts"]
    return (
        f"  per row (K={per_row['k']}): ESS/K median {q[0.5]:.3g}, 5% {q[0.05]:.3g}; "
        f"k̂ good {c['good']}, usable {c['usable']}, unreliable {c['unreliable']}"
        + (f", undetermined {c['undetermined']}" if c.get("undetermined") else "")
    )


def nll_summary(
    r: NLLResult,
    seconds: float,
    interval: tuple[float, float] | None = None,
    level: float = 0.0,
) -> str:
    from shardeval.pipeline.likelihood.nll import INTERVAL_GIVEN

    lines = [
        f"NLL {r.nll:.6g} nats/sample ± {r.standard_error:.3g} (s.e.)   [{r.method}, n={r.n:,}]"
    ]
    if interval is not None:
        lines.append(
            f"  {level:.0%} interval [{interval[0]:.6g}, {interval[1]:.6g}] nats/sample "
            f"(normal, from the standard error; {INTERVAL_GIVEN[r.method]})"
        )
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
    if r.method == "gmm":
        e = r.extra
        lines.append(
            f"  Gaussian mixture K={e['k']} ({e['covariance']}) on {e['fit_rows']:,} rows: "
            f"{e['iterations']} EM iteration(s), "
            + ("converged" if e["converged"] else f"NOT converged (tol {e['tol']:g})")
            + f"; train log-likelihood {e['train_loglik'][-1]:.6g}/row; BIC {e['bic']:.6g}"
        )
    lines.append(f"  {seconds:.2f} s")
    return "\n".join(lines)


def ess_dict(r: ESSResult) -> dict[str, Any]:
    data = asdict(r)
    data["nonfinite_dropped"] = data.pop("nonfinite")
    return data


def ess_summary(r: ESSResult, seconds: float, level: float = 0.0) -> str:
    from shardeval.pipeline.likelihood.ess import CI_KHAT_MAX

    lines = [
        f"ESS {r.ess:,.1f} of {r.n:,} weights (ESS/N {r.ess_fraction:.4g}); "
        f"largest normalised weight {r.max_weight:.3g}",
        f"  Pareto k̂ {r.khat:.3f} ({r.khat_reading}; tail of {r.tail:,}"
        + (f", r_eff {r.reff:g})" if r.reff != 1.0 else ")"),
    ]
    if r.ess_ci_withheld is not None:
        lines.append(f"  {r.ess_ci_withheld}")
    elif r.ess_ci_low is not None and r.ess_ci_high is not None:
        lines.append(
            f"  {level:.0%} interval of ESS [{r.ess_ci_low:,.1f}, {r.ess_ci_high:,.1f}] "
            f"± {r.ess_standard_error:,.3g} (s.e.); ESS/N [{r.ess_fraction_ci_low:.4g}, "
            f"{r.ess_fraction_ci_high:.4g}] (delta method, normal; k̂ < {CI_KHAT_MAX})"
        )
    if r.per_row:
        lines.append(_per_row_line(r.per_row))
    lines.append(f"  {seconds:.2f} s")
    return "\n".join(lines)
