"""Incremental publishing, simulated small: a DynamicEarthNet twin served over HTTP (so every
cube is downloaded into the work folder), published in batches to the hub stand-in under a
disk cap, stopped at every step (in process, by ``os._exit`` in a child process and by a
real SIGKILL), resumed, then re-run, extended by 10 cubes and changed by one."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import CubecastError, PublishError
from pipeline.publish.disk import DiskSampler, parse_size
from pipeline.publish.incremental import publish_incremental
from pipeline.publish.index import INDEX_FILE, PublishedIndex
from pipeline.recipe import Recipe, load_recipe, parse_recipe
from pipeline.sources.twins import write_dynamicearthnet
from tests.fakehub import FakeHub
from tests.rangeserver import RangeServer

TOKEN = "hf_test_secret_token_incremental"
REPO = "cubecast-test/incremental"
TARGET = f"hf://datasets/{REPO}"
CUBES, ADDED, FRAMES, SIZE = 6, 10, 6, 32
MAX_DISK, BATCH = "1.2MB", 3
ROOT = Path(__file__).resolve().parents[1]


class Stop(BaseException):
    """Stands for the process dying: nothing in the pipeline catches it."""


def recipe_for(location: str, cubes: int, psnr_min: float = 30.0) -> Recipe:
    """The DynamicEarthNet recipe made fast: x265 ultrafast at CRF 24, ``cubes`` cubes."""
    data = load_recipe("dynamicearthnet", location=location).model_dump(exclude_none=True)
    data["source"]["cubes"] = {"count": cubes}
    groups = [{"name": g["name"], "bands": g["bands"]} for g in data["codec"]["groups"]]
    data["codec"] = {"codec": "libx265", "crf": 24, "preset": "ultrafast", "groups": groups}
    data["verify"]["psnr_min"] = psnr_min
    return parse_recipe(data)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=CUBES, frames=FRAMES, size=SIZE, progress=False)
    return root


@pytest.fixture(scope="module")
def mirror(twin: Path):
    with RangeServer(twin) as server:
        yield server


@pytest.fixture(scope="module")
def hub():
    import huggingface_hub.constants as c
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    disable_progress_bars()
    with pytest.MonkeyPatch.context() as mp, FakeHub(TOKEN) as server:
        mp.setattr(c, "HF_HUB_DISABLE_XET", True)
        mp.setenv("HF_ENDPOINT", server.url)
        mp.setenv("HF_TOKEN", TOKEN)
        yield server
    enable_progress_bars()


def stopper(step: str, nth: int, events: list[str]):
    """A fault hook that notes every encode and stops the run at the nth ``step``."""
    seen: Counter[str] = Counter()

    def fault(s: str, detail: str) -> None:
        if s == "encode":
            events.append(detail)
        seen[s] += 1
        if s == step and seen[s] == nth:
            raise Stop(f"{s} {detail}")

    return fault


def repo_state(hub: FakeHub) -> PublishedIndex | None:
    """What a reader sees is whole: the repo's shards are exactly the index's, byte for
    byte, and ``.tacocat`` lists exactly them."""
    repo = hub.repos.get(REPO)
    raw = repo.files.get(INDEX_FILE) if repo else None
    shards = {p for p in repo.files if p.endswith(".tacozip")} if repo else set()
    if raw is None:
        assert not shards
        return None
    index = PublishedIndex.parse(raw, "hub")
    assert shards == set(index.shards)
    for name, e in index.shards.items():
        assert hashlib.sha256(repo.files[name]).hexdigest() == e.sha256
    collection = json.loads(repo.files[".tacocat/COLLECTION.json"])
    assert sorted(collection["taco:sources"]["files"]) == sorted(index.shards)
    return index


def run_child(args: dict, events: Path, kill_on_upload: bool) -> int:
    """Publish in a child process that ``os._exit``s at ``args['exit_at']``, or that this
    process SIGKILLs a random few ms after it starts uploading a shard."""
    script = """
import json, os, sys
from pipeline.publish.incremental import publish_incremental
from pipeline.recipe import parse_recipe
a = json.loads(sys.argv[1])
log = open(a["events"], "a")
def fault(step, detail):
    if step == "encode":
        log.write(detail + "\\n"); log.flush()
    if step == a.get("exit_at"):
        os._exit(9)
publish_incremental(parse_recipe(a["recipe"]), a["target"], a["work"], max_disk=a["max_disk"],
                    batch_cubes=a["batch"], fault=fault)
