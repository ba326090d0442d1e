"""The decoder's shortcuts give exactly the values of the plain mapping: a plane read
through a table of every code's value, frames a stream does not store written as the value
of zero codes, streams decoded ahead on threads of their own, and a window of several GOPs
decoded as segments side by side."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipeline import EncodeOptions, GroupSpec, decode_cube, encode_cube, iter_decode
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.codemap import CodeMap, _store
from pipeline.codec.manifest import ChannelInfo
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.codec.quantize import Quantiser
from pipeline.codec.streamchunks import StreamChunks
from tests.conftest import s2_like

BANDS = ("B02", "B03", "B04", "B8A")


@pytest.mark.parametrize(
    ("dtype", "offset", "scale", "bits", "clip"),
    [
        (np.uint8, 0, 1.0, 8, (0, 9)),
        (np.int16, -500, 1.0, 12, None),
        (np.float32, 0.0024, 0.00015, 12, (0.0024, 0.6)),
        (np.float64, -1.5, 0.001, 16, (-1.0, 60.0)),
        (np.uint64, 2**60, 3.0, 16, None),
    ],
)
def test_a_plane_read_through_its_table_equals_the_arithmetic(dtype, offset, scale, bits, clip):
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 1 << 16, (5, 2, 6, 7)).astype(np.uint16)  # past ``bits`` too
    info = ChannelInfo(name="c", variable="c", stream="s", plane=1, offset=offset, scale=scale)
    codemap = CodeMap({"c": info}, {}, {"s": bits})
    clips = {"c": clip} if clip else None
    empty = np.array([False, True, True, False, True])
    for flags in (None, empty):
        if flags is not None:
            codes[flags] = 0  # what the decoder hands out for frames a stream leaves out
        out = np.empty((5, 6, 7), dtype=dtype)
        codemap.fill({"c": out}, {"s": codes}, clips, None if flags is None else {"s": flags})
        want = np.empty_like(out)
        _store(Quantiser(offset, scale, bits).from_codes(codes[:, 1], want.dtype), want, clip)
        assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frames_a_klt_group_leaves_out_take_the_value_of_zero_codes(dtype):
    ds = s2_like(t=12)
    for b in BANDS:
        ds[b] = ds[b].astype(dtype)
        ds[b].values[[3, 4, 9]] = np.nan  # nothing valid: the group's stream skips them
    groups = (GroupSpec(BANDS, name="s2"),)
    enc = encode_cube(ds, EncodeOptions(crf=20, groups=groups, decorrelate="klt"))
    m = enc.manifest
    assert m.transforms and [s.frames for s in m.streams if s.name == "s2"] == [
        [(0, 3), (5, 9), (10, 12)]
    ]
    reader = StreamChunks(enc, m.streams, 0, 12, DecodeStats())
    try:
        (decoded,) = reader.chunks([(0, 12)])
    finally:
        reader.close()
    empty = np.isin(np.arange(12), [3, 4, 9])
    assert not decoded["s2"][empty].any()
    codemap, clips = CodeMap.from_manifest(m), {b: (0.0, 0.5) for b in BANDS[:2]}
    got = {b: np.empty((12, 32, 30), dtype) for b in BANDS}
    want = {b: np.empty((12, 32, 30), dtype) for b in BANDS}
    codemap.fill(got, decoded, clips, {"s2": empty})
    codemap.fill(want, decoded, clips)
    for b in BANDS:
        assert got[b].tobytes() == want[b].tobytes()
    # frames the caller masks whole in every band are left as they are
    skip = {b: np.isin(np.arange(12), [4, 5]) for b in BANDS}
    skip["B8A"][5] = False  # one band still wants frame 5: the group maps it
    kept = {b: np.full((12, 32, 30), 7, dtype) for b in BANDS}
    codemap.fill(kept, decoded, clips, {"s2": empty}, skip)
    for b in BANDS:
        assert (kept[b][4] == 7).all()
        assert np.delete(kept[b], 4, axis=0).tobytes() == np.delete(want[b], 4, axis=0).tobytes()
    dec = decode_cube(enc)
    assert all(np.isnan(dec[b].values[empty]).all() for b in BANDS)


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cubecast-decode"]


def test_a_window_loop_stopped_early_leaves_no_decode_thread(monkeypatch):
    monkeypatch.setenv("CUBECAST_DECODE_THREADS", "2")
    enc = encode_cube(s2_like(t=40), EncodeOptions(crf=20, keyint=8))
    windows = iter_decode(enc, window=4)
    first = next(windows)
    assert first.sizes["time"] == 4 and _decode_threads()  # the rest is decoding ahead
    windows.close()
    assert not _decode_threads()
    whole = decode_cube(enc)
    assert not _decode_threads()
    np.testing.assert_array_equal(whole["B02"].values[:4], first["B02"].values)


def test_a_window_of_several_gops_decodes_as_segments_to_the_same_values(monkeypatch):
    from pipeline.codec import segments

    monkeypatch.setenv("CUBECAST_DECODE_THREADS", "2")
    groups = (GroupSpec(BANDS, name="s2"),)  # one video stream: two cores, two segments
    opts = EncodeOptions(crf=20, keyint=8, groups=groups, decorrelate="klt")
    enc = encode_cube(s2_like(t=40), opts)
    monkeypatch.setattr(segments, "MIN_SEGMENT", 1 << 30)
    whole = decode_cube(enc)
    monkeypatch.setattr(segments, "MIN_SEGMENT", 8)
    m = enc.manifest
    assert segments.split_frames(m, m.streams, 0, 40, 2) == [0, 16, 40]
    assert segments.split_frames(m, [*m.streams, *m.streams], 0, 40, 2) == [0, 40]
    stats = DecodeStats()
    split = decode_cube(enc, stats=stats)
    n_video = sum(1 for s in m.streams if chunk_codec(s.codec) is None)
    assert stats.frames_decoded == 40 * n_video  # each segment from its own keyframe
    for name in whole.data_vars:
        assert split[name].values.tobytes() == whole[name].values.tobytes()
    assert not _decode_threads()
