"""The KL divergences of the Gaussians' plug-in: both ways between the reference's Gaussian
and the generated set's, from their moments, :mod:`shardeval.pipeline.fid.kl`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.fid.metrics import NONFINITE
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.runoptions import Interval

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side

RIDGE = Param(
    "ridge",
    Interval(float, 0, None),
    0.0,
    "ε added to both covariances' diagonals (Σ + εI, in the features' squared units) so that "
    "a singular one has a finite divergence; 0: none, and a singular covariance is refused",
    "EPS",
)


class KLGaussian(Metric):
    """KL divergences both ways between the reference's Gaussian p and the generated set's q,
    with the entropies and cross-entropies, :mod:`shardeval.pipeline.fid.kl`.

    Either side may be statistics. The moments of a side of rows always take float64
    products: the divergence inverts the covariances, which amplifies the products' rounding
    by their condition, and fp32 products' bound could vouch for it only in well-conditioned
    cases (one read in float64 costs less than an fp32 read that must be made again). A
    result whose rounding bound still exceeds a ten-thousandth of it is refused.
    """

    name = "kl_gaussian"
    title = "KL divergence of the Gaussians (both ways)"
    params: ClassVar[tuple[Param, ...]] = (NONFINITE, RIDGE)
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("kl_gaussian", "nats", "KL(p‖q), p the reference's Gaussian (mode covering)"),
        Output("kl_gaussian_reverse", "nats", "KL(q‖p), q the generated set's (mode seeking)"),
        Output("kl_gaussian_mean_term", "nats", "½ δᵀΣ_q⁻¹δ, KL(p‖q)'s part from the means"),
        Output("kl_gaussian_mean_term_reverse", "nats", "½ δᵀΣ_p⁻¹δ, KL(q‖p)'s"),
        Output("kl_gaussian_cross_entropy", "nats", "H(p, q) = H(p) + KL(p‖q)"),
        Output("kl_gaussian_cross_entropy_reverse", "nats", "H(q, p) = H(q) + KL(q‖p)"),
        Output("kl_gaussian_cross_entropy_per_dim", "nats/dim", "H(p, q) / d"),
        Output("kl_gaussian_cross_entropy_reverse_per_dim", "nats/dim", "H(q, p) / d"),
        Output("kl_gaussian_entropy_real", "nats", "H(p), differential entropy"),
        Output("kl_gaussian_entropy_gen", "nats", "H(q)"),
        Output("kl_gaussian_condition_real", "", "λ_max/λ_min of Σ_p (after the ridge)"),
        Output("kl_gaussian_condition_gen", "", "λ_max/λ_min of Σ_q (after the ridge)"),
        Output("kl_gaussian_rounding_bound", "nats", "first-order bound of the products' rounding"),
        Output(
            "kl_gaussian_n",
            "rows",
            "rows of the generated set (missing: not recorded)",
            optional=True,
        ),
        Output(
            "kl_gaussian_n_real",
            "rows",
            "rows of the reference (missing: not recorded)",
            optional=True,
        ),
        Output("kl_gaussian_nonfinite_dropped", "rows", "generated rows left out as non-finite"),
        Output("kl_gaussian_nonfinite_dropped_real", "rows", "reference rows left out"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("KL divergence over steps", "steps", ("kl_gaussian", "kl_gaussian_reverse"), "KL"),
    )
    takes_statistics = ("real", "gen")
    run_options = ("device", "backend", "nonfinite")
    products = "fp64"

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.errors import NumericalError
        from shardeval.pipeline.fid.kl import ROUNDING_RTOL, kl_gaussian

        if real is None:
            raise ValueError("the KL divergence compares with a reference")
        nonfinite = self.options["nonfinite"]
        (r, real_dropped), (g, dropped) = (
            s.gaussian(context, nonfinite, "fp64") for s in (real, gen)
        )
        products = (real.products(context, "fp64"), gen.products(context, "fp64"))
        kl = kl_gaussian(
            r,
            g,
            ridge=self.options["ridge"],
            products=products,
        )
        if kl.rounding_exceeds():
            raise NumericalError(
                f"the products' rounding may move the KL divergence by up to "
                f"{kl.rounding_bound:.3g} nats, more than {ROUNDING_RTOL:g} of it (KL(p‖q) "
                f"{kl.forward:.6g}, KL(q‖p) {kl.reverse:.6g}): the covariances are too "
                f"ill-conditioned (condition numbers {kl.condition_real:.3g} and "
                f"{kl.condition_gen:.3g}); give «ridge»"
            )
        d = kl.d
        return {
            "kl_gaussian": kl.forward,
            "kl_gaussian_reverse": kl.reverse,
            "kl_gaussian_mean_term": kl.mean_term,
            "kl_gaussian_mean_term_reverse": kl.mean_term_reverse,
            "kl_gaussian_cross_entropy": kl.cross_entropy,
            "kl_gaussian_cross_entropy_reverse": kl.cross_entropy_reverse,
            "kl_gaussian_cross_entropy_per_dim": kl.cross_entropy / d,
            "kl_gaussian_cross_entropy_reverse_per_dim": kl.cross_entropy_reverse / d,
            "kl_gaussian_entropy_real": kl.entropy_real,
            "kl_gaussian_entropy_gen": kl.entropy_gen,
            "kl_gaussian_condition_real": kl.condition_real,
            "kl_gaussian_condition_gen": kl.condition_gen,
            "kl_gaussian_rounding_bound": kl.rounding_bound,
            "kl_gaussian_n": g.n,
            "kl_gaussian_n_real": r.n,
            "kl_gaussian_nonfinite_dropped": dropped,
            "kl_gaussian_nonfinite_dropped_real": real_dropped,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o = outputs
        ridge = self.options["ridge"]
        return [
            f"KL(p‖q) {o['kl_gaussian']:.6g} nats (forward, mode covering; mean term "
            f"{o['kl_gaussian_mean_term']:.6g})   KL(q‖p) {o['kl_gaussian_reverse']:.6g} nats "
            f"(reverse; mean term {o['kl_gaussian_mean_term_reverse']:.6g})",
            f"  cross-entropy H(p,q) {o['kl_gaussian_cross_entropy']:.6g} nats "
            f"({o['kl_gaussian_cross_entropy_per_dim']:.6g}/dim), H(q,p) "
            f"{o['kl_gaussian_cross_entropy_reverse']:.6g} nats "
            f"({o['kl_gaussian_cross_entropy_reverse_per_dim']:.6g}/dim); entropies H(p) "
            f"{o['kl_gaussian_entropy_real']:.6g}, H(q) {o['kl_gaussian_entropy_gen']:.6g}",
            f"  p = N(μ_r, Σ_r) of REAL, q = N(μ_g, Σ_g) of GEN; condition numbers "
            f"{o['kl_gaussian_condition_real']:.3g} and {o['kl_gaussian_condition_gen']:.3g}; "
            f"rounding bound {o['kl_gaussian_rounding_bound']:.2g} nats"
            + (f"; ridge ε = {ridge:g} added to both covariances" if ridge else ""),
        ]
