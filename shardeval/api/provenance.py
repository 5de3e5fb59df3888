"""How features were made, for the reports a client writes (a job's history, its page): the
network, the resize, the weights' SHA-256 and whether that is the published file, read from
what an input records (:func:`made_by`) or from a record kept earlier (:func:`recorded`), and
the warnings when weights are not the published file or two sides were made differently.

These are the words every report of the metric functions uses
(:mod:`shardeval.api.results`), so that a history and a command's report say the same.

Example:
    >>> from shardeval.api.provenance import made_by
    >>> made = made_by({"extraction": {"encoder": "inception", "resize": "clean",
    ...                                "weights_digest": "sha256:" + "0" * 64}})
    >>> made.weights_status
    'not published'
"""

from __future__ import annotations

from shardeval.pipeline.images.provenance import (
    MadeBy,
    difference_warning,
    made_by,
    recorded,
    weights_text,
    weights_warning,
)

__all__ = [
    "MadeBy",
    "difference_warning",
    "made_by",
    "recorded",
    "weights_text",
    "weights_warning",
]