"""
    hub: FakeHub | None = args.pop("hub_obj", None)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps({**args, "events": str(events)})], env=env
    )
    if kill_on_upload and hub is not None:
        before = sum(r.startswith("PUT /lfs-upload") for r in hub.requests)
        while proc.poll() is None:
            if sum(r.startswith("PUT /lfs-upload") for r in hub.requests) > before:
                time.sleep(random.Random(17).uniform(0, 0.05))
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    return proc.wait(timeout=300)


def check_published(hub: FakeHub, twin: Path, ids: list[str], tmp: Path) -> None:
    """Every cube in exactly one shard, read back with the unmodified tacoreader through the
    ``.tacocat``, and every sample, decoded from the shards as published, verifies against
    its source."""
    import tacoreader

    from pipeline.codec.metrics import compare_encoded
    from pipeline.publish.verify import check_bands
    from pipeline.sources import load_cube
    from pipeline.taco.read import sample_encoded, sample_ids

    folder = tmp / "snapshot"
    for rel, data in hub.repos[REPO].files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    rows = tacoreader.load(str(folder / ".tacocat")).data.to_arrow().column("id").to_pylist()
    assert sorted(rows) == sorted(ids)
    local = recipe_for(str(twin), len(ids))
    held: Counter[str] = Counter()
    for shard in sorted(folder.glob("*.tacozip")):
        with zipfile.ZipFile(shard) as archive:
            for sid in sample_ids(archive):
                held[sid] += 1
                source = load_cube(local, sid).dataset
                enc = sample_encoded(archive, sid, str(shard))
                quality = compare_encoded(source, enc, roles=local.roles())
                checks = check_bands(sid, quality, local.verify.threshold)
                assert checks and all(c.passed for c in checks), [c.failure() for c in checks]
    assert sorted(held) == sorted(ids) and set(held.values()) == {1}


def test_stopped_anywhere_then_resumed_publishes_every_cube_once(twin, mirror, hub, tmp_path):
    recipe = recipe_for(mirror.url, CUBES)
    work, events = tmp_path / "work", []
    opts = {"max_disk": MAX_DISK, "batch_cubes": BATCH}
    stops = [("download", 3), ("encode", 2), ("pack", 1), ("verify", 1), ("upload", 1)]
    stops += [("commit", 1), ("committed", 1)]
    with DiskSampler(work, 0.01) as disk:
        for step, nth in stops:
            with pytest.raises(Stop):
                publish_incremental(recipe, TARGET, work, fault=stopper(step, nth, events), **opts)
            repo_state(hub)
        child = {"recipe": recipe.model_dump(mode="json"), "target": TARGET, "work": str(work)}
        child |= {"max_disk": MAX_DISK, "batch": BATCH}
        killed = run_child({**child, "hub_obj": hub}, tmp_path / "ev", True)
        assert killed == -signal.SIGKILL
        repo_state(hub)
        done = publish_incremental(recipe, TARGET, work, fault=stopper("", 0, events), **opts)
    ids = sorted(repo_state(hub).cubes)
    assert len(ids) == CUBES and done.selected == CUBES
    events += (tmp_path / "ev").read_text().split()
    assert Counter(events) == Counter(ids), "a cube was encoded twice, or never"
    assert disk.peak <= parse_size(MAX_DISK), f"peak {disk.peak:,} bytes"
    puts = Counter(r.split("/")[-1] for r in hub.requests if r.startswith("PUT /lfs-upload/"))
    assert puts and max(puts.values()) == 1, "an LFS object was uploaded twice"
    # shards uploaded by a stopped run were packed again with the same bytes and committed
    shards = {oid for oid, data in hub.objects.items() if data[:2] == b"PK"}
    assert shards == {e.sha256 for e in repo_state(hub).shards.values()}
    assert not (work / ".work" / "raw").exists() and not (work / ".work" / "batch").exists()

    # a fresh machine, nothing changed: nothing downloaded, encoded or uploaded
    commits, uploaded = len(hub.repos[REPO].commits), hub.uploaded_bytes
    asked = len(mirror.requests)
    again = publish_incremental(recipe, TARGET, tmp_path / "fresh", **opts)
    assert again.encoded == [] and again.commits == [] and again.unchanged == CUBES
    assert (len(hub.repos[REPO].commits), hub.uploaded_bytes) == (commits, uploaded)
    fetched = {path for path, _ in mirror.requests[asked:]}
    assert fetched <= {"/SHA256SUMS", "/splits.csv"}, fetched  # no cube was downloaded

    # 10 more cubes in the source: exactly those are encoded
    write_dynamicearthnet(twin, cubes=CUBES + ADDED, frames=FRAMES, size=SIZE, progress=False)
    more = publish_incremental(recipe_for(mirror.url, CUBES + ADDED), TARGET, work, **opts)
    added = sorted(set(repo_state(hub).cubes) - set(ids))
    assert len(added) == ADDED and sorted(more.encoded) == added and more.unchanged == CUBES

    # one cube's source changes: it alone is encoded; its shard is rewritten around it
    import rasterio

    changed = ids[0]
    tif = sorted((twin / "planet" / changed / "PF-SR").glob("*.tif"))[1]
    with rasterio.open(tif, "r+") as f:
        f.write(f.read() // 2 + 7)
    from pipeline.sources.twins import write_index

    write_index(twin)
    old = repo_state(hub)
    redo = publish_incremental(recipe_for(mirror.url, CUBES + ADDED), TARGET, work, **opts)
    assert redo.encoded == [changed]
    neighbours = set(old.shards[old.cubes[changed].shard].cubes) - {changed}
    assert sorted(redo.carried) == sorted(neighbours)
    new = repo_state(hub)
    assert old.cubes[changed].shard not in new.shards and len(new.cubes) == CUBES + ADDED
    check_published(hub, twin, sorted(new.cubes), tmp_path)


def test_a_bad_index_another_dataset_or_no_room_is_a_clear_error(twin, tmp_path):
    recipe = recipe_for(str(twin), 2)
    target = tmp_path / "target"
    target.mkdir()
    (target / INDEX_FILE).write_text("{not json")
    with pytest.raises(PublishError, match=r"cubecast-index.json: not a cubecast index"):
        publish_incremental(recipe, str(target), tmp_path / "w")
    other = PublishedIndex("another-dataset")
    (target / INDEX_FILE).write_bytes(other.to_bytes())
    with pytest.raises(PublishError, match=r"holds dataset 'another-dataset'"):
        publish_incremental(recipe, str(target), tmp_path / "w")
    (target / INDEX_FILE).unlink()
    with pytest.raises(CubecastError, match=r"max_disk 1,000 bytes is too small"):
        publish_incremental(recipe, str(target), tmp_path / "w", max_disk="1KB")
    with pytest.raises(CubecastError, match=r"max_disk '10 parsecs'"):
        publish_incremental(recipe, str(target), tmp_path / "w", max_disk="10 parsecs")
    assert not list(target.iterdir())


def test_the_flow_publishes_incrementally_with_its_task_runner(twin, tmp_path):
    """``publish_dataset(incremental=True)``: encode tasks on the flow's task runner, one
    commit per batch (re-runs are covered above, without Prefect)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.publish_dataset import publish_dataset

    recipe, target = tmp_path / "den.toml", tmp_path / "published"
    import tomli_w

    data = recipe_for(str(twin), 2).model_dump(mode="json", exclude_none=True)
    data.pop("path", None)
    recipe.write_bytes(tomli_w.dumps(data).encode())
    kwargs = dict(recipe=str(recipe), out=str(tmp_path / "work"), target=str(target))
    kwargs |= dict(incremental=True, batch_cubes=1, runner="threads", workers=2)
    with prefect_test_harness(server_startup_timeout=120):
        first = publish_dataset(**kwargs)
    assert len(first["encoded"]) == 2 and len(first["commits"]) == 2
    index = PublishedIndex.parse((target / INDEX_FILE).read_bytes(), "target")
    assert sorted(index.cubes) == sorted(first["encoded"]) and index.batch == 2


def test_the_task_runner_gets_every_cube_the_disk_and_batch_allow(twin, tmp_path):
    """No group of ``workers`` cubes waits for its slowest before the next starts: with no
    disk cap the encoder gets the whole batch at once (its task runner keeps ``workers``
    busy); under a cap, one cube until a cube's footprint is known."""
    from pipeline.publish.runplan import serial_encoder
    from pipeline.sources import mirror_for

    recipe = recipe_for(str(twin), 4)
    groups: list[int] = []
    serial = serial_encoder(mirror_for(recipe.source, progress=False))

    def encode(r, ids, out):
        groups.append(len(ids))
        return serial(r, ids, out)

    kwargs = dict(batch_cubes=3, workers=2, encode_many=encode)
    publish_incremental(recipe, str(tmp_path / "free"), tmp_path / "w1", **kwargs)
    assert groups == [3, 1]
    groups.clear()
    kwargs["max_disk"] = "50MB"
    publish_incremental(recipe, str(tmp_path / "capped"), tmp_path / "w2", **kwargs)
    assert groups == [1, 2, 1]  # the rest of the first batch once one cube's size is known
