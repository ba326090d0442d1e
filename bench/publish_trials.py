"""Randomized trials of the publish path's promise: kills and races end whole.

Each trial publishes a small DynamicEarthNet twin to a target (a folder, or the local hub
stand-in ``tests/fakehub.py`` through the real ``huggingface_hub`` client), with each run a
child process of its own:

- **kill**: a run is SIGKILLed after a random delay (anywhere from start-up to its last
  commit), a second run resumes to the end; sometimes a shard of the target is then deleted
  or truncated and a third run must repair it.
- **race**: two runs with their own work folders start at random offsets on one target;
  a third run settles whatever the loser left undone.

After the interrupted or raced runs, and again after the settling run, the target must be
whole: every shard the index names present byte for byte (SHA-256), every cube in exactly
one shard, ``.tacocat`` listing exactly those shards, the card's sample tables naming
exactly the index's cubes in their shards, and every sample decodable. A race counts as
"both succeeded" if both runs exit 0 having each committed.

    python bench/publish_trials.py --trials 20 --out bench/results
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pipeline.publish.index import INDEX_FILE, PublishedIndex  # noqa: E402
from pipeline.sources.twins import write_dynamicearthnet  # noqa: E402
from tests.fakehub import FakeHub  # noqa: E402

TOKEN = "hf_bench_trials"
CHILD = """
import json, sys
from pipeline.publish.incremental import publish_incremental
from pipeline.recipe import load_recipe, parse_recipe
a = json.loads(sys.argv[1])
data = load_recipe("dynamicearthnet", location=a["source"]).model_dump(exclude_none=True)
data["source"]["cubes"] = {"count": a["cubes"]}
groups = [{"name": g["name"], "bands": g["bands"]} for g in data["codec"]["groups"]]
data["codec"] = {"codec": "libx265", "crf": 24, "preset": "ultrafast", "groups": groups}
data["verify"]["psnr_min"] = 25.0
r = publish_incremental(parse_recipe(data), a["target"], a["work"], batch_cubes=a["batch"],
                        log=lambda s: None)
