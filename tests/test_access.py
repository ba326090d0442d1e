"""The ``access`` option: bits traded for reading a band or a short time window alone, and
the read costs ``cubecast info`` shows for it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.codec.readcost import read_costs
from pipeline.errors import InvalidCubeError
from tests.conftest import s2_like

BANDS = ["B02", "B03", "B04", "B8A"]


@pytest.fixture(scope="module")
def cube():
    return s2_like(t=40, h=64, w=64, seed=3)


def _encode(cube, access: str):
    opts = EncodeOptions(crf=28, codec="libaom-av1", decorrelate="klt", access=access)
    return encode_cube(cube, opts)


@pytest.fixture(scope="module")
def encoded(cube):
    return {a: _encode(cube, a) for a in ("whole", "windows+bands")}


def test_unknown_access_is_refused_by_name():
    with pytest.raises(InvalidCubeError, match="access 'random'"):
        EncodeOptions(access="random")


def test_band_access_gives_every_band_a_stream_of_its_own(encoded):
    whole, bands = encoded["whole"].manifest, encoded["windows+bands"].manifest
    assert whole.transforms and not bands.transforms  # the KLT group is what bands give up
    for b in BANDS:
        assert len(bands.channel_streams(b)) == 1
        (stream,) = [s for s in bands.streams if s.name == bands.channel_streams(b)[0]]
        assert stream.planes == [b]


def test_one_band_reads_only_its_stream_and_masks(encoded):
    enc = EncodedCube.from_bytes(encoded["windows+bands"].to_bytes())
    enc.store.reads.clear()
    ds = decode_cube(enc, ["B8A"])
    assert list(ds.data_vars) == ["B8A"]
    (own,) = enc.manifest.channel_streams("B8A")
    files = {s.name: s.file for s in enc.manifest.streams}
    assert set(enc.store.reads) <= {files[own], files["masks"]}


def test_a_late_window_decodes_at_most_one_short_gop(encoded, cube):
    enc = encoded["windows+bands"]
    stats = DecodeStats()
    ds = decode_cube(enc, BANDS, time=slice(30, 38), stats=stats)
    keyint = max(s.keyint for s in enc.manifest.streams if s.kind != "mask")
    assert keyint <= 16
    assert stats.frames_decoded <= len(BANDS) * (8 + keyint - 1)
    full = decode_cube(enc, BANDS)
    for b in BANDS:  # the window is the same frames a whole decode gives
        np.testing.assert_array_equal(ds[b].values, full[b].values[30:38])


def test_read_costs_show_the_trade(encoded):
    whole = {c.what.split(" (")[0]: c for c in read_costs(encoded["whole"])}
    parts = {c.what.split(" (")[0]: c for c in read_costs(encoded["windows+bands"])}
    # a band alone is a smaller share with its own stream; a window decodes fewer frames
    # (video: from the keyframe at most 15 before it; masks and SCL: the 16-frame chunks
    # it touches, whole, two where it crosses their boundary)
    assert parts["one band"].share < whole["one band"].share
    assert parts["8-frame window"].frames <= max(8 + 15, 2 * 16) < whole["8-frame window"].frames
    assert encoded["windows+bands"].nbytes > encoded["whole"].nbytes  # paid in bits
