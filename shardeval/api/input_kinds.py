"""What every kind of input shares: whether it is a path (:func:`is_path`), how reports name it
(:func:`describe_input`), and :class:`ExtractedImages`, images whose features the feature cache
holds (what the feature and statistics inputs tell apart from a path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


def is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def describe_input(x: Any) -> str:
    """A short name for an input in messages and reports."""
    from shardeval.pipeline.core.states import Moments
    from shardeval.pipeline.fid.gaussian import Gaussian

    if isinstance(x, ExtractedImages):
        return x.given
    if is_path(x):
        return os.fspath(x)
    if isinstance(x, Moments):
        return f"<Moments n={x.n} d={x.d}>"
    if isinstance(x, Gaussian):
        return x.source or f"<Gaussian d={x.d}>"
    shape = getattr(x, "shape", None)
    if shape is None and _library(x) == "xarray":  # a Dataset: its sizes by dimension
        shape = tuple(dict(getattr(x, "sizes", {})).values())
    return f"<{_library(x)}.{type(x).__name__} {tuple(shape or ())}>"


@dataclass(frozen=True)
class ExtractedImages(os.PathLike[str]):
    """The features of an image input in the feature cache, a path (``os.fspath`` is the
    entry), remembering the images as the user gave them, which summaries name.

    Attributes:
        path: the cache entry, a complete feature store.
        given: the image source's path, or the description of the images in memory.
    """

    path: str
    given: str

    def __fspath__(self) -> str:
        return self.path
