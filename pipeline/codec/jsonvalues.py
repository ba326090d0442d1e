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


_RANGE = "__range__"
_PACKED = "__zstd__"
MAX_BYTES = 1 << 28  # one decoded manifest array: far above any coordinate, below a bomb
PACK_MIN = 64  # arrays at least this long are stored as a range or zstd-packed bytes


def _as_range(arr: np.ndarray) -> dict[str, Any] | None:
    """start/step/n for a 1-D array that is exactly ``start + step * arange(n)``: the
    common case for coordinates (pixel centres, daily or hourly time axes)."""
    if arr.ndim != 1 or arr.size < 3 or arr.dtype.kind not in "iufMm":
        return None
    ints = arr.dtype.kind in "iuMm"
    a = arr.view("i8") if arr.dtype.kind in "Mm" else arr
    if ints:
        if arr.dtype.kind == "u" and int(arr.max()) >= 2**63:
            return None
        a = a.astype(np.int64)
        step = int(a[1]) - int(a[0])
        if not -(2**63) <= step < 2**63:
            return None
        with np.errstate(over="ignore"):  # wraps alike on both sides
            rebuilt = a[0] + step * np.arange(a.size, dtype=np.int64)
        if not np.array_equal(rebuilt, a):
            return None
        return {_RANGE: [int(a[0]), step, int(a.size)], "dtype": str(arr.dtype)}
    start = float(a[0])
    for step in (float(a[1]) - start, (float(a[-1]) - start) / (a.size - 1)):
        rebuilt = (start + step * np.arange(a.size, dtype=np.float64)).astype(arr.dtype)
        if np.array_equal(rebuilt, a):
            return {_RANGE: [start, step, int(a.size)], "dtype": str(arr.dtype)}
    return None


def _packed(arr: np.ndarray) -> dict[str, Any]:
    import base64

    import zstandard

    raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    blob = base64.b64encode(zstandard.ZstdCompressor(level=19).compress(raw)).decode("ascii")
    return {_PACKED: blob, "dtype": str(arr.dtype), "shape": list(arr.shape)}


def _unpacked(value: dict[str, Any]) -> np.ndarray:
    import base64

    import zstandard

    dtype = np.dtype(value["dtype"])
    reader = zstandard.ZstdDecompressor().stream_reader(base64.b64decode(value[_PACKED]))
    raw = reader.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ValueError(f"packed array larger than {MAX_BYTES >> 20} MiB")
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
    return arr.reshape(value["shape"])


