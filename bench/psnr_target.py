"""PSNR-target encodes against fixed-quantiser encodes at the settings they chose.

For each cube: encode with a PSNR floor (codec "auto", the recipe path), read the codec,
quantiser and decorrelation each group ended up with from the manifest, then encode again
at exactly those settings with no target. The ratio of the two wall times is the cost of
rate control; the decoded PSNR of every band is checked against the floor.

    python bench/psnr_target.py --out bench/results            # real samples + 1024 px twin
    python bench/psnr_target.py --cube landsat --psnr 40 45 50
    python bench/psnr_target.py --repeat 3                     # median of 3 pairs
    python bench/psnr_target.py --codec libvvenc --out /tmp/x   # a recipe's pinned codec
    python bench/psnr_target.py --cube dec-twin den-twin hourly sparse --psnr 40 45 50

Prints a table and writes ``psnr_target.csv`` / ``psnr_target.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import sys
import time
from pathlib import Path

import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rate_distortion import (  # noqa: E402
    dec_twin,
    den_twin,
    hourly_field,
    precipitation,
    sparse_swath,
    tiny_frames,
)
from pipeline import EncodeOptions, GroupSpec, decode_cube, encode_cube  # noqa: E402
from pipeline.codec.encoded import EncodedCube  # noqa: E402
from pipeline.codec.metrics import compare  # noqa: E402
from pipeline.sources.sample_data import load_eolearn, load_landsat  # noqa: E402


def cubes(names: list[str]) -> dict[str, xr.Dataset]:
    makers = {
        "ndvi": lambda: load_eolearn()[["NDVI"]],
        "landsat": load_landsat,
        "den1024": lambda: den_twin(24, 1024),
        # the rate-distortion sweep's synthetic cubes
        "dec-twin": lambda: dec_twin(60, 128),
        "den-twin": lambda: den_twin(60, 256),
        "hourly": lambda: hourly_field(744),
        "sparse": lambda: sparse_swath(5, 500, 1000),
        "tiny": lambda: tiny_frames(1000),
        "precip": lambda: precipitation(240, 96, 96),
    }
    return {n: makers[n]().load() for n in names}


def fixed_options(enc: EncodedCube, base: EncodeOptions) -> EncodeOptions:
    """The settings the PSNR-target encode ended up with, as a fixed-quantiser request."""
    m = enc.manifest
    lossy = [s for s in m.streams if s.kind == "continuous" and not s.lossless]
    if not lossy:
        raise SystemExit("the PSNR-target encode chose lossless: nothing to compare")
    codecs = {s.codec for s in lossy}
    if len(codecs) > 1:
        raise SystemExit(f"groups chose different codecs {codecs}: compare per group")
    crf_of = {s.name: s.crf for s in lossy}
    groups, covered = [], set()
    for tr in m.transforms:  # a KLT group: its bands, whatever streams hold the components
        streams = {c.stream for c in tr.components}
        groups.append(GroupSpec(tuple(tr.channels), crf=crf_of[tr.components[0].stream]))
        covered |= streams
    for s in lossy:
        bands = tuple(c.name for c in m.channels if c.stream == s.name)
        if s.name not in covered and bands:
            groups.append(GroupSpec(bands, crf=s.crf))
    klt = bool(m.transforms)
    return EncodeOptions(
        codec=codecs.pop(),
        crf=lossy[0].crf or base.crf,
        groups=tuple(groups),
        decorrelate="klt" if klt else "none",
        preset=base.preset,
        keyint=base.keyint,
    )


def timed(ds: xr.Dataset, options: EncodeOptions) -> tuple[EncodedCube, float]:
    gc.collect()
    t = time.perf_counter()
    enc = encode_cube(ds, options)
    return enc, time.perf_counter() - t


def warm_up() -> None:
    """One small encode with every candidate codec before anything is timed, so the first
    timed encode does not pay for loading the codec libraries."""
    ds = load_eolearn()[["NDVI"]].isel(time=slice(0, 8)).load()
    encode_cube(ds, EncodeOptions(psnr=40))


def run(name: str, ds: xr.Dataset, target: float, repeat: int, codec: str = "auto") -> dict:
    """``repeat`` pairs of encodes, the order swapped from one pair to the next; the ratio
    of the median times (two jobs on two cores make single timings noisy)."""
    t_psnr, t_fixed = [], []
    enc = None
    for i in range(repeat):
        order = ("psnr", "fixed") if i % 2 == 0 else ("fixed", "psnr")
        for kind in order:
            if kind == "psnr":
                enc, t = timed(ds, EncodeOptions(psnr=target, codec=codec))
                t_psnr.append(t)
            else:  # the first pair starts with the PSNR-target encode: enc is set
                enc_fixed, t = timed(ds, fixed_options(enc, EncodeOptions()))
                t_fixed.append(t)
    assert enc is not None
    quality = compare(ds, decode_cube(enc))
    worst = min(q.psnr for q in quality if not q.exact)
    s = next(s for s in enc.manifest.streams if s.kind == "continuous")
    med_psnr, med_fixed = statistics.median(t_psnr), statistics.median(t_fixed)
    return {
        "cube": name,
        "target_db": target,
        "codec": s.codec,
        "crf": s.crf,
        "klt": bool(enc.manifest.transforms),
        "repeats": repeat,
        "psnr_target_s": round(med_psnr, 2),
        "fixed_s": round(med_fixed, 2),
        "ratio": round(med_psnr / med_fixed, 2),
        "worst_band_db": round(worst, 2),
        "meets_floor": bool(worst >= target - 1e-9),
        "bytes": enc.nbytes,
        "bytes_fixed": enc_fixed.nbytes,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| cube | floor dB | codec | CRF/QP | KLT | PSNR-target s | fixed s | ratio "
        "| worst band dB | bytes |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['cube']} | {r['target_db']:g} | {r['codec']} | {r['crf']:g} | "
            f"{'yes' if r['klt'] else 'no'} | {r['psnr_target_s']} | {r['fixed_s']} | "
            f"{r['ratio']} | {r['worst_band_db']} | {r['bytes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cube", nargs="*", default=["ndvi", "landsat", "den1024"])
    ap.add_argument("--psnr", type=float, nargs="*", default=[45.0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--repeat", type=int, default=1, help="pairs of encodes per cube (median)")
    ap.add_argument("--codec", default="auto", help="auto, or one codec as a recipe can pin it")
    args = ap.parse_args()
    warm_up()
    rows = []
    for name, ds in cubes(args.cube).items():
        for target in args.psnr:
            rows.append(run(name, ds, target, args.repeat, args.codec))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    md = table(rows)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "psnr_target.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out / "psnr_target.md").write_text(md + "\n")
    if not all(r["meets_floor"] for r in rows):
        raise SystemExit("a band missed its floor")


if __name__ == "__main__":
    main()
