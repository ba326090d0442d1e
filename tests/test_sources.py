"""Recipes, source adapters over synthetic twins, and the download layer over local HTTP."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pipeline.codec.metrics import compare
from pipeline.errors import RecipeError, SourceError
from pipeline.recipe import load_recipe, parse_recipe
from pipeline.sources import cube_ids, load_cube, open_source
from pipeline.sources.download import RetryPolicy, download
from pipeline.sources.mirror import HttpMirror, glob_regex, open_mirror
from pipeline.sources.twins import write_deepextremecubes, write_dynamicearthnet
from tests.rangeserver import RangeServer

ROOT = Path(__file__).resolve().parents[1]
DEC_FRAMES, DEN_FRAMES = 24, 36


@pytest.fixture(scope="module")
def dec_twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dec")
    write_deepextremecubes(root, cubes=2, frames=DEC_FRAMES, size=32, progress=False)
    return root


@pytest.fixture(scope="module")
def den_twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=2, frames=DEN_FRAMES, size=64, progress=False)
    return root


# -- recipes ------------------------------------------------------------------------------
def _raw(name: str) -> dict:
    return tomllib.loads((ROOT / "datasets" / f"{name}.toml").read_text())


@pytest.mark.parametrize("name", ["deepextremecubes", "dynamicearthnet"])
def test_shipped_recipes_validate(name):
    r = load_recipe(name)
    assert r.source.adapter == name
    assert r.verify.psnr_min > 0 and r.publish.repo_id.count("/") == 1
    assert r.encode_options().groups
    assert r.encode_options().hedge and not r.without_hedge().encode_options().hedge


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(colour="blue"), "colour: unknown key"),
        (lambda d: d["source"].update(adapter="sentinel9"), "source.adapter"),
        (lambda d: d["codec"].update(crf=99), "codec.crf"),
        (lambda d: d["shards"].update(split_size="lots"), "not a size"),
        (lambda d: d["publish"].update(schedule="every day"), "cron"),
        (lambda d: d["codec"]["groups"][0].update(bands=[f"b{i}" for i in range(17)]), "bands"),
        (lambda d: d["variables"].update(categorical=["B02"]), "both continuous and"),
        (lambda d: d.pop("verify"), "verify: Field required"),
        (lambda d: d["taco"].update(id="Has Spaces"), "taco.id"),
        (lambda d: d["codec"].update(codec="libaom-av1", engine="pyav"), "needs engine"),
        (lambda d: d["codec"].update(codec="vp9"), "codec.codec"),
    ],
)
def test_recipe_errors_name_the_key(mutate, message):
    data = _raw("deepextremecubes")
    data["name"] = "deepextremecubes"
    mutate(data)
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data, "deepextremecubes.toml")


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(RecipeError, match="available: .*dynamicearthnet"):
        load_recipe("no-such-dataset")


# -- adapters -----------------------------------------------------------------------------
def test_deepextremecubes_adapter_reads_twin(dec_twin):
    r = load_recipe("deepextremecubes", location=str(dec_twin))
    ids = cube_ids(r)
    assert len(ids) == 2 and all(i.startswith("mc_") and "_1.3_" in i for i in ids)
    cube = load_cube(r, ids[0])
    ds = cube.dataset
    assert dict(ds.sizes) == {"time": DEC_FRAMES, "y": 32, "x": 32, "event_time": 5 * DEC_FRAMES}
    assert ds["B02"].dtype.kind == "f" and ds["B02"].encoding["dtype"] == np.int16
    assert ds["B02"].encoding["scale_factor"] == pytest.approx(1e-4)
    assert ds["B02"].encoding["_FillValue"] == -9999
    assert np.isnan(ds["B02"].values).any()  # missing scenes decode to NaN
    assert ds["SCL"].dtype == np.uint8 and int(ds["SCL"].max()) <= 11
    assert ds["cloudmask_en"].dtype == np.uint8 and int(ds["cloudmask_en"].max()) <= 4
    assert ds["t2m_mean"].dims == ("time",) and ds["events"].dims == ("event_time",)
    assert ds["lccs_class"].dims == ("y", "x") and ds["cop_dem"].dtype == np.float32
    assert np.diff(ds.time.values).astype("timedelta64[D]").astype(int).tolist() == [5] * (
        DEC_FRAMES - 1
    )
    assert str(ds.time.values[0])[:10] == "2016-01-01"
    assert cube.crs.startswith("EPSG:326")
    w, s, e, n = cube.bbox
    assert -180 <= w < e <= 180 and -90 <= s < n <= 90


def test_dynamicearthnet_adapter_reads_twin_lazily(den_twin):
    r = load_recipe("dynamicearthnet", location=str(den_twin))
    cubes = list(open_source(r, progress=False))
    assert len(cubes) == 2
    cube = cubes[0]
    ds = cube.dataset
    assert dict(ds.sizes) == {"time": DEN_FRAMES, "y": 64, "x": 64, "label_time": 2}
    for band in ("blue", "green", "red", "nir"):
        assert ds[band].dtype == np.uint16 and ds[band].dims == ("time", "y", "x")
    assert ds["label"].dims == ("label_time", "y", "x") and ds["label"].dtype == np.uint8
    assert set(np.unique(ds["label"].values)) <= set(range(7))
    assert str(ds.time.values[0])[:10] == "2018-01-01"
    assert cube.crs.startswith("EPSG:")
    assert {c.split for c in cubes} <= {"train", "val", "test"} and cubes[0].split
    # lazily indexed: one frame of one band reads one GeoTIFF window
    frame = ds["nir"].isel(time=5).values
    assert frame.shape == (64, 64) and frame.max() > 0


def test_selection_by_ids_and_missing_ids(den_twin):
    r = load_recipe("dynamicearthnet", location=str(den_twin))
    ids = cube_ids(r)
    data = r.model_dump()
    data["source"]["cubes"] = {"ids": [ids[1]]}
    assert cube_ids(parse_recipe(data)) == [ids[1]]
    data["source"]["cubes"] = {"ids": ["nope_0000_13"]}
    with pytest.raises(SourceError, match="cubes not found: nope_0000_13"):
        cube_ids(parse_recipe(data))


def test_missing_source_folder_is_a_clear_error(tmp_path):
    r = load_recipe("dynamicearthnet", location=str(tmp_path / "nowhere"))
    with pytest.raises(SourceError, match="nowhere: source folder does not exist"):
        next(open_source(r))


@pytest.mark.parametrize("name", ["deepextremecubes", "dynamicearthnet"])
def test_recipe_round_trip_meets_its_thresholds(name, dec_twin, den_twin):
    from pipeline.codec.decode import decode_cube
    from pipeline.codec.encode import encode_cube

    twin = dec_twin if name == "deepextremecubes" else den_twin
    r = load_recipe(name, location=str(twin))
    cube = next(open_source(r, progress=False))
    ds = cube.dataset.load()
    enc = encode_cube(ds, r.encode_options(), roles=r.roles(), cube_id=cube.id)
    for q in compare(ds, decode_cube(enc)):
        if q.role == "continuous":
            assert q.psnr >= r.verify.threshold(q.channel), q
        else:
            assert q.exact, q


# -- downloads ----------------------------------------------------------------------------
def test_glob_regex():
    rx = glob_regex("**/mc_*.zarr/.zattrs")
    assert rx.match("mc_1.zarr/.zattrs") and rx.match("a/b/mc_1.zarr/.zattrs")
    assert not rx.match("a/mc_1.zarr/x/.zattrs")
    assert glob_regex("planet/*/PF-SR/*.tif").match("planet/1_2_13/PF-SR/2018-01-01.tif")


def test_download_resumes_after_dropped_connection(tmp_path):
    blob = np.random.default_rng(0).bytes(3_000_000)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "big.bin").write_bytes(blob)
    with RangeServer(tmp_path / "srv") as srv:
        srv.drop_once["big.bin"] = 1_000_000
        out = download(
            f"{srv.url}/big.bin",
            tmp_path / "cache" / "big.bin",
            sha256=hashlib.sha256(blob).hexdigest(),
            policy=RetryPolicy(retries=3, backoff=0.01),
            progress=False,
        )
        assert out.read_bytes() == blob
        gets = [h.get("Range") for p, h in srv.requests if p == "/big.bin"]
        assert gets[0] is None and gets[1].startswith("bytes=") and gets[1] != "bytes=0-"
        resumed_at = int(gets[1].split("=")[1].rstrip("-"))
        assert 0 < resumed_at <= 1_000_000
        # second call: cache hit, no request
        n = len(srv.requests)
        download(f"{srv.url}/big.bin", out, sha256=hashlib.sha256(blob).hexdigest())
        assert len(srv.requests) == n
    assert not list((tmp_path / "cache").glob("*.part"))


def test_download_404_names_the_url(tmp_path):
    with RangeServer(tmp_path) as srv:
        url = f"{srv.url}/missing/2018-01-01.tif"
        with pytest.raises(SourceError, match=r"missing/2018-01-01.tif: HTTP 404"):
            download(url, tmp_path / "x.tif", progress=False)
    assert not (tmp_path / "x.tif").exists()


def test_download_unreachable_host_names_the_url(tmp_path):
    with pytest.raises(SourceError, match=r"127.0.0.1:9/x: unreachable after 2 attempts"):
        download(
            "http://127.0.0.1:9/x",
            tmp_path / "x",
            policy=RetryPolicy(retries=1, backoff=0.01, timeout=2),
            progress=False,
        )


def test_checksum_mismatch_is_refused(tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(b"abc")
    with RangeServer(tmp_path / "srv") as srv, pytest.raises(SourceError, match="SHA-256"):
        download(f"{srv.url}/f.bin", tmp_path / "f.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "f.bin").exists()


def test_adapters_read_twins_over_http(dec_twin, den_twin, tmp_path):
    for name, twin in (("dynamicearthnet", den_twin), ("deepextremecubes", dec_twin)):
        with RangeServer(twin) as srv:
            cache = tmp_path / name
            r = load_recipe(name, location=srv.url, cache=str(cache))
            mirror = open_mirror(srv.url, cache, progress=False)
            assert isinstance(mirror, HttpMirror)
            ids = cube_ids(r, mirror)
            assert ids == cube_ids(load_recipe(name, location=str(twin)))
            cube = load_cube(r, ids[0], mirror)
            local = load_cube(load_recipe(name, location=str(twin)), ids[0])
            for v in local.dataset.data_vars:
                np.testing.assert_array_equal(cube.dataset[v].values, local.dataset[v].values)
            assert cube.split == local.split


def test_fsspec_mirror(den_twin, tmp_path):
    r = load_recipe("dynamicearthnet", location=f"file://{den_twin}")
    assert len(cube_ids(r)) == 2
    mirror = open_mirror(f"local://{den_twin}", tmp_path)
    assert mirror.list("splits.csv") == ["splits.csv"]
    assert mirror.fetch("splits.csv").read_text().startswith("id,split")
