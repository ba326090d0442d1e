"""PSNR vs bits per pixel per band: our x265 settings against PyPI baselines.

Cubes: eo-learn NDVI (real, clouds as NaN), Landsat-8 NY 2018 (real, 0 = nodata) and a
synthetic Sentinel-2-like cube.  Baselines: zstd (lossless), JPEG 2000 and JPEG-XL
(imagecodecs, per frame on 16-bit codes), SZ3 (pysz) and ZFP (zfpy) on the float arrays.
PSNR is per band over valid pixels, averaged over bands; bpppb counts every stored byte.

    python bench/rate_distortion.py [--quick] [--out bench/results]

Prints a table, writes rate_distortion.csv, rate_distortion_summary.md and
rate_distortion.png to the output folder.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.metrics import psnr
from pipeline.sample_data import load_eolearn, load_landsat
from pipeline.synthetic import S2_BANDS, cloud_masks, reflectance_cube

Method = Callable[[np.ndarray, np.ndarray, float], tuple[int, np.ndarray, float, float]]


def synthetic_s2(t: int = 48, size: int = 128) -> xr.Dataset:
    refl, _ = reflectance_cube(t, (size, size), seed=3, n_bands=6)
    clouds, shadows = cloud_masks(t, (size, size), np.random.default_rng(4))
    refl[np.broadcast_to((clouds | shadows)[:, None], refl.shape)] = np.nan
    return xr.Dataset(
        {b: (("time", "y", "x"), refl[:, i]) for i, b in enumerate(S2_BANDS[:6])},
        coords={
            "time": pd.date_range("2021-01-01", periods=t, freq="5D"),
            "y": np.arange(size) * -20.0,
            "x": np.arange(size) * 20.0,
        },
    )


def cubes(quick: bool) -> dict[str, xr.Dataset]:
    eo = load_eolearn()[["NDVI"]]
    ls = load_landsat()[["reflectance"]]
    ls = ls.assign(reflectance=ls.reflectance.where(ls.reflectance != 0))  # 0 = nodata -> NaN
    s2 = synthetic_s2(24 if quick else 48, 64 if quick else 128)
    return {"eolearn-ndvi": eo, "landsat8-ny": ls, "synthetic-s2": s2}


def bands_of(ds: xr.Dataset) -> list[np.ndarray]:
    out = []
    for v in ds.data_vars.values():
        if "band" in v.dims:
            out += [v.isel(band=i).values.astype(np.float32) for i in range(v.sizes["band"])]
        else:
            out.append(v.values.astype(np.float32))
    return out


def score(bands: list[np.ndarray], decoded: list[np.ndarray], nbytes: int) -> tuple[float, float]:
    ps = []
    for o, d in zip(bands, decoded, strict=True):
        valid = np.isfinite(o)
        ps.append(psnr(o, d, valid))
    n = sum(b.size for b in bands)
    return 8 * nbytes / n, float(np.mean([min(p, 140.0) for p in ps]))


# --- baselines: each returns (nbytes, decoded bands, encode s, decode s) ----------------------
def _filled(b: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(b), b, 0).astype(np.float32)


def _mask_bytes(bands: list[np.ndarray]) -> int:
    import zstandard

    masks = np.stack([~np.isfinite(b) for b in bands])
    return len(zstandard.ZstdCompressor(level=19).compress(np.packbits(masks).tobytes()))


def run_zstd(bands: list[np.ndarray], level: int) -> tuple[int, list[np.ndarray], float, float]:
    import zstandard

    t0 = time.perf_counter()
    blobs = [zstandard.ZstdCompressor(level=level).compress(b.tobytes()) for b in bands]
    t1 = time.perf_counter()
    dec = [
        np.frombuffer(zstandard.ZstdDecompressor().decompress(x), dtype=np.float32).reshape(b.shape)
        for x, b in zip(blobs, bands, strict=True)
    ]
    return sum(map(len, blobs)), dec, t1 - t0, time.perf_counter() - t1


def _codes16(b: np.ndarray) -> tuple[np.ndarray, float, float]:
    f = _filled(b)
    valid = np.isfinite(b)
    lo, hi = float(b[valid].min()), float(b[valid].max())
    scale = (hi - lo) / 65535 or 1.0
    return np.clip(np.rint((f - lo) / scale), 0, 65535).astype(np.uint16), lo, scale


def run_image_codec(
    bands: list[np.ndarray], codec: str, param: float
) -> tuple[int, list[np.ndarray], float, float]:
    import imagecodecs

    enc_t = dec_t = 0.0
    nbytes = _mask_bytes(bands)
    decoded = []
    for b in bands:
        codes, lo, scale = _codes16(b)
        out = np.empty(b.shape, dtype=np.float32)
        for t in range(b.shape[0]):
            t0 = time.perf_counter()
            if codec == "jpeg2k":
                blob = imagecodecs.jpeg2k_encode(codes[t], level=param, codecformat="j2k")
            else:
                blob = imagecodecs.jpegxl_encode(codes[t], distance=param, effort=5)
            t1 = time.perf_counter()
            dec = (
                imagecodecs.jpeg2k_decode(blob)
                if codec == "jpeg2k"
                else imagecodecs.jpegxl_decode(blob)
            )
            dec_t += time.perf_counter() - t1
            enc_t += t1 - t0
            nbytes += len(blob)
            out[t] = dec.astype(np.float32) * scale + lo
        decoded.append(out)
    return nbytes, decoded, enc_t, dec_t


def run_sz3(bands: list[np.ndarray], rel: float) -> tuple[int, list[np.ndarray], float, float]:
    import pysz

    enc_t = dec_t = 0.0
    nbytes = _mask_bytes(bands)
    decoded = []
    for b in bands:
        f = _filled(b)
        cfg = pysz.szConfig()
        cfg.errorBoundMode = pysz.szErrorBoundMode.REL
        cfg.relErrorBound = rel
        t0 = time.perf_counter()
        comp, _ = pysz.sz.compress(f, cfg)
        t1 = time.perf_counter()
        dec, _ = pysz.sz.decompress(comp, np.float32, f.shape)
        dec_t += time.perf_counter() - t1
        enc_t += t1 - t0
        nbytes += comp.nbytes
        decoded.append(np.asarray(dec).reshape(f.shape))
    return nbytes, decoded, enc_t, dec_t


def run_zfp(bands: list[np.ndarray], rel: float) -> tuple[int, list[np.ndarray], float, float]:
    import zfpy

    enc_t = dec_t = 0.0
    nbytes = _mask_bytes(bands)
    decoded = []
    for b in bands:
        f = _filled(b)
        tol = rel * float(np.nanmax(b) - np.nanmin(b))
        t0 = time.perf_counter()
        comp = zfpy.compress_numpy(f, tolerance=tol)
        t1 = time.perf_counter()
        decoded.append(zfpy.decompress_numpy(comp))
        dec_t += time.perf_counter() - t1
        enc_t += t1 - t0
        nbytes += len(comp)
    return nbytes, decoded, enc_t, dec_t


def run_ours(ds: xr.Dataset, crf: float, preset: str) -> tuple[int, list[np.ndarray], float, float]:
    t0 = time.perf_counter()
    enc = encode_cube(ds, EncodeOptions(crf=crf, preset=preset))
    t1 = time.perf_counter()
    dec = decode_cube(enc)
    t2 = time.perf_counter()
    return enc.nbytes, bands_of(dec), t1 - t0, t2 - t1


def sweep(quick: bool) -> list[dict]:
    rows = []
    for cube_name, ds in cubes(quick).items():
        bands = bands_of(ds)
        raw_mb = sum(b.nbytes for b in bands) / 1e6
        runs: list[tuple[str, float, Callable[[], tuple]]] = []
        crfs = (
            [0, 10, 20, 30, 40, 51] if quick else [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 45, 51]
        )
        for preset in ["medium"] if quick else ["medium", "slow"]:
            for crf in crfs:
                runs.append(
                    (f"cubecast-x265-{preset}", crf, lambda c=crf, p=preset: run_ours(ds, c, p))
                )
        runs.append(("zstd-lossless", 19, lambda: run_zstd(bands, 19)))
        for level in [20, 30, 40, 50, 60, 70]:
            runs.append(("jpeg2000", level, lambda q=level: run_image_codec(bands, "jpeg2k", q)))
        for dist in [0.1, 0.5, 1.0, 2.0, 4.0, 8.0]:
            runs.append(("jpegxl", dist, lambda d=dist: run_image_codec(bands, "jpegxl", d)))
        for rel in [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]:
            runs.append(("sz3", rel, lambda r=rel: run_sz3(bands, r)))
            runs.append(("zfp", rel, lambda r=rel: run_zfp(bands, r)))
        for method, param, fn in runs:
            nbytes, decoded, enc_s, dec_s = fn()
            bits, p = score(bands, decoded, nbytes)
            rows.append(
                dict(
                    cube=cube_name,
                    method=method,
                    param=param,
                    bpppb=bits,
                    psnr=p,
                    encode_mb_s=raw_mb / max(enc_s, 1e-9),
                    decode_mb_s=raw_mb / max(dec_s, 1e-9),
                )
            )
            print(
                f"{cube_name:14s} {method:24s} {param!s:>7} {bits:8.3f} bpppb "
                f"{p:7.2f} dB  enc {rows[-1]['encode_mb_s']:7.1f} MB/s "
                f"dec {rows[-1]['decode_mb_s']:7.1f} MB/s",
                flush=True,
            )
    return rows


def psnr_at(df: pd.DataFrame, target_bpppb: float) -> float:
    """PSNR at a rate, interpolated on log(bpppb) along the method's upper envelope."""
    pts = df.sort_values("bpppb")
    x, y = np.log(pts.bpppb.to_numpy()), pts.psnr.to_numpy()
    y = np.maximum.accumulate(y)
    lt = math.log(target_bpppb)
    if lt < x.min() or lt > x.max():
        return math.nan
    return float(np.interp(lt, x, y))


