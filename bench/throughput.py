"""Throughput and memory of the pipeline against the bare encoder, on a DynamicEarthNet twin.

Each measurement runs in its own child process, so its peak RSS is its own:

- pipeline encode: the lazily read GeoTIFF cube -> encode_cube -> encoded folder
- pipeline decode: the encoded folder -> iter_decode in 16-frame windows (streaming)
- bare encode: PyAV encoding the same frames, pre-built in memory as uint16 planes, with
  identical settings (frames go into AVFrames by plane copy, as in the pipeline)
- bare decode: PyAV decoding the same streams

    python bench/throughput.py --quick                 # 256 x 256 x 60 days
    python bench/throughput.py                         # full size: 1024 x 1024 x 730 days
    python bench/throughput.py --engine pyav           # x265 inside the pipeline process
    python bench/throughput.py --steps recipe_pack      # the recipe path only (PSNR target)
    python bench/throughput.py --cubes 2 --steps flow_1,flow_2,flow_dask
    python bench/throughput.py --size 512 --frames 48 --cubes 4 --flow-cubes 4 \
        --steps dask_addr_1,dask_addr_2,process_runner_2
    python bench/throughput.py --recipe deepextremecubes --size 128 --frames 120 --cubes 8 \
        --flow-cubes 8 --steps dask_addr_1,dask_addr_2   # DEC-sized tiles: one core each

- recipe pack: ``cubecast pack`` on the recipe (PSNR floor, codec choice, quality check)
- flow 1 / 2 / dask: ``cubecast run`` (the Prefect flow, publish to a folder) with one or two
  workers, or a Dask LocalCluster: cubes per hour, Prefect server start included
- dask addr 1 / 2, process runner 2: ``cubecast run`` on a Dask cluster of 1 or 2
  ``dask worker --nthreads 1`` processes started by address, or the process runner, with a
  Prefect server already up (its start not counted); cubes per hour, and per worker process
  its peak PSS and cores kept busy (bench/throughput_cluster.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput_cluster import STEPS as CLUSTER_STEPS  # noqa: E402

GROUPS = (("red", "green", "blue"), ("nir",))


def _options(args):
    from pipeline.codec.options import EncodeOptions, GroupSpec

    # x265 without decorrelation: the bare encoder below is given exactly these streams
    return EncodeOptions(
        crf=args.crf,
        preset=args.preset,
        engine=args.engine,
        groups=tuple(GroupSpec(g, name="".join(g[:1])) for g in GROUPS),
        codec="libx265",
        decorrelate="none",
        keyint=64,
    )


def _cube(args):
    from pipeline.recipe import load_recipe
    from pipeline.sources import cube_ids, load_cube

    recipe = load_recipe("dynamicearthnet", location=str(args.twin))
    return load_cube(recipe, cube_ids(recipe)[0]).dataset


def child_pipeline_encode(args) -> dict:
    from pipeline.codec.encode import encode_cube

    shutil.rmtree(args.work / "encoded", ignore_errors=True)
    ds = _cube(args)
    t = time.perf_counter()
    enc = encode_cube(ds, _options(args), roles={"label": "metadata"})
    enc.to_folder(args.work / "encoded")
    return {"seconds": time.perf_counter() - t, "bytes": enc.nbytes}


def child_pipeline_decode(args) -> dict:
    from pipeline.codec.decode import iter_decode
    from pipeline.codec.encoded import EncodedCube

    enc = EncodedCube.from_folder(args.work / "encoded")
    t = time.perf_counter()
    frames = checksum = 0
    for win in iter_decode(enc, variables=["red", "green", "blue", "nir"], window=16):
        checksum += int(win["nir"].values[:, 0, 0].sum())
        frames += win.sizes["time"]
    return {"seconds": time.perf_counter() - t, "frames": frames}


def _bare_frames(args):
    """The exact codes the pipeline encodes (its manifest's quantisers), built before timing
    as one (frames, planes, H, W) uint16 array per stream."""
    from pipeline.codec.cube import analyse, iter_blocks
    from pipeline.codec.encoded import EncodedCube
    from pipeline.codec.quantize import Quantiser

    ds = _cube(args)
    manifest = EncodedCube.from_folder(args.work / "encoded").manifest
    layout = analyse(ds, roles={"label": "metadata"})
    n, h, w = ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]
    ph, pw = h + h % 2, w + w % 2  # the ffmpeg engine pads to even sizes only
    streams = []
    for group in GROUPS:
        info = next(s for s in manifest.streams if s.planes == list(group))
        planes = 3 if info.pix_fmt.startswith("gbrp") else 1
        streams.append((np.zeros((n, planes, ph, pw), dtype=np.uint16), info))
    chans = {c.name: c for c in layout.channels}
    for block, values in iter_blocks(ds, layout, list(chans.values()), range(n), 16):
        for frames, info in streams:
            for p, band in enumerate(info.planes):
                c = manifest.channel(band)
                q = Quantiser(c.offset, c.scale, info.bits)
                q.quantise(values[band], frames[block[0] : block[-1] + 1, p, :h, :w])
    for frames, _ in streams:  # edge padding, as the pipeline pads
        frames[:, :, h:, :] = frames[:, :, h - 1 : h, :]
        frames[:, :, :, w:] = frames[:, :, :, w - 1 : w]
    return streams


def child_bare_encode(args) -> dict:
    import av

    from pipeline.codec.settings import VideoSettings
    from pipeline.codec.videocodecs import get_codec

    streams = _bare_frames(args)
    t = time.perf_counter()
    total = 0
    for frames, info in streams:
        s = VideoSettings(
            "libx265",
            info.pix_fmt,
            crf=info.crf,
            preset=info.preset,
            keyint=info.keyint,
            x265_params=info.x265_params,
        )
        out = args.work / f"bare_{info.name}.mkv"
        with av.open(str(out), "w", format="matroska") as c:
            st = c.add_stream("libx265", rate=1)
            st.height, st.width = frames.shape[2:]
            st.pix_fmt = info.pix_fmt
            st.options = get_codec(s.codec).options(s)
            for i, planes in enumerate(frames):
                f = av.VideoFrame(st.width, st.height, info.pix_fmt)
                for p, plane in enumerate(planes):
                    f.planes[p].update(plane)
                f.pts, f.time_base = i, Fraction(1, 1)
                c.mux(st.encode(f))
            c.mux(st.encode(None))
        total += out.stat().st_size
    return {"seconds": time.perf_counter() - t, "bytes": total}


def child_bare_decode(args) -> dict:
    import av

    t = time.perf_counter()
    n = 0
    for path in sorted(args.work.glob("bare_*.mkv")):
        with av.open(str(path)) as c:
            v = c.streams.video[0]
            v.thread_type = "AUTO"
            for frame in c.decode(v):
                frame.to_ndarray()
                n += 1
    return {"seconds": time.perf_counter() - t, "frames": n}


def _cubecast(args, *argv: str) -> float:
    """Wall seconds of one ``cubecast`` command on the twin (a process of its own, so the
    parent's tree sampling sees it and its encoders)."""
    t = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("cubecast")), *argv], check=True)
    return time.perf_counter() - t


