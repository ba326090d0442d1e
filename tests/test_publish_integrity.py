"""What is published is exactly what was verified: the target's index reconciled with what
the target holds, a catalogue checked against its shards, racing publishers of which one
loses (folder lease, hub ``parent_commit``), and index names that never become paths
outside the target. Each case here failed on b0a7930 (a deleted shard stayed "unchanged",
``verify`` passed a catalogue naming a missing shard, both racers reported success)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import BusyError, PublishError, VerificationError
from pipeline.publish.incremental import publish_incremental
from pipeline.publish.index import INDEX_FILE, PublishedIndex
from pipeline.recipe import Recipe
from pipeline.sources.twins import write_dynamicearthnet
from tests.fakehub import FakeHub
from tests.test_incremental import recipe_for as fast_recipe

TOKEN = "hf_test_secret_token_integrity"
CUBES, FRAMES, SIZE = 5, 4, 16


def recipe_for(location: str, cubes: int = CUBES) -> Recipe:
    return fast_recipe(location, cubes, psnr_min=25.0)  # 16 px frames: a lower floor


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=CUBES, frames=FRAMES, size=SIZE, progress=False)
    return root


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


def publish(twin: Path, target: str, work: Path, **kw) -> object:
    kw.setdefault("batch_cubes", 2)
    return publish_incremental(recipe_for(str(twin)), target, work, log=lambda s: None, **kw)


def folder_state(target: Path) -> PublishedIndex:
    """A reader's view is whole: shards are exactly the index's, byte for byte, each cube
    in exactly one shard, and ``.tacocat`` lists exactly those shards."""
    index = PublishedIndex.parse((target / INDEX_FILE).read_bytes(), "target")
    shards = {p.name for p in target.glob("*.tacozip")}
    assert shards == set(index.shards)
    for name, e in index.shards.items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == e.sha256
    held = Counter()
    for name in shards:
        with zipfile.ZipFile(target / name) as z:
            held.update({n.split("/")[1] for n in z.namelist() if n.startswith("DATA/")})
    assert set(held) == set(index.cubes) and set(held.values()) == {1}
    collection = json.loads((target / ".tacocat" / "COLLECTION.json").read_text())
    assert sorted(collection["taco:sources"]["files"]) == sorted(index.shards)
    return index


def hub_state(hub: FakeHub, repo_id: str) -> PublishedIndex:
    repo = hub.repos[repo_id]
    index = PublishedIndex.parse(repo.files[INDEX_FILE], "hub")
    assert {p for p in repo.files if p.endswith(".tacozip")} == set(index.shards)
    for name, e in index.shards.items():
        assert hashlib.sha256(repo.files[name]).hexdigest() == e.sha256
    collection = json.loads(repo.files[".tacocat/COLLECTION.json"])
    assert sorted(collection["taco:sources"]["files"]) == sorted(index.shards)
    return index


@pytest.fixture(scope="module")
def published(twin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder target holding the twin, published once (copied by each test)."""
    root = tmp_path_factory.mktemp("published")
    publish(twin, str(root / "target"), root / "work")
    folder_state(root / "target")
    return root / "target"


