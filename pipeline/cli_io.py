"""What the ``cubecast`` commands share at their edges: where they print, how they open an
input cube, and how they write a decoded one."""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr
from rich.console import Console

from pipeline.errors import CubecastError

console = Console()
err_console = Console(stderr=True)


def open_input(path: str) -> xr.Dataset:
    """netCDF, zarr, or anything xarray opens; lazily, so large cubes stream."""
    p = Path(path)
    if not p.exists() and "://" not in path:
        raise CubecastError(f"{path}: no such file or folder")
    try:
        if p.is_dir() or path.endswith(".zarr"):
            return xr.open_zarr(path, chunks=None, decode_coords="all")
        return xr.open_dataset(path, decode_coords="all")
    except CubecastError:
        raise
    except Exception as exc:  # xarray raises many types; the user needs the path and cause
        raise CubecastError(f"{path}: cannot open as a dataset ({exc})") from exc


def write_netcdf(ds: xr.Dataset, out: Path) -> None:
    """Write through a temporary name so a failure leaves no partial file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    try:
        ds.to_netcdf(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
