"""Quality per bit: BD-rate of every cubecast configuration against xarrayvideo.

Cubes: the real eo-learn NDVI and Landsat-8 stacks from ``../shared/data`` and synthetic
twins with the hard cases (a DeepExtremeCubes-like S2 minicube with clouds and missing
scenes, a smoothed DynamicEarthNet-like PlanetScope stack, a gap-free hourly float field of
744 x 33 x 49 px, and a mostly-NaN multi-band float swath).

References:
- ``xarrayvideo``: the curves in ``../shared/ANCHORS.md`` (NDVI, Landsat), measured with the
  published library; on the twins (no published curve) a re-implementation of its stated
  settings (x265 12-bit, preset medium, tune psnr, bands in 3-band groups converted
  gbrp -> yuv444, NaN/nodata filled with 0, every written byte counted), which this script
  first checks against the published curves (its BD-rate vs the anchor is printed).
- ``previous``: the previous release's curve (``bench/results/previous_release_rd.csv``,
  x265 medium, 64-px CTU padding, no decorrelation).

PSNR is computed here, independently of the encoder: per band over the original's valid
pixels, range = max - min of the band's valid values, averaged over bands; bpppb counts
every stored byte (streams, masks, manifest, aux). BD-rate is Bjontegaard-style: the mean
log-rate ratio over the PSNR range both curves cover inside [35, 50] dB (and [30, 50]).

    python bench/rate_distortion.py [--quick] [--out bench/results]

Prints a table; writes rate_distortion.csv, rate_distortion_summary.md and
rate_distortion.png to the output folder.
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


def cubes(quick: bool) -> list[Cube]:
    out = []
    if shared_data_dir() is not None:
        out.append(_cube("ndvi", load_eolearn()[["NDVI"]], "real, 68x101x100, 40% cloud NaN"))
        out.append(
            _cube("landsat", load_landsat()[["reflectance"]], "real, 19x11x132x123, 73% nodata")
        )
    t = 24 if quick else 60
    out.append(_cube("dec-twin", dec_twin(t, 64 if quick else 128), "7 S2 bands, clouds"))
    out.append(_cube("den-twin", den_twin(t, 64 if quick else 256), "4 bands uint16, daily"))
    out.append(
        _cube(
            "hourly-field",
            hourly_field(168 if quick else 744),
            "gap-free float, 33x49 px",
        )
    )
    out.append(
        _cube(
            "sparse-swath",
            sparse_swath(5, 250 if quick else 500, 500 if quick else 1000),
            "3 bands, 88% NaN",
        )
    )
    return out


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


def _x265(frames: np.ndarray, crf: float) -> bytes:
    """frames (T, P, H, W) uint16 12-bit codes: gbrp12le -> yuv444p12le for 3 planes (as
    xarrayvideo converts its RGB groups), gray12le for 1."""
    t, p, h, w = frames.shape
    ph, pw = h % 2, w % 2
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


def configurations(cube: Cube, quick: bool) -> list[tuple[str, list[float], Callable]]:
    multi = len(cube.bands) > 1
    step = 2 if quick else 1
    confs: list[tuple[str, list[float], Callable]] = [
        ("cubecast (default)", QP[::step], lambda q: EncodeOptions(crf=q)),
        (
            "cubecast x265",
            CRF[::step],
            lambda q: EncodeOptions(crf=q, codec="libx265"),
        ),
        (
            "cubecast vvc veryfast",
            QP[::step],
            lambda q: EncodeOptions(crf=q, codec="libvvenc", preset="veryfast"),
        ),
    ]
    if not quick:
        confs.append(
            (
                "cubecast av1 fast",
                [8, 16, 24, 32, 40, 48],
                lambda q: EncodeOptions(crf=q, codec="libaom-av1", preset="fast"),
            )
        )
    if multi:
        confs.append(
            (
                "cubecast no-KLT",
                QP[::step],
                lambda q: EncodeOptions(crf=q, decorrelate="none"),
            )
        )
        confs.append(
            (
                "cubecast x265 no-KLT",
                CRF[::step],
                lambda q: EncodeOptions(crf=q, codec="libx265", decorrelate="none"),
            )
        )
    return confs


def sweep(quick: bool, only: list[str] | None) -> list[dict]:
    rows = []
    for cube in cubes(quick):
        if only and cube.name not in only:
            continue
        runs: list[tuple[str, float, Callable[[], dict]]] = []
        for crf in CRF[:: 2 if quick else 1]:
            runs.append(("xarrayvideo (re-implemented)", crf, lambda c=crf: run_reference(cube, c)))
        for name, qs, make in configurations(cube, quick):
            for q in qs:
                runs.append((name, q, lambda o=make(q): run_ours(cube, o)))
        for method, param, fn in runs:
            try:
                row = fn()
            except Exception as exc:  # a configuration the cube cannot take: say so, go on
                print(f"{cube.name:12s} {method:28s} {param!s:>5} FAILED: {exc}", flush=True)
                continue
            row = dict(cube=cube.name, method=method, param=param, **row)
            rows.append(row)
            print(
                f"{cube.name:12s} {method:28s} {param!s:>5} {row['bpppb']:8.4f} bpppb "
                f"{row['psnr']:6.2f} dB (min {row['psnr_min']:6.2f})  {row['encode_s']:6.2f} s "
                f"{row['codecs']}",
                flush=True,
            )
    return rows


def summarise(rows: list[dict], out: Path, suffix: str = "") -> str:
    df = pd.DataFrame(rows)
    anchors, previous = anchor_curves(), previous_curves()
    lines = [
        "| cube | configuration | vs xarrayvideo 35-50 dB | 30-50 dB | vs previous 35-50 dB "
        "| encode s per run (median) | codecs |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "n/a" if v is None or math.isnan(v) else f"{v:.3f}x"  # noqa: E731
    for cube, g in df.groupby("cube", sort=False):
        ref = g[g.method == "xarrayvideo (re-implemented)"]
        if cube in anchors:
            ref_curve, ref_name = anchors[cube], "published"
        else:
            ref_curve, ref_name = (ref.bpppb.tolist(), ref.psnr.tolist()), "re-implemented"
        for method, m in g.groupby("method", sort=False):
            bd = [bd_rate(m.bpppb.tolist(), m.psnr.tolist(), *ref_curve, *r) for r in BD_RANGES]
            prev = (
                bd_rate(m.bpppb.tolist(), m.psnr.tolist(), *previous[cube], *BD_RANGES[0])
                if cube in previous
                else None
            )
            codecs = ",".join(sorted(set("+".join(m.codecs).split("+"))))
            lines.append(
                f"| {cube} | {method} | {fmt(bd[0])} | {fmt(bd[1])} | {fmt(prev)} | "
                f"{m.encode_s.median():.2f} | {codecs} |"
            )
        lines.append(f"| {cube} | (xarrayvideo curve used: {ref_name}) | | | | | |")
    text = "\n".join(lines)
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
            ax.plot(g.bpppb, g.psnr, style, ms=3, label=method)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer settings, smaller twins")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--cube", action="append", help="only these cubes (repeatable)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    anchors = anchor_curves()
    rows = sweep(args.quick, args.cube)
    for name, (r, p) in anchors.items():  # is the re-implementation a fair stand-in?
        ref = [x for x in rows if x["cube"] == name and x["method"].startswith("xarrayvideo")]
        if ref:
            bd = bd_rate([x["bpppb"] for x in ref], [x["psnr"] for x in ref], r, p, 30, 50)
            print(f"re-implemented xarrayvideo vs its published curve on {name}: {bd:.3f}x")
    suffix = "_quick" if args.quick else ""
    with open(args.out / f"rate_distortion{suffix}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out, suffix)
    print()
    print(summarise(rows, args.out, suffix))


if __name__ == "__main__":
    main()
