"""The raw carrier (issue 26 item 3, small frames): video packets without Matroska, their
index in the manifest. Chosen per stream where smaller; decodes, windows, read costs and
shards as Matroska does; a crafted index is refused with the stream's name, before any
allocation of its size."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zstandard

from pipeline import EncodeOptions, encode_cube
from pipeline.codec import packetindex, rawcarrier
from pipeline.codec.decode import decode_cube
from pipeline.codec.encoded import EncodedCube, MemoryStore, sha256
from pipeline.codec.manifest import FORMAT_VERSION, Manifest
from pipeline.codec.packetindex import PacketIndex, pack, read_index, unpack
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.codec.readcost import read_costs
from pipeline.errors import CorruptStreamError, InvalidCubeError, ManifestError
from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards
from pipeline.taco.read import open_sample
from tests.rangeserver import RangeServer


def tiny_frames(t: int = 120, h: int = 8, w: int = 12) -> xr.Dataset:
    """Small smooth frames: Matroska's per-frame bytes are a large share of them."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([np.sin(xx / 3 + i / 9) + np.cos(yy / 4 - i / 13) for i in range(t)])
    return xr.Dataset(
        {"v": (("time", "y", "x"), frames.astype(np.float32))},
        coords={"time": pd.date_range("2020-01-01", periods=t, freq="h")},
    )


@pytest.fixture(scope="module")
def pair() -> dict[str, EncodedCube]:
    ds = tiny_frames()
    # AV1 (no reordering), x265 (B-frames: decode order differs from display order) and VVC
    # (the ffmpeg engine's; keyframes repeat the parameter sets the raw carrier leaves out)
    return {
        f"{codec}/{carrier}": encode_cube(
            ds, EncodeOptions(crf=20, codec=codec, keyint=32, carrier=carrier, hedge=False)
        )
        for codec in CODECS
        for carrier in ("auto", "matroska")
    }


CODECS = ["libaom-av1", "libx265", "libvvenc"]