def _from_range(value: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(value["dtype"])
    start, step, n = value[_RANGE]
    if not 0 <= n <= MAX_BYTES // max(8, dtype.itemsize):
        raise ValueError(f"range of {n} values of {dtype}")
    if dtype.kind in "Mm":
        return (start + step * np.arange(n, dtype=np.int64)).view(dtype)
    work = np.int64 if dtype.kind in "iu" else np.float64
    return (start + step * np.arange(n, dtype=work)).astype(dtype)


_CFTIME = "__cftime__"
CFTIME_UNITS = "microseconds since 1970-01-01"


def is_cftime(arr: np.ndarray) -> bool:
    """An object array of cftime dates (non-standard calendars, as xarray decodes them)."""
    try:
        import cftime
    except ImportError:
        return False
    return all(isinstance(v, cftime.datetime) for v in arr.ravel())


def _cftime_json(arr: np.ndarray) -> dict[str, Any]:
    """cftime dates as integer microseconds of their (single) calendar: exact."""
    import cftime

    calendars = {v.calendar for v in arr.ravel()}
    if len(calendars) != 1:
        raise ValueError(f"cftime dates of several calendars ({', '.join(sorted(calendars))})")
    calendar = calendars.pop()
    nums = cftime.date2num(arr.ravel(), CFTIME_UNITS, calendar)
    return {
        _CFTIME: [int(n) for n in nums],
        "calendar": calendar,
        "has_year_zero": bool(arr.ravel()[0].has_year_zero),
        "shape": list(arr.shape),
    }


def _from_cftime(value: dict[str, Any]) -> np.ndarray:
    import cftime

    dates = cftime.num2date(
        np.asarray(value[_CFTIME], dtype=np.int64),
        CFTIME_UNITS,
        value["calendar"],
        only_use_cftime_datetimes=True,
        has_year_zero=value.get("has_year_zero"),
    )
    out = np.empty(len(dates), dtype=object)
    out[:] = list(dates)
    return out.reshape(value["shape"])


def storable(arr: np.ndarray) -> str | None:
    """Why a coordinate's values cannot be stored exactly, or None when they can."""
    kind = arr.dtype.kind
    if kind in "biufcMmSU":
        return None
    if kind != "O":
        return f"dtype {arr.dtype} is not supported"
    if arr.size and is_cftime(arr):
        try:
            _cftime_json(arr)
        except ValueError as exc:
            return str(exc)
        return None
    plain = (str, bytes, int, float, bool, type(None))
    for v in arr.ravel():
        if not isinstance(v, plain):
            return (
                f"holds {type(v).__name__} objects (only str, bytes, numbers, None and "
                "cftime dates can be stored)"
            )
    return None


def to_json(value: Any) -> Any:
    """Convert an attribute value into a JSON-safe structure that :func:`from_json` inverts.

    Long numeric and time arrays (coordinates) are stored as start/step when regular and
    as zstd-packed bytes otherwise; times always as integers of their unit, so NaT and
    timedelta64 round-trip exactly.
    """
    if isinstance(value, np.ndarray | np.generic):
        arr = np.asarray(value)
        if arr.dtype.kind in "iufMmb" and arr.size >= PACK_MIN:
            return _as_range(arr) or _packed(arr)
        if arr.dtype.kind in "Mm":
            return {_TAG: arr.view("i8").tolist(), "dtype": str(arr.dtype), "shape": arr.shape}
        if arr.dtype.kind == "O" and arr.size and is_cftime(arr):
            return _cftime_json(arr)
        if arr.dtype.kind == "S":  # any bytes, not only UTF-8 ones
            data = [v.decode("latin-1") for v in arr.ravel().tolist()]
        elif arr.dtype.kind == "O":
            data = [to_json(v) for v in arr.ravel().tolist()]
        else:
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
        if _RANGE in value:
            return _from_range(value)
        if _PACKED in value:
            return _unpacked(value)
        if _TAG in value and np.dtype(value["dtype"]).kind in "Mm":
            data = value[_TAG]
            if data and isinstance(np.ravel(np.asarray(data, dtype=object))[0], str):
                arr = np.array(data, dtype=np.dtype(value["dtype"]))  # manifest version 1
            else:
                arr = np.array(data, dtype=np.int64).view(np.dtype(value["dtype"]))
            arr = arr.reshape(value["shape"])
            return arr[()] if arr.ndim == 0 else arr
        if _CFTIME in value:
            return _from_cftime(value)
        if _TAG in value:
            dtype = np.dtype(value["dtype"])
            if dtype.kind == "S":
                data = [v.encode("latin-1") for v in value[_TAG]]
            elif dtype.kind == "O":
                data = [from_json(v) for v in value[_TAG]]
            else:
                data = [float(v["__float__"]) if isinstance(v, dict) else v for v in value[_TAG]]
            if dtype.kind == "O":  # np.array would nest lists and tuples
                arr = np.empty(len(data), dtype=object)
                arr[:] = data
                arr = arr.reshape(value["shape"])
            else:
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


def _itemsize(value: dict[str, Any]) -> int:
    try:
        return max(1, np.dtype(value.get("dtype", "f8")).itemsize)
    except (TypeError, ValueError):
        return 1  # from_json refuses it


def _count(n: Any) -> int:
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def declared_nbytes(value: Any) -> int:
    """Bytes :func:`from_json` would allocate for the arrays tagged in ``value`` (any
    JSON structure), read from their declared lengths and shapes without building them:
    checked against a decode budget before a crafted manifest's ``__range__`` of 10^12
    values or ``__zstd__`` of a huge shape is materialised."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list | tuple):
            stack.extend(v)
            continue
        if not isinstance(v, dict):
            continue
        if _RANGE in v:
            r = v[_RANGE]
            n = _count(r[2]) if isinstance(r, list) and len(r) == 3 else 0
            total += n * max(8, _itemsize(v))
        elif _PACKED in v:
            shape = v.get("shape")
            n = 1
            for d in shape if isinstance(shape, list) else []:
                n *= _count(d)
            total += 2 * n * _itemsize(v)  # the bytes, then the array
        elif _TAG in v or _CFTIME in v:
            items = v.get(_TAG, v.get(_CFTIME))
            total += (len(items) if isinstance(items, list) else 0) * max(8, _itemsize(v))
            stack.extend(items if isinstance(items, list) else [])
        else:
            stack.extend(v.values())
    return total


def dict_to_json(d: dict[str, Any]) -> dict[str, Any]:
    return {str(k): to_json(v) for k, v in d.items()}


def dict_from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {k: from_json(v) for k, v in d.items()}
