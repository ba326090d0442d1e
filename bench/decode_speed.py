"""Decode speed on a DeepExtremeCubes-sized cube, side by side in one run: the published
sample read back with ``open_sample`` against the bare PyAV decode of its streams and
against reading the same variables from the source zarr store; one band and a random
8-frame window with each ``access`` option, and the bits each option costs.

    python bench/decode_speed.py                  # 495 x 128 x 128, AV1, four access options
    python bench/decode_speed.py --quick          # 64 frames, two options (a smoke run)
    python bench/decode_speed.py --codec auto     # the recipe's own codec choice

The cube is the DeepExtremeCubes twin (7 float reflectance bands in one KLT group, SCL
and the EarthNet cloud mask as zstd class layers, NaN gaps as masks), encoded at the
recipe's PSNR target. Encodes are cached under ``--work``; timings are medians of
``--repeat`` runs, each measurement interleaved with the others so load drifts hit all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B8A"]
VARIABLES = [*BANDS, "SCL", "cloudmask_en"]
WINDOW = 8
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _recipe(args, access: str):
    from pipeline.recipe import load_recipe, parse_recipe

    recipe = load_recipe("deepextremecubes", location=str(args.work / "source"))
    data = recipe.model_dump(exclude_none=True)
    data["codec"]["access"] = access
    if args.codec != "auto":
        data["codec"]["codec"] = args.codec
    data["source"]["cubes"] = {"count": 1}
    return parse_recipe(data, f"deepextremecubes (bench, access {access})")


def _build(args, access: str) -> Path:
    """The twin cube encoded with ``access`` and packed into one shard (cached)."""
    from pipeline.build import pack_step, stage_cube
    from pipeline.sources import cube_ids
    from pipeline.sources.twins import write_deepextremecubes

    if not (args.work / "source").is_dir():
        write_deepextremecubes(args.work / "source", cubes=1, frames=args.frames)
    recipe = _recipe(args, access)
    out = args.work / f"{args.codec}_{access.replace('+', '_')}"
    t = time.perf_counter()
    staged, encoded = stage_cube(recipe, cube_ids(recipe)[0], out)
    if encoded:
        print(f"encoded {access} in {time.perf_counter() - t:.0f} s", flush=True)
    (shard,) = pack_step(recipe, [staged], out)
    return shard


def _zarr_read(args) -> None:
    import xarray as xr

    (store,) = sorted((args.work / "source").glob("*.zarr"))
    with xr.open_zarr(store) as ds:
        ds[VARIABLES].load()


Streams = list[tuple[bytes, list[int] | None, tuple | None]]


def _bare_decode(streams: Streams) -> None:
    """The streams' own decoders alone: every frame of every video stream to a numpy array
    with PyAV (default threading), every zstd chunk of the class layers and masks
    inflated (no palette, no bits unpacked, no mapping to values)."""
    import io

    import av
    import zstandard

    from pipeline.codec.rawcarrier import decode_packets

    for data, offsets, raw in streams:
        if raw is not None:  # the raw carrier: packets straight to the decoder
            index, codec = raw
            for frame in decode_packets(data, index, codec, 0, 0, None):
                frame.to_ndarray()
            continue
        if offsets is None:
            with av.open(io.BytesIO(data)) as c:
                for frame in c.decode(video=0):
                    frame.to_ndarray()
            continue
        inflate = zstandard.ZstdDecompressor()
        for lo, hi in zip(offsets, [*offsets[1:], len(data)], strict=True):
            chunk = data[lo:hi]
            # class-layer chunks open with a palette (docs/FORMAT.md); mask chunks do not
            start = 0 if chunk[:4] == ZSTD_MAGIC else 2 + 2 * int.from_bytes(chunk[:2], "little")
            with inflate.stream_reader(chunk[start:]) as r:
                r.read()


def _open(shard: Path, sid: str, variables=None, time=None):
    from pipeline.taco.read import open_sample

    return open_sample(shard, sid, variables=variables, time=time)


def _streams(shard: Path, sid: str) -> Streams:
    """Each stream's bytes, with its chunk offsets where it is zstd chunks (else None) and
    its packet index and codec where it is in the raw carrier (else None)."""
    from pipeline.codec.chunkcodecs import chunk_codec
    from pipeline.codec.packetindex import read_index
    from pipeline.codec.rawcarrier import CARRIER
    from pipeline.taco.read import _open_archive, sample_encoded

    archive, fh = _open_archive(shard)
    with archive, fh:
        enc = sample_encoded(archive, sid, str(shard))
        out: Streams = []
        for s in enc.manifest.streams:
            data = enc.read_file(s.file)
            n = len(s.stored_frames(enc.manifest.n_frames))
            raw = (read_index(data, n, s.file), s.codec) if s.carrier == CARRIER else None
            chunks = None if chunk_codec(s.codec) is None else list(s.chunk_offsets or [0])
            out.append((data, chunks, raw))
        return out


def _info(shard: Path) -> dict:
    from pipeline.codec.metrics import bpppb
    from pipeline.codec.readcost import read_costs
    from pipeline.taco.read import _open_archive, sample_encoded, sample_ids

    archive, fh = _open_archive(shard)
    with archive, fh:
        (sid,) = sample_ids(archive)
        enc = sample_encoded(archive, sid, str(shard))
        m = enc.manifest
        psnr = [c.psnr for c in m.channels if c.name in BANDS and c.psnr is not None]
        costs = {c.what: (c.nbytes, c.frames) for c in read_costs(enc, WINDOW)}
        return {
            "sample": sid,
            "bytes": enc.nbytes,
            "bpppb": bpppb(enc),
            "min_psnr": min(psnr) if psnr else None,
            "codecs": sorted({s.codec for s in m.streams if s.kind == "continuous"}),
            "streams": len(m.streams),
            "read_costs": costs,
        }


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "decode_speed")
    ap.add_argument("--codec", default="libaom-av1", help="libaom-av1 (default), auto, ...")
    ap.add_argument("--frames", type=int, default=495)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="64 frames, 2 repeats, 2 options")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decode_speed.json")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.repeat = 64, 2
        args.work = args.work.with_name(args.work.name + "_quick")
    accesses = ["whole", "windows+bands"]
    if not args.quick:
        accesses[1:1] = ["bands", "windows"]
    shards = {a: _build(args, a) for a in accesses}
    info = {a: _info(s) for a, s in shards.items()}
    sid = info["whole"]["sample"]
    streams = _streams(shards["whole"], sid)
    rng = np.random.default_rng(0)
    runs: dict[str, list[float]] = {}

    def add(name: str, fn) -> None:
        runs.setdefault(name, []).append(_time(fn))

    _open(shards["whole"], sid)  # warm the page cache and imports
    for _ in range(args.repeat):
        add("zarr read (source)", lambda: _zarr_read(args))
        add("bare decode (PyAV + zstd)", lambda: _bare_decode(streams))
        for a, shard in shards.items():
            add(f"open_sample whole [{a}]", lambda: _open(shard, sid))
            add(f"open_sample one band B8A [{a}]", lambda: _open(shard, sid, ["B8A"]))
            start = int(rng.integers(0, args.frames - WINDOW))
            window = slice(start, start + WINDOW)
            add(f"open_sample 8-frame window [{a}]", lambda: _open(shard, sid, VARIABLES, window))
    med = {k: statistics.median(v) for k, v in runs.items()}
    report = _report(args, med, info)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"median_s": med, "runs_s": runs, "info": info, "frames": args.frames}
    args.out.write_text(json.dumps({**result, "codec": args.codec}, indent=2))
    args.out.with_suffix(".md").write_text(report + "\n")


def _report(args, med: dict[str, float], info: dict) -> str:
    whole = med["open_sample whole [whole]"]
    bare, zarr = med["bare decode (PyAV + zstd)"], med["zarr read (source)"]
    lines = [
        f"DeepExtremeCubes twin, {args.frames} x 7 x 128 x 128 + SCL + cloud mask, codec "
        f"{args.codec}; medians of {args.repeat} runs",
        "",
        "| read | seconds | x whole decode | x bare decode | x zarr read |",
        "|---|---|---|---|---|",
    ]
    for name, s in med.items():
        lines.append(f"| {name} | {s:.3f} | {s / whole:.2f} | {s / bare:.2f} | {s / zarr:.2f} |")
    lines += [
        "",
        "| access | bytes | bpppb | x whole's bits | min band PSNR | one band reads | "
        "8-frame window decodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, i in info.items():
        band = next(v for k, v in i["read_costs"].items() if k.startswith("one band"))
        win = next(v for k, v in i["read_costs"].items() if "window" in k)
        lines.append(
            f"| {a} | {i['bytes']} | {i['bpppb']:.3f} | {i['bytes'] / info['whole']['bytes']:.2f}"
            f" | {i['min_psnr'] or float('nan'):.2f} | {band[0]} B | {win[1]} frames |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
