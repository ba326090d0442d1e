"""Where PSNR-target encodes land, and what they cost, against another checkout.

For each cube and target: encode through the recipe path (``EncodeOptions(psnr=P)``, codec
"auto"), decode, and report every band's PSNR recomputed here over valid pixels (the lowest
band's excess over the target is what the landing aims to keep within 0.5 dB), the bytes
of every stored stream and the encode's wall time. With ``--baseline DIR`` the same encode
runs in a second checkout (its ``pipeline`` package, same interpreter) in alternating order,
each in a fresh process so neither warms the other's caches.

    python bench/psnr_landing.py --cube ndvi landsat hourly --psnr 40 45 50
    python bench/psnr_landing.py --baseline ../old-checkout --repeat 3 --out bench/results

Prints a table and writes ``psnr_landing.json`` / ``psnr_landing.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.psnr_target import cubes  # noqa: E402

ONE = r"""
import json, pickle, sys, time
sys.path.insert(0, {root!r})
from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec.metrics import compare
with open({cube!r}, "rb") as f:
    ds = pickle.load(f)
t = time.perf_counter()
enc = encode_cube(ds, EncodeOptions(psnr={psnr!r}))
seconds = time.perf_counter() - t
bands = [q.psnr for q in compare(ds, decode_cube(enc)) if not q.exact]
lossy = [s for s in enc.manifest.streams if s.kind == "continuous" and not s.lossless]
print(json.dumps(dict(
    seconds=seconds,
    stream_bytes=sum(s.nbytes for s in enc.manifest.streams),
    lowest=min(bands), highest=max(bands),
    codecs=sorted({{f"{{s.codec}} {{s.crf:g}} x{{getattr(s, 'gain', 1.0):.3f}}" for s in lossy}}),
)))
"""


def run_one(checkout: Path, cube: Path, psnr: float) -> dict:
    """One encode in a fresh process importing ``checkout``'s pipeline; the cube is made
    here once and pickled, so both sides encode the same values."""
    code = ONE.format(root=str(checkout), cube=str(cube), psnr=psnr)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{checkout} {cube} {psnr}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cube", nargs="+", default=["ndvi", "landsat", "hourly", "dec-twin"])
    ap.add_argument("--psnr", nargs="+", type=float, default=[40.0, 45.0, 50.0])
    ap.add_argument("--baseline", type=Path, help="another checkout to run the same encodes")
    ap.add_argument("--repeat", type=int, default=1, help="encodes per case (median time)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    sides = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="psnr-landing-"))
    for cube in args.cube:
        pickled = tmp / f"{cube}.pkl"
        pickled.write_bytes(pickle.dumps(cubes([cube])[cube]))
        for psnr in args.psnr:
            runs: dict[str, list[dict]] = {k: [] for k in sides}
            for i in range(args.repeat):
                order = list(sides) if i % 2 == 0 else list(sides)[::-1]
                for side in order:
                    runs[side].append(run_one(sides[side], pickled, psnr))
            row: dict = {"cube": cube, "target": psnr}
            for side, rs in runs.items():
                r = rs[0]
                row[side] = {
                    **r,
                    "seconds": round(statistics.median(x["seconds"] for x in rs), 2),
                    "excess": round(r["lowest"] - psnr, 2),
                }
            rows.append(row)
            print(line(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "psnr_landing.json").write_text(json.dumps(rows, indent=1))
    (args.out / "psnr_landing.md").write_text(table(rows, list(sides)))
    print(table(rows, list(sides)))


def line(row: dict) -> str:
    parts = [f"{row['cube']:9s} {row['target']:4.1f} dB"]
    for side in ("this", "baseline"):
        if side in row:
            r = row[side]
            parts.append(
                f"{side}: +{r['excess']:.2f} dB {r['stream_bytes']:>8d} B {r['seconds']:6.2f} s"
            )
    return " | ".join(parts)


def table(rows: list[dict], sides: list[str]) -> str:
    head = "| cube | target dB |"
    rule = "|---|---|"
    for side in sides:
        head += f" {side}: lowest band dB (excess) | bytes | s | codec |"
        rule += "---|---|---|---|"
    if len(sides) == 2:
        head += " bytes this/baseline | time this/baseline |"
        rule += "---|---|"
    out = [head, rule]
    for row in rows:
        cells = f"| {row['cube']} | {row['target']:g} |"
        for side in sides:
            r = row[side]
            cells += (
                f" {r['lowest']:.2f} (+{r['excess']:.2f}) | {r['stream_bytes']:,} |"
                f" {r['seconds']:.2f} | {'; '.join(r['codecs'])} |"
            )
        if len(sides) == 2:
            a, b = row["this"], row["baseline"]
            ratio = a["stream_bytes"] / b["stream_bytes"]
            cells += f" {ratio:.3f} | {a['seconds'] / b['seconds']:.2f} |"
        out.append(cells)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
