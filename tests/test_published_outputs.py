"""What a downstream user gets: shards per split with a real extent and a .tacocat, a card
whose hub configs list real splits and every sample's settings, a report with readable
plots and an image panel, and `pack` options that are applied or refused, never ignored."""

from __future__ import annotations

import json
import zipfile

import pytest
import tacoreader
from typer.testing import CliRunner

from pipeline.build import build, panel_bands, with_overrides
from pipeline.cli import app
from pipeline.errors import RecipeError
from pipeline.recipe import load_recipe
from pipeline.sources.twins import write_dynamicearthnet


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=3, frames=12, size=64, progress=False)
    return root


@pytest.fixture(scope="module")
def built(twin, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    recipe = with_overrides(load_recipe("dynamicearthnet", location=str(twin)), cubes=3)
    return out, build(recipe, out, progress=False)


def test_one_shard_set_per_split_with_a_real_extent(built):
    out, result = built
    names = sorted(p.name for p in result.shards)
    assert names == [f"dynamicearthnet-cubecast_{s}.tacozip" for s in ("test", "train", "val")]
    for shard in result.shards:
        splits = {r["split"] for r in tacoreader.load(str(shard)).data.to_arrow().to_pylist()}
        assert splits == {shard.stem.rsplit("_", 1)[1]}
    ds = tacoreader.load(str(out / ".tacocat"))
    west, south, east, north = ds.extent["spatial"]
    assert (west, south, east, north) != (-180.0, -90.0, 180.0, 90.0)
    rows = ds.data.to_arrow().to_pylist()
    assert west == min(r["bbox_west"] for r in rows) and east == max(r["bbox_east"] for r in rows)
    assert south == min(r["bbox_south"] for r in rows)
    assert north == max(r["bbox_north"] for r in rows)
    start, end = ds.extent["temporal"]
    assert start.startswith("2018-01-01") and end.startswith("2018-01-12")
    with zipfile.ZipFile(result.shards[0]) as z:
        assert json.loads(z.read("COLLECTION.json"))["extent"]["temporal"]


def test_single_shard_still_gets_a_tacocat(tmp_path):
    from pipeline import EncodeOptions
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards
    from tests.conftest import s2_like

    paths = pack_shards(
        [encode_sample(s2_like(t=4, h=16, w=16), EncodeOptions(crf=10))],
        tmp_path,
        DatasetInfo(id="one"),
    )
    assert [p.name for p in paths] == ["one.tacozip"]
    assert tacoreader.load(str(tmp_path / ".tacocat")).data.to_arrow().num_rows == 1


def test_card_configs_list_real_splits(built):
    from huggingface_hub import DatasetCard

    from pipeline.publish.card_load import install_line

    out, _ = built
    card = DatasetCard.load(out / "README.md")
    configs = card.data.to_dict()["configs"]
    files = {d["split"]: d["path"] for d in configs[0]["data_files"]}
    assert files == {s: f"data/{s}.parquet" for s in ("train", "val", "test")}
    text = card.text
    for s in ("train", "val", "test"):  # the body names each split's shards
        assert f"dynamicearthnet-cubecast_{s}.tacozip" in text
    assert install_line() in text and "no release on PyPI yet" in text
    assert "CRF per sample" in text


def test_card_shows_every_samples_settings():
    from pipeline.publish.card import stream_rows
    from pipeline.publish.verify import Verification

    def meta(crf: float) -> dict:
        return {
            "codec": json.dumps(
                {
                    "rgb": {
                        "codec": "libx265",
                        "crf": crf,
                        "engine": "ffmpeg",
                        "pix_fmt": "gbrp12le",
                        "bands": ["r", "g", "b"],
                    }
                }
            )
        }

    v = Verification(samples={"a": meta(10), "b": meta(14)})
    row = stream_rows(v)[-1]
    assert "a: 10" in row and "b: 14" in row and "ffmpeg" in row
    same = stream_rows(Verification(samples={"a": meta(12), "b": meta(12)}))[-1]
    assert "12 (all 2)" in same


def test_report_has_plots_and_an_image_panel(built):
    out, result = built
    report = (out / "REPORT.md").read_text()
    for png in ("sample.png", "sizes.png", "psnr_vs_bpppb.png", "psnr_per_band.png"):
        assert (out / "report" / png).stat().st_size > 5000, png
        assert f"report/{png}" in report
    assert report.index("sample.png") < report.index("sizes.png")  # the data first


def test_panel_prefers_the_rgb_group():
    recipe = load_recipe("dynamicearthnet")
    assert panel_bands(recipe, ["blue", "green", "red", "nir"]) == ["red", "green", "blue"]
    assert panel_bands(recipe, ["nir"]) == ["nir"]


def test_pack_says_how_many_cubes_and_applies_crf(twin, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(
        app, ["pack", "dynamicearthnet", str(out), "--source", str(twin), "--crf", "20"]
    )
    assert r.exit_code == 0, r.output
    assert "selected 2 of 3 cubes" in r.output and "recipe count = 2" in r.output
    rows = tacoreader.load(str(out / ".tacocat")).data.to_arrow().to_pylist()
    assert len(rows) == 2
    crfs = {s["crf"] for row in rows for s in json.loads(row["codec"]).values() if s["crf"]}
    assert crfs == {20.0}

    r = runner.invoke(
        app, ["pack", "dynamicearthnet", str(tmp_path / "o2"), "--source", str(twin), "--id", "x"]
    )
    assert r.exit_code != 0 and "--id applies to a folder" in str(r.exception)


def test_overrides_are_validated_like_the_recipe():
    recipe = load_recipe("dynamicearthnet")
    assert with_overrides(recipe, crf=18).codec.psnr is None
    assert all(g.psnr is None for g in with_overrides(recipe, crf=18).codec.groups)
    assert with_overrides(recipe, psnr=40).codec.psnr == 40
    assert with_overrides(recipe, cubes=5).source.cubes.count == 5
    with pytest.raises(RecipeError, match="crf"):
        with_overrides(recipe, crf=99)
    assert with_overrides(recipe, split_size="1gb").shards.split_size == "1GB"
