"""Cubes for the demo: the real samples in shared/data when present, else a synthetic one."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import xarray as xr

from pipeline.errors import SourceError
from pipeline.sources.sample_data import load_eolearn, load_landsat
from pipeline.sources.synthetic import S2_BANDS, cloud_masks, reflectance_cube


def synthetic_cube(t: int = 36, size: int = 96, seed: int = 0) -> xr.Dataset:
    refl, classes = reflectance_cube(t, (size, size), seed=seed)
    clouds, shadows = cloud_masks(t, (size, size), np.random.default_rng(seed + 1))
    refl[np.broadcast_to(clouds[:, None], refl.shape)] = np.nan
    ds = xr.Dataset(
        {b: (("time", "y", "x"), refl[:, i], {"units": "1"}) for i, b in enumerate(S2_BANDS)},
        coords={
            "time": pd.date_range("2021-01-01", periods=t, freq="5D"),
            "y": 5e6 - 20.0 * np.arange(size),
            "x": 4e5 + 20.0 * np.arange(size),
        },
        attrs={"id": "synthetic-s2"},
    )
    ds["cloudmask"] = (
        ("time", "y", "x"),
        (clouds + 2 * shadows).astype(np.uint8),
        {"flag_values": np.array([0, 1, 2], dtype=np.uint8), "flag_meanings": "clear cloud shadow"},
    )
    ds["landcover"] = (("y", "x"), classes)
    return ds.rio.write_crs("EPSG:32633")


def demo_cubes() -> Iterator[tuple[str, xr.Dataset]]:
    found = False
    for name, loader in (("eolearn-testeopatch", load_eolearn), ("landsat8-ny-2018", load_landsat)):
        try:
            ds = loader()
        except SourceError:
            continue
        found = True
        yield name, ds
    if not found:
        yield "synthetic-s2", synthetic_cube()
