"""Training-loader throughput (issue 25): CubeDataset items per second with 1 and 2 worker
processes, from local shards and over HTTP from a local range server, plus the requests
and bytes an item costs over HTTP.

The data: DeepExtremeCubes twins (7 reflectance bands in one x265 group, SCL, cloud mask,
ERA5 series as the lossless side-car) encoded and packed once into ``--work`` and reused.
Items are ``--window``-frame windows (optionally ``--chip`` tiles) in a fixed shuffled
order, as a training sampler would ask for them. Workers are a ``multiprocessing`` pool
(``--start-method``), each given the pickled dataset, with ``CUBECAST_DECODE_THREADS=1``
so that one worker's decoder does not already use both cores (``--decoder-threads 0``
leaves FFmpeg's choice). Timing starts once every worker is up. Over HTTP the server
(tests/rangeserver.py) runs in this process and counts each GET it answers.

    python bench/loader.py --quick          # 3 cubes x 96 frames: checks it runs (~1 min)
    python bench/loader.py                  # 8 cubes x 495 frames x 128 px (the issue's)
    python bench/loader.py --cache-sweep    # requests/bytes per item by range cache

Target (issue 25): 2 workers >= 1.7x the items/s of 1 worker on 2 cores, locally and over
HTTP. Run it on an otherwise idle machine: the load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.taco.cachedrange import BLOCKS, CachedRangeFile  # noqa: E402
from pipeline.taco.loader import CubeDataset  # noqa: E402
from pipeline.taco.rangefile import RangeFile  # noqa: E402
from tests.rangeserver import RangeServer  # noqa: E402

SWEEP_ITEMS = 48  # items per cache in --cache-sweep (it runs 12 passes in one process)
GROUP = ("B04", "B03", "B02", "B8A", "B06", "B05", "B07")
_ds: CubeDataset | None = None  # the worker's dataset


class _Empty(RangeFile):
    size = 1


def build(args) -> Path:
    """Encode and pack the twins once; reused while the parameters are the same."""
    shards = args.work / "shards"
    params = {
        k: getattr(args, k) for k in ("cubes", "frames", "size", "keyint", "crf", "split_size")
    }
    stamp = args.work / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return shards
    from pipeline.codec.options import EncodeOptions, GroupSpec
    from pipeline.sources.twins import deepextremecube
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards

    opts = EncodeOptions(
        codec="libx265",
        crf=args.crf,
        preset="fast",
        keyint=args.keyint,
        groups=(GroupSpec(GROUP, name="s2"),),
    )
    t = time.perf_counter()
    samples = [
        encode_sample(deepextremecube(n, args.frames, args.size), opts) for n in range(args.cubes)
    ]
    pack_shards(samples, shards, DatasetInfo(id="loaderbench"), split_size=args.split_size)
    stamp.write_text(json.dumps(params))
    print(f"encoded and packed {args.cubes} cubes in {time.perf_counter() - t:.0f} s", flush=True)
    return shards


def _init(ds: CubeDataset, warm: int, barrier) -> None:
    """The worker's imports and first decode done before timing (a DataLoader's workers
    live for the epoch); its shards are closed again, so opening them is timed."""
    global _ds
    _ds = ds
    ds[warm]
    ds.close()
    barrier.wait()


def _item(i: int) -> tuple[int, int]:
    item = _ds[i]
    arrays = [v for v in item.values() if hasattr(v, "nbytes")]
    return i, sum(a.nbytes for a in arrays)


def run_pool(
    ds: CubeDataset, order: list[int], workers: int, method: str, srv: RangeServer | None
) -> dict:
    """Items per second of ``workers`` processes over ``order``, pool start-up excluded;
    over HTTP, the GETs the server answered meanwhile."""
    ctx = mp.get_context(method)
    barrier = ctx.Barrier(workers + 1)
    with ctx.Pool(workers, initializer=_init, initargs=(ds, order[-1], barrier)) as pool:
        barrier.wait()
        mark = len(srv.ranges) if srv else 0
        t, c = time.perf_counter(), time.process_time()
        got = sum(n for _, n in pool.imap_unordered(_item, order, chunksize=1))
        wall = time.perf_counter() - t
        gets = srv.ranges[mark:] if srv else []
    row = {
        "workers": workers,
        "items": len(order),
        "seconds": round(wall, 3),
        "items_per_s": round(len(order) / wall, 2),
        "MB_out_per_item": round(got / len(order) / 1e6, 2),
        "parent_cpu_s": round(time.process_time() - c, 2),
    }
    if srv:
        row["GETs_per_item"] = round(len(gets) / len(order), 2)
        row["MB_fetched_per_item"] = round(sum(b - a for _, a, b in gets) / len(order) / 1e6, 2)
    return row


def measure(args, source, srv: RangeServer | None, mode: str) -> list[dict]:
    before = len(srv.ranges) if srv else 0
    ds = CubeDataset(source, window=args.window, chip=args.chip)
    opening = len(srv.ranges) - before if srv else None
    ds.close()
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    order = order[: args.items] if args.items else order
    rows = []
    for workers in args.workers:
        row = {"mode": mode, **run_pool(ds, order, workers, args.start_method, srv)}
        if srv:
            row["GETs_to_open_dataset"] = opening
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["items_per_s"]
    for r in rows:
        r["speedup"] = round(r["items_per_s"] / base, 2)
    return rows


def _sweep_one(ds: CubeDataset, order: list[int], srv: RangeServer, cold: bool) -> dict:
    """GETs and MB per item over ``order``; ``cold``: every item opens its shard afresh."""
    mark = len(srv.ranges)
    for i in order:
        if cold:
            ds.close()
        ds[i]
    ds.close()
    got = srv.ranges[mark:]
    return {
        "GETs": round(len(got) / len(order), 2),
        "MB": round(sum(b - a for _, a, b in got) / len(order) / 1e6, 2),
    }


def cache_sweep(args, shards: Path) -> list[dict]:
    """GETs and bytes per item, in one process, for each range cache the reader could use:
    ``cold`` (each item opens its shard, nothing cached: a sample's own cost) and
    ``shuffled`` (items in the shuffled order, shards kept open), the same 32 MiB of cache
    for every block size."""
    from fsspec.caching import ReadAheadCache

    import pipeline.taco.read as read

    def readahead(inner, block=2 << 20):
        f = CachedRangeFile(inner, block)
        f.cache = ReadAheadCache(block, f._fetch, f.size)
        return f

    kinds = {
        "none (HttpRangeFile)": lambda inner: inner,
        "readahead 2 MiB": readahead,
        **{
            f"blockcache {m} MiB x {32 // m}": (
                lambda inner, m=m: CachedRangeFile(inner, m << 20, 32 // m)
            )
            for m in (1, 2, 4, 8)
        },
    }
    urls = sorted(p.name for p in shards.glob("*.tacozip"))
    rows = []
    original = read.CachedRangeFile
    with RangeServer(shards) as srv:
        for name, make in kinds.items():
            read.CachedRangeFile = make
            try:
                ds = CubeDataset([f"{srv.url}/{u}" for u in urls], window=args.window)
                order = list(range(len(ds)))
                random.Random(0).shuffle(order)
                order = order[: args.items or SWEEP_ITEMS]
                cold = _sweep_one(ds, order, srv, cold=True)
                warm = _sweep_one(ds, order, srv, cold=False)
            finally:
                read.CachedRangeFile = original
            rows.append(
                {
                    "cache": name,
                    "cold_GETs_per_item": cold["GETs"],
                    "cold_MB_per_item": cold["MB"],
                    "shuffled_GETs_per_item": warm["GETs"],
                    "shuffled_MB_per_item": warm["MB"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 cubes x 96 frames x 64 px, 24 items")
    ap.add_argument("--cubes", type=int, default=8)
    ap.add_argument("--frames", type=int, default=495)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--keyint", type=int, default=32, help="x265 GOP: a window seeks to one")
    ap.add_argument("--crf", type=float, default=12.0)
    ap.add_argument("--split-size", default="64MB", help="shard size (several shards)")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--chip", type=int, default=None)
    ap.add_argument("--items", type=int, default=0, help="items per run (0: all)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--modes", default="local,http")
    ap.add_argument("--start-method", default="fork", choices=("fork", "spawn", "forkserver"))
    ap.add_argument("--decoder-threads", default="1", help="CUBECAST_DECODE_THREADS")
    ap.add_argument("--cache-sweep", action="store_true")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON (default bench/results)")
    args = ap.parse_args()
    if args.quick:
        args.cubes, args.frames, args.size, args.items = 3, 96, 64, args.items or 24
        args.split_size = "1MB"
    args.workers = [int(w) for w in args.workers.split(",")]
    tag = f"{args.cubes}x{args.frames}x{args.size}_k{args.keyint}"
    args.work = args.work or Path(f"/tmp/cubecast-bench/loader-{tag}")
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["CUBECAST_DECODE_THREADS"] = args.decoder_threads
    shards = build(args)
    load0 = os.getloadavg()
    result: dict = {
        "dataset": tag,
        "window": args.window,
        "chip": args.chip,
        "decoder_threads": args.decoder_threads,
        "start_method": args.start_method,
        "cpus": len(os.sched_getaffinity(0)),
        "range_cache": f"{CachedRangeFile(_Empty()).blocksize >> 20} MiB x {BLOCKS} blocks",
        "shards": len(list(shards.glob("*.tacozip"))),
        "shard_MB": round(sum(p.stat().st_size for p in shards.glob("*.tacozip")) / 1e6, 1),
    }
    if args.cache_sweep:
        result["caches"] = cache_sweep(args, shards)
    rows = []
    if "local" in args.modes:
        rows += measure(args, str(shards / ".tacocat"), None, "local")
    if "http" in args.modes:
        with RangeServer(shards) as srv:
            urls = [f"{srv.url}/{p.name}" for p in sorted(shards.glob("*.tacozip"))]
            rows += measure(args, urls, srv, "http")
    result.update(runs=rows, loadavg_before=load0, loadavg_after=os.getloadavg())
    print(table(rows))
    if "caches" in result:
        print(table(result["caches"]))
    print(f"load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    out = args.out or (
        args.work / "loader.json" if args.quick else ROOT / "bench/results/loader.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