def child_recipe_pack(args) -> dict:
    """What the flow runs per cube: the recipe's PSNR target, codec choice, packing and the
    quality check (``cubecast pack``)."""
    out = args.work / "pack"
    shutil.rmtree(out, ignore_errors=True)
    seconds = _cubecast(args, "pack", "dynamicearthnet", str(out), "--source", str(args.twin),
                        "--cubes", "1")  # fmt: skip
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"seconds": seconds, "bytes": size, "cubes": 1}


def _flow(args, *extra: str) -> dict:
    out, to = args.work / "flow", args.work / "published"
    for d in (out, to):
        shutil.rmtree(d, ignore_errors=True)
    cubes = args.flow_cubes
    seconds = _cubecast(args, "run", "dynamicearthnet", "--source", str(args.twin), "--out",
                        str(out), "--to", str(to), "--cubes", str(cubes), *extra)  # fmt: skip
    return {"seconds": seconds, "cubes": cubes, "cubes_per_hour": 3600 * cubes / seconds}


def child_flow_1(args) -> dict:
    return _flow(args, "--workers", "1")


def child_flow_2(args) -> dict:
    return _flow(args, "--workers", "2")


def child_flow_dask(args) -> dict:
    return _flow(args, "--workers", "2", "--dask")


CHILDREN = {
    "pipeline_encode": child_pipeline_encode,
    "bare_encode": child_bare_encode,
    "pipeline_decode": child_pipeline_decode,
    "bare_decode": child_bare_decode,
    "recipe_pack": child_recipe_pack,
    "flow_1": child_flow_1,
    "flow_2": child_flow_2,
    "flow_dask": child_flow_dask,
    **CLUSTER_STEPS,
}


