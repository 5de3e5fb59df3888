"""Precision, recall, density and coverage of the generated set against the reference's
features, with conditional intervals («ci», :mod:`shardeval.pipeline.neighbours.intervals`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.metrics.intervals import CI_LEVEL, normal_interval, wilson_interval
from shardeval.pipeline.mmd.metrics import reference
from shardeval.pipeline.neighbours import CI_GROUPS, PR_K, K
from shardeval.pipeline.runoptions import Flag, Interval

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side

_NEIGHBOURS = Interval(int, 1, None)

#: The four values, what each standard error is conditional on, and its interval.
_VALUES = (
    ("precision", "the reference", "Wilson"),
    ("recall", "the generated set", "Wilson"),
    ("density", "the reference", "normal, ≥ 0"),
    ("coverage", "the reference", f"jackknife over {CI_GROUPS} groups of generated rows, t"),
)


def _interval_outputs() -> tuple[Output, ...]:
    outputs = []
    for value, given, _ in _VALUES:
        unit = "" if value == "density" else "fraction"
        outputs += [
            Output(
                f"prdc_{value}_standard_error",
                unit,
                f"its standard error given {given} («ci»; conditional)",
                optional=True,
            ),
            Output(f"prdc_{value}_ci_low", unit, "lower end of its interval («ci»)", optional=True),
            Output(
                f"prdc_{value}_ci_high", unit, "upper end of its interval («ci»)", optional=True
            ),
        ]
    return tuple(outputs)


class PRDC(Metric):
    """Kynkäänniemi et al. 2019 and Naeem et al. 2020, :mod:`shardeval.pipeline.neighbours.prdc`:
    exact over the full sets, every distance decision exact in float64."""

    name = "prdc"
    title = "Precision, recall, density and coverage"
    params: ClassVar[tuple[Param, ...]] = (
        Param("k", _NEIGHBOURS, K, "neighbours for density and coverage", "K"),
        Param("pr_k", _NEIGHBOURS, PR_K, "neighbours for precision and recall", "K"),
        Param(
            "ci",
            CI_LEVEL,
            0.0,
            "confidence level of intervals (e.g. 0.95), each conditional on one set: precision, "
            "density and coverage on the reference, recall on the generated set; 0: none",
            "LEVEL",
        ),
        Param(
            "per_sample",
            Flag(),
            False,
            "also report each generated row's realism score (Kynkäänniemi et al. 2019, Sec. 5)",
        ),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("prdc_precision", "fraction", "generated rows inside the reference's manifold"),
        Output("prdc_recall", "fraction", "reference rows inside the generated manifold"),
        Output("prdc_density", "", "mean count of reference balls holding a generated row / k"),
        Output("prdc_coverage", "fraction", "reference balls holding a generated row"),
        Output("prdc_n", "rows", "rows of the generated set"),
        Output("prdc_n_real", "rows", "rows of the reference"),
        Output("prdc_uncertain", "", "distance comparisons re-decided in float64"),
        *_interval_outputs(),
        Output(
            "prdc_realism",
            "",
            "each generated row's realism score: max over the reference rows of the smaller "
            "half of radii of radius / distance («per_sample»)",
            array=True,
            optional=True,
            per_row=True,
            worst="least realistic (lowest realism score)",
        ),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot(
            "Precision, recall, density and coverage over steps",
            "steps",
            ("prdc_precision", "prdc_recall", "prdc_density", "prdc_coverage"),
            "value",
        ),
    )
    needs_reference_features = True

    def sample_request(self) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import PRDCParams

        groups = CI_GROUPS if self.options["ci"] else 0
        params = PRDCParams(
            k=self.options["k"],
            pr_k=self.options["pr_k"],
            groups=groups,
            realism=bool(self.options["per_sample"]),
        )
        return {"prdc": params}

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        r = context.samples(reference(real), gen)["prdc"]
        out = {
            "prdc_precision": r.precision,
            "prdc_recall": r.recall,
            "prdc_density": r.density,
            "prdc_coverage": r.coverage,
            "prdc_n": r.n_gen,
            "prdc_n_real": r.n_real,
            "prdc_uncertain": r.uncertain,
            "prdc_realism": r.realism if self.options["per_sample"] else None,
        }
        level = self.options["ci"]
        for value, _, _ in _VALUES:
            for end in ("standard_error", "ci_low", "ci_high"):
                out[f"prdc_{value}_{end}"] = None
        if level and r.errors is not None:
            out |= self._intervals(r, level)
        return out

    @staticmethod
    def _intervals(r: Any, level: float) -> dict[str, float]:
        """Each value's standard error and interval (see
        :mod:`shardeval.pipeline.neighbours.intervals`)."""
        from scipy import stats

        e = r.errors
        low, high = normal_interval(r.density, e.density, level)
        t = float(stats.t.ppf((1 + level) / 2, e.groups - 1))
        ends = {
            "precision": wilson_interval(r.precision, r.n_gen, level),
            "recall": wilson_interval(r.recall, r.n_real, level),
            "density": (max(0.0, low), high),
            "coverage": (
                max(0.0, r.coverage - t * e.coverage),
                min(1.0, r.coverage + t * e.coverage),
            ),
        }
        out = {}
        for value, (low, high) in ends.items():
            out[f"prdc_{value}_standard_error"] = getattr(e, value)
            out[f"prdc_{value}_ci_low"] = low
            out[f"prdc_{value}_ci_high"] = high
        return out

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o, opt = outputs, self.options
        return [
            f"precision {o['prdc_precision']:.4f}  recall {o['prdc_recall']:.4f}  "
            f"(k = {opt['pr_k']})",
            f"density {o['prdc_density']:.4f}  coverage {o['prdc_coverage']:.4f}  (k = {opt['k']})",
            *self._interval_lines(o),
        ]

    def _interval_lines(self, o: dict[str, Any]) -> list[str]:
        if o.get("prdc_precision_standard_error") is None:
            return []
        lines = [
            f"  {self.options['ci']:.0%} intervals, conditional (each holds the other set "
            "fixed; a spread over both sets is larger):"
        ]
        for value, given, how in _VALUES:
            p = f"prdc_{value}"
            lines.append(
                f"    {value} ± {o[p + '_standard_error']:.3g}  [{o[p + '_ci_low']:.4f}, "
                f"{o[p + '_ci_high']:.4f}]  (given {given}; {how})"
            )
        return lines