def copy_target(published: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "target"
    shutil.copytree(published, dest)
    return dest


# -- reconciliation: the index is a claim, the target is checked --------------------------
@pytest.mark.parametrize("damage", ["delete", "truncate", "flip", "swap", "empty"])
def test_a_damaged_shard_is_published_again(published, twin, tmp_path, damage):
    target = copy_target(published, tmp_path)
    index = PublishedIndex.parse((target / INDEX_FILE).read_bytes(), "t")
    names = index.shard_order()
    victim = target / names[-1]
    lost = set(index.shards[names[-1]].cubes)
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "flip":  # same size, one bit: only the SHA-256 tells
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x10
        victim.write_bytes(bytes(data))
    elif damage == "swap":  # another valid shard under this name
        shutil.copyfile(target / names[0], victim)
    else:
        victim.write_bytes(b"")
    result = publish(twin, str(target), tmp_path / "work")
    assert set(result.encoded) == lost
    assert result.repaired and names[-1] in result.repaired[0]
    after = folder_state(target)
    assert set(after.cubes) == set(index.cubes)
    again = publish(twin, str(target), tmp_path / "work")
    assert again.encoded == [] and again.commits == [] and not again.repaired


def test_an_index_claiming_a_cube_no_shard_holds_is_repaired(published, twin, tmp_path):
    target = copy_target(published, tmp_path)
    data = json.loads((target / INDEX_FILE).read_text())
    # take one cube's entry away from its real shard and give it to another shard's list
    cubes, shards = data["cubes"], data["shards"]
    names = sorted(shards)
    moved = shards[names[0]]["cubes"][0]
    shards[names[0]]["cubes"].remove(moved)
    shards[names[1]]["cubes"].append(moved)
    cubes[moved]["shard"] = names[1]
    (target / INDEX_FILE).write_text(json.dumps(data))
    result = publish(twin, str(target), tmp_path / "work")
    assert moved in result.encoded
    assert any(names[0] in line or names[1] in line for line in result.repaired)
    folder_state(target)


@pytest.mark.parametrize("rel", ["README.md", ".tacocat/COLLECTION.json", "REPORT.md"])
def test_missing_metadata_is_written_again(published, twin, tmp_path, rel):
    target = copy_target(published, tmp_path)
    (target / rel).unlink()
    result = publish(twin, str(target), tmp_path / "work")
    assert result.encoded == [] and len(result.commits) == 1
    assert (target / rel).is_file() and any(rel in line for line in result.repaired)
    folder_state(target)


def test_a_changed_card_is_written_again(published, twin, tmp_path):
    target = copy_target(published, tmp_path)
    (target / "README.md").write_text("# not the card cubecast wrote\n")
    result = publish(twin, str(target), tmp_path / "work")
    assert result.commits and "not the card" not in (target / "README.md").read_text()


def test_a_deleted_shard_on_the_hub_is_published_again(twin, tmp_path, hub):
    repo_id = "cubecast-test/integrity-delete"
    target = f"hf://datasets/{repo_id}"
    publish(twin, target, tmp_path / "work")
    index = hub_state(hub, repo_id)
    victim = index.shard_order()[0]
    del hub.repos[repo_id].files[victim]
    result = publish(twin, target, tmp_path / "work2")  # a fresh machine
    assert set(result.encoded) == set(index.shards[victim].cubes)
    assert set(hub_state(hub, repo_id).cubes) == set(index.cubes)


# -- verify checks the catalogue and the selection ----------------------------------------
@pytest.fixture(scope="module")
def packed(twin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.build import encode_and_pack

    out = tmp_path_factory.mktemp("packed") / "shards"
    recipe = recipe_for(str(twin))
    recipe = recipe.model_copy(
        update={"shards": recipe.shards.model_copy(update={"split_size": "20KB"})}
    )
    encode_and_pack(recipe, out, progress=False)
    assert len(list(out.glob("*.tacozip"))) >= 2
    return out


def test_verify_refuses_a_catalogue_naming_a_missing_shard(packed, twin, tmp_path):
    from pipeline.build import verify_step

    folder = tmp_path / "shards"
    shutil.copytree(packed, folder)
    verify_step(recipe_for(str(twin)), folder, progress=False)  # whole: passes
    sorted(folder.glob("*.tacozip"))[-1].unlink()
    with pytest.raises(VerificationError, match="lists 1 shard"):
        verify_step(recipe_for(str(twin)), folder, progress=False)


def test_verify_refuses_a_folder_without_its_catalogue(packed, twin, tmp_path):
    from pipeline.build import verify_step

    folder = tmp_path / "shards"
    shutil.copytree(packed, folder)
    shutil.rmtree(folder / ".tacocat")
    with pytest.raises(VerificationError, match="no .tacocat"):
        verify_step(recipe_for(str(twin)), folder, progress=False)
    assert not (folder / "verification.json").exists()


def test_verify_refuses_a_truncated_shard_the_catalogue_names(packed, twin, tmp_path):
    from pipeline.build import verify_step

    folder = tmp_path / "shards"
    shutil.copytree(packed, folder)
    shard = sorted(folder.glob("*.tacozip"))[0]
    shard.write_bytes(shard.read_bytes()[:-300])
    with pytest.raises(VerificationError):
        verify_step(recipe_for(str(twin)), folder, progress=False)


def test_verify_refuses_a_folder_without_every_selected_cube(twin, tmp_path):
    from pipeline.build import encode_and_pack, select_cubes, verify_step
    from pipeline.sources import mirror_for

    recipe = recipe_for(str(twin))
    ids, _ = select_cubes(recipe, mirror_for(recipe.source, progress=False))
    folder = tmp_path / "shards"
    encode_and_pack(recipe, folder, cube_ids=ids[:4], progress=False)
    with pytest.raises(VerificationError, match=r"selects 5.*1 selected cube"):
        verify_step(recipe, folder, progress=False)
    with pytest.raises(VerificationError, match="does not select"):
        verify_step(recipe_for(str(twin), cubes=3), folder, progress=False)
    verify_step(recipe_for(str(twin), cubes=4), folder, progress=False)


# -- racing publishers: one wins, the other commits nothing and says so --------------------
def racer(twin: Path, target: str, work: Path, at: str, outcome: list):
    """A fault hook that, at the first ``at`` step, lets a second run publish to ``target``
    from start to end, inside the first run's window; ``outcome`` gets what it raised."""

    def fault(step: str, detail: str) -> None:
        if step == at and not outcome:
            try:
                publish_incremental(recipe_for(str(twin)), target, work, log=lambda s: None)
                outcome.append(None)
            except (PublishError, BusyError) as exc:
                outcome.append(exc)

    return fault


def race(twin: Path, target: str, tmp_path: Path, at: str) -> tuple[object, object]:
    """Two runs, the second inside the first's ``at`` step: what each raised (or None)."""
    outcome: list = []
    fault = racer(twin, target, tmp_path / "other", at, outcome)
    first = None
    try:
        publish_incremental(
            recipe_for(str(twin)), target, tmp_path / "work", fault=fault, log=lambda s: None
        )
    except (PublishError, BusyError) as exc:
        first = exc
    return first, outcome[0]


@pytest.mark.parametrize("at", ["download", "encode", "verify", "upload", "commit"])
def test_two_runs_racing_on_a_folder_one_loses(twin, tmp_path, at, monkeypatch):
    monkeypatch.setenv("CUBECAST_LEASE_WAIT", "0.5")
    target = tmp_path / "target"
    first, second = race(twin, str(target), tmp_path, at)
    assert (first is None) != (second is None)  # exactly one succeeds
    loser = first or second
    assert "\n" not in str(loser)
    if at in ("upload", "commit"):  # inside the winner's commit: its lease is held
        assert isinstance(second, BusyError)
    else:
        assert "changed since this run read it" in str(first)
    index = folder_state(target)
    assert len(index.cubes) == CUBES
    again = publish(twin, str(target), tmp_path / "work")  # the loser, run again
    assert again.encoded == [] and again.commits == []


@pytest.mark.parametrize("at", ["encode", "upload", "commit"])
def test_two_runs_racing_on_the_hub_one_loses(twin, tmp_path, hub, at):
    repo_id = f"cubecast-test/race-{at}"
    target = f"hf://datasets/{repo_id}"
    refused = hub.refused_commits
    first, second = race(twin, target, tmp_path, at)
    assert second is None and isinstance(first, PublishError)
    assert "moved since this run read it" in str(first) or "changed since" in str(first)
    assert hub.refused_commits - refused <= 1
    assert len(hub_state(hub, repo_id).cubes) == CUBES


def test_two_folder_publishes_into_one_hub_repo_one_loses(packed, twin, tmp_path, hub):
    from pipeline.build import verify_step
    from pipeline.publish.targets import publish as publish_folder

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(packed, a)
    write_dynamicearthnet(tmp_path / "twin2", cubes=2, frames=FRAMES, size=SIZE, progress=False)
    from pipeline.build import encode_and_pack

    encode_and_pack(recipe_for(str(tmp_path / "twin2"), cubes=2), b, progress=False)
    verify_step(recipe_for(str(twin)), a, progress=False)
    verify_step(recipe_for(str(tmp_path / "twin2"), cubes=2), b, progress=False)
    target = "hf://datasets/cubecast-test/two-folders"
    fired = []

    def meanwhile(rel: str) -> None:
        if not fired:
            fired.append(rel)
            publish_folder(b, target)

    publish_folder(a, "hf://datasets/cubecast-test/two-folders-warm")  # repo exists first
    with pytest.raises(PublishError, match="moved since this run read it"):
        publish_folder(a, target, progress=meanwhile)
    repo = hub.repos["cubecast-test/two-folders"]
    shards = sorted(p for p in repo.files if p.endswith(".tacozip"))
    assert shards == sorted(p.name for p in b.glob("*.tacozip"))


def test_the_hub_stand_in_enforces_parent_commit(hub, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=hub.url, token=TOKEN)
    repo_id = "cubecast-test/parent"
    api.create_repo(repo_id, repo_type="dataset")
    head = api.dataset_info(repo_id).sha
    op = CommitOperationAdd(path_in_repo="a.txt", path_or_fileobj=b"a")
    first = api.create_commit(
        repo_id, operations=[op], commit_message="a", repo_type="dataset", parent_commit=head
    )
    op = CommitOperationAdd(path_in_repo="b.txt", path_or_fileobj=b"b")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            repo_id, operations=[op], commit_message="b", repo_type="dataset", parent_commit=head
        )
    assert err.value.response.status_code == 412
    assert "b.txt" not in hub.repos[repo_id].files
    assert api.dataset_info(repo_id).sha == first.oid
    files = {f.path for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=head)}
    assert files == {".gitattributes"}  # an older revision reads as it was


