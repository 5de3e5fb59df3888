"""The API functions of Gaussian statistics: :func:`stats` (features to a statistics file or
:class:`~shardeval.pipeline.core.states.Moments`), :func:`merge_stats` (statistics files of
disjoint rows to those of their union) and :func:`frechet_distance` (of two statistics).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from shardeval.api.calls import (
    Progress,
    _must_exist,
    _noted,
    _Run,
    _running,
    check_options,
    image_flags,
    with_features,
)
from shardeval.api.inputs import (
    checked_gaussian,
    describe_input,
    features,
    is_path,
    statistics,
)
from shardeval.api.results import (
    Report,
    Side,
    features_made,
)


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
