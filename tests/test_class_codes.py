"""Class layers as zstd chunks (``zstd-codes``): bit-exact for 8- and 16-bit layers, a
time window decompresses only its chunks, smaller than FFV1 on the real samples, and
cubes whose class layers are FFV1 (format version 2) still decode."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import xarray as xr
import zstandard

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.classcodes import CODEC, CodesWriter, codes_chunk
from pipeline.codec.decode import iter_decode
from pipeline.codec.encoded import MANIFEST_FILE, EncodedCube
from pipeline.codec.manifest import Manifest
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.codec.readcost import chunks, read_costs
from pipeline.codec.sizes import window_nbytes
from pipeline.errors import InvalidCubeError
from tests.conftest import s2_like


def _class_stream(enc: EncodedCube, name: str):
    (s,) = [s for s in enc.manifest.streams if s.planes == [name]]
    return s


def classes(t: int = 70, h: int = 20, w: int = 18, seed: int = 0) -> xr.Dataset:
    """An 8-bit SCL-like layer, a 16-bit QA layer of a few bit patterns (a palette's case),
    a 16-bit layer of 1000 classes (codes as they are), a signed and a boolean layer."""
    rng = np.random.default_rng(seed)
    shape = (t, h, w)
    blobs = rng.integers(0, 4, shape).cumsum(axis=2) % 12
    qa = np.array([2720, 2724, 2728, 2976, 3008, 3744, 61440], dtype=np.uint16)
    wide = (rng.integers(0, 1000, shape) * 60).astype(np.uint16)
    wide[0, 0, 0], wide[0, 0, 1] = 0, 65535  # the whole 16-bit span
    ds = xr.Dataset(
        {
            "SCL": (("time", "y", "x"), blobs.astype(np.uint8)),
            "QA": (("time", "y", "x"), qa[rng.integers(0, len(qa), shape)]),
            "wide": (("time", "y", "x"), wide),
            "signed": (("time", "y", "x"), rng.integers(-300, -200, shape).astype(np.int16)),
            "clouds": (("time", "y", "x"), rng.random(shape) < 0.2),
        },
        coords={"time": np.arange(t), "y": np.arange(h), "x": np.arange(w)},
    )
    return ds


ROLES = dict.fromkeys(["SCL", "QA", "wide", "signed", "clouds"], "categorical")


@pytest.fixture(scope="module")
def encoded() -> tuple[xr.Dataset, EncodedCube]:
    ds = classes()
    return ds, encode_cube(ds, roles=ROLES)


def test_class_layers_are_zstd_chunks_and_come_back_bit_exact(encoded):
    ds, enc = encoded
    for name in ROLES:
        s = _class_stream(enc, name)
        assert (s.codec, s.kind, s.keyint, s.backend) == (CODEC, "categorical", 32, "zstd")
        assert s.file == f"{name.lower()}.codes.zst" and len(s.chunk_offsets) == 3  # 70 frames
        assert s.pix_fmt == ("gray16le" if name in ("QA", "wide") else "gray")
    assert enc.manifest.version == 3
    dec = decode_cube(EncodedCube.from_bytes(enc.to_bytes()))
    for name in ROLES:
        assert dec[name].dtype == ds[name].dtype
        np.testing.assert_array_equal(dec[name].values, ds[name].values)


def test_sixteen_bit_chunks_use_a_palette_only_where_it_fits(encoded):
    ds, enc = encoded
    for name, k in (("QA", 7), ("wide", 0)):
        s = _class_stream(enc, name)
        data = enc.read_file(s.file)
        for off in s.chunk_offsets:
            assert int(np.frombuffer(data[off : off + 2], "<u2")[0]) == k


def test_real_class_layers_round_trip_smaller_than_ffv1(eolearn, landsat):
    """Measured: eo-learn CLM (68 x 101 x 100, uint8) 1.3 KB against FFV1's 10.3 KB;
    Landsat BQA (19 x 132 x 123, uint16) 14.1 KB against 39.7 KB."""
    for ds, name, factor in ((eolearn, "CLM", 4), (landsat, "BQA", 2)):
        sizes = {}
        for codec in (CODEC, "ffv1"):
            enc = encode_cube(ds, EncodeOptions(crf=20, class_codec=codec))
            s = _class_stream(enc, name)
            assert s.codec == codec
            sizes[codec] = s.nbytes
            dec = decode_cube(enc, [name])
            assert dec[name].dtype == ds[name].dtype
            np.testing.assert_array_equal(dec[name].values, ds[name].values)
        assert sizes[CODEC] * factor < sizes["ffv1"], sizes


@pytest.mark.parametrize(
    ("window", "wanted"), [((40, 48), [1]), ((60, 68), [1, 2]), ((0, 70), [0, 1, 2])]
)
def test_a_time_window_decompresses_only_its_chunks(encoded, window, wanted):
    ds, enc = encoded
    stats = DecodeStats()
    dec = decode_cube(enc, ["QA"], time=slice(*window), stats=stats)
    np.testing.assert_array_equal(dec.QA.values, ds.QA.values[slice(*window)])
    assert [c for _, c in stats.chunks_decoded] == wanted
    assert {f.rsplit(":", 1)[-1] for f, _ in stats.chunks_decoded} == {"qa.codes.zst"}
    assert stats.frames_decoded == 0  # no video stream was opened


def test_windows_across_chunks_decompress_each_chunk_once(encoded):
    ds, enc = encoded
    stats = DecodeStats()
    got = list(iter_decode(enc, ["SCL"], window=7, time=slice(3, 70), stats=stats))
    joined = np.concatenate([w.SCL.values for w in got])
    np.testing.assert_array_equal(joined, ds.SCL.values[3:70])
    assert [c for _, c in stats.chunks_decoded] == [0, 1, 2]


def test_the_decode_budget_counts_whole_chunks(encoded):
    _, enc = encoded
    m = enc.manifest
    px = 20 * 18
    # a 1-frame window of an 8-bit layer: up to 65 frames of chunks (raw and uint16 codes),
    # then its own uint16 codes and its uint8 output
    stream = px * (3 * min(70, 1 + 2 * 32) + 2 * 1)
    assert window_nbytes(m, ["SCL"], 1) >= stream + px
    assert window_nbytes(m, ["QA"], 1) >= px * (4 * 65 + 2) + 2 * px


def test_read_costs_count_chunks_not_demuxed_packets(encoded):
    _, enc = encoded
    s = _class_stream(enc, "SCL")
    index = chunks(s, 70)
    sizes = np.diff([*s.chunk_offsets, s.nbytes]).tolist()
    assert index.window_cost(40, 48) == (sizes[1], 32)
    assert index.window_cost(60, 68) == (sizes[1] + sizes[2], 38)  # the last chunk: 6 frames
    tar = EncodedCube.from_bytes(enc.to_bytes())
    tar.store.reads.clear()
    costs = read_costs(tar)
    assert tar.store.reads == []  # no stream file opened: the manifest says it all
    assert costs[-1].frames == 64 and costs[-1].nbytes < enc.nbytes  # two chunks, whole


def test_cubes_with_ffv1_class_layers_still_decode(tmp_path):
    """A cube written as format version 2 wrote it (SCL in FFV1, manifest version 2)."""
    ds = s2_like(t=6, h=16, w=14)
    enc = encode_cube(ds, EncodeOptions(crf=20, class_codec="ffv1"))
    s = _class_stream(enc, "SCL")
    assert (s.codec, s.file, s.keyint, s.chunk_offsets) == ("ffv1", "scl.mkv", 1, None)
    folder = enc.to_folder(tmp_path / "v3")
    raw = zstandard.ZstdDecompressor().stream_reader((folder / MANIFEST_FILE).read_bytes())
    m = json.loads(raw.read(1 << 24))
    m["version"] = 2
    old = tmp_path / "v2"
    shutil.copytree(folder, old)
    (old / MANIFEST_FILE).write_text(json.dumps(m))
    assert Manifest.from_json((old / MANIFEST_FILE).read_text()).version == 2
    for cube in (enc, EncodedCube.from_folder(old)):
        dec = decode_cube(cube)
        np.testing.assert_array_equal(dec.SCL.values, ds.SCL.values)
        dec = decode_cube(cube, ["SCL"], time=slice(2, 5))
        np.testing.assert_array_equal(dec.SCL.values, ds.SCL.values[2:5])


def test_unknown_class_codec_is_refused_by_name():
    with pytest.raises(InvalidCubeError, match="class_codec 'libx265'"):
        EncodeOptions(class_codec="libx265")


def test_writer_and_chunk_decoder_agree_for_every_layout():
    """8-bit codes; 16-bit codes with a palette; 16-bit codes past 256 values."""
    rng = np.random.default_rng(1)
    for pix_fmt, codes in (
        ("gray", rng.integers(0, 256, (5, 2, 6, 7))),
        ("gray16le", rng.choice([3, 900, 65535], (5, 2, 6, 7))),
        ("gray16le", rng.integers(0, 65536, (5, 2, 6, 7))),
    ):
        buf = io.BytesIO()
        w = CodesWriter(buf, chunk_frames=2, pix_fmt=pix_fmt)
        for frame in codes:
            w.write(frame)
        w.close()
        data, offsets = buf.getvalue(), [*w.offsets, len(buf.getvalue())]
        assert len(offsets) == 4  # chunks of 2, 2 and 1 frames
        got = [
            codes_chunk(data[a:b], min(2, 5 - 2 * c), (2, 6, 7), pix_fmt, "t", c)
            for c, (a, b) in enumerate(zip(offsets, offsets[1:], strict=False))
        ]
        assert all(g.dtype == np.uint16 for g in got)
        np.testing.assert_array_equal(np.concatenate(got), codes)


def test_info_lists_class_layers_apart_from_video(encoded, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    _, enc = encoded
    folder = EncodedCube.from_bytes(enc.to_bytes()).to_folder(tmp_path / "c")
    out = CliRunner().invoke(app, ["info", str(folder)], env={"COLUMNS": "250"}).output
    for word in (CODEC, "chunks of 32 frames", "class layers (zstd)", "read cost"):
        assert word in out, out
    assert chunk_codec(CODEC) is not None and chunk_codec("ffv1") is None
