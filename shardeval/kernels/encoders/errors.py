"""What goes wrong setting up an encoder, in one line saying what would fix it."""

from __future__ import annotations

from shardeval._words import Worded


class EncoderError(Worded, Exception):
    """An encoder cannot be set up; the message is one line saying what would fix it (its
    options marked: see :mod:`shardeval._words`)."""


class WeightsError(EncoderError):
    """Weights are missing, unreadable, or do not fit the model."""


class MissingDependencyError(EncoderError):
    """An optional package the encoder needs is not installed."""
