"""netCDF bytes in memory, for the lossless side-car of non-image variables."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import xarray as xr

from pipeline.errors import CorruptStreamError, InvalidCubeError

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
        try:
            ds.to_netcdf(path, engine="netcdf4", encoding=enc)
        except (TypeError, ValueError, OSError, RuntimeError) as exc:
            names = ", ".join(map(str, ds.variables))
            raise InvalidCubeError(
                f"variables {names} (stored losslessly as netCDF) cannot be written: {exc}"
            ) from None
        return path.read_bytes()


def dataset_from_bytes(data: bytes, source: str = "aux.nc") -> xr.Dataset:
    """The side-car back as a Dataset; bytes that do not read as netCDF are a
    CorruptStreamError (one line), whatever the netCDF library raised."""
    fd, name = tempfile.mkstemp(suffix=".nc")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            with xr.open_dataset(name, engine="netcdf4") as ds:
                return ds.load()
        except Exception as exc:  # netCDF4/HDF5 raise OSError, RuntimeError, KeyError, ...
            raise CorruptStreamError(f"{source}: not a readable netCDF file ({exc})") from None
    finally:
        os.unlink(name)
