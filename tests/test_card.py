"""Issue 25: a truthful, hub-native card. A dataset made from a synthetic twin says so (by
generator and seed) and makes none of the real dataset's claims; real data names its source
and licence; the install line comes from cubecast's own metadata; the example URLs are the
target's; and ``datasets.load_dataset`` reads the published folder through the card's
``configs``: one row per cube, offline."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipeline.errors import SourceError
from pipeline.publish.card import Published, render_card
from pipeline.publish.card_load import install_line, project_url
from pipeline.publish.incremental import publish_incremental
from pipeline.publish.index import INDEX_FILE, PublishedIndex
from pipeline.publish.sample_tables import write_sample_tables
from pipeline.publish.verify import Verification
from pipeline.recipe import Recipe
from pipeline.sources.mirror import LocalMirror
from pipeline.sources.provenance import MARKER, read_marker
from pipeline.sources.twins import write_dynamicearthnet
from tests.test_incremental import recipe_for as fast_recipe

CUBES, FRAMES, SIZE, SEED = 3, 4, 16, 7
REAL_CLAIMS = ("Daily PlanetScope", "75 areas", "2018-2019", "Planet Labs", "Technical University")


def recipe_for(location: str) -> Recipe:
    return fast_recipe(location, CUBES, psnr_min=25.0)  # 16 px frames: a lower floor


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=CUBES, frames=FRAMES, size=SIZE, seed=SEED, progress=False)
    return root


@pytest.fixture(scope="module")
def published(twin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("card")
    target = base / "target"
    publish_incremental(recipe_for(str(twin)), str(target), base / "work", log=lambda s: None)
    return target


def _card(folder: Path):
    from huggingface_hub import DatasetCard

    return DatasetCard.load(folder / "README.md")


def _index(folder: Path) -> PublishedIndex:
    return PublishedIndex.parse((folder / INDEX_FILE).read_bytes(), str(folder))


def _train_shard(index: PublishedIndex) -> str:
    """The shard the card's example opens: the first of the first split."""
    return next(n for n in index.shard_order() if index.shards[n].split == "train")


def test_the_twin_records_its_generator_and_seed(twin, tmp_path):
    syn = read_marker(LocalMirror(twin))
    assert syn is not None and syn.seed == SEED and syn.imitates == "DynamicEarthNet"
    assert syn.generator == "pipeline.sources.twins.write_dynamicearthnet"
    assert syn.params == {"cubes": CUBES, "frames": FRAMES, "size": SIZE}
    assert MARKER in (twin / "SHA256SUMS").read_text()  # an HTTP mirror serves it too
    real = tmp_path / "real"
    real.mkdir()
    assert read_marker(LocalMirror(real)) is None
    (real / MARKER).write_text("[1, 2]")
    with pytest.raises(SourceError, match="not a synthetic-twin record"):
        read_marker(LocalMirror(real))


def test_the_card_metadata_validates_and_points_at_the_sample_tables(published):
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    card = _card(published)
    meta = card.data.to_dict()
    assert DatasetCardData(**meta).to_dict() == meta
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    files = {d["split"]: d["path"] for d in configs["default"]["data_files"]}
    assert files == {s: f"data/{s}.parquet" for s in ("train", "val", "test")}
    assert all((published / p).is_file() for p in files.values())
    assert meta["license"] == "mit" and "synthetic" in meta["tags"]
    assert "planetscope" not in meta["tags"] and "synthetic twin" in meta["pretty_name"]


def test_a_synthetic_card_says_so_and_makes_no_real_claims(published):
    text = (published / "README.md").read_text()
    title = next(line for line in text.splitlines() if line.startswith("# "))
    assert "synthetic twin" in title
    assert "pipeline.sources.twins.write_dynamicearthnet" in text and f"seed {SEED}" in text
    assert "this is not DynamicEarthNet" in text
    for claim in REAL_CLAIMS:
        assert claim not in text, claim


