"""How each entry of a run history had its features made, and its reference's: what a run
records per entry, how `history` and the report show it, and the warnings when entries of one
series, or an entry and its reference, were made differently.

A record is the JSON a run writes per entry (:func:`record_of`): for an extraction's features
the encoder, resize and weights' digest (``weights_status`` is decided from the digest every
time it is read, never taken from the record); for ``shardeval synth`` features their seed, n,
d, mean and scale; for a guided-diffusion reference batch the network, the TF resize and the
published weights (its description decides that, having no digest); {} when the input records
nothing (features of another tool).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from shardeval.api.provenance import (
    MadeBy,
    difference_warning,
    made_by,
    recorded,
    weights_text,
)


class ProvenanceWarning(UserWarning):
    """How a run's features were made calls for care: weights that are not the published
    file, features compared or joined with features made differently (the numbers measure
    that as well), images left out as unreadable."""


#: A name's trailing number (with the separators before it): ``ckpt-100`` → ``ckpt``.
_TRAILING_NUMBER = re.compile(r"[\W_]*\d+$")

#: What a record keeps of :class:`MadeBy` (the status is decided again when read).
_RECORDED = ("feature_extractor", "encoder", "resize", "weights_digest", "weights_file")


def series_of(name: str) -> str:
    """The series an entry belongs to: its name without a trailing number, as a job's glob
    names checkpoints of one run (``ckpt-100``, ``ckpt-200`` → ``ckpt``)."""
    return _TRAILING_NUMBER.sub("", name)


def record_of(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a history records of how an input's features were made, from its description (a
    feature source's, a statistics file's attributes, a reference batch's); {} when it
    records nothing.

    Args:
        provenance: an opened store's ``describe()`` (:func:`shardeval.api.stores.open_store`)
            or :func:`~shardeval.api.stores.statistics_provenance`.
    """
    made = made_by(provenance)
    if made is None:
        return {}
    record = {k: v for k, v in made.to_dict().items() if k in _RECORDED and v is not None}
    if made.weights_digest is None and made.weights_status is not None:
        # A reference batch of the published TF graph: no digest to decide from.
        record["weights_status"] = made.weights_status
    return record


def loads(text: Any) -> dict[str, Any] | None:
    """A record as stored (JSON text); None where nothing was recorded (an entry written
    before records were kept, or unreadable text)."""
    try:
        record = json.loads(str(text)) if text else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def made_of(record: Mapping[str, Any] | None) -> MadeBy | None:
    """The record as :class:`MadeBy`, the weights' status decided now from their digest; None
    for a record of nothing, or of synthetic features (no network made them)."""
    if not record or "features" in record:
        return None
    if record.get("weights_digest") is None and record.get("weights_status") is not None:
        return MadeBy(**{k: record.get(k) for k in (*_RECORDED, "weights_status")})
    return recorded(record)


def shown(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The record as `history --format json` gives it: with the weights' status decided now;
    None where nothing was recorded."""
    if record is None:
        return None
    made = made_of(record)
    if made is None:
        return dict(record)
    return {k: v for k, v in made.to_dict().items() if v is not None}


def text(record: Mapping[str, Any] | None, *, full: bool = False, loud: bool = False) -> str:
    """A record for people. Features of a network: it, the resize, the weights (whole digest
    with ``full``; with ``loud``, what weights that are not the published file mean for the
    numbers); synthetic features ``{"features": "synthetic Gaussian", "seed": 1}`` read
    "synthetic Gaussian, seed 1"."""
    if record and "features" in record:
        return ", ".join(
            str(v) if k == "features" else f"{k.replace('_', ' ')} {v}" for k, v in record.items()
        )
    made = made_of(record)
    return "not recorded" if made is None else made.text(full=full, loud=loud)


def short(record: Mapping[str, Any] | None) -> str:
    """A record in a few words, for a plot's legend: the encoder (or network), the resize,
    the weights' shortened digest."""
    if record and "features" in record:
        return str(record["features"])
    made = made_of(record)
    if made is None:
        return "not recorded"
    digest = weights_text(None, made.weights_digest) if made.weights_digest else None
    parts = (made.encoder or made.feature_extractor, made.resize, digest)
    return ", ".join(str(p) for p in parts if p)


def key(record: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """What two entries must share to be made the same way: the network, encoder, resize and
    weights (synthetic features of one kind share it whatever their seed)."""
    if record and "features" in record:
        return ("synthetic", record.get("features"))
    made = made_of(record)
    if made is None:
        return ()
    return (made.feature_extractor, made.encoder, made.resize, made.weights_digest)


def listed(names: Sequence[str]) -> str:
    """Names for a sentence: ``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


#: The parts of :func:`key`, as a warning names them.
_PARTS = ("network", "encoder", "resize", "weights")


def warnings_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The warnings a history's entries call for: entries of one series (names that differ
    in a trailing number) made differently, and entries made differently from their
    reference (each where both record how).

    Args:
        rows: :meth:`~shardeval.workflows.history.History.table` rows, with their
            ``features_made_by`` and ``reference_made_by``.
    """
    out = []
    series: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        series.setdefault(series_of(str(row["name"])), []).append(row)
    for members in series.values():
        ways: dict[tuple[Any, ...], list[str]] = {}
        for row in members:
            way = key(row.get("features_made_by"))
            if way and way[0] != "synthetic":  # entries that record nothing cannot be told
                ways.setdefault(way, []).append(str(row["name"]))
        if len(ways) < 2:
            continue
        differ = []
        for i, part in enumerate(_PARTS):
            values: dict[Any, list[str]] = {}
            for way, names in ways.items():
                values.setdefault(way[i], []).extend(names)
            if len(values) > 1:
                shown_values = (
                    f"{weights_text(None, v) if part == 'weights' else v or 'not recorded'} "
                    f"({listed(n)})"
                    for v, n in values.items()
                )
                differ.append(f"{part} " + " and ".join(shown_values))
        names = [name for names in ways.values() for name in names]
        out.append(
            f"entries {listed(names)} are of one series but their features were made "
            f"differently ({'; '.join(differ)}): their results do not compare along the series, "
            "and the plots over steps draw them apart"
        )
    pairs: dict[tuple[tuple[Any, ...], tuple[Any, ...]], list[Mapping[str, Any]]] = {}
    for row in rows:
        both = (key(row.get("features_made_by")), key(row.get("reference_made_by")))
        pairs.setdefault(both, []).append(row)
    for members in pairs.values():
        names = [str(r["name"]) for r in members]
        one = len(names) == 1
        warned = difference_warning(
            f"entr{'y' if one else 'ies'} {listed(names)}",
            made_of(members[0].get("features_made_by")),
            f"{'its' if one else 'their'} reference",
            made_of(members[0].get("reference_made_by")),
        )
        if warned is not None:
            out.append(warned)
    return out