print(json.dumps({"commits": len(r.commits), "encoded": r.encoded, "repaired": r.repaired}))
"""


def child(args: dict[str, Any], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


class Target:
    """Read access to what a reader of the target sees."""

    def __init__(self, spec: str, hub: FakeHub | None) -> None:
        self.spec, self.hub = spec, hub

    def files(self) -> dict[str, bytes]:
        if self.hub is not None:
            repo = self.hub.repos.get(self.spec.removeprefix("hf://datasets/"))
            return dict(repo.files) if repo else {}
        root = Path(self.spec)
        if not root.is_dir():
            return {}
        out = {}
        for p in root.rglob("*"):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not rel.startswith(".cubecast-lease") and not rel.endswith(".part"):
                out[rel] = p.read_bytes()
        return out


def whole(target: Target, expect: int | None, tmp: Path) -> str:
    """'' when the target is whole (see the module), else what is wrong."""
    from pipeline.taco.read import open_sample

    files = target.files()
    raw = files.get(INDEX_FILE)
    shards = {p for p in files if p.endswith(".tacozip")}
    if raw is None:
        return "" if not shards else f"shards without an index: {sorted(shards)[:2]}"
    index = PublishedIndex.parse(raw, "target")
    if shards != set(index.shards):
        return f"shards {sorted(shards ^ set(index.shards))[:3]} differ from the index"
    held: Counter[str] = Counter()
    for name, e in index.shards.items():
        if hashlib.sha256(files[name]).hexdigest() != e.sha256:
            return f"{name}: bytes differ from the index"
        path = tmp / name
        path.write_bytes(files[name])
        with zipfile.ZipFile(path) as z:
            ids = {n.split("/")[1] for n in z.namelist() if n.startswith("DATA/")}
        held.update(ids)
        for sid in ids:
            ds = open_sample(str(path), sid)
            if not ds.data_vars:
                return f"{name}/{sid}: decodes to nothing"
        path.unlink()
    if set(held) != set(index.cubes) or any(n != 1 for n in held.values()):
        return "a cube is in no shard or in two"
    if expect is not None and len(index.cubes) != expect:
        return f"{len(index.cubes)} cubes published, {expect} expected"
    collection = json.loads(files[".tacocat/COLLECTION.json"])
    if sorted(collection["taco:sources"]["files"]) != sorted(index.shards):
        return ".tacocat lists other shards"
    import pyarrow.parquet as pq
    import yaml

    front = yaml.safe_load(files["README.md"].decode().split("---")[1])
    rows: dict[str, str] = {}  # the card's sample tables: cube -> the shard they name
    for config in front.get("configs", []):
        for entry in config.get("data_files", []):
            paths = entry["path"]
            for rel in [paths] if isinstance(paths, str) else paths:
                table = pq.read_table(io.BytesIO(files[rel])).to_pylist()
                rows.update({r["id"]: r["shard"] for r in table})
    if rows != {cid: e.shard for cid, e in index.cubes.items()}:
        return "the card's sample tables list other cubes or shards than the index"
    return ""


def trial(
    kind: str,
    where: str,
    rng: random.Random,
    twin: Path,
    n: int,
    tmp: Path,
    hub: FakeHub | None,
    env: dict[str, str],
    k: int,
    full_s: float,
) -> dict[str, Any]:
    spec = f"hf://datasets/bench/{kind}-{k}" if hub else str(tmp / f"target-{kind}-{k}")
    target = Target(spec, hub)
    base = {"source": str(twin), "cubes": n, "target": spec, "batch": rng.choice([1, 2, 3])}
    row: dict[str, Any] = {"kind": kind, "where": where, "trial": k}
    t0 = time.monotonic()
    if kind == "kill":
        p = child({**base, "work": str(tmp / f"w{k}a")}, env)
        delay = rng.uniform(0.3, full_s)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        row["killed_after_s"] = round(delay, 2)
        row["after_stop"] = whole(target, None, tmp) or "whole"
        work = str(tmp / (f"w{k}a" if rng.random() < 0.5 else f"w{k}b"))  # same or fresh
        done = child({**base, "work": work}, env)
        out, err = done.communicate()
        row["resume_rc"] = done.returncode
        if rng.random() < 0.5 and done.returncode == 0:  # damage the target, then repair
            files = target.files()
            victims = sorted(p for p in files if p.endswith(".tacozip"))
            if victims:
                v = rng.choice(victims)
                cut = rng.choice(["delete", "truncate"])
                if hub:
                    repo = hub.repos[spec.removeprefix("hf://datasets/")]
                    if cut == "delete":
                        del repo.files[v]
                    else:
                        repo.files[v] = repo.files[v][: len(repo.files[v]) // 2]
                elif cut == "delete":
                    (Path(spec) / v).unlink()
                else:
                    data = (Path(spec) / v).read_bytes()
                    (Path(spec) / v).write_bytes(data[: len(data) // 2])
                fix = child({**base, "work": work}, env)
                fout, ferr = fix.communicate()
                row["damage"] = cut
                row["repair_rc"] = fix.returncode
                row["repaired"] = bool(fix.returncode == 0 and json.loads(fout)["repaired"])
    else:
        procs = []
        for side in "ab":
            if side == "b":
                time.sleep(rng.uniform(0, full_s * 0.8))
            procs.append(child({**base, "work": str(tmp / f"w{k}{side}")}, env))
        results = []
        for p in procs:
            out, err = p.communicate()
            committed = p.returncode == 0 and json.loads(out.strip().splitlines()[-1])["commits"]
            results.append((p.returncode, bool(committed), err.strip().splitlines()[-1:]))
        row["rcs"] = [r[0] for r in results]
        row["both_committed_and_succeeded"] = all(r[0] == 0 and r[1] for r in results)
        row["loser_said"] = next((r[2][0][-160:] for r in results if r[0] != 0 and r[2]), "")
        row["after_stop"] = whole(target, None, tmp) or "whole"
        done = child({**base, "work": str(tmp / f"w{k}c")}, env)
        done.communicate()
        row["resume_rc"] = done.returncode
    row["final"] = whole(target, n, tmp) or "whole"
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| trials | target | runs | whole after the stop | whole at the end | both won | repairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("kill", "race"):
        for where in ("folder", "hub"):
            rs = [r for r in rows if r["kind"] == kind and r["where"] == where]
            if not rs:
                continue
            both = sum(bool(r.get("both_committed_and_succeeded")) for r in rs)
            fixes = [r for r in rs if "damage" in r]
            lines.append(
                f"| {kind} | {where} | {len(rs)} | "
                f"{sum(r['after_stop'] == 'whole' for r in rs)}/{len(rs)} | "
                f"{sum(r['final'] == 'whole' for r in rs)}/{len(rs)} | "
                f"{both if kind == 'race' else '-'} | "
                f"{sum(r.get('repaired', False) for r in fixes)}/{len(fixes)} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20, help="trials per kind and target")
    p.add_argument("--cubes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--where", nargs="+", default=["folder", "hub"])
    p.add_argument("--out", default="bench/results")
    a = p.parse_args()
    rng = random.Random(a.seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir, FakeHub(TOKEN) as hub:
        tmp = Path(tmpdir)
        twin = tmp / "twin"
        write_dynamicearthnet(twin, cubes=a.cubes, frames=4, size=16, progress=False)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
        env["CUBECAST_LEASE_WAIT"] = "30"
        t0 = time.monotonic()  # one undisturbed run sets the range of kill times
        first = child(
            {
                "source": str(twin),
                "cubes": a.cubes,
                "target": str(tmp / "t0"),
                "work": str(tmp / "w0"),
                "batch": 2,
            },
            env,
        )
        first.communicate()
        full_s = time.monotonic() - t0
        for k in range(a.trials):
            for where in a.where:
                for kind in ("kill", "race"):
                    row = trial(
                        kind,
                        where,
                        rng,
                        twin,
                        a.cubes,
                        tmp,
                        hub if where == "hub" else None,
                        env,
                        k,
                        full_s,
                    )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    print(text)
    (out / "publish_trials.json").write_text(
        json.dumps({"full_run_s": full_s, "rows": rows}, indent=1)
    )
    (out / "publish_trials.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