def test_install_line_and_urls_come_from_metadata_and_the_target(published):
    text = (published / "README.md").read_text()
    repo = project_url("Repository")
    assert repo == "https://github.com/cubecast/cubecast"  # pyproject's [project.urls]
    assert install_line() == f'pip install "cubecast @ git+{repo}"' and install_line() in text
    assert "pip install cubecast " not in text and "pip install cubecast\n" not in text
    first = _train_shard(_index(published))
    assert f'url = "{published / first}"' in text and "huggingface.co" not in text
    assert f'load_dataset("{published}")' in text and "from cubecast import open_sample" in text


def test_load_dataset_reads_one_row_per_cube_offline(published, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    table = datasets.load_dataset(str(published), cache_dir=str(tmp_path / "cache"))
    index = _index(published)
    rows = [r for split in table.values() for r in split]
    assert sorted(r["id"] for r in rows) == sorted(index.cubes)
    for split, part in table.items():
        for r in part:
            entry = index.cubes[r["id"]]
            assert r["split"] == split == (entry.split or "train") and r["shard"] == entry.shard
            assert r["passed"] and r["encoded_bytes"] > 0 and r["variables"]
            assert r["time_start"].startswith("2018-01-01") and r["bbox_west"] is not None


def test_a_row_locates_its_cube(published):
    import pyarrow.parquet as pq

    from cubecast import open_sample

    row = pq.read_table(published / "data" / "train.parquet").to_pylist()[0]
    cube = open_sample(str(published / row["shard"]), row["id"])
    assert set(row["variables"].split(",")) <= set(cube.variables)


def test_tables_are_committed_files_and_repaired_when_lost(published, twin, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(published, target)
    files = _index(target).files
    tables = sorted(p.relative_to(target).as_posix() for p in (target / "data").iterdir())
    assert tables == [f"data/{s}.parquet" for s in ("test", "train", "val")]
    for rel in tables:
        data = (target / rel).read_bytes()
        assert files[rel].size == len(data)
        assert files[rel].sha256 == hashlib.sha256(data).hexdigest()
    before = (target / "data" / "val.parquet").read_bytes()
    (target / "data" / "val.parquet").unlink()
    result = publish_incremental(
        recipe_for(str(twin)), str(target), tmp_path / "work", log=lambda s: None
    )
    assert result.encoded == [] and len(result.commits) == 1
    assert any("data/val.parquet" in line for line in result.repaired)
    assert (target / "data" / "val.parquet").read_bytes() == before


def _verification(published: Path, tmp_path: Path) -> Verification:
    folder = tmp_path / "v"
    folder.mkdir()
    record = json.loads((published / "verification" / "batch-00001.json").read_text())
    (folder / "verification.json").write_text(json.dumps(record))
    return Verification.read(folder)


def test_real_data_names_its_source_and_licence(published, twin, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    v = _verification(published, tmp_path)
    index = _index(published)
    shard_of = {cid: e.shard for cid, e in index.cubes.items()}
    tables = write_sample_tables(tmp_path / "t", v, shard_of)
    hub = Published(shard_of, index.shard_order(), tables, "hf://datasets/org/den")
    text = render_card(recipe_for(str(twin)), v, hub)
    assert "Planet Labs" in text and "Technical University of Munich" in text
    assert "licence cc-by-sa-4.0" in text and "license: cc-by-sa-4.0" in text
    assert "synthetic" not in text.lower()
    first = _train_shard(index)
    assert f'url = "https://huggingface.co/datasets/org/den/resolve/main/{first}"' in text
    assert 'load_dataset("org/den")' in text
    local = render_card(recipe_for(str(twin)), v, Published(shard_of, [first], tables))
    assert f'url = "{first}"' in local and "relative to the dataset folder" in local


def test_stale_tables_are_removed(tmp_path):
    row = {"split": "val", "encoded_bytes": 1, "psnr_min": float("inf")}
    v = Verification(samples={"a": {**row, "split": "train"}, "b": row})
    assert write_sample_tables(tmp_path, v, {"a": "x.tacozip", "b": "y.tacozip"}) == {
        "train": "data/train.parquet",
        "val": "data/val.parquet",
    }
    v.samples.pop("b")
    assert write_sample_tables(tmp_path, v, {"a": "x.tacozip"}) == {"train": "data/train.parquet"}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train.parquet"]
