"""Incremental publishing at scale, simulated on one machine (issue 17).

A DynamicEarthNet twin of N small cubes is served over HTTP (so every cube is downloaded
into the work folder) and published in batches to the local hub stand-in
(``tests/fakehub.py``, driven by the real ``huggingface_hub`` client) under a disk cap. Each
run is a child process; K of them are stopped at random points (``os._exit`` at a random
step - download, encode, pack, verify, upload, commit, committed - or SIGKILL at a random
time), and the next run resumes. Then: the repo must hold every cube exactly once and every
sample must verify against its source; a fresh work folder with no source change must
encode 0 cubes and upload 0 bytes; adding 10 cubes must encode exactly those 10.

Figures: cubes per hour (all runs, killed ones included), peak disk of the work folder
(sampled every 50 ms), bytes uploaded (LFS objects plus commit payloads, as the hub received
them) against the final repo size, encodes per cube.

    python bench/publish_scale.py --cubes 300 --kills 8 --out bench/results

``--simulate 1000,5000,10000,40000`` instead times the planning, index and ``.tacocat`` costs
of published datasets of that many cubes (no change, 1 % new cubes) without encoding them:
see ``bench/publish_scale_sim.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pipeline.publish.disk import DiskSampler, parse_size  # noqa: E402
from pipeline.publish.index import INDEX_FILE, PublishedIndex  # noqa: E402
from pipeline.recipe import Recipe, load_recipe, parse_recipe  # noqa: E402
from pipeline.sources.twins import write_dynamicearthnet  # noqa: E402
from tests.fakehub import FakeHub  # noqa: E402
from tests.rangeserver import RangeServer  # noqa: E402

TOKEN = "hf_bench_token"
REPO = "cubecast-bench/den"
STEPS = ("download", "encode", "pack", "verify", "upload", "commit", "committed")
CHILD = """
import json, os, sys
from pipeline.publish.incremental import publish_incremental
from pipeline.recipe import parse_recipe
a = json.loads(sys.argv[1])
log = open(a["events"], "a")
seen = {}
def fault(step, detail):
    if step == "encode":
        log.write(detail + "\\n"); log.flush()
    seen[step] = seen.get(step, 0) + 1
    if step == a.get("step") and seen[step] == a.get("nth"):
        os._exit(9)
r = publish_incremental(parse_recipe(a["recipe"]), a["target"], a["work"],
                        max_disk=a["max_disk"], batch_cubes=a["batch"], fault=fault)
print(json.dumps({"encoded": len(r.encoded), "reused": len(r.reused), "commits": len(r.commits),
                  "bytes": r.bytes_uploaded, "peak": r.peak_disk}))