@pytest.mark.parametrize("codec", CODECS)
def test_small_frames_go_raw_smaller_and_decode_the_same(pair, codec):
    raw, mkv = pair[f"{codec}/auto"], pair[f"{codec}/matroska"]
    (rs,), (ms,) = raw.manifest.streams, mkv.manifest.streams
    assert rs.carrier == "raw" and ms.carrier == "matroska"
    assert raw.manifest.version == FORMAT_VERSION == 5 and mkv.manifest.version == 3
    assert rs.nbytes < ms.nbytes and raw.nbytes < mkv.nbytes
    whole = decode_cube(mkv).v.values
    np.testing.assert_array_equal(decode_cube(raw).v.values, whole)
    for lo, hi in [(0, 8), (40, 48), (70, 78), (112, 120)]:
        stats, before = DecodeStats(), DecodeStats()
        got = decode_cube(raw, time=slice(lo, hi), stats=stats)
        np.testing.assert_array_equal(got.v.values, whole[lo:hi])
        # from the keyframe Matroska's seek lands on, not from the stream's start
        decode_cube(mkv, time=slice(lo, hi), stats=before)
        assert stats.frames_decoded == before.frames_decoded
        assert codec == "libvvenc" or stats.frames_decoded <= hi - (lo // 32) * 32 + 16


@pytest.mark.parametrize("codec", CODECS)
def test_read_costs_come_from_the_index(pair, codec):
    raw, mkv = pair[f"{codec}/auto"], pair[f"{codec}/matroska"]
    r, m = read_costs(raw), read_costs(mkv)
    assert [c.frames for c in r] == [c.frames for c in m]
    assert r[1].nbytes == raw.manifest.streams[0].nbytes
    # the same packets without their Matroska framing, and the head (the index) every window
    # reads (Matroska's header is not counted)
    s = raw.manifest.streams[0]
    head = read_index(raw.read_file(s.file), 120, "s").start
    assert r[-1].nbytes <= m[-1].nbytes + head


def test_folder_roundtrip_and_matroska_kept_where_not_smaller(pair, tmp_path):
    raw = pair["libaom-av1/auto"]
    back = EncodedCube.from_folder(raw.to_folder(tmp_path / "c"))
    np.testing.assert_array_equal(
        decode_cube(back, time=slice(50, 60)).v.values, decode_cube(raw).v.values[50:60]
    )
    big = tiny_frames(t=6, h=96, w=128)
    enc = encode_cube(big, EncodeOptions(crf=20, codec="libx265", hedge=False))
    # few large frames: Matroska's bytes are a small share; either way it decodes
    assert enc.manifest.streams[0].carrier in ("raw", "matroska")
    assert decode_cube(enc).v.shape == (6, 96, 128)


def test_only_nal_units_the_extradata_holds_are_left_out():
    sps, slice_ = b"\x42\x01\x01\x01\x60", b"\x26\x01\xaf\x00\x11\x22"
    packet = len(sps).to_bytes(4, "big") + sps + len(slice_).to_bytes(4, "big") + slice_
    extradata = b"hvcC....." + sps + b"..."
    assert rawcarrier.strip_shared_nals(packet, extradata) == packet[4 + len(sps) :]
    assert rawcarrier.strip_shared_nals(packet, b"other") == packet
    assert rawcarrier.strip_shared_nals(packet[:-1], extradata) == packet[:-1]  # unparsed


def test_carrier_option_is_checked():
    with pytest.raises(InvalidCubeError, match="carrier 'mp4'"):
        EncodeOptions(carrier="mp4")


def test_shard_over_http_reads_raw_streams(tmp_path):
    ds = tiny_frames()
    ds.attrs["id"] = "tiny"
    sample = encode_sample(ds, EncodeOptions(crf=20, codec="libaom-av1", hedge=False))
    assert {s.carrier for s in sample.encoded.manifest.streams} == {"raw"}
    pack_shards([sample], tmp_path, DatasetInfo(id="t", title="t"))
    (shard,) = tmp_path.glob("*.tacozip")
    whole = decode_cube(sample.encoded).v.values
    with RangeServer(tmp_path) as srv:
        got = open_sample(f"{srv.url}/{shard.name}", "tiny", time=slice(64, 72))
    np.testing.assert_array_equal(got.v.values, whole[64:72])


# --- crafted indexes -------------------------------------------------------------------


def test_pack_unpack_roundtrip():
    idx = PacketIndex([5, 300, 70000, 1], [1, 0, 3, 2], [0, 2], b"xyz")
    assert unpack(pack(idx), 70306, 4, "s") == idx
    data = packetindex.head(idx) + bytes(70306)
    got = read_index(data, 4, "s")
    assert got.start == len(packetindex.head(idx)) and got.offsets[1] == got.start + 5


def _packed_varints(values: list[int], tail: bytes = b"") -> bytes:
    out = bytearray()
    for v in values:
        packetindex._varint(v, out)
    return zstandard.ZstdCompressor(write_content_size=True).compress(bytes(out) + tail)


CRAFTED = {
    "huge packet": (pack(PacketIndex([1 << 60, 10, 10, 10], [0, 1, 2, 3], [0], b"")), "size"),
    "past the file": (pack(PacketIndex([39, 1, 1, 1], [0, 1, 2, 3], [0], b"")), "run past"),
    "short of the file": (pack(PacketIndex([9, 10, 10, 10], [0, 1, 2, 3], [0], b"")), "hold 39"),
    "empty packet": (pack(PacketIndex([0, 20, 10, 10], [0, 1, 2, 3], [0], b"")), "empty"),
    "too few packets": (pack(PacketIndex([20, 20], [0, 1], [0], b"")), "2 packets for 4"),
    "huge count": (_packed_varints([1 << 62]), "packet count"),
    "negative frame": (pack(PacketIndex([10] * 4, [0, -5, 2, 3], [0], b"")), "packet 1's frame"),
    "frame twice": (pack(PacketIndex([10] * 4, [0, 1, 1, 3], [0], b"")), "shown twice"),
    "keys overlap": (pack(PacketIndex([10] * 4, [0, 1, 2, 3], [0, 2, 2], b"")), "increasing"),
    "key past the end": (pack(PacketIndex([10] * 4, [0, 1, 2, 3], [0, 9], b"")), "keyframe"),
    "first not key": (pack(PacketIndex([10] * 4, [0, 1, 2, 3], [1], b"")), "first packet"),
    "huge extradata": (_packed_varints([4, 10, 10, 10, 10, 0, 0, 0, 0, 1, 0, 1 << 40]), "extra"),
    "extradata past end": (_packed_varints([4, 10, 10, 10, 10, 0, 0, 0, 0, 1, 0, 50]), "past"),
    "bytes after": (_packed_varints([4, 10, 10, 10, 10, 0, 0, 0, 0, 1, 0, 0], b"zz"), "after"),
    "truncated": (_packed_varints([4, 10, 10]), "ends inside"),
    "endless varint": (_packed_varints([4], b"\xff" * 20), "longer than"),
    "not zstd": (b"hello world!", "zstd"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_index_is_refused_naming_the_stream(case):
    blob, match = CRAFTED[case]
    with pytest.raises(CorruptStreamError, match=f"^cube:v.mkv: corrupt packet index.*{match}"):
        unpack(blob, 40, 4, "cube:v.mkv")
    # the same at the head of a file of 40 bytes of packets
    out = bytearray()
    packetindex._varint(len(blob), out)
    with pytest.raises(CorruptStreamError, match=f"^cube:v.mkv: corrupt packet index.*{match}"):
        read_index(bytes(out) + blob + bytes(40), 4, "cube:v.mkv")


def test_index_bomb_is_refused_before_inflating():
    # declares 1 GiB of content: refused from the frame header
    blob = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 30))
    with pytest.raises(CorruptStreamError, match="declares 1073741824 bytes"):
        unpack(blob, 40, 4, "s")
    unknown = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 64)
    with pytest.raises(CorruptStreamError, match="declares"):
        unpack(unknown, 40, 4, "s")


