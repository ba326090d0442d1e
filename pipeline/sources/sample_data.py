"""Loaders for the small real EO arrays that ship beside the repository in ``shared/data``.

They turn eo-learn's NumPy patch and the Landsat-8 GeoTIFF scenes into the kind of cube the
pipeline encodes, so tests, benchmarks and the demo run on real data.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.errors import SourceError

EOLEARN = "eolearn-testeopatch/example_data/TestEOPatch"
LANDSAT = "landsat8-ny-2018"
LANDSAT_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")


def shared_data_dir() -> Path | None:
    """``$CUBECAST_SHARED_DATA``, else ``shared/data`` next to or above the working tree."""
    env = os.environ.get("CUBECAST_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve().parent
    for base in [Path.cwd(), *Path.cwd().parents, here, *here.parents]:
        for cand in (base / "shared" / "data", base.parent / "shared" / "data"):
            if cand.is_dir():
                return cand
    return None


def _require(root: Path | None, sub: str) -> Path:
    root = root or shared_data_dir()
    if root is None or not (root / sub).is_dir():
        raise SourceError(f"sample data {sub!r} not found (set CUBECAST_SHARED_DATA)")
    return root / sub


def load_eolearn(root: Path | None = None) -> xr.Dataset:
    """NDVI with clouds (CLM == 1) as NaN, the cloud mask itself, and the static DEM."""
    import rioxarray  # noqa: F401  (registers .rio)

    p = _require(root, EOLEARN)
    ndvi = np.load(p / "data/NDVI.npy")[..., 0]
    clm = np.load(p / "mask/CLM.npy")[..., 0]
    dem = np.load(p / "data_timeless/DEM.npy")[..., 0]
    times = np.array(json.loads((p / "timestamps.json").read_text()), dtype="datetime64[ns]")
    bbox = json.loads((p / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [c[0] for c in bbox], [c[1] for c in bbox]
    t, h, w = ndvi.shape
    resx, resy = (max(xs) - min(xs)) / w, (max(ys) - min(ys)) / h
    x = min(xs) + resx * (np.arange(w) + 0.5)
    y = max(ys) - resy * (np.arange(h) + 0.5)
    ndvi = np.where(clm == 1, np.nan, ndvi).astype(np.float32)
    ds = xr.Dataset(
        {
            "NDVI": (
                ("time", "y", "x"),
                ndvi,
                {"long_name": "normalised difference vegetation index"},
            ),
            "CLM": (
                ("time", "y", "x"),
                clm,
                {"flag_values": np.array([0, 1], dtype=np.uint8), "flag_meanings": "clear cloud"},
            ),
            "DEM": (("y", "x"), dem, {"units": "m"}),
        },
        coords={"time": times, "y": y, "x": x},
        attrs={"id": "eolearn-testeopatch", "source": "eo-learn TestEOPatch (Sinergise, MIT)"},
    )
    return ds.rio.write_crs("EPSG:32633")


def load_landsat(root: Path | None = None, bands: tuple[str, ...] = LANDSAT_BANDS) -> xr.Dataset:
    """The 19 Landsat-8 scenes on one UTM grid: (time, band, y, x) uint16, 0 = nodata."""
    import rioxarray
    from affine import Affine
    from rasterio.enums import Resampling

    p = _require(root, LANDSAT)
    scenes = sorted(d for d in p.iterdir() if d.is_dir())
    date_of = {d: re.search(r"_(\d{8})_\d{8}_", d.name).group(1) for d in scenes}  # type: ignore[union-attr]
    scenes.sort(key=lambda d: date_of[d])
    bounds = []
    crs = None
    for d in scenes:
        da = rioxarray.open_rasterio(next(d.glob("*_B1.TIF")))
        bounds.append(da.rio.bounds())
        crs = da.rio.crs
    res = 3000.0
    left, bottom = min(b[0] for b in bounds), min(b[1] for b in bounds)
    right, top = max(b[2] for b in bounds), max(b[3] for b in bounds)
    w, h = int(np.ceil((right - left) / res)), int(np.ceil((top - bottom) / res))
    transform = Affine(res, 0, left, 0, -res, top)
    stack, qa = [], []
    for d in scenes:
        planes = []
        for b in bands + ("BQA",):
            da = rioxarray.open_rasterio(next(d.glob(f"*_{b}.TIF"))).squeeze("band", drop=True)
            da = da.rio.write_nodata(0)
            rs = Resampling.nearest if b == "BQA" else Resampling.average
            planes.append(
                da.rio.reproject(
                    crs, shape=(h, w), transform=transform, resampling=rs, nodata=0
                ).values
            )
        stack.append(np.stack(planes[:-1]))
        qa.append(planes[-1])
    x = left + res * (np.arange(w) + 0.5)
    y = top - res * (np.arange(h) + 0.5)
    times = np.array(
        [
            np.datetime64(f"{date_of[d][:4]}-{date_of[d][4:6]}-{date_of[d][6:]}", "ns")
            for d in scenes
        ]
    )
    ds = xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                np.stack(stack).astype(np.uint16),
                {"nodata": np.uint16(0), "long_name": "Landsat-8 L1TP DN"},
            ),
            "BQA": (
                ("time", "y", "x"),
                np.stack(qa).astype(np.uint16),
                {"long_name": "quality assessment bits", "flag_masks": "bitfield"},
            ),
        },
        coords={"time": times, "band": list(bands), "y": y, "x": x},
        attrs={"id": "landsat8-ny-2018", "source": "USGS Landsat-8 via gdalcubes (public domain)"},
    )
    return ds.rio.write_crs(crs).rio.write_transform(transform)
