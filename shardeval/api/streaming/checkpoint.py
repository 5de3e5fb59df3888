"""Checkpoints of training-loop metrics: reading a state dict's entries with checks that name the
key and what it must be."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from shardeval.api.streaming.batches import _SIDES, _images_described, _images_made
from shardeval.pipeline.errors import (
    StatsFormatError,
)

if TYPE_CHECKING:
    pass


def _state_value(state: dict[str, Any], key: str) -> Any:
    if key not in state:
        raise StatsFormatError(
            f"state_dict lacks {key!r}; it holds {sorted(state)} (load what state_dict() returned)"
        )
    value = state[key]
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


#: The keys of a state dict that say how a side's rows were made (absent in state dicts of
#: earlier shardevals: read as "").
_MADE_KEYS = ("made_by", "weights_file")


def _state_text(state: dict[str, Any], key: str) -> str:
    """A string of a state dict; ``""`` when absent."""
    value = _state_value(state, key) if key in state else ""
    if not isinstance(value, str):
        raise StatsFormatError(f"state_dict: {key!r} is {value!r}; it must be a string")
    return value


def _state_provenance(state: dict[str, Any], key: str) -> dict[str, Any]:
    """How a reference's features were made, as a state dict keeps it (a JSON object; ``{}``
    when absent: nothing recorded)."""
    text = _state_text(state, key)
    try:
        provenance = json.loads(text) if text else {}
    except ValueError:
        provenance = None
    if not isinstance(provenance, dict):
        raise StatsFormatError(
            f"state_dict: {key!r} is {text[:80]!r}; it must be a JSON object (load what "
            "state_dict() returned)"
        )
    return provenance


def _weights_file(described: dict[str, Any] | None) -> str:
    """Where image rows' weights were read, as a state dict keeps it (``""``: none)."""
    extraction = (described or {}).get("extraction") or {}
    return str(extraction.get("weights_file") or "")


def _made_entries(
    made: dict[str, str | None], described: dict[str, dict[str, Any] | None]
) -> dict[str, str]:
    """How each side's rows were made, as every metric's state dict keeps it: ``made_by``
    (``""`` before any row) and ``weights_file`` (where image rows' weights were read)."""
    entries = {}
    for side in _SIDES:
        entries[f"{side}.made_by"] = made[side] or ""
        entries[f"{side}.weights_file"] = _weights_file(described[side])
    return entries


def _read_made(
    state: dict[str, Any],
) -> tuple[dict[str, str | None], dict[str, dict[str, Any] | None]]:
    """What :func:`_made_entries` wrote: per side how its rows were made (None: no rows) and
    how reports describe them (None: feature rows, which record nothing)."""
    made: dict[str, str | None] = {}
    described: dict[str, dict[str, Any] | None] = {}
    for side in _SIDES:
        value, weights_file = (_state_text(state, f"{side}.{k}") for k in _MADE_KEYS)
        made[side] = value or None
        images = _images_made(value)
        described[side] = None if images is None else _images_described(*images, weights_file)
    return made, described


def _check_possible(side: str, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
    """Refuse moments no rows have: a side of no rows has a zero mean and co-moment, and a
    side of one row a zero co-moment (the row minus itself).

    Raises:
        StatsFormatError: naming the side, its count and the entry that cannot be.
    """
    if n <= 1 and np.any(m2):
        raise StatsFormatError(
            f"state_dict: {side}.n is {n}, but {side}.m2 is not zero (largest entry "
            f"{np.abs(m2).max():.6g}): the co-moment of {n} row(s) is zero; the state was "
            "altered or mixed from two states: load what state_dict() returned"
        )
    if n == 0 and np.any(mean):
        raise StatsFormatError(
            f"state_dict: {side}.n is 0, but {side}.mean is not zero (largest entry "
            f"{np.abs(mean).max():.6g}): a side of no rows has no mean; the state was altered "
            "or mixed from two states: load what state_dict() returned"
        )


def _state_array(state: dict[str, Any], key: str) -> np.ndarray:
    return np.asarray(_state_value(state, key), dtype=np.float64)


def _state_int(state: dict[str, Any], key: str) -> int:
    """A count of a state dict: an integer in [0, 2^53], the bound statistics files hold
    counts to (float64, which the moments' arithmetic takes them in, is exact up to it)."""
    from shardeval.pipeline.io.statsio import MAX_N

    value = _state_value(state, key)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not 0 <= value <= MAX_N
    ):
        raise StatsFormatError(
            f"state_dict: {key!r} is {value!r}; it must be an integer in [0, 2^53]"
        )
    return int(value)
