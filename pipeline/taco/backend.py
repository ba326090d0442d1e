"""xarray backend: ``xr.open_dataset(path, engine="cubecast")`` on an encoded cube, or on
one sample of a TACO shard (local path or http(s) URL; ``sample=`` id or row, default 0;
``variables=`` and a frame-index ``time=`` slice read only those streams and frames)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

from pipeline.codec.decode import decode_cube
from pipeline.codec.encoded import MANIFEST_FILE, EncodedCube


class CubecastBackendEntrypoint(BackendEntrypoint):
    description = "Open cubecast encoded cubes (folder, .tar) or a sample of a .tacozip shard"
    url = "https://github.com/cubecast/cubecast"
    open_dataset_parameters = (
        "filename_or_obj",
        "drop_variables",
        "variables",
        "sample",
        "time",
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: str | os.PathLike[Any],
        *,
        drop_variables: str | Iterable[str] | None = None,
        variables: list[str] | None = None,
        sample: str | int = 0,
        time: slice | None = None,
    ) -> xr.Dataset:
        name = str(filename_or_obj)
        if name.endswith(".tacozip") or name.rstrip("/").endswith(".tacocat"):
            from pipeline.taco.read import open_sample

            ds = open_sample(name, sample, variables, time=time)
        else:
            ds = decode_cube(EncodedCube.open(filename_or_obj), variables=variables, time=time)
        if drop_variables:
            drop = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
            ds = ds.drop_vars(drop, errors="ignore")
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        try:
            p = Path(filename_or_obj)
        except TypeError:
            return False
        return (p / MANIFEST_FILE).is_file() or str(filename_or_obj).endswith(".tacozip")
