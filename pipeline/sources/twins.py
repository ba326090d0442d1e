"""Synthetic twins of the real source trees: the same layout, dtypes, fill values, scale
factors and attrs as DeepExtremeCubes and DynamicEarthNet, with content that behaves like
the real thing (textured land cover, seasons, drifting clouds and shadows, missing scenes).

The source adapters read a twin exactly as they read a mirror of the real archive, so tests
and the demo exercise the real code path. Frames are generated and written one at a time,
so a full-size DynamicEarthNet area (730 x 4 x 1024 x 1024) needs a few frames of memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from tqdm.auto import tqdm

from pipeline.codec.encoded import file_sha256
from pipeline.sources.provenance import write_marker
from pipeline.sources.synthetic import S2_BANDS, CloudField, Surface, fractal_noise

if TYPE_CHECKING:
    from affine import Affine

DEC_START = "2016-01-01"
DEN_START = "2018-01-01"
DEC_VERSION = "1.3"
ERA5_VARS = ("t2m_mean", "t2m_min", "t2m_max", "tp_mean", "tp_max", "pev_mean", "ssrd_mean")
_LCCS = np.array([190, 10, 60, 180, 200, 210], dtype=np.uint8)  # ESA CCI codes per class
_SCL_CLEAR = np.array([5, 4, 4, 4, 5, 6], dtype=np.uint8)  # SCL of a clear pixel per class
DEN_CLASSES = 7
_SNOW = (0.42, 0.42, 0.40, 0.36)  # half of snow's blue/green/red/nir reflectance


def _utm(lon: float, lat: float) -> tuple[str, float, float]:
    from pyproj import Transformer

    epsg = (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) + 1
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    return f"EPSG:{epsg}", float(x), float(y)


def write_index(root: Path, sizes: bool = True) -> Path:
    """``SHA256SUMS`` over every file below ``root`` (what an HTTP mirror serves), with each
    file's size in bytes (``<sha256>  <size>  <path>``, which bounds its download) unless
    ``sizes`` is false (plain ``sha256sum`` output)."""
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "SHA256SUMS":
            size = f"{p.stat().st_size}  " if sizes else ""
            lines.append(f"{file_sha256(p)}  {size}{p.relative_to(root).as_posix()}")
    index = root / "SHA256SUMS"
    index.write_text("\n".join(lines) + "\n")
    return index


def _atomic_dir(dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


# ---------------------------------------------------------------------------------------
# DeepExtremeCubes
# ---------------------------------------------------------------------------------------
def deepextremecube(n: int, frames: int = 495, size: int = 128, seed: int = 0) -> xr.Dataset:
    """One minicube as the real zarr store decodes: float reflectance with NaN gaps."""
    rng = np.random.default_rng(seed + 1000 * n)
    lon, lat = float(rng.uniform(-9, 30)), float(rng.uniform(36, 60))
    crs, cx, cy = _utm(lon, lat)
    times = pd.date_range(DEC_START, periods=frames, freq="5D")
    doy = times.dayofyear.to_numpy()
    surface = Surface((size, size), seed=seed + 1000 * n, bands=7)
    clouds = CloudField((size, size), rng, cover=0.25)
    refl, scl, cmask = _dec_sentinel2(surface, clouds, rng, doy)
    x = cx - size * 10 + 20.0 * (np.arange(size) + 0.5)
    y = cy + size * 10 - 20.0 * (np.arange(size) + 0.5)
    era5 = _dec_era5(rng, doy)
    event_time = pd.date_range(DEC_START, times[-1] + pd.Timedelta(days=4), freq="D")
    events = np.zeros(len(event_time), dtype=np.int8)
    start = int(rng.integers(0, max(len(events) - 30, 1)))
    events[start : start + 21] = 1  # one heatwave/drought event
    ds = xr.Dataset(
        coords={"time": times, "y": y, "x": x, "event_time": event_time},
        attrs={
            "id": f"mc_{lon:.2f}_{lat:.2f}_{DEC_VERSION}_20231017_{n}",
            "version": DEC_VERSION,
            "center_lon": lon,
            "center_lat": lat,
            "EPSG": int(crs.split(":")[1]),
            "source": "cubecast synthetic twin of DeepExtremeCubes",
        },
    )
    _add_dec_sentinel2(ds, refl, scl, cmask)
    for name, values in era5.items():
        ds[name] = ("time", np.asarray(values, dtype=np.float32), {"source": "ERA5-Land"})
    ds["lccs_class"] = (("y", "x"), _LCCS[surface.classes], {"long_name": "ESA CCI land cover"})
    dem = (200 + 800 * fractal_noise((size, size), rng, beta=3.0)).astype(np.float32)
    ds["cop_dem"] = (("y", "x"), dem, {"long_name": "Copernicus DEM", "units": "m"})
    ds["events"] = ("event_time", events, {"long_name": "extreme event flag"})
    return ds.rio.write_crs(crs)


def _dec_sentinel2(
    surface: Surface, clouds: CloudField, rng: np.random.Generator, doy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reflectance, SCL and EarthNet cloud mask per date: clouds brighten, shadows darken,
    and a quarter of the dates have no acquisition (NaN reflectance)."""
    frames, size = len(doy), surface.classes.shape[0]
    refl = np.empty((frames, len(S2_BANDS), size, size), dtype=np.float32)
    scl = np.empty((frames, size, size), dtype=np.uint8)
    cmask = np.empty_like(scl)
    for t in range(frames):
        frame = surface.frame(float(doy[t]))
        cloud, shadow = clouds.frame(t)
        frame[:, cloud] = np.clip(0.35 + 0.3 * frame[:, cloud] * 2, 0, 1)
        frame[:, shadow] *= 0.45
        scl[t] = _SCL_CLEAR[surface.classes]
        scl[t][cloud], scl[t][shadow] = 9, 3
        cmask[t] = np.where(cloud, 1, np.where(shadow, 3, 0))
        if rng.random() < 0.25:  # no acquisition on this date
            frame[:] = np.nan
            scl[t], cmask[t] = 0, 4
        refl[t] = np.round(frame * 1e4) / 1e4
    return refl, scl, cmask