def _tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over a process and its children. RSS counts pages shared
    between the processes (libraries, the ffmpeg binary) once per process; PSS splits
    them, so the PSS sum is the memory the tree really takes."""
    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def measure(name: str, args) -> dict:
    """Run one step in a child process; it reports its own peak RSS and CPU time.

    With the ffmpeg engine the encoders are processes of their own, so the parent also
    samples the process tree every 0.5 s; the reported peak is the larger of the child's
    own peak RSS and the tree's peak PSS (its RSS sum is kept in the JSON as well).
    """
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--twin",
        str(args.twin),
        "--work",
        str(args.work),
        "--crf",
        str(args.crf),
        "--preset",
        args.preset,
        "--engine",
        args.engine,
        "--flow-cubes",
        str(args.flow_cubes),
        "--recipe",
        args.recipe,
    ]
    t = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_rss = tree_pss = 0
    with contextlib.suppress(psutil.Error):
        ps = psutil.Process(child.pid)
        while child.poll() is None:  # reading PSS costs CPU: sample twice a second
            rss, pss = _tree_memory(ps)
            tree_rss, tree_pss = max(tree_rss, rss), max(tree_pss, pss)
            time.sleep(0.5)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{name} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["self_peak_rss_mb"] = result["peak_rss_mb"]
    result["tree_peak_rss_mb"] = tree_rss / 2**20
    result["tree_peak_pss_mb"] = tree_pss / 2**20
    result["peak_rss_mb"] = max(result["peak_rss_mb"], result["tree_peak_pss_mb"])
    result.update(name=name, process_wall_s=time.perf_counter() - t)
    print(
        f"{name}: {result['seconds']:.1f} s, peak memory {result['peak_rss_mb']:.0f} MiB "
        f"(own RSS {result['self_peak_rss_mb']:.0f}, tree RSS {result['tree_peak_rss_mb']:.0f}, "
        f"tree PSS {result['tree_peak_pss_mb']:.0f})",
        flush=True,
    )
    return result


def worker_table(rows: list[dict]) -> list[str]:
    """Per worker process of the cluster steps: peak PSS and cores kept busy."""
    rows = [r for r in rows if "workers" in r]
    if not rows:
        return []
    out = ["", f"cluster steps ({os.cpu_count()} cores; rate: the `cubecast run` wall time, "
           "Prefect server and Dask workers already up)", "",
           "| step | worker processes | cubes | wall s | cubes per hour | encode span s | "
           "cubes per hour in it | peak PSS per worker MiB | cores busy per worker (CPU s / "
           "wall s) | load avg before |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ws = r["workers"]
        pss = " / ".join(f"{w['peak_pss_mb']:.0f}" for w in ws)
        busy = " / ".join(f"{w['cores_busy']:.2f}" for w in ws)
        out.append(f"| {r['name']} | {r['worker_processes']} | {r['cubes']} | {r['seconds']:.1f} "
                   f"| {r['cubes_per_hour']:.1f} | {r['encode_span_s']:.1f} | "
                   f"{r['encode_cubes_per_hour']:.1f} | {pss} | {busy} | "
                   f"{r['load_average_before']:.2f} |")  # fmt: skip
    base = next((r for r in rows if r["name"] == "dask_addr_1"), None)
    for r in rows:
        if base and r is not base:
            ratio = r["cubes_per_hour"] / base["cubes_per_hour"]
            enc = r["encode_cubes_per_hour"] / base["encode_cubes_per_hour"]
            out.append(f"\n{r['name']} / dask_addr_1: {ratio:.2f}x cubes per hour "
                       f"({enc:.2f}x in the encode span)")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 x 256 x 60 days")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=730)
    ap.add_argument("--crf", type=float, default=12.0)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--engine", default="auto", help="pipeline encode engine: auto|ffmpeg|pyav")
    ap.add_argument("--twin", type=Path, default=None)
    ap.add_argument(
        "--recipe",
        default="dynamicearthnet",
        choices=["dynamicearthnet", "deepextremecubes"],
        help="the twin's dataset (the cluster steps only: the others are DynamicEarthNet's)",
    )
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--cubes", type=int, default=1, help="cubes in the twin")
    ap.add_argument("--flow-cubes", type=int, default=2, help="cubes the flow steps publish")
    ap.add_argument("--steps", default="", help="comma-separated subset of: " + ",".join(CHILDREN))
    ap.add_argument("--label", default="", help="appended to the result files' names")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = CHILDREN[args.child](args)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["cpu_s"] = usage.ru_utime + usage.ru_stime + kids.ru_utime + kids.ru_stime
        result["peak_rss_mb"] = usage.ru_maxrss / 1024
        print(json.dumps(result))
        return
    if args.quick:
        args.size, args.frames = 256, 60
    tag = f"{args.size}x{args.size}x{args.frames}"
    if args.recipe != "dynamicearthnet":
        tag += "_dec"
    args.twin = args.twin or Path(f"/tmp/cubecast-bench/twin-{tag}")
    args.work = args.work or Path(f"/tmp/cubecast-bench/work-{tag}")
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.twin / "SHA256SUMS").exists():
        from pipeline.sources.twins import TWIN_WRITERS

        t = time.perf_counter()
        write = TWIN_WRITERS[args.recipe]
        write(args.twin, cubes=args.cubes, frames=args.frames, size=args.size)
        print(f"twin written in {time.perf_counter() - t:.0f} s", flush=True)

    steps = args.steps.split(",") if args.steps else list(CHILDREN)
    rows = [measure(n, args) for n in steps]
    raw_gb = args.frames * args.size * args.size * 4 * 2 / 1e9
    enc = {r["name"]: r for r in rows}
    both = "pipeline_encode" in enc and "bare_encode" in enc
    ratio = enc["pipeline_encode"]["seconds"] / enc["bare_encode"]["seconds"] if both else None
    lines = [
        f"cube {tag} x 4 bands uint16 ({raw_gb:.2f} GB raw); pipeline/bare steps: x265 preset "
        f"{args.preset}, CRF {args.crf:g}, engine {args.engine}; recipe_pack and flow steps: "
        "the dynamicearthnet recipe's own settings (PSNR floor, codec auto)",
        "",
        "| step | wall s | CPU s | peak memory MiB | MB/s raw | cubes per hour |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cubes = r.get("cubes", 1)
        lines.append(
            f"| {r['name']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{raw_gb * cubes * 1e3 / r['seconds']:.1f} | {3600 * cubes / r['seconds']:.1f} |"
        )
    if ratio is not None:
        lines += ["", f"encode overhead pipeline/bare: {ratio:.3f}x"]
    lines += worker_table(rows)
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput_{tag}_{args.engine}" + (f"_{'_'.join(steps)}" if args.steps else "")
    stem += f"_{args.label}" if args.label else ""
    (args.out / f"{stem}.md").write_text(text + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