"""


def recipe_for(location: str, cubes: int) -> Recipe:
    data = load_recipe("dynamicearthnet", location=location).model_dump(exclude_none=True)
    data["source"]["cubes"] = {"count": cubes}
    groups = [{"name": g["name"], "bands": g["bands"]} for g in data["codec"]["groups"]]
    data["codec"] = {"codec": "libx265", "crf": 24, "preset": "ultrafast", "groups": groups}
    data["verify"]["psnr_min"] = 30.0
    return parse_recipe(data)


def counting_hub() -> tuple[FakeHub, list[int]]:
    """The hub stand-in, also counting the bytes of commit payloads (regular files travel
    inside them, base64-encoded; LFS objects are counted by the stand-in itself)."""
    hub = FakeHub(TOKEN)
    payload = [0]
    base = hub.httpd.RequestHandlerClass

    class Counting(base):  # type: ignore[misc, valid-type]
        def _commit(self, repo, repo_id, body):  # noqa: ANN001, ANN202
            payload[0] += len(body)
            return super()._commit(repo, repo_id, body)

    hub.httpd.RequestHandlerClass = Counting
    return hub, payload


def run_child(args: dict, kill_after: float | None) -> tuple[int, dict | None]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        out, _ = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else None)


def check_repo(hub: FakeHub, twin: Path, folder: Path) -> dict:
    """Exactly once, readable through ``.tacocat`` with tacoreader, and every sample
    verifies against its source."""
    import tacoreader

    from pipeline.build import shards_in, verify_against_sources

    files = hub.repos[REPO].files
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    index = PublishedIndex.parse(files[INDEX_FILE], "hub")
    rows = tacoreader.load(str(folder / ".tacocat")).data.to_arrow().column("id").to_pylist()
    local = recipe_for(str(twin), len(index.cubes))
    v = verify_against_sources(local, [str(p) for p in shards_in(folder)], progress=False)
    held, failed = v.copies, v.failures()
    return {
        "cubes_in_index": len(index.cubes),
        "tacocat_rows": len(rows),
        "tacocat_rows_unique": len(set(rows)),
        "shards": len(index.shards),
        "every_cube_once": set(held.values()) == {1} and sorted(held) == sorted(index.cubes),
        "verified": not failed,
        "failures": failed[:5],
        "repo_bytes": sum(len(d) for d in files.values()),
        "shard_bytes": sum(len(files[n]) for n in index.shards),
        "largest_other_files": sorted(
            ((len(d), p) for p, d in files.items() if not p.endswith(".tacozip")), reverse=True
        )[:6],
    }


def simulate(a: argparse.Namespace, tmp: Path) -> dict:
    rng = random.Random(a.seed)
    twin = tmp / "twin"
    write_dynamicearthnet(twin, cubes=a.cubes, frames=a.frames, size=a.size, progress=False)
    hub, payload = counting_hub()
    with hub, RangeServer(twin) as mirror, DiskSampler(tmp / "work", 0.05) as disk:
        os.environ.update({"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN})
        args = {
            "recipe": recipe_for(mirror.url, a.cubes).model_dump(mode="json"),
            "target": f"hf://datasets/{REPO}",
            "work": str(tmp / "work"),
            "max_disk": a.max_disk,
            "batch": a.batch_cubes,
            "events": str(tmp / "events"),
        }
        runs, t0 = [], time.monotonic()
        for k in range(a.kills + 1):
            final = k == a.kills
            how: dict = {}
            if not final and k % 2 == 0:
                how = {"step": rng.choice(STEPS), "nth": rng.randint(1, 4)}
            kill_after = None if final or how else rng.uniform(5, a.max_kill_after)
            t = time.monotonic()
            rc, out = run_child({**args, **how}, kill_after)
            runs.append(
                {
                    "rc": rc,
                    "seconds": round(time.monotonic() - t, 1),
                    **how,
                    "sigkill_after_s": kill_after and round(kill_after, 1),
                    "result": out,
                }
            )
            print(f"run {k}: rc {rc} {how or kill_after} {out}", flush=True)
            if rc == 0 and not final:  # finished before its stop: the rest runs clean
                break
        wall = time.monotonic() - t0
        lfs, uploaded = hub.uploaded_bytes, hub.uploaded_bytes + payload[0]
        commits = len(hub.repos[REPO].commits)
        encodes = Counter((tmp / "events").read_text().split())
        check = check_repo(hub, twin, tmp / "snapshot")
        extra = again_and_more(a, hub, payload, mirror, twin, args, tmp)
    return {
        "cubes": a.cubes,
        "frames": a.frames,
        "size": a.size,
        "max_disk": a.max_disk,
        "max_disk_bytes": parse_size(a.max_disk),
        "batch_cubes": a.batch_cubes,
        "kills": sum(r["rc"] != 0 for r in runs),
        "runs": runs,
        "wall_s": round(wall, 1),
        "cubes_per_hour": round(a.cubes / wall * 3600),
        "peak_disk_bytes": disk.peak,
        "commits": commits,
        "uploaded_bytes": uploaded,
        "lfs_bytes": lfs,
        "commit_payload_bytes": uploaded - lfs,
        "reupload_overhead": round(uploaded / check["repo_bytes"], 3),
        "encodes_per_cube": dict(Counter(encodes.values())),
        "cubes_encoded": len(encodes),
        **check,
        **extra,
    }


def again_and_more(a, hub, payload, mirror, twin, args, tmp) -> dict:  # noqa: ANN001
    """A fresh work folder and no change: nothing encoded or uploaded. Ten more cubes:
    exactly those encoded."""
    before = (hub.uploaded_bytes + payload[0], len(hub.repos[REPO].commits))
    t = time.monotonic()
    rc, out = run_child({**args, "work": str(tmp / "fresh"), "events": str(tmp / "ev2")}, None)
    noop_s = time.monotonic() - t
    after = (hub.uploaded_bytes + payload[0], len(hub.repos[REPO].commits))
    write_dynamicearthnet(twin, cubes=a.cubes + 10, frames=a.frames, size=a.size, progress=False)
    more = {**args, "recipe": recipe_for(mirror.url, a.cubes + 10).model_dump(mode="json")}
    rc2, out2 = run_child({**more, "events": str(tmp / "ev3")}, None)
    index = PublishedIndex.parse(hub.repos[REPO].files[INDEX_FILE], "hub")
    return {
        "rerun_rc": rc,
        "rerun_seconds": round(noop_s, 1),
        "rerun_encoded": out and out["encoded"],
        "rerun_uploaded_bytes": after[0] - before[0],
        "rerun_commits": after[1] - before[1],
        "add10_rc": rc2,
        "add10_encoded": out2 and out2["encoded"],
        "add10_cubes_in_index": len(index.cubes),
    }


def markdown(r: dict) -> str:
    rerun = (
        f"{r['rerun_encoded']}, {r['rerun_uploaded_bytes']} bytes, {r['rerun_commits']} "
        f"({r['rerun_seconds']} s)"
    )
    return f"""# Incremental publishing at scale (`bench/publish_scale.py`)

