"""What the ``cubecast`` commands share at their edges: where they print, how they open an
input cube, and how they write a decoded one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
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


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


def refuse_overlap(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], what: str = "output"
) -> None:
    """Refuse an output that is one of the inputs or lies inside one (writing it would
    replace or mix with what is being read), symbolic and hard links included."""
    if is_url(output):
        return
    out = _real(output)
    for given in inputs:
        if not str(given) or is_url(given):
            continue
        src = _real(given)
        same = out == src or (out.exists() and src.exists() and os.path.samefile(out, src))
        if same or out.is_relative_to(src):
            where = "is" if same else "is inside"
            raise CubecastError(
                f"{output}: the {what} {where} the input {given}; choose another path"
            )


def check_new_output(
    output: Path, overwrite: bool, what: str = "output", folder_ok: bool = False
) -> None:
    """An output file that exists is replaced only with ``--overwrite``; a folder never
    (an empty one is used where the output is a folder: ``folder_ok``)."""
    if output.is_dir() and not output.is_symlink():
        if not folder_ok:
            raise CubecastError(f"{output}: {what} is an existing folder; give a file name")
        if any(output.iterdir()):
            raise CubecastError(f"{output}: {what} folder exists and is not empty")
        return
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise CubecastError(f"{output}: exists; pass --overwrite to replace it")
        if output.is_symlink():
            raise CubecastError(f"{output}: is a symbolic link; cubecast does not write through it")


def writable_folder(path: str | os.PathLike[str], what: str) -> None:
    """``path`` is a folder cubecast can create and write into: its nearest existing
    ancestor is a folder a file can be created in (tried, not guessed: root ignores modes,
    a read-only mount does not). Nothing is left behind."""
    p = _real(path)
    if p.exists() and not p.is_dir():
        raise CubecastError(f"{path}: {what} exists and is not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CubecastError(f"{path}: {what} cannot be created: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".cubecast-probe-", dir=probe)
    except OSError as exc:
        raise CubecastError(
            f"{path}: {what} is not writable ({probe}: {exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(name)


def netcdf_problem(ds: xr.Dataset) -> str | None:
    """What a netCDF file cannot hold of ``ds`` (a dtype or a name), or None."""
    for name, var in ds.variables.items():
        text = str(name)
        if not text or "/" in text or any(ord(c) < 32 for c in text):
            return f"variable {text!r}: a netCDF name cannot be empty or hold '/' or controls"
        dt = var.dtype
        if dt.kind == "c" or (dt.kind == "f" and dt.itemsize == 2) or dt.kind == "V":
            return f"variable {text!r} has dtype {dt}, which netCDF cannot hold"
    return None


def write_dataset(ds: xr.Dataset, out: Path) -> None:
    """netCDF (or a ``.zarr`` store when ``out`` ends so), written under a temporary name
    and renamed when complete: a failure leaves no partial output and says why in one line."""
    zarr = out.suffix == ".zarr"
    if not zarr:
        problem = netcdf_problem(ds)
        if problem:
            raise CubecastError(f"{out}: {problem}; write a .zarr store instead")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    _remove(tmp)
    try:
        if zarr:
            ds.to_zarr(tmp, mode="w-")
        else:
            ds.to_netcdf(tmp)
        if out.is_dir() and zarr:
            shutil.rmtree(out)
        os.replace(tmp, out)
    except CubecastError:
        raise
    except Exception as exc:  # netCDF4/zarr/xarray raise many types; one line naming it
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CubecastError(
            f"{out}: cannot write {'zarr' if zarr else 'netCDF'} ({type(exc).__name__}: {first})"
        ) from None
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