def _dec_era5(rng: np.random.Generator, doy: np.ndarray) -> dict[str, np.ndarray]:
    """ERA5-Land weather per date: seasonal temperature and radiation, gamma-noise rain."""
    frames = len(doy)
    season = np.sin(2 * np.pi * (doy - 100) / 365.0).astype(np.float32)
    return {
        "t2m_mean": 285 + 10 * season,
        "t2m_min": 279 + 9 * season,
        "t2m_max": 291 + 11 * season,
        "tp_mean": np.abs(rng.gamma(0.6, 0.002, frames)),
        "tp_max": np.abs(rng.gamma(0.8, 0.006, frames)),
        "pev_mean": -0.002 - 0.002 * season,
        "ssrd_mean": 1.2e7 + 8e6 * season,
    }


def _add_dec_sentinel2(
    ds: xr.Dataset, refl: np.ndarray, scl: np.ndarray, cmask: np.ndarray
) -> None:
    """The Sentinel-2 variables with the real store's int16 encoding and flag attributes."""
    for i, band in enumerate(S2_BANDS):
        ds[band] = (("time", "y", "x"), refl[:, i], {"long_name": f"Sentinel-2 L2A {band}"})
        ds[band].encoding = {"dtype": "int16", "scale_factor": 1e-4, "_FillValue": -9999}
    ds["SCL"] = (
        ("time", "y", "x"),
        scl,
        {"long_name": "Sen2Cor scene classification", "flag_values": np.arange(12, dtype="u1")},
    )
    ds["cloudmask_en"] = (
        ("time", "y", "x"),
        cmask,
        {
            "long_name": "EarthNet cloud mask",
            "flag_values": np.arange(5, dtype="u1"),
            "flag_meanings": "clear thick_cloud thin_cloud cloud_shadow masked_other_reasons",
        },
    )


