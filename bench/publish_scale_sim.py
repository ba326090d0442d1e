"""Publishing at scale, simulated: a published dataset of N cubes (issue 27).

``bench/publish_scale.py --simulate 1000,5000,10000,40000`` builds, for each N, a dataset of
N cubes already published on a simulated target (a local folder, and the hub stand-in
``tests/fakehub.py`` driven by the real ``huggingface_hub`` client), without encoding N
cubes, then times the real incremental runs over it:

- **no change** (a fresh work folder, then the same one again): read the target, reconcile
  (every shard's size, SHA-256 and sample ids), plan (every cube's source fingerprint);
- **1 % new cubes**: the same, then the new cubes in batches of 100, each batch a commit
  that rewrites the index, ``.tacocat``, card and report of the whole dataset.

What is simulated, and how:

- *The source* is a DynamicEarthNet mirror served over HTTP whose ``SHA256SUMS`` lists every
  cube's files (two days and a label raster per area). Only the files of cubes a run must
  encode exist; the others are named by the index only: the planner reads the listing and
  the files' SHA-256 from it and downloads nothing, as on a real mirror.
- *Encoding* is one real 2-day 8 x 8 cube, encoded once; every other cube is a copy of it
  under its own id (manifest, metadata row and source record rewritten), and its source
  files are copies of the template's, so a new cube really verifies against its source.
- *The published state* is N cubes in batches of 100 (one shard per split and batch, one
  verification record per batch), packed by the real ``write_shard``, indexed with the real
  index entries and source fingerprints, described by the real card, report and
  ``.tacocat`` writers and committed by the real folder target; the hub stand-in is given
  the folder's files as one commit.

The runs themselves are ``publish_incremental`` unchanged, with ``encode_many`` handing
out copies of the template instead of encoding. Per run the JSON has its times (``read_s``:
target snapshot and index, ``reconcile_s``, ``plan_s``, ``planned_s`` from the start to the
plan), ``uploaded_bytes`` (what its commits wrote), the index and ``.tacocat`` bytes among
them, and ``target_received_bytes`` as the target counts it (the hub stand-in: LFS objects
and commit payloads; a folder: the bytes of the files it gained or rewrote, each once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.build import FINGERPRINT, stage_cube
from pipeline.codec.encoded import file_sha256
from pipeline.codec.manifest import Manifest
from pipeline.publish.batch import SAMPLE_PNG, Batch, Context, batch_file, pack_batch
from pipeline.publish.commit import write_metadata
from pipeline.publish.fingerprint import DigestCache, SourceRecord, source_fingerprint
from pipeline.publish.folder_remote import FolderRemote
from pipeline.publish.index import (
    CubeEntry,
    PublishedIndex,
    ShardEntry,
    settings_hash,
    settings_of,
)
from pipeline.publish.remote import RemoteFile
from pipeline.publish.targets import publishable_files
from pipeline.publish.verify import BandCheck, Verification, check_bands
from pipeline.recipe import Recipe, load_recipe, parse_recipe
from pipeline.sources import mirror_for
from pipeline.sources.twins import write_dynamicearthnet
from pipeline.taco.pack import write_shard
from pipeline.taco.staged import SAMPLE_META, StagedSample

SPLITS = ("train", "val", "test")
TOKEN = "hf_bench_token"
REPO = "cubecast-bench/sim"


def cube_id(n: int) -> str:
    return f"sim{n:06d}"


def sim_recipe(location: str) -> Recipe:
    """DynamicEarthNet at fast settings, every cube of the mirror, labels left out of the
    samples (they are still read, so a cube's source is its days and its label raster)."""
    data = load_recipe("dynamicearthnet", location=location).model_dump(exclude_none=True)
    data["source"].pop("cubes", None)
    data["variables"]["drop"] = ["label"]
    groups = [{"name": g["name"], "bands": g["bands"]} for g in data["codec"]["groups"]]
    data["codec"] = {"codec": "libx265", "crf": 24, "preset": "ultrafast", "groups": groups}
    data["verify"]["psnr_min"] = 30.0
    return parse_recipe(data)


@dataclass
class Template:
    """One real cube: its source files (paths with ``{id}`` for the cube id), its staged
    encoding, its band checks and its report picture."""

    id: str
    files: dict[str, bytes]
    staged: StagedSample
    checks: list[BandCheck]
    marker: bytes
    panel: bytes

    def rels(self, cid: str) -> dict[str, bytes]:
        return {rel.replace("{id}", cid): data for rel, data in self.files.items()}


def make_template(tmp: Path) -> Template:
    """Write a one-area twin, encode it for real, verify it once from a shard."""
    import zipfile

    from pipeline.codec.metrics import compare_encoded
    from pipeline.publish.panel import draw_sample_panel
    from pipeline.sources import load_cube
    from pipeline.taco.read import sample_encoded

    twin = tmp / "template"
    write_dynamicearthnet(twin, cubes=1, frames=2, size=8, progress=False)
    recipe = sim_recipe(str(twin))
    cid = next((twin / "planet").iterdir()).name
    staged, _ = stage_cube(recipe, cid, tmp / "template-out")
    shard = tmp / "template.tacozip"
    write_shard([staged], shard, recipe.dataset_info())
    with zipfile.ZipFile(shard) as archive:
        enc = sample_encoded(archive, cid, str(shard))
        quality = compare_encoded(load_cube(recipe, cid).dataset, enc, roles=recipe.roles())
    checks = check_bands(cid, quality, recipe.verify.threshold)
    panel = draw_sample_panel(recipe, [str(shard)], mirror_for(recipe.source), tmp / "panel")
    files = {
        p.relative_to(twin).as_posix().replace(cid, "{id}"): p.read_bytes()
        for p in sorted(twin.rglob("*.tif"))
    }
    marker = (twin / "SYNTHETIC.json").read_bytes()
    return Template(cid, files, staged, checks, marker, panel.read_bytes() if panel else b"")


def clone(tpl: Template, cid: str, split: str, root: Path) -> StagedSample:
    """The template's staged cube as cube ``cid`` (what encoding ``cid`` would stage)."""
    dest = root / cid
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(tpl.staged.folder, dest)
    manifest = Manifest.from_json((dest / "manifest.json").read_bytes())
    stored = manifest.model_copy(update={"cube_id": cid}).to_bytes()
    (dest / "manifest.json").write_bytes(stored)
    row = json.loads((dest / SAMPLE_META).read_text())
    row.update(split=split, manifest_sha256=hashlib.sha256(stored).hexdigest())
    (dest / SAMPLE_META).write_text(json.dumps(row, indent=1))
    mark = json.loads((dest / FINGERPRINT).read_text())
    lists = sorted(p.replace(tpl.id, cid) for p in mark["source"]["lists"])
    mark.update(files={}, source=SourceRecord(lists, [], []).to_dict())
    (dest / FINGERPRINT).write_text(json.dumps(mark, sort_keys=True))
    return StagedSample(dest)


def write_source(root: Path, tpl: Template, n: int, real: range) -> None:
    """A mirror of ``n`` areas: ``SHA256SUMS`` names the files of all of them, only the
    areas in ``real`` have theirs on disk (copies of the template's)."""
    lines = []
    for k in range(n):
        cid = cube_id(k)
        for rel, data in tpl.rels(cid).items():
            if k in real:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
                sha = hashlib.sha256(data).hexdigest()
            else:
                sha = hashlib.sha256(f"{rel}:{len(data)}".encode()).hexdigest()
            lines.append(f"{sha}  {len(data)}  {rel}")
    splits = "".join(f"{cube_id(k)},{SPLITS[k % 3]}\n" for k in range(n))
    (root / "splits.csv").write_text("id,split\n" + splits)
    (root / "SYNTHETIC.json").write_bytes(tpl.marker)
    for rel in ("splits.csv", "SYNTHETIC.json"):
        data = (root / rel).read_bytes()
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {len(data)}  {rel}")
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def clone_encoder(tpl: Template, splits: dict[str, str]):
    """``encode_many`` for ``publish_incremental``: copies of the template, not encodes."""
    from pipeline.build import staging_dir

    def encode(recipe: Recipe, ids: list[str], out: Path) -> list[tuple[StagedSample, bool]]:
        return [(clone(tpl, cid, splits[cid], staging_dir(out)), True) for cid in ids]

    return encode


def _batch_verification(tpl: Template, staged: list[StagedSample]) -> Verification:
    checks = [replace(c, sample=s.id) for s in staged for c in tpl.checks]
    return Verification(checks, {s.id: {"id": s.id, **s.metadata()} for s in staged})


def _add_to_index(
    ctx: Context, index: PublishedIndex, batch: Batch, shards: dict[str, list[str]], h: str
) -> None:
    """What ``next_index`` adds for a batch (without its copy of the whole index)."""
    where = {cid: name for name, ids in shards.items() for cid in ids}
    rows = {s.id: s.metadata() for s in batch.new}
    for name, ids in shards.items():
        path = batch.folder / name
        split = str(rows[ids[0]].get("split") or "")
        entry = ShardEntry(split, path.stat().st_size, file_sha256(path), batch.number, ids)
        index.shards[name] = entry
    for s in batch.new:
        mark = json.loads((s.folder / FINGERPRINT).read_text())
        record = SourceRecord.from_dict(mark["source"])
        fp = source_fingerprint(ctx.mirror, record, ctx.digests)
        split = str(rows[s.id].get("split") or "")
        index.cubes[s.id] = CubeEntry(fp, h, split, where[s.id], batch.number, record)
    index.batch = batch.number


def seed(recipe: Recipe, tpl: Template, n: int, per_batch: int, target: Path, work: Path) -> None:
    """Publish cubes 0..n-1 to the folder ``target`` as ``n / per_batch`` committed batches
    would have left it (see the module), in one commit."""
    remote = FolderRemote(str(target))
    mirror = mirror_for(recipe.source, progress=False)
    ctx = Context(
        recipe, remote, PublishedIndex(recipe.taco.id), None, {}, mirror, DigestCache(), work
    )
    ctx.listing = {SAMPLE_PNG: RemoteFile()}  # the first batch drew it: linked, not redrawn
    index, h = ctx.index, settings_hash(recipe)
    index.settings[h] = settings_of(recipe)
    done = work / "done"
    (done / "verification").mkdir(parents=True)
    staging = work / "staging"
    v = Verification()
    shards: dict[str, list[str]] = {}
    for b, lo in enumerate(range(0, n, per_batch), 1):
        batch = Batch(b, work / "batch")
        ks = range(lo, min(lo + per_batch, n))
        batch.new = [clone(tpl, cube_id(k), SPLITS[k % 3], staging) for k in ks]
        shards = pack_batch(ctx, batch)
        v = _batch_verification(tpl, batch.new)
        v.shards = {name: file_sha256(batch.folder / name) for name in shards}
        _add_to_index(ctx, index, batch, shards, h)
        kept = ctx.state / f"batch-{b:05d}"
        kept.mkdir(parents=True)
        (kept / "verification.json").write_text(v.to_json())
        (done / batch_file(b)).write_text(v.to_json())
        for name in shards:
            (batch.folder / name).rename(done / name)
        shutil.rmtree(staging)
    (done / SAMPLE_PNG).parent.mkdir(parents=True)
    (done / SAMPLE_PNG).write_bytes(tpl.panel)
    last = Batch(index.batch, done)
    write_metadata(ctx, last, index, v, list(shards))
    remote.commit(done, publishable_files(done), [], "seed", lambda rel: None, None)
    shutil.rmtree(work)


def seed_hub(hub, repo_id: str, folder: Path) -> None:  # noqa: ANN001
    """The folder target's files as one commit of a new repo on the hub stand-in."""
    from tests.fakehub import GITATTRIBUTES, Repo

    repo = Repo(private=False)
    repo.files[".gitattributes"] = GITATTRIBUTES
    repo.record(hashlib.sha1(b"init").hexdigest())
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            data = p.read_bytes()
            repo.files[rel] = data
            if b"\0" in data[:1024] or len(data) > hub.LFS_THRESHOLD:
                repo.lfs.add(rel)
                hub.objects[hashlib.sha256(data).hexdigest()] = data
    repo.record(hashlib.sha1(b"seed" + str(time.time()).encode()).hexdigest())
    hub.repos[repo_id] = repo


def target_state(files: dict[str, int]) -> dict[str, int]:
    """Bytes of the index, ``.tacocat``, card + tables, report, records and shards."""
    from pipeline.publish.index import INDEX_FILE

    def part(rel: str) -> str:
        if rel == INDEX_FILE:
            return "index"
        if rel.startswith(".tacocat/"):
            return "tacocat"
        if rel.endswith(".tacozip"):
            return "shards"
        if rel.startswith("verification/"):
            return "records"
        if rel == "README.md" or rel.startswith("data/"):
            return "card"
        return "report"

    out: dict[str, int] = {}
    for rel, size in files.items():
        out[part(rel)] = out.get(part(rel), 0) + size
    return out


class Probe:
    """Times reconcile and plan inside a real run, and what each commit wrote (the run's
    own functions, wrapped; nothing else changes)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.added: list[list[tuple[str, int]]] = []

    def __enter__(self) -> Probe:
        from pipeline.publish import incremental
        from pipeline.publish.hub_remote import HubRemote

        self.saved = [
            (incremental, "reconcile", incremental.reconcile),
            (incremental, "plan_run", incremental.plan_run),
            (FolderRemote, "commit", FolderRemote.commit),
            (HubRemote, "commit", HubRemote.commit),
        ]
        for owner, name, fn in self.saved:
            setattr(owner, name, self._commit(fn) if name == "commit" else self._timed(name, fn))
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        for owner, name, fn in self.saved:
            setattr(owner, name, fn)

    def _timed(self, name: str, fn):  # noqa: ANN202
        def inner(*a, **k):  # noqa: ANN002, ANN003, ANN202
            self.marks[f"{name}_start"] = time.monotonic()
            try:
                return fn(*a, **k)
            finally:
                self.marks[f"{name}_end"] = time.monotonic()

        return inner

    def _commit(self, fn):  # noqa: ANN202
        def inner(remote, folder, adds, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.added.append([(rel, (Path(folder) / rel).stat().st_size) for rel in adds])
            return fn(remote, folder, adds, *a, **k)

        return inner


def measured_run(recipe: Recipe, target: str, work: Path, batch: int, encode_many=None) -> dict:  # noqa: ANN001
    """One real incremental run, with its times and the bytes its commits wrote."""
    from pipeline.publish.incremental import publish_incremental

    with Probe() as probe:
        t0 = time.monotonic()
        r = publish_incremental(
            recipe, target, work, batch_cubes=batch, encode_many=encode_many, log=lambda s: None
        )
        wall = time.monotonic() - t0
    m = probe.marks
    added = [size for commit in probe.added for _, size in commit]

    def written(test) -> int:  # noqa: ANN001
        return sum(size for commit in probe.added for rel, size in commit if test(rel))

    return {
        "wall_s": round(wall, 2),
        "read_s": round(m["reconcile_start"] - t0, 2),
        "reconcile_s": round(m["reconcile_end"] - m["reconcile_start"], 2),
        "plan_s": round(m["plan_run_end"] - m["plan_run_start"], 2),
        "planned_s": round(m["plan_run_end"] - t0, 2),
        "encoded": sorted(r.encoded),
        "unchanged": r.unchanged,
        "repaired": r.repaired,
        "commits": len(r.commits),
        "uploaded_bytes": r.bytes_uploaded,
        "files_written": len(added),
        "index_bytes_written": written(lambda rel: rel == "cubecast-index.json"),
        "tacocat_bytes_written": written(lambda rel: rel.startswith(".tacocat/")),
        "shard_bytes_written": written(lambda rel: rel.endswith(".tacozip")),
    }


def folder_files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def new_cubes(n: int, percent: float) -> range:
    return range(n, n + max(1, round(n * percent / 100)))


class Target:
    """The seeded state on a fresh folder target, or on the hub stand-in, and the bytes it
    received as the target itself counts them."""

    def __init__(self, kind: str, seeded: Path, folder: Path) -> None:
        self.kind, self.folder, self.hub = kind, folder, None
        shutil.rmtree(folder, ignore_errors=True)
        if kind == "folder":
            shutil.copytree(seeded, folder)
            self.url = str(folder)
            return
        from bench.publish_scale import counting_hub

        self.hub, self.payload = counting_hub()
        self.hub.__enter__()
        self.env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN")}
        os.environ.update({"HF_ENDPOINT": self.hub.url, "HF_TOKEN": TOKEN})
        seed_hub(self.hub, REPO, seeded)
        self.url = f"hf://datasets/{REPO}"

    def close(self) -> None:
        if self.hub is not None:
            self.hub.__exit__(None, None, None)
            for k, v in self.env.items():
                os.environ.pop(k, None) if v is None else os.environ.update({k: v})

    def files(self) -> dict[str, int]:
        if self.hub is not None:
            return {p: len(d) for p, d in self.hub.repos[REPO].files.items()}
        return {p: s for p, (s, _) in folder_files(self.folder).items()}

    def mark(self) -> int | dict[str, tuple[int, int]]:
        if self.hub is not None:
            return self.hub.uploaded_bytes + self.payload[0]
        return folder_files(self.folder)

    def received(self, mark) -> int:  # noqa: ANN001
        """Bytes sent to the hub (LFS objects and commit payloads), or of the files a
        folder gained or rewrote, since ``mark``."""
        if self.hub is not None:
            return self.hub.uploaded_bytes + self.payload[0] - mark
        after = folder_files(self.folder)
        return sum(s for p, (s, t) in after.items() if mark.get(p) != (s, t))

    def index(self) -> PublishedIndex:
        from pipeline.publish.index import INDEX_FILE

        if self.hub is not None:
            raw = self.hub.repos[REPO].files[INDEX_FILE]
        else:
            raw = (self.folder / INDEX_FILE).read_bytes()
        return PublishedIndex.parse(raw, "index")


def run_target(
    kind: str, n: int, tpl: Template, src: Path, url: str, tmp: Path, batch: int
) -> dict:
    """No change (a fresh work folder, then the same one again), then 1 % new cubes, on
    one target freshly given the seeded state."""
    recipe = sim_recipe(url)
    work = tmp / f"work-{kind}"
    shutil.rmtree(work, ignore_errors=True)
    target = Target(kind, tmp / "seeded", tmp / f"target-{kind}")
    try:
        out: dict = {"target": kind, "cubes": n}
        out["shards"] = sum(1 for p in target.files() if p.endswith(".tacozip"))
        out["before"] = target_state(target.files())
        for name in ("nochange_fresh", "nochange_warm"):
            mark = target.mark()
            out[name] = measured_run(recipe, target.url, work, batch)
            out[name]["target_received_bytes"] = target.received(mark)
            out[name]["encoded"] = len(out[name]["encoded"])
        add = new_cubes(n, 1.0)
        write_source(src, tpl, n + len(add), add)
        splits = {cube_id(k): SPLITS[k % 3] for k in add}
        mark = target.mark()
        one = measured_run(recipe, target.url, work, batch, clone_encoder(tpl, splits))
        one["target_received_bytes"] = target.received(mark)
        one["new_cubes"] = len(add)
        one["exactly_the_new_cubes"] = one["encoded"] == sorted(splits)
        one["encoded"] = len(one["encoded"])
        one["cubes_in_index"] = len(target.index().cubes)
        out["new1pct"] = one
        out["after"] = target_state(target.files())
        write_source(src, tpl, n, range(0))
        return out
    finally:
        target.close()


def simulate_scale(ns: list[int], kinds: list[str], per_batch: int, tmp: Path, log=print) -> dict:  # noqa: ANN001
    """Every N, every target: the figures :func:`run_target` measures."""
    from tests.rangeserver import RangeServer

    t = time.monotonic()
    tpl = make_template(tmp)
    log(f"template cube encoded and verified in {time.monotonic() - t:.1f} s")
    rows = []
    for n in ns:
        src = tmp / f"src-{n}"
        src.mkdir()
        write_source(src, tpl, n, range(0))
        with RangeServer(src) as server:
            t = time.monotonic()
            seed(sim_recipe(server.url), tpl, n, per_batch, tmp / "seeded", tmp / "seedwork")
            log(f"{n} cubes: published state built in {time.monotonic() - t:.1f} s")
            for kind in kinds:
                row = run_target(kind, n, tpl, src, server.url, tmp, per_batch)
                rows.append(row)
                log(summary_line(row))
        for p in (src, tmp / "seeded", *tmp.glob("target-*"), *tmp.glob("work-*")):
            shutil.rmtree(p, ignore_errors=True)
    return {"per_batch": per_batch, "new_percent": 1.0, "rows": rows}


def summary_line(r: dict) -> str:
    a, b, c = r["nochange_fresh"], r["nochange_warm"], r["new1pct"]
    return (
        f"{r['cubes']:>6} cubes, {r['target']:>6}: no change planned in {a['planned_s']} s "
        f"(fresh work folder; {b['planned_s']} s warm), uploaded {a['uploaded_bytes']} B; "
        f"1 %: {c['encoded']} new in {c['wall_s']} s, {c['commits']} commits, "
        f"{c['uploaded_bytes']:,} B uploaded"
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def table(result: dict) -> str:
    """The growth table: one row per N and target. "Uploaded" is what the run's commits
    wrote (the hub stand-in's own count agrees within its base64 and JSON overhead)."""
    head = [
        "| cubes | shards | target | no change, fresh work folder: planned in, s (read + "
        "reconcile + plan) | no change, same work folder again: s | no change: uploaded, "
        "bytes | 1 % new: cubes, commits, s | 1 % new: uploaded, MB (index / .tacocat of "
        "it) | index, MB | .tacocat, MB | card + tables, MB | report, MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for r in result["rows"]:
        a, b, c, s = r["nochange_fresh"], r["nochange_warm"], r["new1pct"], r["after"]
        nothing = max(a["uploaded_bytes"], a["target_received_bytes"], b["uploaded_bytes"])
        lines.append(
            f"| {r['cubes']:,} | {r['shards']:,} | {r['target']} | {a['planned_s']} "
            f"({a['read_s']} + {a['reconcile_s']} + {a['plan_s']}) | {b['planned_s']} | "
            f"{max(nothing, b['target_received_bytes'])} | {c['encoded']}, {c['commits']}, "
            f"{c['wall_s']} | {_mb(c['uploaded_bytes'])} ({_mb(c['index_bytes_written'])} / "
            f"{_mb(c['tacocat_bytes_written'])}) | {_mb(s.get('index', 0))} | "
            f"{_mb(s.get('tacocat', 0))} | {_mb(s.get('card', 0))} | {_mb(s.get('report', 0))} |"
        )
    return "\n".join(head + lines) + "\n"