| figure | value |
|---|---|
| cubes (DEN twin, {r["frames"]} days x 4 bands x {r["size"]} x {r["size"]}) | {r["cubes"]} |
| disk cap / batch | {r["max_disk"]} / {r["batch_cubes"]} cubes |
| runs stopped at random points | {r["kills"]} |
| wall time, all runs | {r["wall_s"]} s |
| cubes per hour | {r["cubes_per_hour"]:,} |
| peak disk of the work folder | {r["peak_disk_bytes"]:,} bytes ({r["max_disk_bytes"]:,} cap) |
| commits | {r["commits"]} |
| uploaded (LFS + commit payloads) | {r["uploaded_bytes"]:,} bytes |
| final repo size / its shards | {r["repo_bytes"]:,} / {r["shard_bytes"]:,} bytes |
| uploaded / final repo size | {r["reupload_overhead"]}x |
| encodes per cube (count of cubes) | {r["encodes_per_cube"]} |
| every cube once, all verify | {r["every_cube_once"]}, {r["verified"]} |
| re-run, fresh work folder: encoded, uploaded, commits | {rerun} |
| 10 cubes added: encoded | {r["add10_encoded"]} (index: {r["add10_cubes_in_index"]} cubes) |
"""


def simulated(a: argparse.Namespace) -> None:
    """``--simulate``: bench/publish_scale_sim.py over each N; JSON and a table."""
    from bench.publish_scale_sim import simulate_scale, table

    ns = [int(x) for x in a.simulate.split(",")]
    with tempfile.TemporaryDirectory(prefix="cubecast-sim-") as tmp:
        result = simulate_scale(ns, a.targets.split(","), a.sim_batch, Path(tmp))
    result["command"] = "python bench/publish_scale.py " + " ".join(sys.argv[1:])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "publish_scale_simulated.json").write_text(json.dumps(result, indent=1) + "\n")
    (a.out / "publish_scale_simulated.md").write_text(table(result))
    print(table(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cubes", type=int, default=300)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--max-disk", default="4MB")
    p.add_argument("--batch-cubes", type=int, default=25)
    p.add_argument("--max-kill-after", type=float, default=60.0, help="latest SIGKILL, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--simulate",
        metavar="N,N,...",
        help="simulate published datasets of these many cubes instead (issue 27; see "
        "bench/publish_scale_sim.py): no-change and 1 %% new runs over each",
    )
    p.add_argument("--targets", default="folder,hub", help="--simulate: folder, hub or both")
    p.add_argument(
        "--sim-batch", type=int, default=100, help="--simulate: cubes per batch (history and runs)"
    )
    a = p.parse_args()
    if a.simulate:
        simulated(a)
        return
    with tempfile.TemporaryDirectory(prefix="cubecast-scale-") as tmp:
        result = simulate(a, Path(tmp))
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"publish_scale_{a.cubes}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