def test_head_longer_than_frames_allow_or_the_file_is_refused():
    out = bytearray()
    packetindex._varint(1 << 40, out)
    with pytest.raises(CorruptStreamError, match="s: corrupt packet index.*index length"):
        read_index(bytes(out) + bytes(100), 4, "s")
    with pytest.raises(CorruptStreamError, match="s: corrupt packet index.*run past the file"):
        read_index(b"\x50" + bytes(10), 4, "s")
    with pytest.raises(CorruptStreamError, match="s: corrupt packet index.*ends inside"):
        read_index(b"", 4, "s")


def _with_head(enc: EncodedCube, index: PacketIndex, **update: object) -> EncodedCube:
    """The cube with its raw stream's head replaced by ``index`` (the packets kept), its
    size and checksum made to agree."""
    m = enc.manifest
    s = m.streams[0]
    data = enc.read_file(s.file)
    old = read_index(data, len(s.stored_frames(m.n_frames)), s.file)
    data = packetindex.head(index) + data[old.start :]
    files = {s.file: data}
    s = s.model_copy(update={"nbytes": len(data), "sha256": sha256(data), **update})
    return EncodedCube(m.model_copy(update={"streams": [s]}), MemoryStore(files), "cube")


def test_crafted_index_in_a_cube_is_refused_by_decode_and_read_costs(pair):
    raw = pair["libx265/auto"]
    s = raw.manifest.streams[0]
    idx = read_index(raw.read_file(s.file), 120, "s")
    np.testing.assert_array_equal(  # the helper keeps a good index good
        decode_cube(_with_head(raw, idx)).v.values, decode_cube(raw).v.values
    )
    sizes = [idx.sizes[0] + idx.sizes[1], 0, *idx.sizes[2:]]  # overlapping packets
    bad = _with_head(raw, PacketIndex(sizes, idx.frames, idx.keys, idx.extradata))
    with pytest.raises(CorruptStreamError, match=r"cube:v\.mkv: corrupt packet index.*empty"):
        decode_cube(bad)
    with pytest.raises(CorruptStreamError, match=r"cube:v\.mkv: corrupt packet index"):
        read_costs(bad)
    short = PacketIndex(idx.sizes[:-1], idx.frames[:-1], idx.keys, idx.extradata)
    with pytest.raises(CorruptStreamError, match="119 packets for 120 stored frames"):
        decode_cube(_with_head(raw, short))
    # packets of another size each: frames do not decode as the manifest's
    shifted = PacketIndex([idx.sizes[0] - 1, idx.sizes[1] + 1, *idx.sizes[2:]], *_rest(idx))
    with pytest.raises(CorruptStreamError, match="cube:v.mkv"):
        decode_cube(_with_head(raw, shifted))