# -- the lease ---------------------------------------------------------------------------
def test_a_held_lease_makes_the_other_committer_fail_in_one_line(tmp_path, monkeypatch):
    import fsspec

    from pipeline.publish.lease import LEASE_FILE, target_lease

    fs = fsspec.filesystem("file")
    with target_lease(fs, str(tmp_path), "T"):
        with pytest.raises(BusyError, match="another cubecast run is committing"):
            with target_lease(fs, str(tmp_path), "T", wait=0.3):
                pass
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_dead_holders_lease_is_broken(tmp_path):
    import fsspec

    from pipeline.publish.lease import LEASE_FILE, target_lease

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(proc.stdout)
    record = {"token": "x", "host": os.uname().nodename, "pid": dead, "expires": 4e9}
    (tmp_path / LEASE_FILE).write_text(json.dumps(record))
    fs = fsspec.filesystem("file")
    with target_lease(fs, str(tmp_path), "T", wait=0.5) as lease:
        assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == lease.token


def test_an_expired_lease_is_broken_and_a_garbled_one_waits(tmp_path, monkeypatch):
    import fsspec

    from pipeline.publish.lease import LEASE_FILE, target_lease

    fs = fsspec.filesystem("file")
    record = {"token": "x", "host": "elsewhere", "pid": 1, "expires": 1.0}
    (tmp_path / LEASE_FILE).write_text(json.dumps(record))
    with target_lease(fs, str(tmp_path), "T", wait=0.5):
        pass
    (tmp_path / LEASE_FILE).write_text("{half a rec")  # a holder killed mid-write, just now
    with pytest.raises(BusyError):
        with target_lease(fs, str(tmp_path), "T", wait=0.3):
            pass
    monkeypatch.setenv("CUBECAST_LEASE_SECONDS", "1")
    os.utime(tmp_path / LEASE_FILE, (1, 1))
    with target_lease(fs, str(tmp_path), "T", wait=0.5):
        pass


