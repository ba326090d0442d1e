"""Quality per bit: cubecast against xarrayvideo, SZ3 and ZFP, and its PSNR-target path.

Cubes: the real eo-learn NDVI and Landsat-8 stacks from ``../shared/data`` and synthetic
twins with the hard cases (a DeepExtremeCubes-like S2 minicube with clouds and missing
scenes, a smoothed DynamicEarthNet-like PlanetScope stack, a gap-free hourly float field of
744 x 33 x 49 px, a mostly-NaN multi-band float swath, tiny frames of 8 x 12 px and a
heavy-tailed precipitation-like band that is mostly 0 with lognormal bursts).

References (``--refs``):
- ``xarrayvideo``: the curves in ``../shared/ANCHORS.md`` (NDVI, Landsat), measured with the
  published library; on the twins (no published curve) a re-implementation of its stated
  settings (x265 12-bit, preset medium, tune psnr, bands in 3-band groups converted
  gbrp -> yuv444, NaN/nodata filled with 0, every written byte counted), which this script
  first checks against the published curves (its BD-rate vs the anchor is printed).
- ``sz3``: SZ3 (``pysz``), each band compressed whole as a (T, H, W) float32 array in its
  PSNR error-bound mode (bounds 30..60 dB), NaN/nodata filled with the band's valid mean,
  plus a zstd-19 bit-packed validity mask where the band has invalid pixels. Checked
  against the SZ3 table of ``../shared/ANCHORS.md`` (the comparison is printed).
- ``zfp``: ZFP (``zfpy``) in fixed-accuracy mode, tolerance = band range x 2^-k, same NaN
  handling and mask.
- ``previous``: the previous release's curve (``bench/results/previous_release_rd.csv``,
  x265 medium, 64-px CTU padding, no decorrelation).

Ours: the fixed-quantiser configurations (``--configs``) and the path users take with a
PSNR target (``--psnr``): ``encode_cube(ds, EncodeOptions(psnr=P))``, as ``cubecast encode
--psnr P`` builds it; for each target the lowest band's PSNR and its excess over P.

PSNR is computed here, independently of the encoder: per band over the original's valid
pixels, range = max - min of the band's valid values, averaged over bands; bpppb counts
every stored byte (streams, masks, manifest, aux). BD-rate is Bjontegaard-style: the mean
log-rate ratio over the PSNR range both curves cover inside [35, 50] dB (and [30, 50]).
At one PSNR-target point, "bits at equal PSNR" is our bits over the reference curve's bits
log-linearly interpolated at our achieved mean PSNR.

    python bench/rate_distortion.py [--quick] [--out bench/results]
    python bench/rate_distortion.py --cube ndvi --configs none --refs sz3,zfp,xarrayvideo \
        --psnr 35 40 45 50

Prints tables; writes rate_distortion.csv (rows of the cubes and methods run now replace
those already there, the others are kept), rate_distortion_summary.md and
rate_distortion.png to the output folder (``_quick`` suffix with ``--quick``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec.metrics import psnr
from pipeline.sources.sample_data import load_eolearn, load_landsat, shared_data_dir
from pipeline.sources.synthetic import Surface, fractal_noise

HERE = Path(__file__).resolve().parent
PREVIOUS = HERE / "results" / "previous_release_rd.csv"
PREVIOUS_NAMES = {"ndvi": "eolearn-ndvi", "landsat": "landsat8-ny"}
BD_RANGES = ((35.0, 50.0), (30.0, 50.0))


# --- cubes --------------------------------------------------------------------------------
@dataclass
class Cube:
    name: str
    ds: xr.Dataset
    bands: list[np.ndarray]  # float64 (T, H, W) per band, NaN where invalid
    note: str


def _bands(ds: xr.Dataset) -> list[np.ndarray]:
    out = []
    for v in ds.data_vars.values():
        nodata = v.attrs.get("nodata")
        arrs = [v.isel(band=i) for i in range(v.sizes["band"])] if "band" in v.dims else [v]
        for a in arrs:
            x = a.values.astype(np.float64)
            if nodata is not None:
                x[a.values == nodata] = np.nan
            out.append(x)
    return out


def _cube(name: str, ds: xr.Dataset, note: str) -> Cube:
    return Cube(name, ds, _bands(ds), note)


def den_twin(t: int, size: int) -> xr.Dataset:
    """DynamicEarthNet-like: 4 bands (B, G, R, NIR) uint16, smoothed daily PlanetScope."""
    surface = Surface((size, size), seed=11, bands=(0, 1, 2, 6), noise=2e-4)
    doy = np.arange(t) % 365
    frames = np.stack([surface.frame(float(d)) for d in doy])
    ds = xr.Dataset(
        {"planet": (("time", "band", "y", "x"), np.round(frames * 1e4).astype(np.uint16))},
        coords={
            "time": pd.date_range("2018-01-01", periods=t, freq="D"),
            "band": ["blue", "green", "red", "nir"],
            "y": 3.0 * np.arange(size)[::-1],
            "x": 3.0 * np.arange(size),
        },
    )
    return ds


def dec_twin(t: int, size: int) -> xr.Dataset:
    """DeepExtremeCubes-like: 7 S2 bands as float with NaN clouds and missing scenes."""
    from pipeline.sources.twins import S2_BANDS, deepextremecube

    ds = deepextremecube(0, frames=t, size=size)
    return ds[list(S2_BANDS)]


def hourly_field(t: int = 744, h: int = 33, w: int = 49) -> xr.Dataset:
    """ERA5-like gap-free float field: a month of hourly 2 m temperature on a small grid."""
    rng = np.random.default_rng(5)
    base = 280 + 8 * fractal_noise((h, w), rng, beta=3.0)
    hours = np.arange(t)
    drift = [fractal_noise((h, w), rng, beta=3.5) for _ in range(t // 24 + 2)]
    frames = np.empty((t, h, w), dtype=np.float32)
    for i in hours:
        d, f = divmod(i, 24)
        weather = (1 - f / 24) * drift[d] + (f / 24) * drift[d + 1]
        frames[i] = base + 6 * math.sin(2 * math.pi * (f - 9) / 24) + 4 * weather
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), frames, {"units": "K"})},
        coords={
            "time": pd.date_range("2020-01-01", periods=t, freq="h"),
            "lat": np.linspace(48, 40, h),
            "lon": np.linspace(2, 14, w),
        },
    )


def sparse_swath(t: int, h: int, w: int) -> xr.Dataset:
    """Mostly-NaN float field: 3 correlated bands seen through a narrow moving swath."""
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:h, 0:w]
    common = [fractal_noise((h, w), rng, beta=2.8) for _ in range(t)]
    data = {}
    for b, (gain, off) in enumerate([(1.0, 0.0), (0.8, 0.2), (1.3, -0.1)]):
        frames = np.stack([gain * c + off + 0.05 * fractal_noise((h, w), rng) for c in common])
        data[f"ch{b}"] = frames.astype(np.float32)
    swath = np.stack([np.abs((xx - 0.6 * yy) - (k * w / t) % w) < 0.06 * w for k in range(t)])
    for k in data:
        data[k][~swath] = np.nan
    return xr.Dataset(
        {k: (("time", "y", "x"), v) for k, v in data.items()},
        coords={
            "time": pd.date_range("2021-06-01", periods=t, freq="D"),
            "y": np.arange(h) * -1000.0,
            "x": np.arange(w) * 1000.0,
        },
    )


def tiny_frames(t: int = 1000, h: int = 8, w: int = 12) -> xr.Dataset:
    """Tiny frames: 3 correlated gap-free float bands of 8 x 12 px (a station-sized
    patch), 1000 hourly steps; per-frame costs dominate."""
    rng = np.random.default_rng(13)
    base = fractal_noise((h, w), rng, beta=3.0)
    drift = [fractal_noise((h, w), rng, beta=3.0) for _ in range(t // 24 + 2)]
    frames = np.empty((t, h, w), dtype=np.float64)
    for i in range(t):
        d, f = divmod(i, 24)
        weather = (1 - f / 24) * drift[d] + (f / 24) * drift[d + 1]
        frames[i] = 4 * base + 3 * math.sin(2 * math.pi * (f - 9) / 24) + 2 * weather
    data = {}
    for b, (gain, off) in enumerate([(1.0, 280.0), (0.6, 275.0), (-0.4, 1013.0)]):
        noise = 0.05 * rng.standard_normal(frames.shape)
        data[f"v{b}"] = (gain * frames + off + noise).astype(np.float32)
    return xr.Dataset(
        {k: (("time", "y", "x"), v) for k, v in data.items()},
        coords={
            "time": pd.date_range("2022-01-01", periods=t, freq="h"),
            "y": np.arange(h) * -250.0,
            "x": np.arange(w) * 250.0,
        },
    )


def precipitation(t: int = 240, h: int = 96, w: int = 96) -> xr.Dataset:
    """Heavy-tailed band: hourly precipitation-like, mostly 0, storm cells with lognormal
    intensities (sigma 1.2) drifting across the grid; max/median of wet pixels ~ 10^2."""
    rng = np.random.default_rng(21)
    big = (2 * h, 2 * w)
    fields = [fractal_noise(big, rng, beta=2.6) for _ in range(t // 12 + 2)]
    texture = [fractal_noise(big, rng, beta=2.0) for _ in range(t // 12 + 2)]
    frames = np.zeros((t, h, w), dtype=np.float32)
    for i in range(t):
        k, f = divmod(i, 12)
        a = f / 12
        dy, dx = (i * 1) % h, (i * 2) % w  # advection: the cells move 1 px down, 2 px right
        cells = (1 - a) * fields[k] + a * fields[k + 1]
        z = (1 - a) * texture[k] + a * texture[k + 1]
        cells = cells[dy : dy + h, dx : dx + w]
        z = z[dy : dy + h, dx : dx + w]
        wet = cells > np.quantile(cells, 0.85)
        z = (z - z.mean()) / (z.std() or 1.0)
        frames[i] = np.where(wet, np.exp(-0.5 + 1.2 * z) * (cells - cells.min()), 0.0)
    return xr.Dataset(
        {"tp": (("time", "y", "x"), frames, {"units": "mm h-1"})},
        coords={
            "time": pd.date_range("2023-07-01", periods=t, freq="h"),
            "y": np.arange(h) * -1000.0,
            "x": np.arange(w) * 1000.0,
        },
    )


def landsat_distinct_dates() -> xr.Dataset:
    """The Landsat-8 stack with the two dates seen by both paths merged (mean of the valid
    values): 17 frames, as the stack the ANCHORS.md curves were measured on."""
    ds = load_landsat()[["reflectance"]]
    v = ds.reflectance.values.astype(np.float64)
    times = ds.time.values
    out = []
    for t in np.unique(times):
        s = v[times == t]
        n = (s != 0).sum(0)
        out.append(np.where(n > 0, np.rint(s.sum(0) / np.maximum(n, 1)), 0).astype(np.uint16))
    return xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), np.stack(out), ds.reflectance.attrs)},
        coords={"time": np.unique(times), "band": ds.band, "y": ds.y, "x": ds.x},
    )


ALIASES = {"hourly": "hourly-field", "sparse": "sparse-swath", "tiny": "tiny-frames"}


def cube_makers(quick: bool) -> dict[str, Callable[[], Cube]]:
    """Every cube by name, built only when asked for."""
    t = 24 if quick else 60
    out: dict[str, Callable[[], Cube]] = {}
    if shared_data_dir() is not None:
        out["ndvi"] = lambda: _cube(
            "ndvi", load_eolearn()[["NDVI"]], "real, 68x101x100, 40% cloud NaN"
        )
        out["landsat"] = lambda: _cube(
            "landsat", load_landsat()[["reflectance"]], "real, 19x11x132x123, 73% nodata"
        )
    out["dec-twin"] = lambda: _cube(
        "dec-twin", dec_twin(t, 64 if quick else 128), "7 S2 bands, clouds"
    )
    out["den-twin"] = lambda: _cube(
        "den-twin", den_twin(t, 64 if quick else 256), "4 bands uint16, daily"
    )
    out["hourly-field"] = lambda: _cube(
        "hourly-field", hourly_field(168 if quick else 744), "gap-free float, 33x49 px"
    )
    out["sparse-swath"] = lambda: _cube(
        "sparse-swath",
        sparse_swath(5, 250 if quick else 500, 500 if quick else 1000),
        "3 bands, 88% NaN",
    )
    out["tiny-frames"] = lambda: _cube(
        "tiny-frames", tiny_frames(200 if quick else 1000), "3 float bands, 8x12 px"
    )
    out["precip"] = lambda: _cube(
        "precip",
        precipitation(48 if quick else 240, 48 if quick else 96, 48 if quick else 96),
        "heavy-tailed, 85% zeros",
    )
    return out


def cubes(quick: bool, only: list[str] | None = None) -> list[Cube]:
    makers = cube_makers(quick)
    names = [ALIASES.get(n, n) for n in only] if only else list(makers)
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise SystemExit(f"unknown cube(s) {unknown}: choose from {sorted(makers)}")
    return [makers[n]() for n in names]


# --- scoring ------------------------------------------------------------------------------
def score(cube: Cube, decoded: list[np.ndarray], nbytes: int) -> tuple[float, float, float]:
    """(bpppb, mean band PSNR, worst band PSNR)."""
    ps = []
    for o, d in zip(cube.bands, decoded, strict=True):
        ps.append(min(psnr(o, d, np.isfinite(o)), 120.0))
    n = sum(b.size for b in cube.bands)
    return 8 * nbytes / n, float(np.mean(ps)), float(np.min(ps))


def bd_rate(
    r1: list[float], p1: list[float], r2: list[float], p2: list[float], lo: float, hi: float
) -> float:
    """Mean rate ratio of curve 1 over curve 2 at equal PSNR (log-rate interpolated on each
    curve's upper envelope) over the PSNR range both cover inside [lo, hi]."""

    def envelope(r: list[float], p: list[float]) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(r)
        rr, pp = np.log(np.asarray(r)[order]), np.maximum.accumulate(np.asarray(p)[order])
        keep = np.r_[True, np.diff(pp) > 1e-9]
        return pp[keep], rr[keep]

    a_p, a_r = envelope(r1, p1)
    b_p, b_r = envelope(r2, p2)
    lo, hi = max(lo, a_p.min(), b_p.min()), min(hi, a_p.max(), b_p.max())
    if hi - lo < 1.0:
        return math.nan
    grid = np.linspace(lo, hi, 200)
    return float(np.exp(np.mean(np.interp(grid, a_p, a_r) - np.interp(grid, b_p, b_r))))


# --- ours -----------------------------------------------------------------------------------
def run_ours(cube: Cube, options: EncodeOptions) -> dict:
    t0 = time.perf_counter()
    enc = encode_cube(cube.ds, options)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = enc.to_folder(Path(tmp) / "cube")
        nbytes = sum(p.stat().st_size for p in folder.iterdir())
        kinds = {"manifest": (folder / "manifest.json").stat().st_size}
        dec = decode_cube(enc)
    codecs = sorted({s.codec for s in enc.manifest.streams if s.kind == "continuous"})
    bits, mean_p, worst_p = score(cube, _bands(dec), nbytes)
    return dict(
        bpppb=bits,
        psnr=mean_p,
        psnr_min=worst_p,
        encode_s=t1 - t0,
        codecs="+".join(codecs),
        klt=len(enc.manifest.transforms),
        manifest_bytes=kinds["manifest"],
        nbytes=nbytes,
    )


# --- the xarrayvideo reference --------------------------------------------------------------
def _ffmpeg() -> str:
    from pipeline.codec.ffmpeg_engine import ffmpeg_exe

    exe = ffmpeg_exe()
    assert exe is not None, "imageio-ffmpeg is needed for the reference"
    return exe


X265_MIN = 16


def _x265(frames: np.ndarray, crf: float) -> bytes:
    """frames (T, P, H, W) uint16 12-bit codes: gbrp12le -> yuv444p12le for 3 planes (as
    xarrayvideo converts its RGB groups), gray12le for 1."""
    t, p, h, w = frames.shape
    # even sizes for 4:2:0-era rules, and at least 16 px: x265 refuses smaller frames
    # ("Image size is too small"), so tiny frames are edge-padded (xarrayvideo would fail)
    ph, pw = max(h % 2, X265_MIN - h), max(w % 2, X265_MIN - w)
    frames = np.pad(frames, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
    in_fmt, out_fmt = ("gbrp12le", "yuv444p12le") if p == 3 else ("gray12le", "gray12le")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.mkv"
        cmd = [_ffmpeg(), "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", in_fmt]
        cmd += ["-s", f"{w + pw}x{h + ph}", "-framerate", "1", "-i", "pipe:"]
        cmd += ["-c:v", "libx265", "-preset", "medium", "-tune", "psnr", "-crf", f"{crf:g}"]
        cmd += ["-x265-params", "log-level=error", "-pix_fmt", out_fmt, str(out)]
        subprocess.run(cmd, input=frames.astype("<u2").tobytes(), check=True)
        return out.read_bytes()


def _decode_reference(data: bytes, planes: int, h: int, w: int) -> np.ndarray:
    import av

    out = []
    with av.open(io.BytesIO(data)) as c:
        for f in c.decode(video=0):
            if planes == 3:
                f = f.reformat(format="gbrp12le")
            arr = np.stack(
                [
                    np.frombuffer(f.planes[i], "<u2").reshape(f.height, -1)[:h, :w]
                    for i in range(planes)
                ]
            )
            out.append(arr)
    return np.stack(out)


def run_reference(cube: Cube, crf: float) -> dict:
    t0 = time.perf_counter()
    meta, nbytes, decoded = [], 0, []
    codes = []
    for b in cube.bands:
        lo, hi = float(np.nanmin(b)), float(np.nanmax(b))
        scale = (hi - lo) / 4095 or 1.0
        filled = np.where(np.isfinite(b), b, 0.0)
        codes.append(np.clip(np.rint((filled - lo) / scale), 0, 4095).astype(np.uint16))
        meta.append({"min": lo, "max": hi})
    groups = [list(range(i, min(i + 3, len(codes)))) for i in range(0, len(codes), 3)]
    groups = [g for grp in groups for g in ([grp] if len(grp) != 2 else [[grp[0]], [grp[1]]])]
    h, w = codes[0].shape[1:]
    for g in groups:
        # gbrp plane order is G, B, R: bands r, g, b go to planes 2, 0, 1
        planes = np.stack([codes[i] for i in g], axis=1)
        if len(g) == 3:
            planes = planes[:, [1, 2, 0]]
        data = _x265(planes, crf)
        nbytes += len(data)
        dec = _decode_reference(data, len(g), h, w)
        if len(g) == 3:
            dec = dec[:, [2, 0, 1]]
        for k, i in enumerate(g):
            m = meta[i]
            decoded.append((i, dec[:, k] * ((m["max"] - m["min"]) / 4095) + m["min"]))
    nbytes += len(json.dumps({"bands": meta, "groups": groups, "shape": [h, w]}).encode())
    decoded = [d for _, d in sorted(decoded, key=lambda x: x[0])]
    encode_s = time.perf_counter() - t0
    bits, mean_p, worst_p = score(cube, decoded, nbytes)
    return dict(
        bpppb=bits, psnr=mean_p, psnr_min=worst_p, encode_s=encode_s, codecs="libx265", klt=0
    )


# --- SZ3 and ZFP -------------------------------------------------------------------------
def _filled(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(band as float32 with NaN filled by the band's valid mean, validity mask)."""
    valid = np.isfinite(band)
    fill = float(band[valid].mean()) if valid.any() else 0.0
    return np.where(valid, band, fill).astype(np.float32), valid


def _mask_bytes(valid: np.ndarray) -> int:
    """A zstd-19 bit-packed validity mask, stored only where the band has invalid pixels."""
    import zstandard

    if valid.all():
        return 0
    return len(zstandard.ZstdCompressor(level=19).compress(np.packbits(valid).tobytes()))


def run_sz3(cube: Cube, bound: float) -> dict:
    """SZ3 in its PSNR error-bound mode, each band whole as a (T, H, W) float32 array."""
    from pysz import sz, szConfig, szErrorBoundMode

    t0 = time.perf_counter()
    nbytes, decoded = 0, []
    for b in cube.bands:
        x, valid = _filled(b)
        conf = szConfig(x.shape)
        conf.errorBoundMode = szErrorBoundMode.PSNR
        conf.psnrErrorBound = bound
        comp, _ = sz.compress(x, conf)
        nbytes += comp.nbytes + _mask_bytes(valid)
        d, _ = sz.decompress(comp, np.float32, x.shape)
        decoded.append(d.astype(np.float64))
    encode_s = time.perf_counter() - t0
    bits, mean_p, worst_p = score(cube, decoded, nbytes)
    return dict(bpppb=bits, psnr=mean_p, psnr_min=worst_p, encode_s=encode_s, codecs="sz3", klt=0)


def run_zfp(cube: Cube, k: float) -> dict:
    """ZFP fixed-accuracy mode, tolerance = the band's valid range x 2^-k."""
    import zfpy

    t0 = time.perf_counter()
    nbytes, decoded = 0, []
    for b in cube.bands:
        x, valid = _filled(b)
        rng = float(b[valid].max() - b[valid].min()) if valid.any() else 0.0
        comp = zfpy.compress_numpy(x, tolerance=(rng or 1.0) * 2.0**-k)
        nbytes += len(comp) + _mask_bytes(valid)
        decoded.append(np.asarray(zfpy.decompress_numpy(comp), dtype=np.float64))
    encode_s = time.perf_counter() - t0
    bits, mean_p, worst_p = score(cube, decoded, nbytes)
    return dict(bpppb=bits, psnr=mean_p, psnr_min=worst_p, encode_s=encode_s, codecs="zfp", klt=0)


SZ3_BOUNDS = [30, 35, 40, 45, 50, 55, 60]
ZFP_STEPS = [-2, -1, 0, 1, 2, 3, 4, 5]  # tolerance = range x 2^-k: ~6 dB apart


def sz3_anchor_table() -> dict[str, tuple[list[float], list[float], list[float]]]:
    """The SZ3 table of ../shared/ANCHORS.md: name -> (bounds, bpppb, PSNR)."""
    shared = shared_data_dir()
    path = shared.parent / "ANCHORS.md" if shared is not None else None
    if path is None or not path.is_file() or "## SZ3" not in path.read_text():
        return {}
    text = path.read_text()
    part = text[text.index("## SZ3") :]
    bounds = re.search(r"\| SZ3 PSNR bound \|([^\n]*)", part)
    if bounds is None:
        return {}
    nums = lambda m: [float(v) for v in m.group(1).split("|") if v.strip()]  # noqa: E731
    out = {}
    for name, key in (("ndvi", "NDVI"), ("landsat", "Landsat")):
        r = re.search(rf"\| {key} bpppb \|([^\n]*)", part)
        q = re.search(rf"\| {key} PSNR dB \|([^\n]*)", part)
        if r and q:
            out[name] = (nums(bounds), nums(r), nums(q))
    return out


def check_sz3(names: list[str]) -> str:
    """Our SZ3 numbers against the ANCHORS.md table, on NDVI and on Landsat both as this
    script stacks it (19 frames) and with its two shared dates merged (17 frames)."""
    table = sz3_anchor_table()
    makers = cube_makers(False)
    cases: list[tuple[str, str, Callable[[], Cube]]] = []
    if "ndvi" in names and "ndvi" in table and "ndvi" in makers:
        cases.append(("ndvi", "ndvi", makers["ndvi"]))
    if "landsat" in names and "landsat" in table and "landsat" in makers:
        cases.append(("landsat", "landsat (19 frames, as here)", makers["landsat"]))
        cases.append(
            (
                "landsat",
                "landsat (17 dates merged)",
                lambda: _cube("landsat17", landsat_distinct_dates(), "17 dates"),
            )
        )
    if not cases:
        return ""
    lines = [
        "| cube | SZ3 bound | ANCHORS bpppb | ours bpppb | ratio | ANCHORS dB | ours dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label, make in cases:
        cube = make()
        for bound, ref_r, ref_p in zip(*table[key], strict=True):
            row = run_sz3(cube, bound)
            lines.append(
                f"| {label} | {bound:g} | {ref_r:.3f} | {row['bpppb']:.3f} | "
                f"{row['bpppb'] / ref_r:.3f} | {ref_p:.1f} | {row['psnr']:.2f} |"
            )
    return "\n".join(lines)


# --- anchors and the previous release ------------------------------------------------------
def anchor_curves() -> dict[str, tuple[list[float], list[float]]]:
    """The xarrayvideo tables of ../shared/ANCHORS.md, by cube name."""
    shared = shared_data_dir()
    path = shared.parent / "ANCHORS.md" if shared is not None else None
    if path is None or not path.is_file():
        return {}
    text = path.read_text()
    out = {}
    for name, key in (("ndvi", "eo-learn NDVI"), ("landsat", "Landsat-8 NY")):
        part = text[text.index(key, text.index("## xarrayvideo on the real cubes")) :]
        rates = re.search(r"\| bpppb \|([^\n]*)", part)
        psnrs = re.search(r"\| PSNR dB \|([^\n]*)", part)
        if rates and psnrs:
            out[name] = (
                [float(v) for v in rates.group(1).split("|") if v.strip()],
                [float(v) for v in psnrs.group(1).split("|") if v.strip()],
            )
    return out


def previous_curves() -> dict[str, tuple[list[float], list[float]]]:
    if not PREVIOUS.is_file():
        return {}
    df = pd.read_csv(PREVIOUS)
    out = {}
    for name, old in PREVIOUS_NAMES.items():
        g = df[(df.cube == old) & (df.method == "cubecast-x265-medium")]
        if len(g):
            out[name] = (g.bpppb.tolist(), g.psnr.tolist())
    return out


# --- the sweep ------------------------------------------------------------------------------
QP = [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
CRF = [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
CONFIGS = ("default", "x265", "vvc-veryfast", "av1-fast", "no-klt", "x265-no-klt")
REFS = ("xarrayvideo", "sz3", "zfp")
TARGETS = [35.0, 40.0, 45.0, 50.0]
TARGET = "cubecast psnr-target"
XV = "xarrayvideo (re-implemented)"


def configurations(
    cube: Cube, quick: bool, which: tuple[str, ...] = CONFIGS
) -> list[tuple[str, list[float], Callable]]:
    multi = len(cube.bands) > 1
    step = 2 if quick else 1
    confs: list[tuple[str, str, list[float], Callable]] = [
        ("default", "cubecast (default)", QP[::step], lambda q: EncodeOptions(crf=q)),
        (
            "x265",
            "cubecast x265",
            CRF[::step],
            lambda q: EncodeOptions(crf=q, codec="libx265"),
        ),
        (
            "vvc-veryfast",
            "cubecast vvc veryfast",
            QP[::step],
            lambda q: EncodeOptions(crf=q, codec="libvvenc", preset="veryfast"),
        ),
    ]
    if not quick:
        confs.append(
            (
                "av1-fast",
                "cubecast av1 fast",
                [8, 16, 24, 32, 40, 48],
                lambda q: EncodeOptions(crf=q, codec="libaom-av1", preset="fast"),
            )
        )
    if multi:
        confs.append(
            (
                "no-klt",
                "cubecast no-KLT",
                QP[::step],
                lambda q: EncodeOptions(crf=q, decorrelate="none"),
            )
        )
        confs.append(
            (
                "x265-no-klt",
                "cubecast x265 no-KLT",
                CRF[::step],
                lambda q: EncodeOptions(crf=q, codec="libx265", decorrelate="none"),
            )
        )
    return [(name, qs, make) for key, name, qs, make in confs if key in which]


def target_options(p: float) -> EncodeOptions:
    """What ``cubecast encode --psnr P`` asks for (pipeline/cli_cube.py: every other option
    at its CLI default, which is EncodeOptions' default)."""
    return EncodeOptions(psnr=p)


def sweep(
    quick: bool,
    only: list[str] | None,
    configs: tuple[str, ...] = CONFIGS,
    refs: tuple[str, ...] = REFS,
    targets: list[float] | None = None,
) -> list[dict]:
    rows = []
    targets = TARGETS if targets is None else targets
    commit = _commit()
    for cube in cubes(quick, only):
        runs: list[tuple[str, float, Callable[[], dict]]] = []
        for name, method, params, step, fn in (
            ("xarrayvideo", XV, CRF[:: 2 if quick else 1], 4, run_reference),
            ("sz3", "sz3", SZ3_BOUNDS, -5, run_sz3),
            ("zfp", "zfp", ZFP_STEPS, -1, run_zfp),
        ):
            if name in refs:
                rows += reference_curve(cube, method, params, step, fn, commit)
        for p in targets:
            runs.append((TARGET, p, lambda o=target_options(p): run_ours(cube, o)))
        for name, qs, make in configurations(cube, quick, configs):
            for q in qs:
                runs.append((name, q, lambda o=make(q): run_ours(cube, o)))
        for method, param, fn in runs:
            try:
                row = fn()
            except Exception as exc:  # a configuration the cube cannot take: say so, go on
                print(f"{cube.name:12s} {method:28s} {param!s:>5} FAILED: {exc}", flush=True)
                continue
            row = dict(cube=cube.name, method=method, param=param, **row, commit=commit)
            rows.append(row)
            _print(row)
    return rows


REF_FLOOR = 33.0  # a reference curve is extended until it reaches below this PSNR
REF_LIMITS = {XV: 51.0, "sz3": 10.0, "zfp": -6.0}


def reference_curve(
    cube: Cube,
    method: str,
    params: list[float],
    step: float,
    fn: Callable[[Cube, float], dict],
    commit: str,
) -> list[dict]:
    """A reference's sweep, extended by ``step`` while its coarsest point is still above
    REF_FLOOR dB (SZ3's PSNR bound and x265's CRF are not the PSNR a heavy-tailed band
    gets), so the curve spans every target from 35 dB."""
    rows: list[dict] = []
    todo = list(params)
    done: dict[float, dict] = {}
    while todo:
        param = todo.pop(0)
        try:
            row = fn(cube, param)
        except Exception as exc:  # a reference the cube cannot take: say so, go on
            print(f"{cube.name:12s} {method:28s} {param!s:>5} FAILED: {exc}", flush=True)
            continue
        row = dict(cube=cube.name, method=method, param=param, **row, commit=commit)
        rows.append(row)
        done[param] = row
        _print(row)
        if not todo:  # the listed settings done: extend from the coarse end if need be
            edge = max(done) if step > 0 else min(done)
            nxt = edge + step
            coarse_enough = done[edge]["psnr"] <= REF_FLOOR
            if not coarse_enough and (nxt - REF_LIMITS[method]) * step <= 0:
                todo.append(nxt)
    return rows


def _print(row: dict) -> None:
    print(
        f"{row['cube']:12s} {row['method']:28s} {row['param']!s:>5} {row['bpppb']:8.4f} bpppb "
        f"{row['psnr']:6.2f} dB (min {row['psnr_min']:6.2f})  {row['encode_s']:6.2f} s "
        f"{row['codecs']}",
        flush=True,
    )


def _commit() -> str:
    """HEAD, with "+dirty" where the code (pipeline/, bench/*.py) differs from it; results
    files written by earlier runs do not count."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "pipeline",
                "bench/*.py",
            ],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The rows already in ``path`` whose (cube, method) was not run now, then the new ones:
    one cube (or one reference) at a time accumulates in one CSV."""
    if not path.is_file():
        return rows
    fresh = {(r["cube"], r["method"]) for r in rows}
    old = pd.read_csv(path).to_dict("records")
    kept = [r for r in old if (r["cube"], r["method"]) not in fresh]
    return kept + rows


# --- the summary ----------------------------------------------------------------------------
def _envelope(r: list[float], p: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(PSNR, log rate) along the curve's upper envelope, PSNR increasing."""
    order = np.argsort(r)
    rr, pp = np.log(np.asarray(r)[order]), np.maximum.accumulate(np.asarray(p)[order])
    keep = np.r_[True, np.diff(pp) > 1e-9]
    return pp[keep], rr[keep]


EXTRAPOLATE_DB = 2.0


def ratio_at(bits: float, p: float, ref_r: list[float], ref_p: list[float]) -> tuple[float, bool]:
    """(our bits / the reference's bits at PSNR p, extrapolated?): log-rate linear in PSNR
    along the reference's upper envelope; up to EXTRAPOLATE_DB beyond its ends the last
    segment is extended (flagged), further out NaN."""
    pp, rr = _envelope(ref_r, ref_p)
    if len(pp) < 2:
        return math.nan, False
    if pp[0] <= p <= pp[-1]:
        return float(bits / math.exp(np.interp(p, pp, rr))), False
    if p > pp[-1] and p - pp[-1] <= EXTRAPOLATE_DB:
        i = -2
    elif p < pp[0] and pp[0] - p <= EXTRAPOLATE_DB:
        i = 0
    else:
        return math.nan, False
    slope = (rr[i + 1] - rr[i]) / (pp[i + 1] - pp[i])
    return float(bits / math.exp(rr[i] + slope * (p - pp[i]))), True


def reference_curves(df: pd.DataFrame, cube: str) -> dict[str, tuple[list[float], list[float]]]:
    """The reference curves of one cube: xarrayvideo (published where ANCHORS.md has it,
    else the re-implementation), SZ3, ZFP."""
    anchors = anchor_curves()
    g = df[df.cube == cube]
    out: dict[str, tuple[list[float], list[float]]] = {}
    ref = g[g.method == XV]
    if cube in anchors:
        out["xarrayvideo"] = anchors[cube]
    elif len(ref) >= 2:
        out["xarrayvideo"] = (ref.bpppb.tolist(), ref.psnr.tolist())
    for name in ("sz3", "zfp"):
        m = g[g.method == name]
        if len(m) >= 2:
            out[name] = (m.bpppb.tolist(), m.psnr.tolist())
    return out


def _fmt(v: float | None, mark: str = "") -> str:
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:.3f}x{mark}"


def summarise_targets(df: pd.DataFrame) -> str:
    """The PSNR-target path against each reference, point by point and as BD-rate."""
    anchors = anchor_curves()
    t = df[df.method == TARGET]
    if not len(t):
        return ""
    lines = [
        "| cube | target dB | bpppb | mean dB | lowest band dB | excess dB | codecs "
        "| vs xarrayvideo | vs SZ3 | vs ZFP | encode s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bd_lines = [
        "| cube | xarrayvideo curve | BD vs xarrayvideo | BD vs SZ3 | BD vs ZFP "
        "| worst ratio vs xarrayvideo | worst vs SZ3 | excess min..max dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cube, g in t.groupby("cube", sort=False):
        refs = reference_curves(df, str(cube))
        g = g.assign(param=g.param.astype(float)).sort_values("param")
        xv = df[(df.cube == cube) & (df.method == XV)] if cube in anchors else df[:0]
        worst: dict[str, float] = {}
        for r in g.itertuples():
            cells = []
            for name in REFS:
                if name in refs:
                    v, flag = ratio_at(r.bpppb, r.psnr, *refs[name])
                    mark = "*" if flag else ""
                    if math.isnan(v) and name == "xarrayvideo" and len(xv) >= 2:
                        # past the published curve's end: the re-implementation's
                        v, flag = ratio_at(r.bpppb, r.psnr, xv.bpppb.tolist(), xv.psnr.tolist())
                        mark = "r" + ("*" if flag else "")
                    if not math.isnan(v):
                        worst[name] = max(worst.get(name, 0.0), v)
                    cells.append(_fmt(v, mark))
                else:
                    cells.append("-")
            lines.append(
                f"| {cube} | {r.param:g} | {r.bpppb:.4f} | {r.psnr:.2f} | {r.psnr_min:.2f} | "
                f"{r.psnr_min - r.param:+.2f} | {r.codecs} | {' | '.join(cells)} | "
                f"{r.encode_s:.1f} |"
            )
        bds = []
        for name in REFS:
            if name in refs and len(g) >= 2:
                bds.append(_fmt(bd_rate(g.bpppb.tolist(), g.psnr.tolist(), *refs[name], 35, 50)))
            else:
                bds.append("-")
        excess = g.psnr_min - g.param
        kind = "published" if cube in anchors else "re-implemented"
        bd_lines.append(
            f"| {cube} | {kind if 'xarrayvideo' in refs else '-'} | {' | '.join(bds)} | "
            f"{_fmt(worst.get('xarrayvideo'))} | {_fmt(worst.get('sz3'))} | "
            f"{excess.min():+.2f}..{excess.max():+.2f} |"
        )
    note = (
        "vs X: our bits / X's bits at our achieved mean PSNR (log-linear interpolation along "
        f"X's curve; * = extrapolated up to {EXTRAPOLATE_DB:g} dB beyond its last point; "
        "r = past the published xarrayvideo curve, against the re-implementation's). "
        "Excess = lowest band's PSNR - target (acceptance: 0 to +0.5 dB). Targets: <= 0.70x "
        "xarrayvideo, <= 0.50x SZ3 at 35-50 dB."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(bd_lines) + "\n\n" + note


def summarise(rows: list[dict], out: Path, suffix: str = "", checks: str = "") -> str:
    df = pd.DataFrame(rows)
    anchors, previous = anchor_curves(), previous_curves()
    lines = [
        "| cube | configuration | vs xarrayvideo 35-50 dB | 30-50 dB | vs previous 35-50 dB "
        "| vs SZ3 35-50 dB | vs ZFP 35-50 dB | encode s per run (median) | codecs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:.3f}x"  # noqa: E731
    for cube, g in df.groupby("cube", sort=False):
        refs = reference_curves(df, str(cube))
        ref_name = "published" if cube in anchors else "re-implemented"
        for method, m in g.groupby("method", sort=False):
            r, p = m.bpppb.tolist(), m.psnr.tolist()
            bd = (
                [bd_rate(r, p, *refs["xarrayvideo"], *b) for b in BD_RANGES]
                if ("xarrayvideo" in refs)
                else [math.nan, math.nan]
            )
            prev = bd_rate(r, p, *previous[cube], *BD_RANGES[0]) if cube in previous else None
            other = [
                bd_rate(r, p, *refs[k], *BD_RANGES[0]) if k in refs and k != method else None
                for k in ("sz3", "zfp")
            ]
            codecs = ",".join(sorted(set("+".join(m.codecs.astype(str)).split("+"))))
            lines.append(
                f"| {cube} | {method} | {fmt(bd[0])} | {fmt(bd[1])} | {fmt(prev)} | "
                f"{fmt(other[0])} | {fmt(other[1])} | {m.encode_s.median():.2f} | {codecs} |"
            )
        lines.append(f"| {cube} | (xarrayvideo curve used: {ref_name}) | | | | | | | |")
    parts = ["## Bits at equal PSNR (BD-rate), every configuration", "\n".join(lines)]
    targets = summarise_targets(df)
    if targets:
        parts += ["## PSNR-target path (`EncodeOptions(psnr=P)`)", targets]
    if checks:
        parts += ["## SZ3 against ANCHORS.md", checks]
    commits = sorted({str(c) for c in df.get("commit", pd.Series(dtype=str)).dropna()})
    if commits:
        older = " and before the commit column (earlier runs)" if df.commit.isna().any() else ""
        parts.append(f"Rows measured at: {', '.join(commits)}{older}.")
    text = "\n\n".join(parts)
    (out / f"rate_distortion_summary{suffix}.md").write_text(text + "\n")
    return text


def plot(rows: list[dict], out: Path, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(rows)
    anchors, previous = anchor_curves(), previous_curves()
    names = list(dict.fromkeys(df.cube))
    cols = 3
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.6 * nrows), squeeze=False)
    for ax, cube in zip(axes.ravel(), names, strict=False):
        for method, g in df[df.cube == cube].groupby("method", sort=False):
            g = g.sort_values("bpppb")
            style = "o-" if method.startswith("cubecast") else "s--"
            if method == TARGET:
                style = "D-"
            elif method in ("sz3", "zfp"):
                style = "v-."
            ax.plot(g.bpppb, g.psnr, style, ms=4 if method == TARGET else 3, label=method)
        if cube in anchors:
            ax.plot(*anchors[cube], "k^-", label="xarrayvideo (published)")
        if cube in previous:
            r, p = previous[cube]
            order = np.argsort(r)
            ax.plot(np.asarray(r)[order], np.asarray(p)[order], "x:", c="grey", label="previous")
        ax.axhspan(35, 50, color="green", alpha=0.05)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel per band (all bytes)")
        ax.set_ylabel("PSNR (dB), mean over bands")
        ax.set_title(cube)
        ax.set_ylim(25, 65)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / f"rate_distortion{suffix}.png", dpi=100)


def _names(value: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    if value in ("", "none"):
        return ()
    if value == "all":
        return allowed
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"{flag} {','.join(bad)}: choose from {','.join(allowed)}, all, none")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer settings, smaller twins")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument(
        "--cube",
        action="append",
        help="only these cubes (repeatable): ndvi, landsat, dec-twin, den-twin, hourly-field "
        "(hourly), sparse-swath (sparse), tiny-frames (tiny), precip",
    )
    ap.add_argument(
        "--psnr",
        type=float,
        nargs="*",
        default=TARGETS,
        help="PSNR targets for the EncodeOptions(psnr=P) column (none: no column)",
    )
    ap.add_argument(
        "--refs",
        default=",".join(REFS),
        help=f"references to run, comma-separated from {','.join(REFS)} (or all, none)",
    )
    ap.add_argument(
        "--configs",
        default="all",
        help=f"fixed-quantiser configurations, comma-separated from {','.join(CONFIGS)} "
        "(or all, none)",
    )
    args = ap.parse_args()
    refs = _names(args.refs, REFS, "--refs")
    configs = _names(args.configs, CONFIGS, "--configs")
    args.out.mkdir(parents=True, exist_ok=True)
    anchors = anchor_curves()
    rows = sweep(args.quick, args.cube, configs, refs, args.psnr)
    for name, (r, p) in anchors.items():  # is the re-implementation a fair stand-in?
        ref = [x for x in rows if x["cube"] == name and x["method"] == XV]
        if ref:
            bd = bd_rate([x["bpppb"] for x in ref], [x["psnr"] for x in ref], r, p, 30, 50)
            print(f"re-implemented xarrayvideo vs its published curve on {name}: {bd:.3f}x")
    suffix = "_quick" if args.quick else ""
    check_path = args.out / f"rate_distortion_sz3_check{suffix}.md"
    # both real cubes every time SZ3 runs (seconds), so the check file is always whole
    checks = check_sz3(["ndvi", "landsat"]) if "sz3" in refs else ""
    if checks:
        print("\nSZ3 here against the SZ3 table of ANCHORS.md:")
        print(checks)
        check_path.write_text(checks + "\n")
    elif check_path.is_file():  # the last check, kept with the rows it was run beside
        checks = check_path.read_text().strip()
    path = args.out / f"rate_distortion{suffix}.csv"
    rows = merge_rows(path, rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out, suffix)
    print()
    print(summarise(rows, args.out, suffix, checks))


if __name__ == "__main__":
    main()