def summarise(rows: list[dict], out: Path) -> str:
    df = pd.DataFrame(rows)
    lines = [
        "| cube | method | PSNR @0.1 bpppb | PSNR @1 bpppb | encode MB/s | decode MB/s |",
        "|---|---|---|---|---|---|",
    ]
    for (cube, method), g in df.groupby(["cube", "method"], sort=False):
        p01, p1 = psnr_at(g, 0.1), psnr_at(g, 1.0)
        fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.2f}"  # noqa: E731
        lines.append(
            f"| {cube} | {method} | {fmt(p01)} | {fmt(p1)} | "
            f"{g.encode_mb_s.median():.1f} | {g.decode_mb_s.median():.1f} |"
        )
    text = "\n".join(lines)
    (out / "rate_distortion_summary.md").write_text(text + "\n")
    return text


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(rows)
    cube_names = list(dict.fromkeys(df.cube))
    fig, axes = plt.subplots(1, len(cube_names), figsize=(6 * len(cube_names), 4.5))
    for ax, cube in zip(np.atleast_1d(axes), cube_names, strict=True):
        for method, g in df[df.cube == cube].groupby("method", sort=False):
            g = g.sort_values("bpppb")
            ax.plot(g.bpppb, g.psnr, "o-" if "cubecast" in method else ".--", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel per band")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(cube)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rate_distortion.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer settings, smaller synthetic cube")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = sweep(args.quick)
    with open(args.out / "rate_distortion.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out)
    print()
    print(summarise(rows, args.out))


if __name__ == "__main__":
    main()
