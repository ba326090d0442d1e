"""Lossless JSON for attribute and encoding values.

numpy scalars and arrays are tagged with their dtype so that an attr such as
``np.float32(1e-4)`` comes back as the same float32, not a float64 that compares unequal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_TAG = "__np__"


def _float(x: float) -> Any:
    if math.isnan(x):
        return {"__float__": "nan"}
    if math.isinf(x):
        return {"__float__": "inf" if x > 0 else "-inf"}
    return x


def to_json(value: Any) -> Any:
    """Convert an attribute value into a JSON-safe structure that :func:`from_json` inverts."""
    if isinstance(value, np.ndarray | np.generic):
        arr = np.asarray(value)
        if arr.dtype.kind in "Mm":
            return {_TAG: arr.astype(str).tolist(), "dtype": str(arr.dtype), "shape": arr.shape}
        data = [_float(v) if isinstance(v, float) else v for v in arr.ravel().tolist()]
        return {_TAG: data, "dtype": str(arr.dtype), "shape": list(arr.shape)}
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, bytes):
        return {"__bytes__": value.decode("latin-1")}
    if isinstance(value, list | tuple):
        return {"__list__": [to_json(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict):
        return {"__dict__": {str(k): to_json(v) for k, v in value.items()}}
    return str(value)


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if _TAG in value:
            dtype = np.dtype(value["dtype"])
            data = [float(v["__float__"]) if isinstance(v, dict) else v for v in value[_TAG]]
            arr = np.array(data, dtype=dtype).reshape(value["shape"])
            return arr[()] if arr.ndim == 0 else arr
        if "__float__" in value:
            return float(value["__float__"])
        if "__bytes__" in value:
            return value["__bytes__"].encode("latin-1")
        if "__list__" in value:
            items = [from_json(v) for v in value["__list__"]]
            return tuple(items) if value.get("tuple") else items
        if "__dict__" in value:
            return {k: from_json(v) for k, v in value["__dict__"].items()}
    return value


def dict_to_json(d: dict[str, Any]) -> dict[str, Any]:
    return {str(k): to_json(v) for k, v in d.items()}


def dict_from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {k: from_json(v) for k, v in d.items()}
