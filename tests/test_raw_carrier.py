"""The raw carrier (issue 26 item 3, small frames): video packets without Matroska, their
index in the manifest. Chosen per stream where smaller; decodes, windows, read costs and
shards as Matroska does; a crafted index is refused with the stream's name, before any
allocation of its size."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zstandard

from pipeline import EncodeOptions, encode_cube
from pipeline.codec import rawcarrier
from pipeline.codec.decode import decode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.manifest import FORMAT_VERSION, Manifest
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.codec.rawcarrier import PacketIndex, pack, unpack
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
    assert rs.carrier == "raw" and rs.packets and ms.carrier == "matroska" and not ms.packets
    assert raw.manifest.version == FORMAT_VERSION == 4 and mkv.manifest.version == 3
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
    # the same packets: the window's bytes are the same payloads without their Matroska framing
    assert r[-1].nbytes <= m[-1].nbytes


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


def _index(n: int = 4) -> PacketIndex:
    return PacketIndex([10] * n, list(range(n)), [0, 2], b"\x01\x02")


def test_pack_unpack_roundtrip():
    idx = PacketIndex([5, 300, 70000, 1], [1, 0, 3, 2], [0, 2], b"xyz")
    assert unpack(pack(idx), 70306, 4, "s") == idx


def _packed_varints(values: list[int], tail: bytes = b"") -> str:
    out = bytearray()
    for v in values:
        rawcarrier._varint(v, out)
    blob = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(out) + tail)
    return base64.b64encode(blob).decode()


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
    "not base64": ("@@@@", "base64"),
    "not zstd": (base64.b64encode(b"hello world!").decode(), "zstd"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_index_is_refused_naming_the_stream(case):
    text, match = CRAFTED[case]
    with pytest.raises(CorruptStreamError, match=f"^cube:v.mkv: corrupt packet index.*{match}"):
        unpack(text, 40, 4, "cube:v.mkv")


def test_index_bomb_is_refused_before_inflating():
    # declares 1 GiB of content: refused from the frame header
    blob = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 30))
    text = base64.b64encode(blob).decode()
    with pytest.raises(CorruptStreamError, match="declares 1073741824 bytes"):
        unpack(text, 40, 4, "s")
    unknown = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 64)
    with pytest.raises(CorruptStreamError, match="declares -1 bytes|declares"):
        unpack(base64.b64encode(unknown).decode(), 40, 4, "s")
    with pytest.raises(CorruptStreamError, match="longer than its frames allow"):
        unpack("A" * (1 << 24), 40, 4, "s")


def _crafted(enc: EncodedCube, **update: object) -> EncodedCube:
    m = enc.manifest
    s = m.streams[0].model_copy(update=update)
    return EncodedCube(m.model_copy(update={"streams": [s]}), enc.store, enc.source)


def test_crafted_index_in_a_cube_is_refused_by_decode_and_read_costs(pair):
    raw = pair["libx265/auto"]
    s = raw.manifest.streams[0]
    idx = unpack(s.packets, s.nbytes, 120, "s")
    sizes = [idx.sizes[0] + idx.sizes[1], 0, *idx.sizes[2:]]  # overlapping packets
    bad = _crafted(raw, packets=pack(PacketIndex(sizes, idx.frames, idx.keys, idx.extradata)))
    with pytest.raises(CorruptStreamError, match=r"v\.mkv: corrupt packet index.*empty"):
        decode_cube(bad)
    with pytest.raises(CorruptStreamError, match=r"v\.mkv: corrupt packet index"):
        read_costs(bad)
    short = pack(PacketIndex(idx.sizes[:-1], idx.frames[:-1], idx.keys, idx.extradata))
    with pytest.raises(CorruptStreamError, match="119 packets for 120 stored frames"):
        decode_cube(_crafted(raw, packets=short))
    # the stream's packets as another order: frames decode, but not the manifest's
    swapped = pack(PacketIndex(idx.sizes, idx.frames, idx.keys, b""))
    with pytest.raises(CorruptStreamError, match="v.mkv"):
        decode_cube(_crafted(raw, packets=swapped))


def test_raw_ffv1_is_refused_naming_the_stream(pair):
    raw = pair["libaom-av1/auto"]
    bad = _crafted(raw, codec="ffv1", pix_fmt="gray16le", lossless=True, crf=None)
    with pytest.raises(CorruptStreamError, match=r"v\.mkv: codec 'ffv1' is never written raw"):
        decode_cube(bad)


def test_manifest_needs_packets_exactly_for_raw(pair):
    m = json.loads(pair["libaom-av1/auto"].manifest.to_json())
    m["streams"][0].pop("packets")
    with pytest.raises(ManifestError, match="raw carrier needs its packets"):
        Manifest.from_json(json.dumps(m))
    m["version"] = 5
    with pytest.raises(ManifestError, match="newer than this cubecast supports"):
        Manifest.from_json(json.dumps(m))
