"""The decoder's shortcuts give exactly the values of the plain mapping: a plane read
through a table of every code's value, frames a stream does not store written as the value
of zero codes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import EncodeOptions, GroupSpec, decode_cube, encode_cube
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
