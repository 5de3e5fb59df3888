"""The FID family's plug-ins: FID of the generated set against the reference, with the
covariance eigen-spectra beside it, FID∞ (Chong & Forsyth 2020), and sFID (Nash et al. 2021),
FID's computation on the Inception's spatial features."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.errors import MetricOptionError
from shardeval.pipeline.fid import SEED
from shardeval.pipeline.fid.gaussian import Gaussian
from shardeval.pipeline.fid.jackknife import CI_SEED as JACKKNIFE_SEED
from shardeval.pipeline.fid.jackknife import GROUPS
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot, spectrum
from shardeval.pipeline.metrics.intervals import (
    CI_LEVEL,
    rows_for_target,
    se_target_lines,
    se_target_output,
    se_target_param,
)
from shardeval.pipeline.options import NONFINITE_POLICIES
from shardeval.pipeline.runoptions import SEED_RANGE, Interval, OneOf

if TYPE_CHECKING:
    from shardeval.pipeline.fid.frechet import FrechetDistance
    from shardeval.pipeline.metrics.paired import PairedDifference
    from shardeval.pipeline.metrics.sides import Side

NONFINITE = Param(
    "nonfinite", OneOf(NONFINITE_POLICIES), "error", "rows with NaN/inf: fail, or drop and count"
)

#: The interval's options (:mod:`shardeval.pipeline.fid.jackknife`).
CI = Param(
    "ci",
    CI_LEVEL,
    0.0,
    "confidence level of an interval by the delete-a-group jackknife (e.g. 0.95); 0: none",
    "LEVEL",
)
CI_GROUPS = Param(
    "ci_groups", Interval(int, 2, None), GROUPS, "groups of rows of the jackknife", "G", "ci"
)
CI_SEED = Param("ci_seed", SEED_RANGE, JACKKNIFE_SEED, "seed of the rows' groups", "S", "ci")


def rank_deficit(real_n: int | None, gen_n: int | None, d: int) -> int:
    """Zero eigenvalues the sides' row counts leave: a covariance of n ≤ d rows has rank at
    most n − 1, so d − n + 1 of its eigenvalues are zero, and rounding puts about half of
    them below zero, where they are clamped (expected, not an alarm). The clamped count spans
    Σ_g's factor and the product matrix, whose zeros together number d − min(rank Σ_r, rank
    Σ_g): the larger of the sides' d − n + 1, never their sum."""
    return max((max(0, d - n + 1) for n in (real_n, gen_n) if n is not None), default=0)


