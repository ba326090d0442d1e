"""Verify -> report -> card -> publish, to a local folder and to a hub on 127.0.0.1."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import yaml
from markdown_it import MarkdownIt

from pipeline.build import build, verify_step
from pipeline.errors import PublishError
from pipeline.publish.targets import publish
from pipeline.recipe import load_recipe, parse_recipe
from pipeline.sources.twins import write_dynamicearthnet
from tests.fakehub import FakeHub

TOKEN = "hf_test_secret_token_123456"


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=3, frames=24, size=64, progress=False)
    return root


def _recipe(twin: Path, **verify):
    r = load_recipe("dynamicearthnet", location=str(twin))
    data = r.model_dump()
    data["source"]["cubes"] = {"count": 3}
    data["shards"]["split_size"] = "150KB"  # several shards from small cubes
    data["verify"].update(verify)
    return parse_recipe(data)


@pytest.fixture(scope="module")
def built(twin, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built")
    result = build(_recipe(twin), out, progress=False)
    assert len(result.shards) >= 2 and result.verification.passed
    return out


def _copy(built: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    shutil.copytree(built, folder)
    return folder


def test_failing_sample_blocks_publishing(twin, tmp_path):
    out = tmp_path / "strict"
    result = build(_recipe(twin, psnr_min=80.0), out, progress=False)
    assert not result.verification.passed
    fail = result.verification.failures()[0]
    assert "PSNR" in fail and "< 80.00 dB required" in fail and "sample '" in fail
    assert "FAIL" in (out / "REPORT.md").read_text()
    with pytest.raises(PublishError, match=r"verification failed, nothing published.*80.00 dB"):
        publish(out, str(tmp_path / "target"))
    assert not (tmp_path / "target").exists()


def test_report_pngs_and_card_render(built):
    for png in (built / "report").glob("*.png"):
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    names = {p.name for p in (built / "report").glob("*.png")}
    assert names == {"sample.png", "sizes.png", "psnr_per_band.png", "psnr_vs_bpppb.png"}
    card = (built / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "mit" and "image-segmentation" in meta["task_categories"]
    assert "synthetic" in meta["tags"]  # a twin: cubecast's licence, not the real data's
    shards = sorted(p.name for p in built.glob("*.tacozip"))
    files = meta["configs"][0]["data_files"]  # one sample table per split
    assert all(d["path"] == f"data/{d['split']}.parquet" for d in files)
    assert all((built / d["path"]).is_file() for d in files)
    assert all(name in body for name in shards)  # the body lists every shard
    html = MarkdownIt().enable("table").render(body)
    assert "<table>" in html and "tacoreader.load" in html and "PASS" in html
    report = MarkdownIt().enable("table").render((built / "REPORT.md").read_text())
    assert '<img src="report/psnr_per_band.png"' in report


def test_publish_to_local_folder_only_moves_changes(built, tmp_path):
    folder = _copy(built, tmp_path)
    target = tmp_path / "mirror"
    first = publish(folder, str(target))
    shards = sorted(p.name for p in folder.glob("*.tacozip"))
    assert set(shards) <= set(first.uploaded) and "README.md" in first.uploaded
    assert sorted(p.name for p in target.glob("*.tacozip")) == shards
    assert not list(target.rglob("*.part"))
    second = publish(folder, str(target))
    assert second.uploaded == [] and second.bytes_uploaded == 0
    dry = publish(folder, str(tmp_path / "other"), dry_run=True)
    assert dry.uploaded and not (tmp_path / "other").exists()


def test_publish_refuses_a_shard_changed_after_verification(built, tmp_path):
    folder = _copy(built, tmp_path)
    shard = sorted(folder.glob("*.tacozip"))[0]
    with zipfile.ZipFile(shard, "a") as z:
        z.comment = b"edited"
    with pytest.raises(PublishError, match="not the shard that was verified"):
        publish(folder, str(tmp_path / "t"))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    with FakeHub(TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def test_publish_to_hub(built, twin, tmp_path, hub, caplog):
    caplog.set_level(logging.DEBUG)
    folder = _copy(built, tmp_path)
    shards = sorted(folder.glob("*.tacozip"))
    target = "hf://datasets/cubecast-test/den"

    first = publish(folder, target, private=True)
    repo = hub.repos["cubecast-test/den"]
    assert repo.private and len(repo.commits) == 2  # the hub's first + ours
    assert {s.name for s in shards} <= set(first.uploaded) and set(repo.lfs) >= {
        s.name for s in shards
    }
    lfs_bytes = sum(len(repo.files[p]) for p in repo.lfs)  # shards and PNGs
    assert hub.uploaded_bytes == lfs_bytes
    assert repo.files["README.md"] == (folder / "README.md").read_bytes()

    again = publish(folder, target)
    assert again.uploaded == [] and again.commit is None
    assert len(repo.commits) == 2 and hub.uploaded_bytes == lfs_bytes

    # change one shard (a new ZIP comment: same samples, other bytes), verify again, publish
    changed = shards[1]
    with zipfile.ZipFile(changed, "a") as z:
        z.comment = b"repacked"
    verify_step(_recipe(twin), folder, progress=False)
    before = hub.uploaded_bytes
    third = publish(folder, target)
    assert [f for f in third.uploaded if f.endswith(".tacozip")] == [changed.name]
    assert hub.uploaded_bytes - before == changed.stat().st_size
    assert len(repo.commits) == 3

    # downstream: tacoreader-free ranged read through the hub's resolve URL
    from pipeline.taco.read import open_sample

    url = f"{hub.url}/datasets/cubecast-test/den/resolve/main/{shards[0].name}"
    assert "red" in open_sample(url, 0, variables=["red"])
    logged = caplog.text + "".join(hub.requests)
    assert TOKEN not in logged


def test_hub_errors_are_clear_and_never_show_the_token(built, tmp_path, hub, monkeypatch):
    folder = _copy(built, tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_readonly")
    with pytest.raises(PublishError, match="no write access") as err:
        publish(folder, "hf://datasets/cubecast-test/ro")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_" + TOKEN)
    with pytest.raises(PublishError) as err2:
        publish(folder, "hf://datasets/cubecast-test/ro")
    for e in (err, err2):
        assert TOKEN not in str(e.value) and "hf_readonly" not in str(e.value)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PublishError, match="no HuggingFace token"):
        publish(folder, "hf://datasets/cubecast-test/ro")
