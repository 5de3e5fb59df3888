"""One function per command: ``shardeval.fid(real, gen)`` is ``shardeval fid REAL GEN``.

Each takes the command's options as keyword arguments, with the same defaults (``None``
means "not given": the default applies, and an option that cannot apply is refused only when
given), runs on the same engine, and returns a :class:`~shardeval.api.results.Report` whose
``to_dict()`` is the command's JSON report and ``float()`` its headline value. The command
line parses, calls these and formats: one code path.

Engine options of every computing function:
    scheduler: ``"threads"`` (default, in-process), ``"sync"``, a scheduler address
        (``"tcp://host:8786"``) or a ``distributed.Client``; default ``DASK_SCHEDULER_ADDRESS``.
    cluster: a cluster spec file (``cluster/local.yaml``…): started, used, closed.
    threads: threads of the threaded scheduler (default: all cores).
    performance_report: a file for Dask's HTML performance report (distributed only).
    progress: called with (done, total) as tasks finish.
    log: called with notices (the dashboard's address).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shardeval.api.inputs import (
    IMAGE_OPTIONS,
    arrays_for,
    checked_gaussian,
    describe_input,
    extracted,
    features,
    is_images,
    is_path,
    is_statistics,
    statistics,
)
from shardeval.api.results import (
    Report,
    Side,
    ess_dict,
    ess_summary,
    features_made,
    fid_data,
    fid_summary,
    nll_dict,
    nll_summary,
)
from shardeval.pipeline.errors import OptionError, ShardevalError

Progress = Callable[[int, int], None]

#: The settings a report records, with the value each takes when not given.
SETTINGS = {
    "shard_rows": "whole stored chunks",
    "array": None,
    "split_every": "chain of merges (one machine)",
    "device": "auto",
    "backend": "auto",
    "precision": "fp32",
    "nonfinite": "error",
    "reff": 1.0,
    "bandwidth": "silverman",
    "dims": None,
}

#: Options of the engine and of reading features: what a computation on statistics alone
#: does not take.
ENGINE_OPTIONS = ("scheduler", "cluster", "threads", "performance_report")
INPUT_OPTIONS = (
    "shard_rows",
    "array",
    "split_every",
    "device",
    "backend",
    "precision",
    "nonfinite",
)


def check_options(options: dict[str, Any]) -> None:
    """Every option given, checked as the command line checks it (the same checks,
    :data:`~shardeval.pipeline.options.OPTION_CHECKS`): a count that is a positive integer,
    a fan-in of at least 2, a positive finite ``reff``, a choice among its choices…

    Raises:
        OptionError: naming the option and the value.
    """
    from shardeval.pipeline.options import option_problem

    for name, value in options.items():
        problem = option_problem(name, value)
        if problem:
            raise OptionError(f"«{name}»: {problem}")


def refuse(given: dict[str, Any], names: Sequence[str], why: str) -> None:
    """Options that cannot apply are an error, never silently ignored (``given``: the
    caller's options, None or False where not given)."""
    from shardeval.pipeline.options import is_given

    bad = [n for n in names if is_given(given.get(n))]
    if not bad:
        return
    if len(bad) == 1:  # the reason is written for several options
        for plural, singular in (("apply ", "applies "), ("do not ", "does not ")):
            if why.startswith(plural):
                why = singular + why[len(plural) :]
    raise OptionError(f"{', '.join(f'«{n}»' for n in bad)} {why}")


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class _Run:
    """One call's engine, progress and options, and what its report records (``cached``: the
    feature cache entries its image inputs were read from)."""

    engine: Any
    progress: Progress | None
    options: dict[str, Any]
    start: float
    cached: list[Any] = field(default_factory=list)

    def settings(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The settings as applied (defaults filled in), those in ``names`` or all taken."""
        out = {}
        for name, default in SETTINGS.items():
            if (name in self.options) if names is None else (name in names):
                value = self.options.get(name)
                out[name] = default if value is None else value
        if out.get("split_every") == SETTINGS["split_every"] and self.engine.is_distributed:
            from shardeval.pipeline.options import DEFAULT_SPLIT_EVERY

            out["split_every"] = DEFAULT_SPLIT_EVERY
        return out

    def tail(self, notes: Notes) -> dict[str, Any]:
        from shardeval.pipeline.io.provenance import now_iso, versions

        return {
            "warnings": notes.messages(),
            "engine": self.engine.describe(),
            "seconds": time.perf_counter() - self.start,
            "created": now_iso(),
            "versions": versions(),
        }


def _engine(scheduler: Any, threads: int | None, performance_report: str | None, log: Any) -> Any:
    from shardeval.pipeline.core.engine import Engine

    if scheduler is not None and not isinstance(scheduler, str):
        address = getattr(getattr(scheduler, "scheduler", None), "address", None)
        if address is None:
            raise OptionError(
                f"«scheduler» must be 'threads', 'sync', an address or a distributed.Client; "
                f"got {type(scheduler).__name__}"
            )
        scheduler = address
    name = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
    built = Engine(name, num_workers=threads, log=log, performance_report=performance_report)
    if performance_report and not built.is_distributed:
        raise OptionError(
            "«performance_report» needs a distributed cluster: pass «scheduler=ADDRESS» or "
            "«cluster=SPEC»"
        )
    if threads is not None and name != "threads":
        raise OptionError(f"«threads» sets the threaded scheduler's threads, not {name!r}'s")
    return built


@contextlib.contextmanager
def _running(options: dict[str, Any]) -> Iterator[_Run]:
    """The engine the options describe (a cluster started and closed around the call), the
    options checked first."""
    check_options(options)
    cluster = options.get("cluster")
    address = None
    with contextlib.ExitStack() as stack:
        if cluster:
            from shardeval.pipeline.core.clusters import running_cluster

            refuse(options, ("scheduler", "threads"), "cannot be combined with «cluster»")
            address = stack.enter_context(running_cluster(cluster))
        engine = _engine(
            address or options.get("scheduler"),
            options.get("threads"),
            options.get("performance_report"),
            options.get("log"),
        )
        yield _Run(engine, options.get("progress"), options, time.perf_counter())


class Notes(list[str]):
    """What a report's ``warnings`` say: notes added by the computation, then the user
    warnings raised so far (read live from the catch)."""

    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        super().__init__()
        self._caught = caught

    def messages(self) -> list[str]:
        raised = [str(w.message) for w in self._caught if issubclass(w.category, UserWarning)]
        return list(dict.fromkeys([*self, *raised]))


@contextlib.contextmanager
def _noted() -> Iterator[Notes]:
    """The user warnings raised inside, for the report; raised again after, so that a caller
    sees them as warnings too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        notes = Notes(caught)
        try:
            yield notes
        finally:
            replay = list(caught)
    for w in replay:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def image_flags(inputs: Sequence[Any], options: dict[str, Any]) -> list[bool]:
    """Which inputs are image sources; the encoder options are refused when none is."""
    flags = [is_images(x) for x in inputs]
    if not any(flags):
        refuse(
            options,
            IMAGE_OPTIONS,
            "apply to image inputs (folders, zips, tar shards, image array files; in memory, "
            "4-D arrays or tensors (N, H, W, 3) or (N, 3, H, W)), and no input is images",
        )
    return flags


def with_features(run: _Run, inputs: Sequence[Any], flags: Sequence[bool]) -> list[Any]:
    """``inputs`` with each image source replaced by its features in the feature cache."""
    return [
        extracted(
            x, run.options, run.engine, run.progress, [o for o in inputs if o is not x], run.cached
        )
        if flag
        else x
        for x, flag in zip(inputs, flags, strict=True)
    ]


def _must_exist(*locations: Any) -> None:
    from shardeval.pipeline.errors import StoreError

    for location in locations:
        if is_path(location):
            text = os.fspath(location)
            if "://" not in text and not os.path.exists(text):
                raise StoreError(f"{text!r} does not exist")


# ---------------------------------------------------------------------------------------------
# FID


def _moments(run: _Run, sources: list[Any], precision: str | None = None) -> list[Any]:
    from shardeval.pipeline.fid.moments import feature_moments

    o = run.options
    return feature_moments(
        sources,
        engine=run.engine,
        split_every=o.get("split_every"),
        device=o.get("device") or "auto",
        backend=o.get("backend") or "auto",
        nonfinite=o.get("nonfinite") or "error",
        precision=precision or o.get("precision") or "fp32",
        progress=run.progress,
    )


def _statistics_side(x: Any) -> tuple[Any, Side]:
    stats = statistics(x)
    provenance: dict[str, Any] = {}
    if is_path(x):
        from shardeval.pipeline.io.statsio import stats_provenance

        provenance = stats_provenance(os.fspath(x))
    side = Side("", stats.source, stats.n, stats.d, 0, "statistics", stats.mergeable, 0, provenance)
    return stats, side


def _feature_side(source: Any, moments: Any, dropped: int) -> Side:
    return Side(
        "",
        source.location,
        moments.n,
        source.d,
        source.shards,
        "features",
        True,
        dropped,
        source.describe(),
        source.given,
    )


def fid(
    real: Any,
    gen: Any,
    *,
    infinity: bool = False,
    seed: int | None = None,
    real_is_statistics: bool = False,
    encoder: str | None = None,
    resize: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    cache_root: str | None = None,
    verify: bool | None = None,
    skip_bad: bool | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    nonfinite: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Fréchet Inception Distance between two feature sets or their statistics.

    .. math:: \\mathrm{FID} = \\|\\mu_r - \\mu_g\\|^2 + \\mathrm{tr}\\,\\Sigma_r
              + \\mathrm{tr}\\,\\Sigma_g - 2\\,\\mathrm{tr}(\\Sigma_r\\Sigma_g)^{1/2}

    (Heusel et al., "GANs trained by a two time-scale update rule converge to a local Nash
    equilibrium", NeurIPS 2017.) Feature stores are streamed as mergeable moments; statistics
    are read.

    Args:
        real, gen: features (a store, an array, a tensor, …) or statistics (a file, a
            ``Gaussian``, ``Moments``); see :mod:`shardeval.api.inputs`.
        infinity: also FID∞ (Chong & Forsyth 2020), from 15 nested subsets of ``gen``.
        seed: seed of the nested subsets (with ``infinity``; default 0).
        real_is_statistics: read ``real`` as statistics whatever it looks like.
        encoder, resize, weights, batch_size: how image inputs (folders, zips, tar shards,
            uint8 arrays) become features, as for :func:`shardeval.extract`; their features
            are cached (``cache_root``, default ``$SHARDEVAL_CACHE`` or
            ``~/.cache/shardeval``) and reused.
        verify: reuse cached features of images only if the images' bytes are those they
            were extracted from (reads every image once); otherwise their listing (names,
            sizes, modification times) decides, and the report says so (``feature_cache``).
        skip_bad: leave out images that cannot be decoded (as :func:`shardeval.extract`;
            the report names them).
        shard_rows, array, split_every, device, backend, precision, nonfinite: how feature
            stores are read and reduced (see the option table of docs/commands.md).

    Returns:
        :class:`~shardeval.api.results.Report`: ``float()`` is the FID; ``results["fid"]``
        the :class:`~shardeval.pipeline.fid.frechet.FrechetDistance`, and
        ``results["fid_inf"]`` with ``infinity``.

    Raises:
        StoreError, ShapeError, NonFiniteError, NumericalError: bad inputs, named.
        OptionError: an option that cannot apply.

    Example:
        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(500, 4)), rng.normal(0.5, 1.0, size=(500, 4))
        >>> round(float(se.fid(a, b)), 2)
        1.13
    """
    options = dict(locals())
    check_options(options)
    inputs = [real, gen]
    _must_exist(*inputs)
    from shardeval.pipeline.io.statsio import is_adm_reference

    # Statistics are read, never extracted: a guided-diffusion reference batch holds images
    # and its dataset's FID statistics, and FID takes the statistics.
    held = [is_path(x) and is_adm_reference(x) for x in inputs]
    held[0] = held[0] or real_is_statistics
    images = image_flags([None if h else x for x, h in zip(inputs, held, strict=True)], options)
    kinds = [
        "statistics" if not image and is_statistics(x) else "features"
        for x, image in zip(inputs, images, strict=True)
    ]
    if real_is_statistics:
        kinds[0] = "statistics"
    if infinity and kinds[1] != "features":
        raise OptionError("«infinity» needs GEN as features (its rows form the subsets)")
    if not infinity:
        refuse(options, ("seed",), "applies to «infinity=True»")
    if "features" not in kinds:
        refuse(
            options,
            (*ENGINE_OPTIONS, *INPUT_OPTIONS),
            "apply to feature stores; both inputs are statistics",
        )
    with _noted() as notes, _running(options) as run:
        report = _fid(run, with_features(run, inputs, images), kinds, infinity, seed or 0, notes)
    return report


def _fid(
    run: _Run, inputs: list[Any], kinds: list[str], infinity: bool, seed: int, notes: Notes
) -> Report:
    from shardeval.pipeline.fid.frechet import frechet_distance
    from shardeval.pipeline.fid.gaussian import Gaussian
    from shardeval.pipeline.fid.moments import products_precision
    from shardeval.pipeline.io.stores import check_same_dim

    o = run.options
    rows = [i for i, kind in enumerate(kinds) if kind == "features"]
    names = dict(zip(rows, arrays_for([inputs[i] for i in rows], o.get("array")), strict=True))
    sources = {i: features(inputs[i], array=names[i], shard_rows=o.get("shard_rows")) for i in rows}
    stats = {i: _statistics_side(x) for i, x in enumerate(inputs) if i not in sources}
    dims = {stats[i][1].location: stats[i][1].d for i in stats}
    dims |= {s.location: s.d for s in sources.values()}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{p!r} has d={d}" for p, d in dims.items())
        raise OptionError(f"feature dimensions differ: {listing}; compare features of one model")
    check_same_dim(*sources.values())

    def moments(precision: str | None = None) -> tuple[dict[int, Any], Any]:
        bands = None
        order = sorted(sources)
        if infinity:
            from shardeval.pipeline.fid.infinity import merged, nested_moments

            bands = nested_moments(
                sources[1],
                engine=run.engine,
                seed=seed,
                nonfinite=o.get("nonfinite") or "error",
                device=o.get("device") or "auto",
                backend=o.get("backend") or "auto",
                split_every=o.get("split_every"),
                progress=run.progress,
            )
            first = _moments(run, [sources[0]], precision) if 0 in sources else []
            gen = (merged(bands), bands.nonfinite.count)
            return dict(zip(order, [*first, gen], strict=True)), bands
        computed = _moments(run, [sources[i] for i in order], precision) if order else []
        return dict(zip(order, computed, strict=True)), bands

    def distance(computed: dict[int, Any]) -> tuple[Any, list[Any], list[Side]]:
        gaussians, sides = [], []
        for i in (0, 1):
            if i in stats:
                gaussian, side = stats[i]
            else:
                m, dropped = computed[i]
                gaussian = Gaussian.from_moments(m, sources[i].location)
                side = _feature_side(sources[i], m, dropped)
            gaussians.append(gaussian)
            sides.append(side)
        return frechet_distance(gaussians[0], gaussians[1]), gaussians, sides

    computed, bands = moments()
    result, gaussians, sides = distance(computed)
    requested = o.get("precision") or "fp32"
    fp32_used = any(products_precision(s, requested) == "fp32" for s in sources.values())
    if result.clamped_count and fp32_used:
        # fp32 rounding reached the spectrum: a covariance of lower rank than d (a collapsed
        # set repeats few rows) has zero eigenvalues that fp32 products cannot tell from
        # their rounding (1e-3 off here), float64 products can. Recompute, then say so.
        clamped = result.clamped_count
        computed, bands = moments("fp64")
        result, gaussians, sides = distance(computed)
        warnings.warn(
            f"recomputed with float64 products: with fp32 products {clamped} eigenvalues fell "
            "below zero (a covariance of lower rank than d, as a set of repeated rows has)",
            UserWarning,
            stacklevel=3,
        )
    notes.extend(result.warnings)
    for side in sides:
        if side.kind == "statistics" and not side.mergeable:
            notes.append(
                f"{side.location!r} has mu/sigma without n: usable for FID, but it cannot be "
                "merged with other statistics"
            )
    real, gen = (
        Side(**{**vars(s), "role": role}) for s, role in zip(sides, ("real", "gen"), strict=True)
    )
    made = features_made({"real": real.provenance, "gen": gen.provenance}, run.cached)
    notes.extend(made.warnings)
    data = fid_data(result, real, gen)
    data.update(made.data)
    results: dict[str, Any] = {"fid": result}
    inf = None
    if bands is not None:
        from shardeval.pipeline.fid.infinity import fit_bands

        inf = fit_bands(gaussians[0], bands, seed, gen.location)  # before the notes are read
        results["fid_inf"] = inf
        data["fid_infinity"] = asdict(inf)
    described = run.engine.describe() if sources else {"scheduler": "none (statistics only)"}
    tail = run.tail(notes)
    tail["engine"] = described
    text = fid_summary(result, real, gen, tail["seconds"], described)
    value = result.fid
    if inf is not None:
        below = " (below 0: see the warning)" if inf.fid_infinity < 0 else ""
        text += (
            f"\nFID∞ {inf.fid_infinity:.6g}{below}   (least squares of FID_N over "
            f"{len(inf.sizes)} nested subsets of GEN, {inf.sizes[0]:,} to {inf.sizes[-1]:,} "
            f"rows: slope {inf.slope:.4g}, R² {inf.r2:.3f}; seed {inf.seed})"
        )
    data.update(tail)
    if sources:
        data["settings"] = run.settings()
    return Report("fid", results, data, "\n".join([text, *made.lines]), value)


def fid_infinity(real: Any, gen: Any, *, seed: int | None = None, **options: Any) -> Report:
    """FID∞ (Chong & Forsyth, "Effectively unbiased FID and Inception Score and where to find
    them", CVPR 2020): FID at 15 nested subset sizes of ``gen`` and the intercept of a
    least-squares line in 1/N. ``float()`` is FID∞; the report holds FID beside it. Takes
    :func:`fid`'s options.

    Example:
        >>> import numpy as np, shardeval as se
        >>> rng = np.random.default_rng(0)
        >>> r = se.fid_infinity(rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3)))
        >>> len(r["fid_inf"].sizes)
        15
    """
    report = fid(real, gen, infinity=True, seed=seed, **options)
    inf = report.results["fid_inf"]
    return Report("fid_inf", report.results, report.data, report.text, float(inf.fid_infinity))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> Any:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in pytorch-fid's
    argument order, by a symmetric eigenvalue problem in float64 (no ``sqrtm``).

    Each covariance is checked as a statistics file's is: asymmetry up to 1e-5 of its largest
    entry is rounding and is symmetrised, more is refused (a matrix holding one triangle
    gives a wrong distance), as are NaN, inf and negative variances.

    Returns:
        :class:`~shardeval.pipeline.fid.frechet.FrechetDistance` (``float()`` the distance).

    Raises:
        StatsFormatError: shapes that do not fit, a covariance that is not symmetric, values
            that are not finite, a negative variance.

    Example:
        >>> import numpy as np, shardeval as se
        >>> float(se.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)))
        4.0
    """
    from shardeval.pipeline.fid.frechet import frechet_distance as distance

    return distance(
        checked_gaussian(mu1, sigma1, None, "mu1/sigma1", ("mu1", "sigma1")),
        checked_gaussian(mu2, sigma2, None, "mu2/sigma2", ("mu2", "sigma2")),
    )


# ---------------------------------------------------------------------------------------------
# statistics


def stats(
    store: Any,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    encoder: str | None = None,
    resize: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    cache_root: str | None = None,
    verify: bool | None = None,
    skip_bad: bool | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    nonfinite: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Compute exact, mergeable statistics (n, mean, m2) of ``store`` and save them: a Zarr
    group, or for a name ending in ``.npz`` the pytorch-fid layout (mu, sigma, n). Image
    inputs, and the options that make them features (``encoder`` … ``verify``, ``skip_bad``),
    as for :func:`fid`.

    Returns:
        :class:`~shardeval.api.results.Report`: ``results["moments"]`` the
        :class:`~shardeval.pipeline.core.states.Moments`. Statistics have no headline
        number: ``float()`` raises a TypeError (the row count is ``to_dict()["n"]``).

    Raises:
        OutputExistsError: ``output`` exists and is not statistics, or ``overwrite`` not given.

    Example:
        >>> import os, tempfile, numpy as np, shardeval as se
        >>> rows = np.random.default_rng(0).normal(size=(500, 4))
        >>> out = os.path.join(tempfile.mkdtemp(), "real.zarr")
        >>> se.stats(rows, out)["moments"].n              # rows summarised
        500
        >>> round(float(se.fid(out, rows[::-1])), 12)    # the same rows: FID 0
        0.0
    """
    options = dict(locals())
    check_options(options)
    _must_exist(store)
    from shardeval.pipeline.io.atomic import check_outside, claim_output
    from shardeval.pipeline.io.provenance import now_iso, versions
    from shardeval.pipeline.io.statsio import is_stats, save_stats

    output = os.fspath(output)
    if is_path(store):
        check_outside(output, [os.fspath(store)])
    claim_output(output, "statistics file", is_stats, overwrite, streams=True)
    images = image_flags([store], options)
    with _noted() as notes, _running(options) as run:
        (store,) = with_features(run, [store], images)
        source = features(store, array=array, shard_rows=shard_rows)
        ((moments, dropped),) = _moments(run, [source])
        provenance = {
            **source.describe(),
            "settings": run.settings(),
            "nonfinite_dropped": dropped,
            "created": now_iso(),
            "versions": versions(),
        }
        save_stats(output, moments, provenance, overwrite=overwrite)
        made = features_made({"store": provenance}, run.cached)
        notes.extend(made.warnings)
        tail = run.tail(notes)
    text = (
        f"statistics of {source.shown}: n={moments.n:,} d={moments.d:,} "
        f"shards={source.shards} -> {output} ({tail['seconds']:.2f} s)"
    )
    text = "\n".join([text, *made.lines])
    data = {"metric": "stats", "n": moments.n, "d": moments.d, "output": output, **provenance}
    data.update(made.data)
    data.update(tail)
    return Report("stats", {"moments": moments}, data, text, None)


def _shown(x: Any) -> str:
    """A value in a message: statistics and arrays by their kind and shape, others as repr."""
    short = isinstance(x, int | float | complex | bytes | type(None))
    return repr(x) if short else describe_input(x)


def _stats_paths(inputs: Any) -> list[str]:
    """``merge_stats``'s inputs as paths: a list (or other sequence) of str or PathLike.

    Raises:
        StatsFormatError: one path (a str is a sequence of its characters), or not paths.
    """
    from shardeval.pipeline.errors import StatsFormatError

    if is_path(inputs):
        raise StatsFormatError(
            f"«inputs» is one path, {os.fspath(inputs)!r}; merge_stats merges two or more "
            "statistics files, given as a list of their paths: [path_a, path_b, ...]"
        )
    try:
        given = list(inputs)
    except TypeError:
        raise StatsFormatError(
            f"«inputs» is {_shown(inputs)} ({type(inputs).__name__}); merge_stats takes a list "
            "of the paths of statistics files"
        ) from None
    wrong = [(i, x) for i, x in enumerate(given) if not is_path(x)]
    if wrong:
        i, x = wrong[0]
        raise StatsFormatError(
            f"«inputs»[{i}] is {_shown(x)} "
            f"({type(x).__name__}); merge_stats takes the paths of statistics files (str or "
            "os.PathLike); Moments in memory merge with a.merge(b)"
        )
    return [os.fspath(p) for p in given]


def merge_stats(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Report:
    """Merge statistics of disjoint row sets (each must record n) into ``output``: the
    statistics of their union, exactly (Chan et al.'s pairwise update).

    Args:
        inputs: the paths of two or more statistics files, as a list (a single path is not a
            list of its characters: it is refused, as anything but paths is).
        output: the statistics file to write.
        overwrite: replace an existing statistics file at ``output``.

    Returns:
        :class:`~shardeval.api.results.Report`: ``results["moments"]`` the merged
        :class:`~shardeval.pipeline.core.states.Moments` (``float()`` raises, as for
        :func:`stats`).

    Raises:
        StatsFormatError: ``inputs`` is one path or holds something other than paths; fewer
            than two files; files that do not merge (see
            :func:`shardeval.pipeline.io.statsio.merge_stats`).

    Example:
        >>> import os, tempfile, numpy as np, shardeval as se
        >>> rows, tmp = np.random.default_rng(0).normal(size=(500, 4)), tempfile.mkdtemp()
        >>> parts = [os.path.join(tmp, f"part{i}.zarr") for i in (0, 1)]
        >>> _ = se.stats(rows[:200], parts[0]), se.stats(rows[200:], parts[1])
        >>> se.merge_stats(parts, os.path.join(tmp, "all.zarr"))["moments"].n
        500
    """
    from shardeval.pipeline.io.atomic import check_outside, claim_output
    from shardeval.pipeline.io.provenance import now_iso, versions
    from shardeval.pipeline.io.statsio import is_stats, save_stats
    from shardeval.pipeline.io.statsio import merge_stats as merge

    paths = _stats_paths(inputs)
    output = os.fspath(output)
    _must_exist(*paths)
    check_outside(output, paths)
    claim_output(output, "statistics file", is_stats, overwrite, streams=True)
    merged, provenance = merge(paths)
    provenance = {**provenance, "created": now_iso(), "versions": versions()}
    save_stats(output, merged, provenance, overwrite=overwrite)
    text = f"merged {len(paths)} statistics: n={merged.n:,} d={merged.d:,} -> {output}"
    data = {"metric": "stats", "n": merged.n, "d": merged.d, "output": output, **provenance}
    return Report("stats", {"moments": merged}, data, text, None)


# ---------------------------------------------------------------------------------------------
# NLL and ESS

#: nll: which options apply to which mode
_NLL_MODES = {
    "dims": ("loglik", "iw"),
    "reff": ("iw",),
    "bandwidth": ("parzen",),
    "device": ("iw", "gaussian", "parzen"),
    "backend": ("iw", "gaussian", "parzen"),
    "split_every": ("loglik", "iw", "gaussian"),
}


def nll(
    store: Any = None,
    *,
    iw: Any = None,
    gaussian: Any = None,
    parzen: Any = None,
    dims: int | None = None,
    reff: float | None = None,
    bandwidth: float | str | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    nonfinite: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Mean negative log-likelihood (nats) with its standard error, one of four ways:
    ``nll(loglik)`` from per-sample log-likelihoods (N,); ``nll(iw=log_weights)`` IWAE-style
    from importance log-weights (N, K) (Burda et al. 2016); ``nll(test, gaussian=stats)``
    under a Gaussian of saved statistics; ``nll(test, parzen=samples)`` under a Gaussian KDE
    of sample features (Parzen 1962).

    Args:
        dims: dimensions per sample, for bits/dim (loglik, iw).
        reff: relative efficiency of the draws for the PSIS tail (iw).
        bandwidth: Parzen's h, ``"silverman"`` (default) or ``"cv"`` (parzen).

    Returns:
        :class:`~shardeval.api.results.Report` (``float()`` the mean NLL; ``results["nll"]``
        the :class:`~shardeval.pipeline.likelihood.nll.NLLResult`).

    Example:
        >>> import numpy as np, shardeval as se
        >>> round(float(se.nll(np.full(10, -2.0))), 6)
        2.0
    """
    options = dict(locals())
    check_options(options)
    modes = [m for m in ("iw", "gaussian", "parzen") if options[m] is not None]
    if len(modes) > 1:
        raise OptionError(f"choose one of «iw», «gaussian», «parzen»; got {', '.join(modes)}")
    mode = modes[0] if modes else "loglik"
    if (store is None) != (mode == "iw"):
        want = {"iw": "no store", "loglik": "LOGLIK"}.get(mode, "the TEST features")
        raise OptionError(f"nll by {mode} takes {want}")
    for option, applies in _NLL_MODES.items():
        if mode not in applies:
            refuse(options, (option,), f"does not apply to nll {mode}")
    _must_exist(store, iw, parzen, *([gaussian] if is_path(gaussian) else []))
    nonfinite = nonfinite or "error"
    with _noted() as notes, _running(options) as run:
        eng, bar = run.engine, run.progress
        kernel: dict[str, Any] = {"device": device or "auto", "backend": backend or "auto"}
        inputs: dict[str, Any] = {}

        def opened(x: Any, name: str | None = array, **kw: Any) -> Any:
            return features(x, array=name, shard_rows=shard_rows, **kw)

        if mode == "loglik":
            from shardeval.pipeline.likelihood.nll import nll_from_loglik

            source = opened(store, min_rows=1, ndims=(1,))
            result = nll_from_loglik(
                source, engine=eng, nonfinite=nonfinite, dims=dims, split_every=split_every,
                progress=bar,
            )  # fmt: skip
            inputs["loglik"] = source.describe()
        elif mode == "iw":
            from shardeval.pipeline.likelihood.nll import nll_importance

            source = opened(iw, min_rows=1, ndims=(2,))
            result = nll_importance(
                source, engine=eng, nonfinite=nonfinite, dims=dims,
                reff=1.0 if reff is None else reff, split_every=split_every, progress=bar,
                **kernel,
            )  # fmt: skip
            inputs["log_weights"] = source.describe()
        elif mode == "gaussian":
            from shardeval.pipeline.likelihood.gaussian_nll import nll_gaussian

            source = opened(store)
            result = nll_gaussian(
                statistics(gaussian), source, engine=eng, nonfinite=nonfinite,
                split_every=split_every, progress=bar, **kernel,
            )  # fmt: skip
            inputs.update(statistics=describe_input(gaussian), test=source.describe())
        else:
            from shardeval.pipeline.likelihood.parzen import nll_parzen

            names = arrays_for([parzen, store], array)
            samples, test = opened(parzen, names[0]), opened(store, names[1])
            result = nll_parzen(
                samples, test, bandwidth or "silverman", engine=eng, nonfinite=nonfinite,
                progress=bar, **kernel,
            )  # fmt: skip
            inputs.update(samples=samples.describe(), test=test.describe())
        tail = run.tail(notes)
        settings = {k: v for k, v in run.settings().items() if mode in _NLL_MODES.get(k, (mode,))}
    data = {"metric": "nll", **nll_dict(result), "inputs": inputs, **tail, "settings": settings}
    return Report("nll", {"nll": result}, data, nll_summary(result, tail["seconds"]), result.nll)


def ess(
    log_weights: Any,
    *,
    reff: float | None = None,
    shard_rows: int | None = None,
    array: str | None = None,
    split_every: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    nonfinite: str | None = None,
    scheduler: Any = None,
    cluster: str | None = None,
    threads: int | None = None,
    performance_report: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Effective sample size ESS = (Σw)²/Σw² (Kong 1992) of importance log-weights (N,) or
    (N, K), with the largest normalised weight and the PSIS Pareto k̂ (Vehtari et al. 2024;
    < 0.5 good, < 0.7 usable, ≥ 0.7 unreliable); for (N, K) also per row.

    Returns:
        :class:`~shardeval.api.results.Report` (``float()`` the ESS; ``results["ess"]`` the
        :class:`~shardeval.pipeline.likelihood.ess.ESSResult`).

    Example:
        >>> import numpy as np, shardeval as se
        >>> float(se.ess(np.log(np.array([1.0, 1.0, 2.0]))))   # 4² / 6
        2.6666666666666665
    """
    options = dict(locals())
    check_options(options)
    _must_exist(log_weights)
    from shardeval.pipeline.likelihood.ess import ess_of

    with _noted() as notes, _running(options) as run:
        source = features(log_weights, array=array, shard_rows=shard_rows, min_rows=1, ndims=(1, 2))
        result = ess_of(
            source,
            engine=run.engine,
            nonfinite=nonfinite or "error",
            reff=1.0 if reff is None else reff,
            device=device or "auto",
            backend=backend or "auto",
            split_every=split_every,
            progress=run.progress,
        )
        tail = run.tail(notes)
        settings = run.settings()
    data = {
        "metric": "ess",
        **ess_dict(result),
        "inputs": {"log_weights": source.describe()},
        **tail,
        "settings": settings,
    }
    return Report("ess", {"ess": result}, data, ess_summary(result, tail["seconds"]), result.ess)


__all__ = [
    "ENGINE_OPTIONS",
    "INPUT_OPTIONS",
    "ShardevalError",
    "ess",
    "fid",
    "fid_infinity",
    "frechet_distance",
    "merge_stats",
    "nll",
    "refuse",
    "stats",
]
