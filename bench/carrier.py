"""Small frames: the raw carrier against Matroska (issue 26 item 3).

    python bench/carrier.py                 # hourly field, tiny frames, NDVI at PSNR 40 and 45
    python bench/carrier.py --repeat 5      # decode timings: median of this many runs

Each cube is encoded twice with the same options, ``carrier="matroska"`` (every video stream
in Matroska, as before) and ``carrier="auto"`` (the raw carrier where smaller); the table
shows the video streams' bytes, the total stored bytes (streams, masks, manifest), bits per
pixel per band, and for the hourly field the whole decode's time, median of ``--repeat``,
the two carriers interleaved so load drifts hit both. Each raw stream's bytes are checked
to be at most its Matroska file's packet payloads (HEVC/VVC keyframes lose the parameter
sets the extradata holds), and the container overhead (the Matroska files less their
packets' payloads) and the headers left out are recorded.
Writes bench/results/carrier.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tiny_frames(t: int = 1000, h: int = 8, w: int = 12):
    """A smooth random field on 8 x 12 px: two fractal fields turning into each other."""
    import pandas as pd
    import xarray as xr

    from bench.rate_distortion import fractal_noise

    rng = np.random.default_rng(3)
    a, b = fractal_noise((h, w), rng, beta=3.0), fractal_noise((h, w), rng, beta=3.0)
    frames = np.stack([np.cos(i / 50) * a + np.sin(i / 50) * b for i in range(t)])
    return xr.Dataset(
        {"v": (("time", "y", "x"), frames.astype(np.float32))},
        coords={"time": pd.date_range("2020-01-01", periods=t, freq="h")},
    )


def cubes():
    from bench.rate_distortion import hourly_field
    from pipeline.sources.sample_data import load_eolearn

    return {
        "hourly field 744 x 33 x 49": hourly_field(744),
        "tiny frames 1000 x 8 x 12": tiny_frames(),
        "NDVI (eo-learn sample)": load_eolearn()[["NDVI"]],
    }


def _payload(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data), format="matroska") as c:
        return sum(p.size for p in c.demux(video=0) if p.size)


def _pixels(ds) -> int:
    return int(sum(np.prod(v.shape) for v in ds.data_vars.values()))


def run(args: argparse.Namespace) -> list[dict]:
    import pipeline
    from pipeline.codec.chunkcodecs import chunk_codec
    from pipeline.codec.decode import decode_cube
    from pipeline.codec.packetindex import read_index

    rows = []
    for name, ds in cubes().items():
        for psnr in args.psnr:
            enc = {
                c: pipeline.encode_cube(ds, pipeline.EncodeOptions(psnr=psnr, carrier=c))
                for c in ("matroska", "auto")
            }
            video = {
                c: [s for s in e.manifest.streams if chunk_codec(s.codec) is None]
                for c, e in enc.items()
            }
            overhead = stripped = index = 0
            for before, after in zip(video["matroska"], video["auto"], strict=True):
                payload = _payload(enc["matroska"].read_file(before.file))
                overhead += before.nbytes - payload
                if after.carrier == "raw":
                    n = len(after.stored_frames(enc["auto"].manifest.n_frames))
                    head = read_index(enc["auto"].read_file(after.file), n, after.file).start
                    # the same packets, less the parameter sets the extradata holds
                    assert after.nbytes - head <= payload, f"{name}: raw > Matroska payloads"
                    stripped += payload - (after.nbytes - head)
                    index += head
            px = _pixels(ds)
            row = {
                "cube": name,
                "psnr": psnr,
                "codecs": sorted({s.codec for s in video["auto"]}),
                "carriers": sorted({s.carrier for s in video["auto"]}),
                "pixels": px,
                # Matroska file minus its packets' payloads, summed over the video streams
                "container_overhead_bytes": overhead,
                # keyframes' NAL units the raw carrier leaves out (the extradata holds them)
                "repeated_header_bytes": stripped,
                # the raw streams' packet indexes (the heads of their files)
                "index_bytes": index,
            }
            for c, label in (("matroska", "before"), ("auto", "after")):
                row[f"stream_bytes_{label}"] = sum(s.nbytes for s in video[c])
                row[f"total_bytes_{label}"] = enc[c].nbytes
                row[f"manifest_bytes_{label}"] = len(enc[c].manifest.to_bytes())
                row[f"bpppb_{label}"] = round(8 * enc[c].nbytes / px, 4)
            row["saved_pct"] = round(
                100 * (1 - row["total_bytes_after"] / row["total_bytes_before"]), 2
            )
            if name.startswith("hourly"):
                times: dict[str, list[float]] = {"matroska": [], "auto": []}
                for _ in range(args.repeat):
                    for c in times:
                        t0 = time.perf_counter()
                        decode_cube(enc[c])
                        times[c].append(time.perf_counter() - t0)
                row["decode_s_before"] = round(statistics.median(times["matroska"]), 4)
                row["decode_s_after"] = round(statistics.median(times["auto"]), 4)
            rows.append(row)
            print(_line(row), flush=True)
    return rows


HEADER = (
    "| cube | PSNR | codec | stream bytes before -> after | total bytes before -> after "
    "| bits/px/band before -> after | saved | Matroska overhead | headers left out "
    "| index bytes | hourly decode s before -> after |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _line(r: dict) -> str:
    dec = (
        f"{r['decode_s_before']:.3f} -> {r['decode_s_after']:.3f}" if "decode_s_before" in r else ""
    )
    return (
        f"| {r['cube']} | {r['psnr']:g} | {', '.join(r['codecs'])} | "
        f"{r['stream_bytes_before']} -> {r['stream_bytes_after']} | "
        f"{r['total_bytes_before']} -> {r['total_bytes_after']} | "
        f"{r['bpppb_before']:.3f} -> {r['bpppb_after']:.3f} | {r['saved_pct']:.1f} % | "
        f"{r['container_overhead_bytes']} | {r['repeated_header_bytes']} | {r['index_bytes']} | "
        f"{dec} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--psnr", type=float, nargs="+", default=[40.0, 45.0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "carrier.json")
    args = p.parse_args()
    print(HEADER)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