def _rest(idx: PacketIndex) -> tuple[list[int], list[int], bytes]:
    return idx.frames, idx.keys, idx.extradata


def test_raw_ffv1_is_refused_naming_the_stream(pair):
    raw = pair["libaom-av1/auto"]
    s = raw.manifest.streams[0]
    idx = read_index(raw.read_file(s.file), 120, "s")
    update = {"codec": "ffv1", "pix_fmt": "gray16le", "lossless": True, "crf": None}
    bad = _with_head(raw, idx, **update)
    with pytest.raises(CorruptStreamError, match=r"v\.mkv: codec 'ffv1' is never written raw"):
        decode_cube(bad)


def test_old_readers_are_told_to_upgrade(pair):
    m = json.loads(pair["libaom-av1/auto"].manifest.to_json())
    assert m["version"] == 5 and m["streams"][0]["carrier"] == "raw"
    m["version"] = 6
    with pytest.raises(ManifestError, match="newer than this cubecast supports"):
        Manifest.from_json(json.dumps(m))


EARLY_CLOSE = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[2])
import fuzz
from pipeline.codec.decode import decode_cube
from pipeline.codec.encoded import EncodedCube, sha256
from pipeline.codec.manifest import Manifest
from pipeline.errors import CorruptStreamError

folder = fuzz.base_cubes(Path(sys.argv[1]))[0][0]  # FFV1, raw AV1 and class-layer streams
m = Manifest.from_json((folder / "manifest.json").read_bytes())
assert "raw" in {s.carrier for s in m.streams}
scl = next(s for s in m.streams if s.kind == "categorical")
data = bytes(18) + (folder / scl.file).read_bytes()[18:]  # no zstd frame: refused
(folder / scl.file).write_bytes(data)
update = {"nbytes": len(data), "sha256": sha256(data)}
streams = [s.model_copy(update=update) if s is scl else s for s in m.streams]
(folder / "manifest.json").write_bytes(m.model_copy(update={"streams": streams}).to_bytes())
for _ in range(150):
    try:
        decode_cube(EncodedCube.from_folder(folder))
    except CorruptStreamError:
        pass
print("closed")
"""


def test_a_decoder_closed_mid_stream_does_not_deadlock(tmp_path):
    """Was: a cube whose class layer is refused after its raw video streams have started
    decoding (their readers closed after the first frame) froze the process now and then
    (bench/fuzz.py's 'hang'): the decoder was freed holding the GIL while its threads,
    frames in flight, waited for it. Probabilistic: the same loop in a script froze in 1
    of 2 runs of 120 decodes without the fix and in none of 4 with it; this test has not
    caught the freeze without the fix (3 runs), so bench/fuzz.py is the real check."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", EARLY_CLOSE, str(tmp_path), str(root / "bench")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "closed" in out.stdout, out.stderr[-2000:]


def test_an_error_bounded_cube_with_raw_streams_keeps_version_5():
    """Correction layers (version 4) do not lower the version raw streams need."""
    ds = tiny_frames()
    opts = EncodeOptions(max_error=0.01, max_error_offsets=(12.0,), hedge=False)
    enc = encode_cube(ds, opts)
    assert enc.manifest.version == 5
    assert "raw" in {s.carrier for s in enc.manifest.streams}
    assert float(np.abs(decode_cube(enc).v.values - ds.v.values).max()) <= 0.01
