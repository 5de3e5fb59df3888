"""Authenticity (AuthPct) of the generated set against the training set, each generated row's
nearest training row, and the data-copying statistic C_T (with a held-out test set)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from shardeval.pipeline.errors import OptionError
from shardeval.pipeline.memorization import (
    CT_CELLS,
    CT_SEED,
    CT_TAU_ROWS,
    FLD_EVALUATE,
    FLD_GEN_ROWS,
    FLD_SEED,
    NEIGHBOURS,
)
from shardeval.pipeline.metrics.base import Context, Metric, Output, Param, Plot
from shardeval.pipeline.mmd.metrics import reference
from shardeval.pipeline.runoptions import SEED_RANGE, Flag, Interval, OneOf

if TYPE_CHECKING:
    from shardeval.pipeline.metrics.sides import Side


class AuthPct(Metric):
    """Alaa et al. 2022 as dgm-eval computes it, :mod:`shardeval.pipeline.memorization.authpct`:
    the percentage of generated rows farther from their nearest training row than that row is
    from its own nearest other training row. **The reference is the training set.** Exact over
    the full sets: every nearest-neighbour decision exact in float64."""

    name = "authpct"
    title = "Authenticity (AuthPct), against the training set"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "per_sample",
            Flag(),
            False,
            "also report each generated row's nearest training row, its distance, and "
            "whether the row is authentic",
        ),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output(
            "authpct",
            "%",
            "generated rows farther from their nearest training row than it is from its own",
        ),
        Output("authpct_copies", "rows", "generated rows equal to a training row"),
        Output("authpct_n", "rows", "rows of the generated set"),
        Output("authpct_n_train", "rows", "rows of the training set (the reference)"),
        Output(
            "authpct_nearest_distance",
            "",
            "each generated row's distance to its nearest training row («per_sample»)",
            array=True,
            optional=True,
            per_row=True,
            worst="most memorised (smallest distance to the nearest training row)",
        ),
        Output(
            "authpct_nearest_index",
            "row",
            "the index of that training row, the first of equals («per_sample»)",
            array=True,
            optional=True,
            per_row=True,
        ),
        Output(
            "authpct_authentic",
            "",
            "whether each generated row is authentic: farther from that training row than it "
            "is from its own nearest other («per_sample»)",
            array=True,
            optional=True,
            per_row=True,
        ),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Authenticity over steps", "steps", ("authpct",), "authentic rows"),
    )
    needs_reference_features = True

    def sample_request(self) -> dict[str, Any]:
        return {"memorization": True}

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        r = context.samples(reference(real), gen)["memorization"]
        per_sample = self.options["per_sample"]
        return {
            "authpct": r.authpct,
            "authpct_copies": r.copies,
            "authpct_n": r.n_gen,
            "authpct_n_train": r.n_train,
            "authpct_nearest_distance": r.nearest_distance if per_sample else None,
            "authpct_nearest_index": r.nearest_index if per_sample else None,
            "authpct_authentic": r.authentic if per_sample else None,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o = outputs
        return [
            f"AuthPct {o['authpct']:.2f} % of {o['authpct_n']:,} generated rows are authentic "
            f"against {o['authpct_n_train']:,} training rows; {o['authpct_copies']:,} are "
            "copies of a training row"
        ]


class _HeldOut(Metric):
    """A metric of the training set (the reference), a held-out test set and the generated
    set."""

    needs_reference_features = True
    needs_test = True

    def check(self, real: Side | None, gen: Side, context: Context) -> None:
        self.held_out(context)

    def held_out(self, context: Context) -> Side:
        """The held-out test set's side.

        Raises:
            OptionError: none was given.
        """
        if context.test is None:
            raise OptionError(
                f"{self.name} compares the generated set with a held-out test set (rows of the "
                "training distribution not trained on): give «test»"
            )
        return context.test


class DataCopying(_HeldOut):
    """Meehan, Chaudhuri & Dasgupta's C_T with dgm-eval's choices,
    :mod:`shardeval.pipeline.memorization.copying`: in each k-means cell of the training set,
    the Z-scored Mann-Whitney U of the generated rows' distances to their nearest training row
    against a held-out test set's, averaged over the cells weighted by the test set's
    fractions. **The reference is the training set; the test set is a third input.** Below 0:
    the generated rows lie closer to the training rows than fresh rows do (data-copying)."""

    name = "ct"
    title = "Data-copying C_T, against the training set and a held-out test set"
    params: ClassVar[tuple[Param, ...]] = (
        Param("cells", Interval(int, 1, None), CT_CELLS, "k-means cells of the training set", "K"),
        Param(
            "tau_rows",
            Interval(int, 0, None),
            CT_TAU_ROWS,
            "a cell counts when it holds more than this many generated rows (dgm-eval's τ·m)",
            "ROWS",
        ),
        Param("seed", SEED_RANGE, CT_SEED, "seed of the k-means sample and seeding", "SEED"),
        Param(
            "neighbours",
            OneOf(NEIGHBOURS),
            "cell",
            "where a row's nearest training row is searched: its own cell's rows (dgm-eval's) "
            "or all",
            "WHERE",
        ),
        Param(
            "ties",
            Flag(),
            False,
            "the tie correction in Z_U's variance (scipy's; dgm-eval leaves it out)",
        ),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("ct", "", "Σ P_n(π) Z_U(π) / Σ P_n(π) over the kept cells (below 0: copying)"),
        Output("ct_cells_kept", "cells", "cells holding more than tau_rows generated rows"),
        Output(
            "ct_cross_cell",
            "rows",
            "test and generated rows whose nearest training row lies in another cell "
            "(«neighbours='all'»)",
            optional=True,
        ),
        Output("ct_n_train", "rows", "rows of the training set (the reference)"),
        Output("ct_n_test", "rows", "rows of the held-out test set"),
        Output("ct_n", "rows", "rows of the generated set"),
        Output("ct_zu", "", "each cell's Z_U (0 where skipped)", array=True),
        Output("ct_test_fraction", "", "each cell's share of the test rows, P_n(π)", array=True),
        Output("ct_gen_rows", "rows", "generated rows in each cell", array=True),
    )
    plots: ClassVar[tuple[Plot, ...]] = (
        Plot("Data-copying C_T over steps", "steps", ("ct",), "C_T"),
    )

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.memorization.copying import data_copying

        test = self.held_out(context)
        train = reference(real)
        r = data_copying(
            train.rows(),
            test.rows(),
            gen.rows(),
            cells=self.options["cells"],
            tau_rows=self.options["tau_rows"],
            seed=self.options["seed"],
            ties=self.options["ties"],
            neighbours=self.options["neighbours"],
            engine=context.engine,
            block_rows=context.block_rows,
            precision=context.precision,
            split_every=context.split_every,
            device=context.device,
            backend=context.backend,
            progress=context.progress,
        )
        return {
            "ct": r.ct,
            "ct_cells_kept": int(r.kept.sum()),
            "ct_cross_cell": r.cross_cell,
            "ct_n_train": int(r.train_rows.sum()),
            "ct_n_test": int(r.test_rows.sum()),
            "ct_n": int(r.gen_rows.sum()),
            "ct_zu": r.zu,
            "ct_test_fraction": r.test_fraction,
            "ct_gen_rows": r.gen_rows,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o = outputs
        return [
            f"C_T {o['ct']:.4f} over {o['ct_cells_kept']} of {len(o['ct_zu'])} cells "
            f"({o['ct_n']:,} generated, {o['ct_n_test']:,} test, {o['ct_n_train']:,} training "
            "rows); below 0: closer to the training rows than the test rows are (data-copying)"
        ]


class FLD(_HeldOut):
    """The feature likelihood divergence of Jiralerspong et al. (NeurIPS 2023) with the
    authors' defaults, :mod:`shardeval.pipeline.memorization.fld`: a mixture of Gaussians
    centred on (up to 10,000) generated rows, one bandwidth each fitted to the training set,
    scores the held-out test set; FLD is 100 × its NLL per dimension minus a baseline's
    (a mixture on half the training rows fitted to the other half). Lower is better; copies of
    the training set score high. **The reference is the training set; the test set is a third
    input.** Runs in the client process in float64."""

    name = "fld"
    title = "Feature likelihood divergence FLD, against the training set and a held-out test set"
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "evaluate",
            OneOf(FLD_EVALUATE),
            "test",
            "what the generated set's mixture scores: the test set (FLD), the training set "
            "(train FLD), or the gap 100·(train NLL − test NLL), below 0 when copying",
            "SET",
        ),
        Param(
            "gen_rows",
            Interval(int, 1, None),
            FLD_GEN_ROWS,
            "generated rows that centre the mixture (a seeded sample when there are more)",
            "ROWS",
        ),
        Param(
            "seed", SEED_RANGE, FLD_SEED, "seed of that sample, the batches and the split", "SEED"
        ),
    )
    outputs: ClassVar[tuple[Output, ...]] = (
        Output("fld", "", "100 × (NLL per dimension − the baseline's); lower is better"),
        Output("fld_nll_test", "nats/dim", "the test set's NLL under the generated mixture"),
        Output(
            "fld_nll_train",
            "nats/dim",
            "the training set's NLL under it («evaluate» train or gap)",
            optional=True,
        ),
        Output(
            "fld_baseline_nll",
            "nats/dim",
            "the test set's NLL under the baseline mixture (not for «evaluate» gap)",
            optional=True,
        ),
        Output("fld_centres", "rows", "generated rows centring the mixture"),
        Output("fld_n", "rows", "rows of the generated set"),
        Output("fld_n_train", "rows", "rows of the training set (the reference)"),
        Output("fld_n_test", "rows", "rows of the held-out test set"),
    )
    plots: ClassVar[tuple[Plot, ...]] = (Plot("FLD over steps", "steps", ("fld",), "FLD"),)
    run_options = ()  # float64 numpy in the client: no kernel, no products to make in fp32

    def compute(self, real: Side | None, gen: Side, context: Context) -> dict[str, Any]:
        from shardeval.pipeline.core.engine import counting
        from shardeval.pipeline.core.reduce import shard_tasks
        from shardeval.pipeline.likelihood.gmm import every_row
        from shardeval.pipeline.memorization.fld import fld

        test = self.held_out(context)
        # the three sets' rows, gathered through the engine's merge tree (the fit holds them)
        train_rows, test_rows, gen_rows = context.engine.reduce(
            [shard_tasks(s.rows(), every_row) for s in (reference(real), test, gen)],
            split_every=context.split_every,
            progress=context.progress,
        )
        r = fld(
            train_rows.rows,
            test_rows.rows,
            gen_rows.rows,
            evaluate=self.options["evaluate"],
            gen_rows=self.options["gen_rows"],
            seed=self.options["seed"],
            progress=counting(context.progress, "epochs"),
        )
        return {
            "fld": r.fld,
            "fld_nll_test": r.nll_test,
            "fld_nll_train": r.nll_train,
            "fld_baseline_nll": r.baseline_nll,
            "fld_centres": r.centres,
            "fld_n": r.n_gen,
            "fld_n_train": r.n_train,
            "fld_n_test": r.n_test,
        }

    def summary_lines(self, outputs: dict[str, Any]) -> list[str]:
        o = outputs
        if o["fld_baseline_nll"] is None:
            what = (
                f"FLD gap {o['fld']:.3f} = 100 × (train NLL {o['fld_nll_train']:.5f} − test NLL "
                f"{o['fld_nll_test']:.5f} nats/dim); below 0: training rows likelier than fresh "
                "ones (copying)"
            )
        else:
            scored = "test" if o["fld_nll_train"] is None else "train"
            nll = o["fld_nll_test"] if scored == "test" else o["fld_nll_train"]
            what = (
                f"FLD ({scored}) {o['fld']:.3f} = 100 × ({scored} NLL {nll:.5f} − baseline "
                f"{o['fld_baseline_nll']:.5f} nats/dim); lower is better, 0: as good as "
                "training data"
            )
        lines = [
            f"{what} ({o['fld_centres']:,} of {o['fld_n']:,} generated rows as centres, "
            f"{o['fld_n_train']:,} training, {o['fld_n_test']:,} test rows)"
        ]
        if o["fld"] > 1_000 or o["fld"] < -1_000:
            lines.append(
                "beyond ±1,000: the generated set likely copies the training set (the "
                "authors' warning)"
            )
        return lines
