"""Where and when a cube lies, as TACO metadata: CRS, EPSG:4326 footprint, and the extent
of a set of samples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr


def _crs_of(m: Any) -> str:
    ref = m.coords.get("spatial_ref")
    if ref is None:
        return ""
    wkt = ref.attrs.get("crs_wkt") or ref.attrs.get("spatial_ref") or ""
    try:
        from pyproj import CRS

        epsg = CRS.from_wkt(wkt).to_epsg()
        return f"EPSG:{epsg}" if epsg else wkt
    except Exception:  # an unparsable WKT is kept verbatim rather than lost
        return wkt


def crs_string(ds: xr.Dataset) -> str:
    """``EPSG:<code>`` when the rioxarray CRS has one, else its WKT, else ''."""
    import rioxarray  # noqa: F401  (registers .rio)

    try:
        crs = ds.rio.crs
    except Exception:  # a malformed grid mapping means: no CRS we can state
        return ""
    if crs is None:
        return ""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def footprint(
    ds: xr.Dataset, y_dim: str = "y", x_dim: str = "x"
) -> tuple[float, float, float, float] | None:
    """Bounding box in EPSG:4326 from the x/y coords and the rioxarray CRS."""
    import rioxarray  # noqa: F401  (registers .rio)

    try:
        crs = ds.rio.crs
    except Exception:  # no rioxarray CRS: no footprint
        return None
    if crs is None or x_dim not in ds.coords or y_dim not in ds.coords:
        return None
    from pyproj import Transformer

    x, y = ds[x_dim].values, ds[y_dim].values
    xs = np.array([x.min(), x.max(), x.max(), x.min()])
    ys = np.array([y.min(), y.min(), y.max(), y.max()])
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))


def extent_of(rows: Iterable[dict[str, Any]]) -> tuple[list[float], list[str] | None]:
    """Union of the samples' EPSG:4326 bboxes and time ranges (TACO ``extent``).

    tacotoolbox derives an extent only from STAC columns and otherwise states the whole
    globe with no time range, which says nothing; cubecast's rows carry bbox_* and
    time_start/time_end, so the real extent is computed here.
    """
    rows = list(rows)
    boxes = [
        [float(r[k]) for k in ("bbox_west", "bbox_south", "bbox_east", "bbox_north")]
        for r in rows
        if all(np.isfinite(float(r.get(k, np.nan))) for k in ("bbox_west", "bbox_south"))
        and all(np.isfinite(float(r.get(k, np.nan))) for k in ("bbox_east", "bbox_north"))
    ]
    if boxes:
        arr = np.array(boxes)
        spatial = [
            max(float(arr[:, 0].min()), -180.0),
            max(float(arr[:, 1].min()), -90.0),
            min(float(arr[:, 2].max()), 180.0),
            min(float(arr[:, 3].max()), 90.0),
        ]
    else:
        spatial = [-180.0, -90.0, 180.0, 90.0]
    starts = [np.datetime64(r["time_start"], "s") for r in rows if r.get("time_start")]
    ends = [np.datetime64(r["time_end"], "s") for r in rows if r.get("time_end")]
    temporal = [f"{min(starts)}Z", f"{max(ends)}Z"] if starts and ends else None
    return spatial, temporal
