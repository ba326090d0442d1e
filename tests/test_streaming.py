"""Streaming: the encoder reads a cube block by block, writes streams to disk as it goes,
and the decoder hands out time windows without decoding any frame twice."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from pipeline import (
    EncodedCube,
    EncodeOptions,
    GroupSpec,
    decode_cube,
    encode_cube,
    iter_decode,
    sources,
)
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.encoded import FolderStore, SpoolStore
from pipeline.codec.passes import READ_BLOCK
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.codec.quantize import Quantiser
from pipeline.recipe import load_recipe
from pipeline.sources import cube_ids, load_cube
from pipeline.sources.twins import write_dynamicearthnet
from tests.conftest import s2_like

FRAMES = 20


class RecordingArray(BackendArray):
    """A (time, y, x) numpy array that records how many frames each read asks for."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.frames_per_read: list[int] = []

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw
        )

    def _raw(self, key: tuple) -> np.ndarray:
        out = self.data[key]
        self.frames_per_read.append(out.shape[0] if out.ndim == 3 else 1)
        return out


def test_encoder_never_asks_the_source_for_more_than_a_block():
    rng = np.random.default_rng(1)
    ramp = np.add.outer(np.arange(64), np.arange(64)) * 20
    data = ramp + rng.integers(0, 50, (40, 64, 64)) + np.arange(40)[:, None, None] * 5
    data = data.astype(np.uint16)
    backend = RecordingArray(data)
    ds = xr.Dataset({"b": (("time", "y", "x"), indexing.LazilyIndexedArray(backend))})
    enc = encode_cube(ds, EncodeOptions(crf=10))
    assert backend.frames_per_read and max(backend.frames_per_read) <= READ_BLOCK
    # one pass for the value range, one pass to encode: each frame read exactly twice
    assert sum(backend.frames_per_read) == 2 * 40
    dec = decode_cube(enc)
    assert np.abs(dec.b.values.astype(int) - data.astype(int)).mean() < 20


@pytest.fixture(scope="module")
def den_cube(tmp_path_factory) -> xr.Dataset:
    root = tmp_path_factory.mktemp("den-stream")
    write_dynamicearthnet(root, cubes=1, frames=FRAMES, size=64, progress=False)
    recipe = load_recipe("dynamicearthnet", location=str(root))
    with pytest.MonkeyPatch.context() as mp:  # as a cube too large to hold would stream
        mp.setattr(sources, "IN_MEMORY_BYTES", -1)
        return load_cube(recipe, cube_ids(recipe)[0]).dataset


def test_a_small_cube_is_read_into_memory_once(tmp_path):
    write_dynamicearthnet(tmp_path, cubes=1, frames=4, size=16, progress=False)
    recipe = load_recipe("dynamicearthnet", location=str(tmp_path))
    ds = load_cube(recipe, cube_ids(recipe)[0]).dataset
    assert all(isinstance(v.variable._data, np.ndarray) for v in ds.data_vars.values())


def _cache(ds: xr.Dataset):
    return ds["red"].variable._data.array.cache


def test_each_geotiff_is_opened_once_per_pass_for_all_bands(den_cube):
    cache = _cache(den_cube)
    before = cache.reads
    groups = (GroupSpec(("red", "green", "blue")), GroupSpec(("nir",)))
    opts = EncodeOptions(crf=12, groups=groups, decorrelate="none", codec="libx265")
    enc = encode_cube(den_cube, opts, roles={"label": "metadata"})
    assert [s.planes for s in enc.manifest.streams] == [["red", "green", "blue"], ["nir"]]
    # 4 bands in 2 streams, yet one read per day for the range pass and one to encode
    # (per band and stream it would be 8 per day); the range pass's two reader threads
    # may at worst race for a frame or two
    assert 2 * FRAMES <= cache.reads - before <= 2 * FRAMES + 2


def test_streams_are_spooled_to_disk_and_moved_by_to_folder(s2cube, tmp_path):
    enc = encode_cube(s2cube, workdir=tmp_path / "work")
    assert isinstance(enc.store, SpoolStore)
    spool = enc.store.path
    assert spool.parent == tmp_path / "work"
    stream = enc.manifest.streams[0].file
    assert (spool / stream).stat().st_size == enc.manifest.streams[0].nbytes
    out = enc.to_folder(tmp_path / "cube")
    assert isinstance(enc.store, FolderStore) and enc.store.path == out
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *enc.filenames()])
    decode_cube(EncodedCube.from_folder(out))
    del enc
    gc.collect()
    assert not spool.exists()  # the spool folder goes with the cube object


def test_iter_decode_windows_equal_the_whole_and_decode_each_frame_once():
    ds = s2_like(t=30)
    enc = encode_cube(ds, EncodeOptions(crf=16, keyint=8))
    full = decode_cube(enc)
    stats = DecodeStats()
    windows = list(iter_decode(enc, window=7, stats=stats))
    assert [w.sizes["time"] for w in windows] == [7, 7, 7, 7, 2]
    joined = xr.concat(windows, dim="time", data_vars="all")
    for name in full.data_vars:
        np.testing.assert_array_equal(joined[name].values, full[name].values)
    assert joined.time.values.tolist() == full.time.values.tolist()
    n_video = sum(1 for s in enc.manifest.streams if chunk_codec(s.codec) is None)
    assert stats.frames_decoded == 30 * n_video  # no window re-decodes a GOP
    chunks = sum(-(-30 // s.keyint) for s in enc.manifest.streams if chunk_codec(s.codec))
    assert len(stats.chunks_decoded) == len(set(stats.chunks_decoded)) == chunks  # nor a chunk


def test_iter_decode_of_a_time_window_seeks_once():
    ds = s2_like(t=40)
    enc = encode_cube(ds, EncodeOptions(crf=20, keyint=8, decorrelate="none"))
    stats = DecodeStats()
    got = list(iter_decode(enc, variables=["B02"], window=4, time=slice(33, 40), stats=stats))
    assert [w.sizes["time"] for w in got] == [4, 3]
    assert stats.seeks == [33]
    assert stats.frames_decoded <= 8 + 7  # at most one GOP before the window


def test_iter_decode_rejects_an_empty_window(s2cube):
    from pipeline.errors import InvalidCubeError

    enc = encode_cube(s2cube)
    with pytest.raises(InvalidCubeError, match="window must be at least 1 frame"):
        next(iter_decode(enc, window=0))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.float32])
def test_float32_quantisation_matches_float64(dtype):
    rng = np.random.default_rng(3)
    if np.dtype(dtype).kind == "f":
        values = (rng.normal(280, 15, (3, 50, 50))).astype(dtype)
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, (3, 50, 50)).astype(dtype)
    q = Quantiser.for_range(float(values.min()), float(values.max()), 12, dtype != np.float32)
    out = np.empty(values.shape, np.uint16)
    q.quantise(values, out)
    reference = q.codes_to_uint((values.astype(np.float64) - q.offset) / q.scale)
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= (dtype == np.float32)
    np.testing.assert_array_equal(out[values == values.min()], 0)


def test_spool_store_path_is_a_folder(tmp_path: Path):
    store = SpoolStore(tmp_path)
    store.write("a.bin", b"xyz")
    assert store.read("a.bin") == b"xyz" and store.file_path("a.bin").parent == store.path
