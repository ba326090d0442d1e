"""netCDF bytes in memory, for the lossless side-car of non-image variables."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import xarray as xr

# Encoding keys that describe how values are packed on disk; everything else (chunking,
# compressors, zarr internals) belongs to the source store and is dropped.
PACKING_KEYS = (
    "dtype",
    "scale_factor",
    "add_offset",
    "_FillValue",
    "missing_value",
    "units",
    "calendar",
)


def packing_encoding(encoding: dict) -> dict:
    return {k: encoding[k] for k in PACKING_KEYS if k in encoding}


def dataset_to_bytes(ds: xr.Dataset) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aux.nc"
        # zlib keeps static class maps and label stacks small; numbers stay bit-exact
        enc = {
            n: {"zlib": True, "complevel": 4}
            for n, v in ds.variables.items()
            if v.dtype.kind in "biuf" and v.ndim > 0 and "zlib" not in v.encoding
        }
        ds.to_netcdf(path, engine="netcdf4", encoding=enc)
        return path.read_bytes()


def dataset_from_bytes(data: bytes) -> xr.Dataset:
    fd, name = tempfile.mkstemp(suffix=".nc")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with xr.open_dataset(name, engine="netcdf4") as ds:
            return ds.load()
    finally:
        os.unlink(name)
