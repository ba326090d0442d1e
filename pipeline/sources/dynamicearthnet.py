"""DynamicEarthNet: per area of interest, one Planet GeoTIFF per day and monthly labels.

Layout below the mirror root (the real archive's, kept by the twins)::

    planet/<aoi>/PF-SR/YYYY-MM-DD.tif            4 bands (blue, green, red, nir), uint16
    labels/<aoi>/Labels/Raster/<aoi>-YYYY_MM_01.tif  7 one-hot bands, 255 = class present

Daily images become four lazily read (time, y, x) variables: a frame is read from its
GeoTIFF only when the encoder asks for it, in time order. Labels become one categorical
class-index variable on a monthly ``label_time`` axis (255 = unlabelled).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from pipeline.errors import SourceError
from pipeline.recipe import SourceSpec
from pipeline.sources.mirror import Mirror

BANDS = ("blue", "green", "red", "nir")
CLASSES = ("impervious", "agriculture", "forest", "wetlands", "bare_soil", "water", "snow_ice")
UNLABELLED = 255
_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})\.tif$")
_MONTH = re.compile(r"(\d{4})_(\d{2})_01\.tif$")


class FrameCache:
    """The last few daily GeoTIFFs of an area, all bands, shared by its four band arrays.

    The encoder asks for blue, green, red and nir of the same days one after the other;
    without the cache each request would open and decompress the same file again. Six
    frames cover the range pass's two reader threads (two 2-day blocks in flight, and the
    block one of them is starting).
    """

    def __init__(self, capacity: int = 6) -> None:
        self.capacity = capacity
        self.reads = 0
        self._frames: OrderedDict[tuple[Path, tuple[int, int, int, int]], np.ndarray] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def read(self, path: Path, window: tuple[int, int, int, int]) -> np.ndarray:
        """(bands, h, w) of ``path`` inside window (x0, y0, width, height)."""
        import rasterio
        from rasterio.windows import Window

        key = (path, window)
        with self._lock:
            if key in self._frames:
                self._frames.move_to_end(key)
                return self._frames[key]
        try:
            with rasterio.open(path) as src:
                data = src.read(window=Window(*window))
        except rasterio.errors.RasterioError as exc:
            raise SourceError(f"{path}: cannot read ({exc})") from exc
        with self._lock:
            self.reads += 1
            self._frames[key] = data
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)
        return data


class GeoTiffStack(BackendArray):
    """One band of a list of single-date GeoTIFFs as a lazily indexed (time, y, x) array."""

    def __init__(
        self,
        paths: Sequence[Path],
        band: int,
        shape: tuple[int, int],
        dtype: np.dtype,
        cache: FrameCache | None = None,
    ) -> None:
        self.paths = list(paths)
        self.band = band
        self.shape = (len(self.paths), *shape)
        self.dtype = np.dtype(dtype)
        self.cache = cache if cache is not None else FrameCache()

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw
        )

    def _raw(self, key: tuple) -> np.ndarray:
        tkey, ykey, xkey = key
        times = np.arange(self.shape[0])[tkey]
        ys = np.arange(self.shape[1])[ykey]
        xs = np.arange(self.shape[2])[xkey]
        scalar_t = np.ndim(times) == 0
        times = np.atleast_1d(times)
        out = np.empty((len(times), np.size(ys), np.size(xs)), dtype=self.dtype)
        if out.size == 0:
            return out[0] if scalar_t else out
        y0, y1 = int(np.min(ys)), int(np.max(ys)) + 1
        x0, x1 = int(np.min(xs)), int(np.max(xs)) + 1
        whole = _is_range(ys, y0, y1) and _is_range(xs, x0, x1)
        for i, t in enumerate(times):
            frame = self.cache.read(self.paths[t], (x0, y0, x1 - x0, y1 - y0))[self.band - 1]
            if whole:
                out[i] = frame.reshape(out.shape[1:])
            else:
                sub = frame[np.ix_(np.atleast_1d(ys) - y0, np.atleast_1d(xs) - x0)]
                out[i] = sub.reshape(out.shape[1:])
        out = out.reshape((len(times), *np.shape(ys), *np.shape(xs)))
        return out[0] if scalar_t else out


def _is_range(idx: np.ndarray, lo: int, hi: int) -> bool:
    """True when the index selects lo..hi-1 in order, so the frame needs no fancy indexing."""
    flat = np.atleast_1d(idx)
    return flat.size == hi - lo and bool(flat[0] == lo) and bool(np.all(np.diff(flat) == 1))


def _grid(path: Path) -> tuple[xr.Dataset, int, int, np.dtype, int]:
    """Coordinates and CRS of the first GeoTIFF: every day of an AOI shares its grid."""
    import rasterio
    import rioxarray  # noqa: F401  (registers .rio)

    with rasterio.open(path) as src:
        h, w, count, dtype, transform, crs = (
            src.height,
            src.width,
            src.count,
            np.dtype(src.dtypes[0]),
            src.transform,
            src.crs,
        )
    x = transform.c + transform.a * (np.arange(w) + 0.5)
    y = transform.f + transform.e * (np.arange(h) + 0.5)
    base = xr.Dataset(coords={"y": y, "x": x}).rio.write_crs(crs.to_wkt())
    base = base.rio.write_transform(transform)
    return base, h, w, dtype, count


class DynamicEarthNet:
    def list_ids(self, mirror: Mirror, spec: SourceSpec) -> list[str]:
        pattern = spec.pattern or "*"
        aois = {rel.split("/")[1] for rel in mirror.list(f"planet/{pattern}/PF-SR/*.tif")}
        return sorted(aois)

    def load(self, mirror: Mirror, spec: SourceSpec, cube_id: str) -> xr.Dataset:
        days = sorted(r for r in mirror.list(f"planet/{cube_id}/PF-SR/*.tif") if _DAY.search(r))
        if not days:
            raise SourceError(f"{mirror.location}: no daily images for area {cube_id!r}")
        paths = [mirror.fetch(r) for r in days]
        base, h, w, dtype, count = _grid(paths[0])
        if count != len(BANDS):
            raise SourceError(f"{paths[0]}: expected {len(BANDS)} bands, found {count}")
        times = pd.to_datetime([_DAY.search(r).group(1) for r in days])  # type: ignore[union-attr]
        ds = base.assign_coords(time=("time", times))
        cache = FrameCache()
        for i, band in enumerate(BANDS):
            arr = indexing.LazilyIndexedArray(GeoTiffStack(paths, i + 1, (h, w), dtype, cache))
            ds[band] = xr.Variable(
                ("time", "y", "x"),
                arr,
                {"long_name": f"{band} surface reflectance", "units": "reflectance x 10000"},
            )
        labels = self._labels(mirror, cube_id, (h, w))
        if labels is not None:
            ds["label"] = labels
        ds.attrs.update({"id": cube_id, "source": "DynamicEarthNet (Planet Fusion daily)"})
        return ds

    def _labels(self, mirror: Mirror, aoi: str, shape: tuple[int, int]) -> xr.DataArray | None:
        import rasterio

        rels = sorted(r for r in mirror.list(f"labels/{aoi}/**/*.tif") if _MONTH.search(r))
        if not rels:
            return None
        months, stack = [], np.full((len(rels), *shape), UNLABELLED, dtype=np.uint8)
        for i, rel in enumerate(rels):
            path = mirror.fetch(rel)
            with rasterio.open(path) as src:
                onehot = src.read()
            if onehot.shape != (len(CLASSES), *shape):
                raise SourceError(
                    f"{path}: label raster is {onehot.shape}, expected {(len(CLASSES), *shape)}"
                )
            present = onehot == 255
            any_class = present.any(axis=0)
            stack[i][any_class] = np.argmax(present, axis=0)[any_class].astype(np.uint8)
            y, m = _MONTH.search(rel).groups()  # type: ignore[union-attr]
            months.append(pd.Timestamp(int(y), int(m), 1))
        return xr.DataArray(
            stack,
            dims=("label_time", "y", "x"),
            coords={"label_time": pd.DatetimeIndex(months)},
            attrs={
                "long_name": "land cover class (monthly)",
                "flag_values": np.arange(len(CLASSES), dtype=np.uint8),
                "flag_meanings": " ".join(CLASSES),
                "unlabelled_value": UNLABELLED,
            },
        )
