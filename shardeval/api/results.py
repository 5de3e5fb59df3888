"""Typed, frozen results: ``float(result)`` is the headline value, ``result.to_dict()`` the
JSON report's content exactly (no NaN or inf: JSON has none; they are ``None``), and
``result.summary()`` a few lines for people."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar

import numpy as np


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON would hold it: dicts, lists, str, int, float, bool, None; non-finite
    floats as None, numpy scalars and arrays as Python numbers and lists, dataclasses as
    dicts of their fields."""
    if isinstance(obj, Result):
        return obj.to_dict()
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass(frozen=True)
class Result:
    """Base of every result: subclasses name their headline field in ``headline``."""

    headline: ClassVar[str] = ""

    def __float__(self) -> float:
        return float(getattr(self, self.headline))

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's content."""
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)}

    def summary(self) -> str:
        return f"{self.headline} {float(self):.6g}"