def write_deepextremecubes(
    out: str | os.PathLike[str],
    cubes: int = 2,
    frames: int = 495,
    size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Zarr (v2, consolidated) minicubes under ``out/`` plus ``SHA256SUMS``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for n in tqdm(range(cubes), desc="deepextremecubes twins", disable=not progress):
        ds = deepextremecube(n, frames, size, seed)
        dest = root / f"{ds.attrs['id']}.zarr"
        tmp = _atomic_dir(dest)
        chunks = {"time": min(frames, 99), "y": size, "x": size}
        for v in ds.data_vars.values():
            if "time" in v.dims:
                v.encoding["chunks"] = tuple(chunks.get(str(d), v.sizes[d]) for d in v.dims)
        ds.to_zarr(tmp, zarr_format=2, consolidated=True, mode="w")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        written.append(dest)
    write_marker(
        root,
        write_deepextremecubes,
        "DeepExtremeCubes",
        seed,
        cubes=cubes,
        frames=frames,
        size=size,
    )
    write_index(root)
    return written


# ---------------------------------------------------------------------------------------
# DynamicEarthNet
# ---------------------------------------------------------------------------------------
def _aoi_name(rng: np.random.Generator) -> str:
    return f"{rng.integers(1000, 2500)}_{rng.integers(2000, 4500)}_13"


def _den_labels(classes: np.ndarray, month: int) -> np.ndarray:
    """Monthly class map: half the fields lie fallow in winter, snow on bare ground in January."""
    lab = classes.copy()
    h, w = classes.shape
    fields = ((np.arange(h)[:, None] // 32 + np.arange(w)[None, :] // 32) % 2) == 0
    if month in (11, 12, 1, 2):
        lab[(classes == 1) & fields] = 4
    if month == 1:
        lab[classes == 4] = 6
    return lab


def write_dynamicearthnet(
    out: str | os.PathLike[str],
    cubes: int = 2,
    frames: int = 730,
    size: int = 1024,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """``planet/<aoi>/PF-SR/YYYY-MM-DD.tif`` per day, monthly labels, ``splits.csv``,
    ``SHA256SUMS``; one frame in memory at a time."""
    from rasterio.transform import from_origin

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    days = pd.date_range(DEN_START, periods=frames, freq="D")
    splits = []
    written = []
    for n in range(cubes):
        aoi = _aoi_name(rng)
        lon, lat = float(rng.uniform(-120, 30)), float(rng.uniform(-30, 55))
        crs, cx, cy = _utm(lon, lat)
        profile = _den_profile(size, crs, from_origin(cx - 1.5 * size, cy + 1.5 * size, 3.0, 3.0))
        # Planet Fusion is gap-filled and temporally smoothed: far less pixel noise than raw S2
        surface = Surface((size, size), seed=seed + 7919 * (n + 1), bands=(0, 1, 2, 6), noise=2e-4)
        haze = CloudField((size, size), np.random.default_rng(seed + n), cover=0.08)
        area = root / "planet" / aoi
        tmp = _atomic_dir(area)
        (tmp / "PF-SR").mkdir(parents=True)
        _write_den_days(tmp / "PF-SR", days, surface, haze, profile, aoi, progress)
        shutil.rmtree(area, ignore_errors=True)
        tmp.rename(area)
        lab_dir = root / "labels" / aoi / "Labels" / "Raster"
        _write_den_labels(lab_dir, aoi, surface.classes, days, profile)
        splits.append(f"{aoi},{('train', 'val', 'test')[n % 3]}")
        written.append(area)
    (root / "splits.csv").write_text("id,split\n" + "\n".join(splits) + "\n")
    write_marker(
        root, write_dynamicearthnet, "DynamicEarthNet", seed, cubes=cubes, frames=frames, size=size
    )
    write_index(root)
    return written


def _den_profile(size: int, crs: str, transform: Affine) -> dict:
    """GeoTIFF creation options of one area: deflate, 3 m pixels, 256 px tiles when they fit."""
    tiled = size % 16 == 0 and size >= 256
    return {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        **({"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {}),
    }


def _write_den_days(
    img_dir: Path,
    days: pd.DatetimeIndex,
    surface: Surface,
    haze: CloudField,
    profile: dict,
    aoi: str,
    progress: bool,
) -> None:
    """One 4-band uint16 GeoTIFF per day: snow in January, residual haze from gap filling."""
    import rasterio

    for t, day in enumerate(tqdm(days, desc=f"dynamicearthnet {aoi}", disable=not progress)):
        frame = surface.frame(float(day.dayofyear))
        if day.month == 1:  # snow on bare ground, as the January labels say
            snow = surface.classes == 4
            frame[:, snow] = 0.5 * frame[:, snow] + np.array(_SNOW)[:, None]
        cloud, shadow = haze.frame(t)
        frame[:, cloud] += 0.04  # residual haze left by the daily gap filling
        frame[:, shadow] *= 0.9
        dn = np.clip(np.round(frame * 1e4), 0, 65535).astype(np.uint16)
        with rasterio.open(
            img_dir / f"{day:%Y-%m-%d}.tif", "w", count=4, dtype="uint16", **profile
        ) as dst:
            dst.write(dn)
            dst.set_band_description(1, "blue")
            dst.set_band_description(2, "green")
            dst.set_band_description(3, "red")
            dst.set_band_description(4, "nir")


def _write_den_labels(
    lab_dir: Path, aoi: str, classes: np.ndarray, days: pd.DatetimeIndex, profile: dict
) -> None:
    """One-hot monthly label rasters (255 where a pixel has the class), each written whole."""
    import rasterio

    lab_dir.mkdir(parents=True, exist_ok=True)
    for month in pd.date_range(days[0], days[-1], freq="MS"):
        lab = _den_labels(classes, month.month)
        onehot = np.stack([(lab == k) * np.uint8(255) for k in range(DEN_CLASSES)])
        dest = lab_dir / f"{aoi}-{month:%Y_%m}_01.tif"
        part = dest.with_name(dest.name + ".part")
        with rasterio.open(part, "w", count=DEN_CLASSES, dtype="uint8", **profile) as dst:
            dst.write(onehot.astype(np.uint8))
        os.replace(part, dest)


TWIN_WRITERS = {
    "deepextremecubes": write_deepextremecubes,
    "dynamicearthnet": write_dynamicearthnet,
}
