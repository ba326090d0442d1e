from __future__ import annotations

import os

# The hub is unreachable here: tests take huggingface_hub's LFS path against tests/fakehub.py
# (the Xet transfer path is not covered offline). No telemetry from Prefect.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import rioxarray  # noqa: E402, F401  (registers .rio)
import xarray as xr  # noqa: E402

from pipeline.errors import SourceError  # noqa: E402
from pipeline.sources.sample_data import load_eolearn, load_landsat  # noqa: E402


@pytest.fixture(scope="session")
def eolearn() -> xr.Dataset:
    try:
        return load_eolearn()
    except SourceError as exc:
        pytest.skip(f"real sample data not available: {exc}")


@pytest.fixture(scope="session")
def landsat() -> xr.Dataset:
    try:
        return load_landsat()
    except SourceError as exc:
        pytest.skip(f"real sample data not available: {exc}")


def s2_like(t: int = 12, h: int = 32, w: int = 30, seed: int = 0) -> xr.Dataset:
    """Small Sentinel-2-like cube: smooth seasonal reflectances with NaN gaps, an SCL layer."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    season = np.sin(np.linspace(0, 2 * np.pi, t))[:, None, None]
    bands = {}
    for i, b in enumerate(["B02", "B03", "B04", "B8A"]):
        base = 0.05 + 0.1 * i + 0.05 * np.sin(3 * xx + i) * np.cos(2 * yy)
        arr = base[None] + 0.03 * season * (1 + i) + rng.normal(0, 0.004, (t, h, w))
        bands[b] = arr.astype(np.float32)
    cloud = rng.random((t, 1, 1)) < 0.3
    blob = (yy[None] - 0.5) ** 2 + (xx[None] - 0.5) ** 2 < 0.1
    invalid = cloud & blob
    scl = np.where(invalid, 9, 4).astype(np.uint8)
    ds = xr.Dataset(
        {
            b: (("time", "y", "x"), np.where(invalid, np.nan, a), {"units": "1"})
            for b, a in bands.items()
        },
        coords={
            "time": pd.date_range("2020-01-01", periods=t, freq="5D"),
            "y": 5_000_000 - 20.0 * np.arange(h),
            "x": 400_000 + 20.0 * np.arange(w),
        },
        attrs={"id": "s2like", "title": "synthetic"},
    )
    ds["SCL"] = (("time", "y", "x"), scl, {"flag_values": np.arange(12, dtype=np.uint8)})
    for b in bands:
        ds[b].encoding = {
            "dtype": np.dtype("int16"),
            "scale_factor": 0.0001,
            "_FillValue": np.int16(-9999),
        }
    return ds.rio.write_crs("EPSG:32633")


@pytest.fixture
def s2cube() -> xr.Dataset:
    return s2_like()
