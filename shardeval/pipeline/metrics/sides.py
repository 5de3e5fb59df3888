"""The two sides a metric compares, as it may read them: the reference (``real``) and the set
measured (``gen``).

A metric asks a side for what it needs and never learns where the side came from:

* :meth:`Side.gaussian` — mean and covariance: from statistics as given, or from the side's
  moments;
* :meth:`Side.moments` — count, mean and co-moment of its rows, one pass over them (cached);
* :meth:`Side.bands` — the moments of FID∞'s nested subsets, one pass (its merge is the side's
  moments, which it fills in too);
* :meth:`Side.rows` — a feature source holding every row, for the pair metrics.

:class:`SourceSide` reads a feature source (a store, an array, a spill of a training loop's
rows) through the engine; :class:`StatisticsSide` holds statistics alone. A training loop's
accumulated moments enter as a :class:`SourceSide` with its moments already known
(``known``), so one computation serves the one-shot functions, the commands, job entries and
the training-loop metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardeval.pipeline.errors import StoreError

if TYPE_CHECKING:
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.fid.infinity import BandMoments
    from shardeval.pipeline.fid.jackknife import GroupedMoments
    from shardeval.pipeline.io.stores import FeatureSource
    from shardeval.pipeline.metrics.base import Context

#: The roles of the two sides.
ROLES = ("real", "gen")


@dataclass(eq=False)
class Side:
    """One input of a metric.

    Attributes:
        role: ``real`` (the reference) or ``gen``.
        location: where it is, as messages name it.
        shown: how summaries name it (the images or array as the user gave them).
        d: features per row.
        n: rows (None: statistics that do not record it).
        kind: ``features`` or ``statistics``.
        provenance: what it records of itself and how its features were made (the report's
            ``inputs``).
        cache: passes over the side, kept for every metric and entry that asks again (a job's
            reference serves every entry).
        in_memory: an array or tensor the caller passed (not a store): it has no name, and
            what it holds is what the caller says (the Inception Score's logits).
    """

    role: str
    location: str
    d: int
    n: int | None
    kind: str
    shown: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)
    in_memory: bool = False

    def __post_init__(self) -> None:
        self.shown = self.shown or self.location

    @property
    def can_recompute(self) -> bool:
        """Whether a pass over the rows can be made again (with other products)."""
        return False

    def products(self, context: Context, precision: str | None = None) -> str | None:
        """The precision of the products behind this side's moments: ``fp32`` or ``fp64``
        (None: statistics, or no moments)."""
        return None

    def gaussian(
        self, context: Context, nonfinite: str = "error", precision: str | None = None
    ) -> tuple[Gaussian, int]:
        """Mean and covariance, and the non-finite rows left out to make them."""
        from shardeval.pipeline.fid.gaussian import Gaussian

        moments, dropped = self.moments(context, nonfinite, precision)
        return Gaussian.from_moments(moments, self.location), dropped

    def moments(
        self, context: Context, nonfinite: str = "error", precision: str | None = None
    ) -> tuple[Moments, int]:
        raise self._no_rows("its rows' moments")

    def bands(
        self,
        context: Context,
        seed: int,
        nonfinite: str = "error",
        precision: str | None = None,
        *,
        with_moments: bool = False,
    ) -> BandMoments:
        raise self._no_rows("its rows (FID∞ draws nested subsets of them)")

    def rows(self) -> FeatureSource:
        raise self._no_rows("every row")

    def groups(
        self,
        context: Context,
        groups: int,
        seed: int,
        nonfinite: str = "error",
        precision: str | None = None,
    ) -> GroupedMoments:
        """The moments of its rows in ``groups`` groups by a seeded hash of their index (the
        jackknife's; one pass, cached)."""
        raise self._no_rows("its rows, in groups")

    def _no_rows(self, what: str) -> StoreError:
        return StoreError(
            f"{self.shown!r} holds statistics (a mean and covariance), but this needs {what}: "
            "give its feature store"
        )


@dataclass(eq=False)
class StatisticsSide(Side):
    """Statistics alone: a mean and covariance (and n where recorded)."""

    statistics: Gaussian | None = None

    def gaussian(
        self, context: Context, nonfinite: str = "error", precision: str | None = None
    ) -> tuple[Gaussian, int]:
        if self.statistics is None:
            raise StoreError(f"{self.shown!r} holds no statistics")
        return self.statistics, 0


@dataclass(eq=False)
class SourceSide(Side):
    """A feature source: every row, read through the engine when a pass is asked for.

    Attributes:
        source: the rows.
        known: moments given already (a training loop's, or statistics a file holds beside
            its rows), keyed as :attr:`Side.cache` keys them; never computed again.
        recomputable: passes over ``source`` may be made again (False for rows a training loop
            merged as it went: their products are done).
    """

    source: FeatureSource | None = None
    statistics: Gaussian | None = None
    recomputable: bool = True

    @property
    def can_recompute(self) -> bool:
        return self.recomputable and self.source is not None

    def rows(self) -> FeatureSource:
        if self.source is None:
            return super().rows()
        return self.source

    def groups(
        self,
        context: Context,
        groups: int,
        seed: int,
        nonfinite: str = "error",
        precision: str | None = None,
    ) -> GroupedMoments:
        if not self.can_recompute:
            return super().groups(context, groups, seed, nonfinite, precision)
        precision = precision or context.precision
        key = ("groups", groups, seed, nonfinite, precision)
        if key not in self.cache:
            from shardeval.pipeline.fid.jackknife import grouped_moments

            self.cache[key], _ = grouped_moments(
                self.rows(),
                groups=groups,
                seed=seed,
                engine=context.engine,
                device=context.device,
                backend=context.backend,
                nonfinite=nonfinite,
                precision=precision,
                split_every=context.split_every,
                progress=context.progress,
            )
        return self.cache[key]

    def products(self, context: Context, precision: str | None = None) -> str | None:
        if self.statistics is not None:
            return None
        if self.can_recompute:
            from shardeval.pipeline.fid.moments import products_precision

            return products_precision(self.rows(), precision or context.precision)
        # Moments given as they are (a training loop's): the products they were made with.
        known = [k[2] for k in self.cache if k[0] == "moments"]
        return "fp32" if "fp32" in known else (known[0] if known else None)

    def gaussian(
        self, context: Context, nonfinite: str = "error", precision: str | None = None
    ) -> tuple[Gaussian, int]:
        # A file that holds statistics beside its rows (a guided-diffusion reference batch):
        # FID takes the statistics, computed over the whole dataset.
        if self.statistics is not None:
            return self.statistics, 0
        return super().gaussian(context, nonfinite, precision)

    def moments(
        self, context: Context, nonfinite: str = "error", precision: str | None = None
    ) -> tuple[Moments, int]:
        key = ("moments", nonfinite, precision or context.precision)
        if key not in self.cache:
            known = [k for k in self.cache if k[0] == "moments" and k[1] == nonfinite]
            if known and not self.can_recompute:
                return self.cache[known[0]]
            context.prefetch_moments([self], nonfinite, precision)
        return self.cache[key]

    def bands(
        self,
        context: Context,
        seed: int,
        nonfinite: str = "error",
        precision: str | None = None,
        *,
        with_moments: bool = False,
    ) -> BandMoments:
        """FID∞'s bands; ``with_moments``: and the side's moments in the same read of its rows
        (those FID's own pass would give, bit for bit), kept for FID beside it."""
        from shardeval.pipeline.fid.infinity import moments_and_bands, nested_moments

        precision = precision or context.precision
        key = ("bands", seed, nonfinite, precision)
        moments_key = ("moments", nonfinite, precision)
        if key not in self.cache:
            options: dict[str, Any] = {
                "engine": context.engine,
                "seed": seed,
                "nonfinite": nonfinite,
                "device": context.device,
                "backend": context.backend,
                "precision": precision,
                "split_every": context.split_every,
                "progress": context.progress,
            }
            if with_moments and moments_key not in self.cache:
                self.cache[moments_key], self.cache[key] = moments_and_bands(self.rows(), **options)
            else:
                self.cache[key] = nested_moments(self.rows(), **options)
        return self.cache[key]


def source_side(
    role: str,
    source: FeatureSource,
    *,
    shown: str = "",
    statistics: Gaussian | None = None,
    known: Mapping[Any, Any] | None = None,
    recomputable: bool = True,
) -> SourceSide:
    """The side of a feature source (its description is the report's ``inputs``)."""
    described = {"kind": "features", **source.describe()}
    side = SourceSide(
        role,
        source.location,
        source.d,
        source.n,
        "features",
        shown or getattr(source, "shown", "") or source.location,
        described,
        source=source,
        statistics=statistics,
        recomputable=recomputable,
    )
    side.cache.update(known or {})
    return side


def statistics_side(
    role: str, statistics: Gaussian, provenance: Mapping[str, Any] | None = None, shown: str = ""
) -> StatisticsSide:
    """The side of statistics alone."""
    described = {
        "kind": "statistics",
        "statistics": statistics.source,
        "n": statistics.n,
        "d": statistics.d,
        "mergeable": statistics.mergeable,
        **(provenance or {}),
    }
    return StatisticsSide(
        role,
        statistics.source,
        statistics.d,
        statistics.n,
        "statistics",
        shown or statistics.source,
        described,
        statistics=statistics,
    )


__all__ = ["ROLES", "Side", "SourceSide", "StatisticsSide", "source_side", "statistics_side"]
