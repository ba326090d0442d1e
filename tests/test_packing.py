from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tacoreader

from pipeline import EncodeOptions
from pipeline.errors import CorruptStreamError, ManifestError, SourceError
from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards
from pipeline.taco.read import iter_samples, open_sample
from tests.conftest import s2_like
from tests.rangeserver import RangeServer

INFO = DatasetInfo(id="twins", title="twin cubes")


@pytest.fixture(scope="module")
def cubes():
    out = []
    for i in range(4):
        ds = s2_like(t=10, h=24, w=24, seed=i)
        ds.attrs["id"] = f"cube_{i}"
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def shards(cubes, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    samples = [
        encode_sample(ds, EncodeOptions(crf=8), split="test" if i == 3 else "train")
        for i, ds in enumerate(cubes)
    ]
    paths = pack_shards(samples, out, INFO, split_size="40KB")
    return out, paths, samples


def test_several_shards_and_tacocat(shards):
    out, paths, _ = shards
    assert len(paths) >= 2 and all(p.suffix == ".tacozip" for p in paths)
    assert (out / ".tacocat").is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".pack-")]


def test_tacoreader_loads_filters_and_open_sample_decodes(shards, cubes):
    out, paths, samples = shards
    for source in ([str(p) for p in paths], str(out / ".tacocat")):
        ds = tacoreader.load(source)
        table = ds.data.to_arrow()
        assert sorted(table.column("id").to_pylist()) == [f"cube_{i}" for i in range(4)]
        assert set(table.column_names) >= {"psnr_min", "bpppb", "ratio", "split", "bbox_west"}
    test = tacoreader.load([str(p) for p in paths]).sql("SELECT * FROM data WHERE split = 'test'")
    assert test.column("id").to_pylist() == ["cube_3"]
    for i, cube in enumerate(cubes):
        dec = open_sample([str(p) for p in paths], f"cube_{i}")
        np.testing.assert_array_equal(dec.SCL.values, cube.SCL.values)
        np.testing.assert_array_equal(np.isnan(dec.B02.values), np.isnan(cube.B02.values))
        psnr_min = min(q.psnr for q in samples[i].quality if q.role == "continuous")
        assert psnr_min > 40
    row = open_sample(tacoreader.load([str(p) for p in paths]), 3, variables=["SCL"])
    assert list(row.data_vars) == ["SCL"]
    assert [sid for sid, _ in iter_samples([str(p) for p in paths])] == [
        f"cube_{i}" for i in range(4)
    ]


def test_http_subset_reads_only_needed_children(shards, monkeypatch):
    # remote shards are read in cached blocks (2 MiB: these whole shards): blocks far
    # smaller than the children here show which children were read
    block = 1024
    monkeypatch.setenv("CUBECAST_RANGE_BLOCK", "1KiB")
    out, paths, _ = shards
    shard = paths[0]
    with zipfile.ZipFile(shard) as z:
        sid = next(n.split("/")[1] for n in z.namelist() if n.startswith("DATA/"))
        info = {i.filename: i for i in z.infolist()}
    with RangeServer(out) as srv:
        dec = open_sample(f"{srv.url}/{shard.name}", sid, variables=["SCL"])
        assert list(dec.data_vars) == ["SCL"]
        fetched = [(a, b) for name, a, b in srv.ranges if name == shard.name]
    assert all(b - a <= block for a, b in fetched)
    wanted = {f"DATA/{sid}/manifest_json", f"DATA/{sid}/scl_codes_zst"}
    for name, i in info.items():
        if not name.startswith(f"DATA/{sid}/"):
            continue
        start, end = i.header_offset, i.header_offset + 30 + len(name) + i.file_size
        read = sum(max(0, min(b, end) - max(a, start)) for a, b in fetched)
        if name in wanted:
            assert read >= end - start, name
        else:  # at most the blocks it shares with a wanted neighbour
            assert read <= 2 * block, name
    total = sum(b - a for a, b in fetched)
    assert total < shard.stat().st_size / 2


def test_truncated_shard_error(shards, tmp_path):
    _, paths, _ = shards
    bad = tmp_path / "bad.tacozip"
    bad.write_bytes(paths[0].read_bytes()[:-2000])
    with pytest.raises(CorruptStreamError, match="not a TACO shard, or truncated"):
        open_sample(str(bad), 0)


def _rewrite(src, dst, drop=None, replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if drop and item.filename.endswith(drop):
                continue
            data = zin.read(item.filename)
            if replace and item.filename in replace:
                data = replace[item.filename]
            zout.writestr(item, data)


def test_missing_child_error(shards, tmp_path):
    _, paths, _ = shards
    with zipfile.ZipFile(paths[0]) as z:
        sid = next(n.split("/")[1] for n in z.namelist() if n.startswith("DATA/"))
    bad = tmp_path / "missing.tacozip"
    _rewrite(paths[0], bad, drop=f"{sid}/scl_codes_zst")
    with pytest.raises(CorruptStreamError, match="has no child 'scl_codes_zst'"):
        open_sample(str(bad), sid)


def test_manifest_from_another_cube_error(shards, tmp_path):
    _, paths, _ = shards

    def first_id(path):
        with zipfile.ZipFile(path) as z:
            return next(n.split("/")[1] for n in z.namelist() if n.startswith("DATA/"))

    sid, other_id = first_id(paths[0]), first_id(paths[-1])
    with zipfile.ZipFile(paths[-1]) as z:
        other = z.read(f"DATA/{other_id}/manifest_json")
    bad = tmp_path / "swapped.tacozip"
    _rewrite(paths[0], bad, replace={f"DATA/{sid}/manifest_json": other})
    with pytest.raises(ManifestError, match="carries the manifest of cube"):
        open_sample(str(bad), sid)


def test_xarray_engine_opens_a_shard_sample(tmp_path):
    import xarray as xr

    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards
    from tests.conftest import s2_like

    samples = [encode_sample(s2_like(seed=i), cube_id=f"c{i}") for i in range(2)]
    (shard,) = pack_shards(samples, tmp_path, DatasetInfo(id="eng"))
    ds = xr.open_dataset(shard, engine="cubecast", sample="c1", variables=["B04"])
    assert list(ds.data_vars) == ["B04"] and ds.sizes["time"] == 12
    assert xr.open_dataset(shard, engine="cubecast").attrs["id"] == "s2like"


def test_open_sample_reads_a_time_window_of_some_variables(shards, cubes):
    _, paths, _ = shards
    ds = tacoreader.load([str(p) for p in paths])
    window = open_sample(ds, "cube_2", variables=["SCL", "B02"], time=slice(3, 7))
    whole = open_sample(ds, "cube_2")
    assert list(window.data_vars) == ["B02", "SCL"] and window.sizes["time"] == 4
    np.testing.assert_array_equal(window.SCL.values, cubes[2].SCL.values[3:7])
    np.testing.assert_array_equal(window.B02.values, whole.B02.values[3:7])
    np.testing.assert_array_equal(window.time.values, cubes[2].time.values[3:7])


def test_a_table_of_ids_as_the_source_says_what_to_pass(shards):
    _, paths, _ = shards
    ids = tacoreader.load([str(p) for p in paths]).sql("SELECT id FROM data")
    with pytest.raises(SourceError, match="pass the tacoreader dataset"):
        open_sample(ids, 0)