class FID(Metric):
    """Fréchet distance between the reference Gaussian and the generated set's (Heusel et al.
    2017), :mod:`shardeval.pipeline.fid.frechet`.

    Either side may be statistics. Where fp32 products left eigenvalues of the product matrix
    below zero (a covariance of lower rank than d, as a set of repeated rows has, whose zero
    eigenvalues fp32 rounding cannot resolve), the moments of the sides that hold rows are
    computed again with float64 products, and a warning says so; rows a training loop merged
    as they came cannot be, and the warning says that instead.
    """

    name = "fid"
    title = "Fréchet distance (FID)"
    params: ClassVar[tuple[Param, ...]] = (
        NONFINITE,
        CI,
        CI_GROUPS,
        CI_SEED,
        se_target_param("fid"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("fid", "", "Fréchet distance to the reference"),
        Output("fid_mean_term", "", "‖μ_r − μ_g‖²"),
        Output("fid_trace_term", "", "tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^½"),
        Output("fid_trace_real", "", "tr Σ_r"),
        Output("fid_trace_gen", "", "tr Σ_g"),
        Output("fid_trace_sqrt_product", "", "tr (Σ_r Σ_g)^½"),
        Output("fid_n", "rows", "rows of the generated set (missing: not recorded)", optional=True),
        Output(
            "fid_n_real", "rows", "rows of the reference (missing: not recorded)", optional=True
        ),
        Output("fid_nonfinite_dropped", "rows", "generated rows left out as non-finite"),
        Output("fid_nonfinite_dropped_real", "rows", "reference rows left out as non-finite"),
        Output("fid_eigenvalues_clamped", "", "eigenvalues below zero by rounding, set to 0"),
        Output("fid_clamped_max", "", "the largest magnitude among them"),
        Output("fid_rank_deficit", "", "zero eigenvalues that n ≤ d leaves (clamping expected)"),
        Output("fid_spectrum", "", "eigenvalues of the generated covariance", array=True),
        Output("fid_reference_spectrum", "", "eigenvalues of the reference covariance", True),
        Output("fid_standard_error", "", "jackknife standard error («ci»)", optional=True),
        Output("fid_ci_low", "", "lower end of the interval, at least 0 («ci»)", optional=True),
        Output("fid_ci_high", "", "upper end of the interval («ci»)", optional=True),
        Output("fid_jackknife_bias", "", "jackknife estimate of FID's bias («ci»)", optional=True),
        se_target_output("fid"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("FID over steps", "steps", ("fid",), "FID"),
        Plot(
            "Covariance eigen-spectra (latest entry and reference)",
            "curve",
            ("fid_reference_spectrum", "fid_spectrum"),
            "eigenvalue",
            log=True,
        ),
    )
    takes_statistics = ("real", "gen")
    run_options = ("device", "backend", "precision", "nonfinite")

    def moment_roles(self) -> tuple[str, ...]:
        # With «ci» the sides' groups are read instead, and give the moments too.
        return () if self.options["ci"] else ("real", "gen")

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.fid.frechet import (
            frechet_distance,
            warn_if_rounding_reached_spectrum,
        )

        if real is None:
            raise ValueError("FID compares with a reference")
        nonfinite = self.options["nonfinite"]
        sides = (real, gen)
        precision: dict[str, str | None] = {}  # with «ci»: the products each side's groups took
        read = self._reader(context, gen, precision)
        (r, real_dropped), (g, dropped) = (read(s) for s in sides)
        result = frechet_distance(r, g)
        fp32 = [s for s in sides if s.products(context) == "fp32"]
        if result.clamped_count and fp32 and all(s.can_recompute for s in fp32):
            # fp32 rounding reached the spectrum: zero eigenvalues that fp32 products cannot
            # tell from their rounding (1e-3 off here), float64 products can. Recompute.
            clamped = result.clamped_count
            if not self.options["ci"]:
                context.prefetch_moments(fp32, nonfinite, "fp64")
            (r, real_dropped), (g, dropped) = (
                read(s, "fp64" if s in fp32 else None) for s in sides
            )
            result = frechet_distance(r, g)
            warnings.warn(
                f"recomputed with float64 products: with fp32 products {clamped} eigenvalues "
                "fell below zero (a covariance of lower rank than d, as a set of repeated rows "
                "has)",
                UserWarning,
                stacklevel=2,
            )
        else:
            warn_if_rounding_reached_spectrum(result, bool(fp32))
        for message in result.warnings:
            warnings.warn(message, UserWarning, stacklevel=2)
        outputs = self.outputs_of(result, r, g, real_dropped, dropped)
        if self.options["ci"]:
            outputs |= self.interval(result.fid, real, r, gen, context, precision, g.n)
        return outputs

    def _reader(self, context: Context, gen: Side, precision: dict[str, str | None]) -> Any:
        """How a side's Gaussian is read: its moments; with «ci», its groups merged, so that
        the estimate and its leave-one-group-out replicates come from one read of the rows
        and from the same states (``precision`` records the products each side's took)."""
        o = self.options
        if not o["ci"]:
            return lambda side, precision=None: side.gaussian(context, o["nonfinite"], precision)
        if not gen.can_recompute:
            raise MetricOptionError(
                f"«ci» needs the generated rows, and {gen.shown!r} holds statistics: give the "
                "feature store"
            )

        def read(side: Side, products: str | None = None) -> tuple[Gaussian, int]:
            if not side.can_recompute:  # a reference of statistics, held fixed
                return side.gaussian(context, o["nonfinite"])
            precision[side.role] = products
            grouped = side.groups(context, o["ci_groups"], o["ci_seed"], o["nonfinite"], products)
            return Gaussian.from_moments(grouped.whole(), side.location), grouped.nonfinite.count

        return read

    def interval(
        self,
        estimate: float,
        real: Side,
        gaussian: Any,
        gen: Side,
        context: Context,
        precision: dict[str, str | None],
        n: int,
    ) -> dict[str, Any]:
        """The jackknife's outputs: both sides' rows in groups, or the generated side's
        against a reference of statistics held fixed (the groups read for the estimate,
        cached in the sides); ``n``: the generated rows, which «se_target» scales."""
        from shardeval.pipeline.fid.jackknife import fid_jackknife

        o = self.options
        args = (context, o["ci_groups"], o["ci_seed"], o["nonfinite"])
        reference = real.groups(*args, precision.get("real")) if real.can_recompute else gaussian
        jack = fid_jackknife(
            estimate,
            reference,
            gen.groups(*args, precision.get("gen")),
            o["ci"],
            (real.location, gen.location),
            context.engine,
        )
        return {
            "fid_standard_error": jack.standard_error,
            # FID ≥ 0: the t interval's low end, which can reach below 0 when FID is small
            # beside its error, is clipped there (coverage can only grow).
            "fid_ci_low": max(0.0, jack.low),
            "fid_ci_high": jack.high,
            "fid_jackknife_bias": jack.bias,
            "fid_rows_for_se_target": rows_for_target(o, jack.standard_error, n),
        }

    def difference(
        self,
        real: Side,
        gen_a: Side,
        gen_b: Side,
        context: Context,
        outputs: tuple[dict[str, Any], dict[str, Any]],
    ) -> PairedDifference:
        """FID(real, A) − FID(real, B) by the delete-a-group jackknife, group g dropped from
        the reference and from both sets at once
        (:func:`~shardeval.pipeline.fid.jackknife.fid_difference_jackknife`): the groups
        :meth:`interval` made for each set's own interval. A reference of statistics is held
        fixed (the interval is conditional on it)."""
        from shardeval.pipeline.fid.jackknife import fid_difference_jackknife
        from shardeval.pipeline.metrics.paired import PairedDifference

        o = self.options
        a, b = outputs
        args = (context, o["ci_groups"], o["ci_seed"], o["nonfinite"])
        fixed = not real.can_recompute
        reference = real.gaussian(context, o["nonfinite"])[0] if fixed else real.groups(*args)
        jack = fid_difference_jackknife(
            a["fid"] - b["fid"],
            reference,
            gen_a.groups(*args),
            gen_b.groups(*args),
            o["ci"],
            (real.location, gen_a.location, gen_b.location),
            context.engine,
        )
        method = (
            f"delete-a-group jackknife over {o['ci_groups']} groups of rows (a hash of each "
            f"row's index, seed {o['ci_seed']}), group g dropped from the reference and both "
            f"sets at once; t interval with {o['ci_groups'] - 1} degrees of freedom"
        )
        if fixed:
            method += "; the reference is statistics, held fixed: the interval is conditional on it"
        return PairedDifference(
            "fid",
            a["fid"],
            b["fid"],
            a["fid"] - b["fid"],
            jack.standard_error,
            jack.low,
            jack.high,
            o["ci"],
            method,
            a["fid_standard_error"],
            b["fid_standard_error"],
        )

    @staticmethod
    def outputs_of(
        result: FrechetDistance, real: Any, gen: Any, real_dropped: int, dropped: int
    ) -> dict[str, Any]:
        """The declared outputs of ``result``, the distance between the Gaussians ``real``
        and ``gen`` (``real_dropped``, ``dropped``: their rows left out as non-finite)."""
        return {
            "fid": result.fid,
            "fid_mean_term": result.mean_term,
            "fid_trace_term": result.trace_term,
            "fid_trace_real": result.trace_real,
            "fid_trace_gen": result.trace_gen,
            "fid_trace_sqrt_product": result.trace_sqrt,
            "fid_n": gen.n,
            "fid_n_real": real.n,
            "fid_nonfinite_dropped": dropped,
            "fid_nonfinite_dropped_real": real_dropped,
            "fid_eigenvalues_clamped": result.clamped_count,
            "fid_clamped_max": result.clamped_max,
            "fid_rank_deficit": rank_deficit(real.n, gen.n, gen.d),
            "fid_spectrum": spectrum(gen.cov, f"the covariance of {gen.source!r}"),
            "fid_reference_spectrum": spectrum(real.cov, f"the covariance of {real.source!r}"),
            "fid_standard_error": None,
            "fid_ci_low": None,
            "fid_ci_high": None,
            "fid_jackknife_bias": None,
            "fid_rows_for_se_target": None,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o = outputs
        clamped = o["fid_eigenvalues_clamped"]
        text = "0"
        if clamped:
            text = f"{clamped:,} (largest {o['fid_clamped_max']:.3g})"
            zeros = o["fid_rank_deficit"]
            if clamped <= zeros:
                text += f"; expected: n ≤ d leaves d − n + 1 zero eigenvalues ({zeros:,} here)"
        return [
            f"FID {o['fid']:.6g}   (mean term {o['fid_mean_term']:.6g} + trace term "
            f"{o['fid_trace_term']:.6g})",
            f"  trace term = tr Σr {o['fid_trace_real']:.6g} + tr Σg {o['fid_trace_gen']:.6g} "
            f"- 2 tr √(Σr Σg) {o['fid_trace_sqrt_product']:.6g}",
            f"  eigenvalues clamped: {text}",
            *self._interval_lines(o),
        ]

    def _interval_lines(self, o: dict[str, Any]) -> list[str]:
        opt = self.options
        if o.get("fid_standard_error") is None:
            return []
        return [
            f"  ± {o['fid_standard_error']:.3g} (standard error); {opt['ci']:.0%} interval "
            f"[{o['fid_ci_low']:.6g}, {o['fid_ci_high']:.6g}]; jackknife bias "
            f"{o['fid_jackknife_bias']:.3g}: delete-a-group jackknife over {opt['ci_groups']} "
            f"groups of rows (a hash of each row's index, seed {opt['ci_seed']})",
            *se_target_lines(
                o.get("fid_rows_for_se_target"), opt["se_target"], o["fid_standard_error"]
            ),
        ]


class FIDInfinity(Metric):
    """:mod:`shardeval.pipeline.fid.infinity`: FID at 15 nested subset sizes of the generated
    set, extrapolated to 1/N = 0. Its one pass over the generated rows also gives their
    moments, so FID beside it takes no second pass."""

    name = "fid_inf"
    title = "FID∞ (FID extrapolated to infinitely many samples)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("seed", SEED_RANGE, SEED, "seed of the nested subsets", metavar="S"),
        NONFINITE,
        CI,
        CI_GROUPS,
        CI_SEED,
        se_target_param("fid_inf"),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("fid_inf", "", "intercept of FID_N against 1/N"),
        Output("fid_inf_slope", "", "slope b of FID_N = FID∞ + b/N"),
        Output("fid_inf_r2", "", "R² of the line"),
        Output("fid_inf_fid", "", "FID of the whole generated set"),
        Output("fid_inf_n", "rows", "rows of the generated set"),
        Output("fid_inf_sizes", "rows", "sizes of the nested subsets", array=True),
        Output("fid_inf_fids", "", "FID at each size", array=True),
        Output("fid_inf_standard_error", "", "standard error («ci»)", optional=True),
        Output("fid_inf_ci_low", "", "lower end of the interval («ci»)", optional=True),
        Output("fid_inf_ci_high", "", "upper end of the interval («ci»)", optional=True),
        se_target_output("fid_inf"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("FID∞ and FID over steps", "steps", ("fid_inf", "fid_inf_fid"), "FID"),
        Plot("FID at the nested sizes (latest entry)", "curve", ("fid_inf_fids",), "FID"),
    )
    takes_statistics = ("real",)
    run_options = ("device", "backend", "precision", "nonfinite")

    def moment_roles(self) -> tuple[str, ...]:
        return ("real",)

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        import numpy as np

        from shardeval.pipeline.fid.infinity import fit_bands

        if real is None:
            raise ValueError("FID∞ compares with a reference")
        nonfinite, seed = self.options["nonfinite"], self.options["seed"]
        bands = gen.bands(context, seed, nonfinite)
        reference, _ = real.gaussian(context, nonfinite)
        r = fit_bands(reference, bands, seed, gen.location)
        return {
            "fid_inf": r.fid_infinity,
            "fid_inf_slope": r.slope,
            "fid_inf_r2": r.r2,
            "fid_inf_fid": r.fid,
            "fid_inf_n": int(r.sizes[-1]),
            "fid_inf_sizes": np.asarray(r.sizes, dtype=np.float64),
            "fid_inf_fids": np.asarray(r.fids),
        } | self.interval(r, reference, bands, real, gen, context)

    def interval(
        self, r: Any, reference: Gaussian, bands: Any, real: Side, gen: Side, context: Context
    ) -> dict[str, Any]:
        """With «ci», FID∞'s standard error and interval
        (:mod:`shardeval.pipeline.fid.infinity_interval`): FID's jackknife over the generated
        rows' groups scaled by the fit's weights, and the reference's (a reference of
        statistics held fixed)."""
        o = self.options
        if not o["ci"]:
            return dict.fromkeys(
                f"fid_inf_{k}"
                for k in ("standard_error", "ci_low", "ci_high", "rows_for_se_target")
            )
        from shardeval.pipeline.fid.infinity import merged
        from shardeval.pipeline.fid.infinity_interval import fid_infinity_interval

        args = (context, o["ci_groups"], o["ci_seed"], o["nonfinite"])
        interval = fid_infinity_interval(
            r.fid_infinity,
            r.fid,
            r.sizes,
            reference,
            Gaussian.from_moments(merged(bands), gen.location),
            gen.groups(*args),
            real.groups(*args) if real.can_recompute else None,
            o["ci"],
            (real.location, gen.location),
            context.engine,
        )
        return {
            "fid_inf_standard_error": interval.standard_error,
            "fid_inf_ci_low": interval.low,
            "fid_inf_ci_high": interval.high,
            "fid_inf_rows_for_se_target": rows_for_target(
                o, interval.standard_error, int(r.sizes[-1])
            ),
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o = outputs
        sizes = o["fid_inf_sizes"]
        below = " (below 0: see the warning)" if o["fid_inf"] < 0 else ""
        return [
            f"FID∞ {o['fid_inf']:.6g}{below}   (least squares of FID_N over {len(sizes)} nested "
            f"subsets of GEN, {int(sizes[0]):,} to {int(sizes[-1]):,} rows: slope "
            f"{o['fid_inf_slope']:.4g}, R² {o['fid_inf_r2']:.3f}; seed {self.options['seed']})",
            *self._interval_lines(o),
        ]

    def _interval_lines(self, o: dict[str, Any]) -> list[str]:
        opt = self.options
        if o.get("fid_inf_standard_error") is None:
            return []
        return [
            f"  ± {o['fid_inf_standard_error']:.3g} (standard error); {opt['ci']:.0%} interval "
            f"[{o['fid_inf_ci_low']:.6g}, {o['fid_inf_ci_high']:.6g}]: FID's delete-a-group "
            f"jackknife over {opt['ci_groups']} groups of rows (seed {opt['ci_seed']}), scaled "
            "by the fit's weights (first order; see docs/metrics.md)",
            *(
                [
                    "  the interval reaches 0: FID∞ is within its error of 0, where this "
                    "first-order interval is too narrow (87-89 % coverage at 95 %, measured); "
                    "read it as no distance told from 0"
                ]
                if o["fid_inf_ci_low"] <= 0
                else []
            ),
            *se_target_lines(
                o.get("fid_inf_rows_for_se_target"), opt["se_target"], o["fid_inf_standard_error"]
            ),
        ]


class SFID(FID):
    """sFID (Nash et al. 2021, *Generating images with sparse representations*): FID's
    Fréchet distance, computed by :class:`FID` itself, of sFID's spatial features instead of
    pool3: the first 7 channels of the TF Inception graph's ``mixed_6/conv`` on its 17 × 17
    grid, 2,023 values per image flattened height-width-channel, as guided-diffusion's
    evaluator takes them (docs/sfid.md says where that is in the Inception, and why).

    It reads an extraction store's ``spatial`` array (written with «spatial=True»), or the
    input itself when that is one array of spatial features; a guided-diffusion reference
    batch gives its ``mu_s``/``sigma_s`` as the reference statistics. Outputs are FID's with
    ``s`` in front (``sfid``, ``sfid_mean_term``, …).
    """

    name = "sfid"
    title = "spatial Fréchet distance (sFID)"
    outputs: ClassVar[tuple[Output, ...]] = tuple(
        replace(o, name="s" + o.name) for o in FID.outputs
    )
    plots: ClassVar[tuple[Plot, ...]] = (Plot("sFID over steps", "steps", ("sfid",), "sFID"),)
    reads = "spatial"

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        if real is None:
            raise ValueError("sFID compares with a reference")
        return {"s" + k: v for k, v in super().compute(real, gen, context).items()}

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        lines = super().summary_lines({k[1:]: v for k, v in outputs.items()})
        return ["s" + lines[0], *lines[1:]]

    @classmethod
    def compares_pairs(cls) -> bool:
        # FID's difference reads FID's outputs of the features; a comparison does not route
        # the spatial array: not inherited.
        return False
