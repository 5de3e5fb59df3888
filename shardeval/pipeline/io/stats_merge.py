"""Merging statistics files of disjoint row sets into the statistics of their union
(:func:`merge_stats`), claiming of the features only what every input records.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from shardeval.pipeline.core.states import Moments
from shardeval.pipeline.errors import ShapeError, StatsFormatError, SuspectStoreWarning
from shardeval.pipeline.io.stats_files import load_stats, stats_provenance

#: What statistics of an extraction store's features keep of how those were made, and what
#: must agree for two of them to merge.
_MADE_KEYS = ("encoder", "resize", "weights_digest")


def merge_stats(paths: list[str]) -> tuple[Moments, dict[str, Any]]:
    """Merge statistics files of disjoint row sets into the statistics of their union.

    The merge claims of its features only what every input records: how they were made
    (encoder, resize, weights digest) when every input records the same, the feature
    extractor when every input names the same one. Inputs that record how their features were
    made never merge with inputs that record nothing of it (statistics of another tool's
    features, or ``.npz`` files written before ours kept their provenance): nothing tells
    whether those were made the same way, and a merge of features made differently is a
    plausible wrong set of statistics that no later report could warn of.

    Args:
        paths: two or more statistics files, each recording its row count ``n``.

    Returns:
        The merged :class:`Moments` and provenance (the inputs; the feature extractor they
        share; how their features were made, when every input records it).

    Raises:
        StatsFormatError: a file has no ``n`` (a bare pytorch-fid file cannot be merged), the
            same file is given twice, the files name different feature extractors or record
            features made differently (encoder, resize, weights digest), or some record how
            their features were made and others do not.
        ShapeError: the feature dimensions differ.

    Warns:
        SuspectStoreWarning: two files record the same source (their rows may be counted
            twice); some files name a feature extractor and others none (the merge names
            none).

    Example:
        >>> import numpy as np, tempfile, os
        >>> from shardeval.pipeline.io.stats_files import save_stats
        >>> x = np.arange(12.0).reshape(6, 2)
        >>> tmp = tempfile.mkdtemp()
        >>> a = save_stats(os.path.join(tmp, "a.npz"), Moments.from_rows(x[:2]))
        >>> b = save_stats(os.path.join(tmp, "b.npz"), Moments.from_rows(x[2:]))
        >>> merged, _ = merge_stats([a, b])
        >>> merged.n, np.allclose(merged.covariance(), np.cov(x, rowvar=False))
        (6, True)
    """
    if len(paths) < 2:
        raise StatsFormatError(f"merging needs at least two statistics files, got {len(paths)}")
    real = [os.path.realpath(p) for p in paths]
    repeated = sorted({p for p, r in zip(paths, real, strict=True) if real.count(r) > 1})
    if repeated:
        raise StatsFormatError(
            f"{repeated} given more than once: merging a file with itself counts its rows twice"
        )
    extractors: dict[str, str] = {}
    # How each input's features were made (encoder, resize, weights), where it records it.
    made: dict[str, tuple[Any, ...]] = {}
    made_by: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    merged: Moments | None = None
    for path in paths:
        stats = _load_mergeable(path, merged)
        provenance = stats_provenance(path)
        extractor = provenance.get("feature_extractor")
        _note_source(sources, path, provenance)
        if extractor is not None:
            extractors[path] = str(extractor)
        extraction = provenance.get("extraction")
        if isinstance(extraction, dict):
            made[path] = tuple(extraction.get(k) for k in _MADE_KEYS)
            made_by.setdefault("extraction", extraction)
        merged = stats if merged is None else merged.merge(stats)
    _check_made_alike(paths, extractors, made)
    if merged is None:  # unreachable: at least two paths were read
        raise StatsFormatError("no statistics to merge")
    return merged, _merged_provenance(paths, extractors, made, made_by)


def _note_source(sources: dict[tuple[str, ...], str], path: str, provenance: Any) -> None:
    """Record the source ``path``'s statistics were computed from, and warn when another input
    records the same one (their rows may be counted twice)."""
    if provenance.get("source") is not None:
        key = tuple(str(provenance.get(k)) for k in ("source", "array", "shape"))
        if key in sources:
            warnings.warn(
                f"{sources[key]!r} and {path!r} record the same source "
                f"{provenance['source']!r} (array, shape): if they are statistics of the "
                "same rows, the merge counts those rows twice",
                SuspectStoreWarning,
                stacklevel=3,
            )
        sources[key] = path


def _check_made_alike(
    paths: list[str], extractors: dict[str, str], made: dict[str, tuple[Any, ...]]
) -> None:
    """Refuse inputs whose features come from different extractors or were made differently,
    and inputs that record how their features were made beside inputs that record nothing."""
    if len(set(extractors.values())) > 1:
        raise StatsFormatError(
            f"the files come from different feature extractors ({extractors}); statistics of "
            "different features cannot be merged"
        )
    if len(set(made.values())) > 1:
        listed = "; ".join(
            f"{p!r}: " + ", ".join(f"{k} {v}" for k, v in zip(_MADE_KEYS, m, strict=True))
            for p, m in made.items()
        )
        raise StatsFormatError(
            f"the files' features were made differently ({listed}); statistics of features "
            "made by another encoder, resize or weights cannot be merged"
        )
    unrecorded = [p for p in paths if p not in made]
    if made and unrecorded:
        (how,) = set(made.values())
        one = len(unrecorded) == 1
        raise StatsFormatError(
            f"{unrecorded} record{'s' if one else ''} nothing of how {'its' if one else 'their'}"
            f" features were made, and {sorted(made)} record{'s' if len(made) == 1 else ''} "
            + ", ".join(f"{k} {v}" for k, v in zip(_MADE_KEYS, how, strict=True))
            + ": nothing tells whether they were made the same way, and statistics of "
            "features made differently cannot be merged; compute the statistics of those "
            "features again with `shardeval stats`, which records how they were made"
        )


def _load_mergeable(path: str, merged: Moments | None) -> Moments:
    """The statistics of ``path``, refused when they hold no row count or another d than
    those merged so far."""
    stats = load_stats(path)
    if not isinstance(stats, Moments):
        raise StatsFormatError(
            f"{path!r} has mu and sigma but no row count n: it cannot be merged (write "
            "statistics with `shardeval stats`, which records n)"
        )
    if merged is not None and merged.d != stats.d:
        raise ShapeError(
            f"feature dimensions differ: {path!r} has d={stats.d}, the others d={merged.d}"
        )
    return stats


def _merged_provenance(
    paths: list[str],
    extractors: dict[str, str],
    made: dict[str, tuple[Any, ...]],
    made_by: dict[str, Any],
) -> dict[str, Any]:
    """What the merge records of its inputs' features: only what every input records (with a
    warning when some name a feature extractor and others none)."""
    unnamed = [p for p in paths if p not in extractors]
    if extractors and unnamed:
        warnings.warn(
            f"{unnamed} name no feature extractor, and {sorted(extractors)} name "
            f"{next(iter(extractors.values()))!r}: the merged statistics name none",
            SuspectStoreWarning,
            stacklevel=3,
        )
    merged_provenance: dict[str, Any] = {
        "merged_from": list(paths),
        # Claimed only when every input names it: the merge holds every input's rows.
        "feature_extractor": None if unnamed else next(iter(extractors.values()), None),
    }
    if made:  # every input says how, and the same way: so does the merge
        merged_provenance["extraction"] = {
            k: made_by["extraction"][k] for k in _MADE_KEYS if k in made_by["extraction"]
        }
    return merged_provenance