# -- names and numbers from the index ----------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["../../escape.tacozip", "/etc/passwd.tacozip", "a/b.tacozip", ".hidden.tacozip", "x.txt"],
)
def test_index_shard_names_are_confined(published, twin, tmp_path, name):
    target = copy_target(published, tmp_path)
    data = json.loads((target / INDEX_FILE).read_text())
    old = sorted(data["shards"])[0]
    data["shards"][name] = data["shards"].pop(old)
    for cid in data["shards"][name]["cubes"]:
        data["cubes"][cid]["shard"] = name
    (target / INDEX_FILE).write_text(json.dumps(data))
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(PublishError, match="not a cubecast index"):
        publish(twin, str(target), tmp_path / "work")
    after = sorted(p for p in tmp_path.rglob("*") if "work" not in p.parts)
    assert [p for p in after if p not in before] == []


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(batch=1e400),
        lambda d: d.update(batch=-(10**400)),
        lambda d: d.update(cubes=json.loads("[" * 40 + "]" * 40)),
        lambda d: d["shards"][sorted(d["shards"])[0]].update(size="big"),
        lambda d: d["shards"][sorted(d["shards"])[0]].update(sha256="00"),
        lambda d: d.update(files={"../x": {"size": 1, "sha256": "a", "blob": "b"}}),
    ],
    ids=["inf", "huge-int", "deep", "size-text", "short-sha", "file-escape"],
)
def test_a_corrupt_index_is_one_line(published, twin, tmp_path, edit):
    target = copy_target(published, tmp_path)
    data = json.loads((target / INDEX_FILE).read_text())
    edit(data)
    text = json.dumps(data).replace("Infinity", "1e400")
    (target / INDEX_FILE).write_text(text)
    with pytest.raises(PublishError) as err:
        publish(twin, str(target), tmp_path / "work")
    assert "\n" not in str(err.value)


def test_deeply_nested_index_text_is_refused_before_parsing():
    raw = b'{"format":"cubecast-index","x":' + b"[" * 100000 + b"]" * 100000 + b"}"
    with pytest.raises(PublishError, match="nests deeper"):
        PublishedIndex.parse(raw, "crafted")
