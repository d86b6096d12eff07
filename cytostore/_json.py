"""The package's one JSON converter: numpy, torch, dates, paths, NaN to JSON."""

from __future__ import annotations

import datetime as _dt
import decimal
import math
from pathlib import Path
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """Return ``value`` converted to something ``json.dumps`` accepts.

    Dicts (keys become strings), lists and tuples are converted item by item;
    objects with ``to_dict()`` (typed reports) by their dict; numpy/torch scalars
    and arrays become Python numbers and lists; NaN and infinities become ``None``;
    dates become ISO strings, ``Decimal`` a float, paths a string.

    Returns:
        A value made of dicts, lists, str, int, float, bool and ``None``.

    Examples:
        >>> import numpy as np
        >>> jsonable({"a": np.float32(0.5), 1: [np.nan, Path("x")]})
        {'a': 0.5, '1': [None, 'x']}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return jsonable(float(value))
    if isinstance(value, Path):
        return str(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    if hasattr(value, "tolist"):  # numpy/torch scalar or array
        return jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    return value
