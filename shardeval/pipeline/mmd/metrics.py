"""The MMD family's plug-ins: KID of the generated set against the reference's features (exact
over all pairs, or by subsets), and CMMD against the reference's embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.errors import MetricOptionError
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.metrics.intervals import (
    NORMAL_CI,
    normal_interval,
    rows_for_target,
    se_target_lines,
    se_target_output,
    se_target_param,
)
from shardeval.pipeline.mmd import SIGMA, SUBSET_SEED, SUBSET_SIZE
from shardeval.pipeline.runoptions import POSITIVE, SEED_RANGE, Flag, Interval

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.paired import PairedDifference
    from shardeval.pipeline.metrics.sides import Side

#: KID and CMMD take float64 products of centred rows whatever «precision» says (no bound on
#: fp32 rounding holds their value to 1e-5): they take no «precision», and record fp64.
_FLOAT64_SUMS = ("device", "backend")


def reference(real: Side | None) -> Side:
    """The reference side of a metric that compares with one (the runner gives it)."""
    if real is None:
        raise ValueError("this metric compares the set with a reference, and none was given")
    return real


class KID(Metric):
    """Kernel Inception Distance (Bińkowski et al. 2018), :mod:`shardeval.pipeline.mmd.kid`:
    the unbiased MMD² over all pairs under k(x, y) = (x·y/d + 1)³, with its standard error and
    a rigorous bound on its rounding; ``subsets`` gives the peers' protocol."""

    name = "kid"
    title = "Kernel Inception Distance (KID)"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "subsets",
            Interval(int, 0, None, text="0 (all pairs) or a positive number of subsets"),
            0,
            "0: the unbiased estimator over all pairs; S: the peers' protocol, S random subsets",
            "S",
        ),
        Param(
            "subset_size",
            Interval(int, 2, None),
            SUBSET_SIZE,
            "rows per subset",
            "M",
            applies_with="subsets",
        ),
        Param(
            "seed",
            SEED_RANGE,
            SUBSET_SEED,
            "seed of the subsets (torch-fidelity's)",
            "SEED",
            applies_with="subsets",
        ),
        NORMAL_CI,
        se_target_param("kid"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("kid", "", "squared MMD under (x·y/d + 1)³"),
        Output("kid_standard_error", "", "its standard error (all pairs) or std over subsets"),
        Output("kid_n", "rows", "rows of the generated set"),
        Output("kid_n_real", "rows", "rows of the reference"),
        Output("kid_rounding_bound", "", "bound on its distance from exact arithmetic"),
        Output("kid_ci_low", "", "lower end of the interval («ci»)", optional=True),
        Output("kid_ci_high", "", "upper end of the interval («ci»)", optional=True),
        se_target_output("kid"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (Plot("KID over steps", "steps", ("kid",), "KID"),)
    needs_reference_features = True
    run_options = _FLOAT64_SUMS
    products = "fp64"

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        if self.options["ci"] and self.options["subsets"]:
            raise MetricOptionError(
                "«ci» applies to the exact estimator over all pairs, not to «subsets»: the "
                "spread over subsets is not the standard error of their mean"
            )

    def declines(self) -> dict[str, str]:
        if not self.options["subsets"]:
            return {}
        why = "apply to the exact estimator, not to «subsets»"
        return {"split_every": why, "device": why, "backend": why}

    def sample_request(self) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import KIDParams

        return {} if self.options["subsets"] else {"kid": KIDParams()}

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import kid_subsets

        real = reference(real)
        if self.options["subsets"]:
            result = kid_subsets(
                real.rows(),
                gen.rows(),
                subsets=self.options["subsets"],
                subset_size=self.options["subset_size"],
                seed=self.options["seed"],
                engine=context.engine,
                progress=context.progress,
            )
        else:
            result = context.samples(real, gen)["kid"]
        low = high = None
        if self.options["ci"]:
            low, high = normal_interval(result.kid, result.standard_error, self.options["ci"])
        rows = rows_for_target(self.options, result.standard_error, result.n_gen)
        return {
            "kid": result.kid,
            "kid_standard_error": result.standard_error,
            "kid_n": result.n_gen,
            "kid_n_real": result.n_real,
            "kid_rounding_bound": result.rounding_bound,
            "kid_ci_low": low,
            "kid_ci_high": high,
            "kid_rows_for_se_target": rows,
        }

    def check_difference(self) -> None:
        if self.options["subsets"]:
            raise MetricOptionError(
                "a comparison takes KID's exact estimator over all pairs, not «subsets»: the "
                "spread over subsets is not the standard error of their difference"
            )

    def difference(
        self,
        real: Side,
        gen_a: Side,
        gen_b: Side,
        context: Context,
        outputs: tuple[dict[str, Any], dict[str, Any]],
    ) -> PairedDifference:
        """KID(real, A) − KID(real, B), its standard error from the Hoeffding decomposition of
        the U-statistics (:func:`~shardeval.pipeline.mmd.kid.mmd2_difference_se`: the term
        within the reference cancels, the two cross terms covary through the reference's
        rows), read from the pair sums of the two passes; a normal interval."""
        from shardeval.pipeline.metrics.paired import PairedDifference
        from shardeval.pipeline.mmd.kid import mmd2_difference_se

        self.check_difference()
        a, b = outputs
        ra, rb = (context.samples(real, g)["kid"] for g in (gen_a, gen_b))
        if ra.sums is None or rb.sums is None:  # unreachable: all pairs record their sums
            raise ValueError("KID's pass did not keep its pair sums")
        se = mmd2_difference_se(ra.sums[1:], rb.sums[1:], ra.n_real, ra.n_gen, rb.n_gen)
        level = self.options["ci"]
        difference = a["kid"] - b["kid"]
        low, high = normal_interval(difference, se, level)
        method = (
            "Hoeffding decomposition of the U-statistics over all pairs: the reference's own "
            "term cancels, the two cross terms covary through the reference's rows; normal "
            "interval"
        )
        return PairedDifference(
            "kid",
            a["kid"],
            b["kid"],
            difference,
            se,
            low,
            high,
            level,
            method,
            a["kid_standard_error"],
            b["kid_standard_error"],
        )

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o, opt = outputs, self.options
        how = (
            f"mean ± std over {opt['subsets']} subsets of {opt['subset_size']} (seed {opt['seed']})"
            if opt["subsets"]
            else "unbiased, all pairs"
        )
        lines = [
            f"KID {o['kid']:.6g} ± {o['kid_standard_error']:.3g}   [{how}; kernel (x·y/d + 1)^3;"
            f" rounding ≤ {o['kid_rounding_bound']:.2g}]"
        ]
        if o.get("kid_ci_low") is not None:
            lines.append(
                f"  {opt['ci']:.0%} interval [{o['kid_ci_low']:.6g}, {o['kid_ci_high']:.6g}] "
                "(normal, from the standard error of the U-statistics)"
            )
        return lines + se_target_lines(
            o.get("kid_rows_for_se_target"), opt["se_target"], o["kid_standard_error"]
        )


class CMMD(Metric):
    """CMMD (Jayasumana et al. 2024), :mod:`shardeval.pipeline.mmd.cmmd`: 1,000 × the squared
    MMD under exp(−‖x̂ − ŷ‖²/2σ²) on embeddings scaled to unit norm, over all pairs, with the
    standard error of its U-statistic (for the default V-statistic too, which differs from it
    by a bias of O(1/n): see the module) and, with «ci», the normal interval from it."""

    name = "cmmd"
    title = "CMMD (RBF MMD of CLIP embeddings)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("sigma", POSITIVE, SIGMA, "RBF bandwidth on unit-norm embeddings", "σ"),
        Param("unbiased", Flag(), False, "the U-statistic instead of the reference's V-statistic"),
        NORMAL_CI,
        se_target_param("cmmd"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("cmmd", "×10⁻³", "1000 × squared MMD under exp(−‖x̂−ŷ‖²/2σ²)"),
        Output(
            "cmmd_standard_error",
            "×10⁻³",
            "standard error of the U-statistic (Hoeffding; the V-statistic differs by O(1/n))",
        ),
        Output("cmmd_n", "rows", "rows of the generated set"),
        Output("cmmd_n_real", "rows", "rows of the reference"),
        Output("cmmd_rounding_bound", "×10⁻³", "bound on its distance from exact arithmetic"),
        Output("cmmd_clamped", "", "1: a V-statistic below 0 by rounding, reported as 0"),
        Output("cmmd_ci_low", "×10⁻³", "lower end of the interval («ci»)", optional=True),
        Output("cmmd_ci_high", "×10⁻³", "upper end of the interval («ci»)", optional=True),
        se_target_output("cmmd"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (Plot("CMMD over steps", "steps", ("cmmd",), "CMMD"),)
    needs_reference_features = True
    run_options = _FLOAT64_SUMS
    products = "fp64"

    def sample_request(self) -> dict[str, Any]:
        from shardeval.pipeline.pairwise.passes import CMMDParams

        return {"cmmd": CMMDParams(sigma=self.options["sigma"], unbiased=self.options["unbiased"])}

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        result = context.samples(reference(real), gen)["cmmd"]
        low = high = None
        if self.options["ci"]:
            low, high = normal_interval(result.cmmd, result.standard_error, self.options["ci"])
        return {
            "cmmd": result.cmmd,
            "cmmd_standard_error": result.standard_error,
            "cmmd_n": result.n_gen,
            "cmmd_n_real": result.n_real,
            "cmmd_rounding_bound": result.rounding_bound,
            "cmmd_clamped": int(result.clamped),
            "cmmd_ci_low": low,
            "cmmd_ci_high": high,
            "cmmd_rows_for_se_target": rows_for_target(
                self.options, result.standard_error, result.n_gen
            ),
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o, opt = outputs, self.options
        clamped = "; below 0 by rounding: 0" if o["cmmd_clamped"] else ""
        estimator = "U-statistic" if opt["unbiased"] else "V-statistic"
        lines = [
            f"CMMD {o['cmmd']:.6g} ± {o['cmmd_standard_error']:.3g}   [{estimator}, σ = "
            f"{opt['sigma']:g} on unit-norm embeddings, ×1000; rounding ≤ "
            f"{o['cmmd_rounding_bound']:.2g}{clamped}]"
        ]
        if o.get("cmmd_ci_low") is not None:
            about = "" if opt["unbiased"] else ", about the V-statistic's own mean"
            lines.append(
                f"  {opt['ci']:.0%} interval [{o['cmmd_ci_low']:.6g}, {o['cmmd_ci_high']:.6g}] "
                f"(normal, from the standard error of the U-statistic{about})"
            )
        return lines + se_target_lines(
            o.get("cmmd_rows_for_se_target"), opt["se_target"], o["cmmd_standard_error"]
        )
