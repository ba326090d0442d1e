"""Quality per bit: codec choice, no needless padding, KLT groups, skipped frames, compact
manifest, and that every codec reads back with PyAV alone and reproducibly."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline import EncodedCube, EncodeOptions, decode_cube, encode_cube
from pipeline.codec.ffmpeg_engine import ffmpeg_exe
from pipeline.codec.metrics import compare, psnr
from pipeline.errors import InvalidCubeError
from tests.conftest import s2_like

needs_ffmpeg = pytest.mark.skipif(ffmpeg_exe() is None, reason="no ffmpeg binary")


def noisy(t: int, h: int, w: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.sin(xx / 7.0) + np.cos(yy / 5.0)
    arr = base[None] + 0.3 * rng.standard_normal((t, h, w))
    return xr.Dataset(
        {"v": (("time", "y", "x"), arr.astype(np.float32))},
        coords={
            "time": pd.date_range("2020-01-01", periods=t),
            "y": np.arange(h) * 10.0,
            "x": np.arange(w) * 10.0,
        },
        attrs={"id": f"noisy{h}x{w}"},
    )


def correlated(t: int = 8, size: int = 64, bands: int = 4) -> xr.Dataset:
    """Bands sharing their spatial detail (like a multispectral scene), little noise."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size]
    data = []
    for i in range(t):
        scene = np.sin((xx + 2 * i) / 6.0) * np.cos(yy / 9.0) + 0.5 * np.sin((xx * yy) / 300.0)
        data.append([0.2 + (0.5 + 0.3 * b) * scene for b in range(bands)])
    arr = np.asarray(data, dtype=np.float32) + rng.normal(0, 0.002, (t, bands, size, size))
    return xr.Dataset(
        {"refl": (("time", "band", "y", "x"), arr.astype(np.float32))},
        coords={
            "time": pd.date_range("2021-01-01", periods=t),
            "band": [f"b{i}" for i in range(bands)],
            "y": np.arange(size) * 30.0,
            "x": np.arange(size) * 30.0,
        },
        attrs={"id": "correlated"},
    )


@needs_ffmpeg
@pytest.mark.parametrize("codec", ["libx265", "libvvenc", "libaom-av1"])
def test_every_codec_decodes_with_pyav_alone(codec, tmp_path, monkeypatch):
    ds = correlated(t=6)
    opts = EncodeOptions(crf=20, codec=codec, preset="ultrafast" if "aom" in codec else "medium")
    encode_cube(ds, opts).to_folder(tmp_path / "c")
    # no ffmpeg binary from here on: reading must not need one
    monkeypatch.setenv("CUBECAST_FFMPEG", str(tmp_path / "no-such-ffmpeg"))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    enc = EncodedCube.from_folder(tmp_path / "c")
    assert {s.codec for s in enc.manifest.streams if s.kind == "continuous"} == {codec}
    assert all(q.psnr > 30 for q in compare(ds, decode_cube(enc)))


@needs_ffmpeg
@pytest.mark.parametrize("shape", [(33, 49), (101, 100), (132, 123)])
def test_same_noisy_cube_twice_gives_identical_bytes_and_frames(shape):
    ds = noisy(6, *shape)
    a, b = encode_cube(ds, EncodeOptions(crf=16)), encode_cube(ds, EncodeOptions(crf=16))
    assert [s.sha256 for s in a.manifest.streams] == [s.sha256 for s in b.manifest.streams]
    assert a.manifest.to_bytes() == b.manifest.to_bytes()
    np.testing.assert_array_equal(decode_cube(a).v.values, decode_cube(b).v.values)


@needs_ffmpeg
def test_frames_go_in_at_their_own_size():
    import av

    ds = noisy(3, 101, 100)
    # Matroska's header says the frame size (the raw carrier's bitstream does too)
    enc = encode_cube(ds, EncodeOptions(crf=20, codec="libx265", carrier="matroska"))
    path = enc.file_path(enc.manifest.streams[0].file)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.height, s.codec_context.width) == (102, 100)  # even, no CTU


@needs_ffmpeg
def test_frames_with_nothing_valid_are_not_stored():
    ds = noisy(10, 64, 64)
    ds["v"][[2, 3, 7]] = np.nan
    enc = encode_cube(ds, EncodeOptions(crf=20))
    video = [s for s in enc.manifest.streams if s.kind == "continuous"]
    assert video[0].frames == [(0, 2), (4, 7), (8, 10)]
    dec = decode_cube(enc)
    assert np.isnan(dec.v.values[[2, 3, 7]]).all()
    np.testing.assert_array_equal(np.isnan(dec.v.values), np.isnan(ds.v.values))
    late = decode_cube(enc, time=slice(7, 9))  # a window starting on a skipped frame
    np.testing.assert_array_equal(late.v.values, dec.v.values[7:9])


@needs_ffmpeg
def test_klt_for_correlated_bands_not_for_independent_noise():
    ds = correlated()
    enc = encode_cube(ds, EncodeOptions(crf=16))
    assert [t.channels for t in enc.manifest.transforms] == [["b0", "b1", "b2", "b3"]]
    q = compare(ds, decode_cube(enc))
    assert min(b.psnr for b in q) > 35
    plain = encode_cube(ds, EncodeOptions(crf=16, decorrelate="none"))
    assert not plain.manifest.transforms
    # the energy sits in the first component: the others cost far less than it
    first, *rest = [s.nbytes for s in enc.manifest.streams if s.kind == "continuous"]
    assert all(n < 0.6 * first for n in rest), (first, rest)
    assert enc.nbytes < plain.nbytes
    assert not encode_cube(s2_like(t=6), EncodeOptions(crf=16)).manifest.transforms


@needs_ffmpeg
def test_psnr_target_meets_every_band_with_klt_and_vvc():
    ds = correlated(t=8, size=64)
    enc = encode_cube(ds, EncodeOptions(psnr=42))
    assert all(b.psnr >= 42 for b in compare(ds, decode_cube(enc)))
    assert enc.manifest.transforms


@needs_ffmpeg
def test_a_vvc_encoder_that_gives_up_falls_back_to_x265(monkeypatch):
    import pipeline.codec.ffmpeg_engine as fb

    close = fb.FfmpegWriter.close

    def flaky(self):
        close(self)
        if self.settings.codec == "libvvenc":
            raise fb.EncoderFailed("libvvenc wrote 0 of 6 frames")

    monkeypatch.setattr(fb.FfmpegWriter, "close", flaky)
    ds = correlated(t=6)
    enc = encode_cube(ds, EncodeOptions(crf=20))
    assert {s.codec for s in enc.manifest.streams} == {"libx265"}
    assert all(q.psnr > 30 for q in compare(ds, decode_cube(enc)))
    with pytest.raises(InvalidCubeError, match="libvvenc at quantiser 20 refused"):
        encode_cube(ds, EncodeOptions(crf=20, codec="libvvenc"))


@needs_ffmpeg
def test_vvc_streams_decode_the_same_every_time():
    enc = encode_cube(noisy(12, 64, 96), EncodeOptions(crf=24, codec="libvvenc"))
    first = decode_cube(enc).v.values
    for _ in range(3):
        np.testing.assert_array_equal(decode_cube(enc).v.values, first)


def test_manifest_of_a_long_regular_series_is_small():
    t = 744
    rng = np.random.default_rng(2)
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), (280 + rng.random((t, 33, 49))).astype(np.float32))},
        coords={
            "time": pd.date_range("2020-01-01", periods=t, freq="h"),
            "lat": np.linspace(48, 40, 33),
            "lon": np.linspace(2, 14, 49),
        },
        attrs={"id": "era5-like"},
    )
    enc = encode_cube(ds, EncodeOptions(crf=30, codec="libx265"))
    m = enc.manifest
    assert m.aux is None
    assert "__range__" in m.coords["time"].values
    assert len(m.to_bytes()) < 1500, len(m.to_bytes())
    back = decode_cube(enc)
    xr.testing.assert_identical(back.time, ds.time)
    np.testing.assert_array_equal(back.lat.values, ds.lat.values)


@needs_ffmpeg
def test_info_shows_codecs_and_bytes_by_kind(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    ds = correlated(t=4)
    ds["refl"][0, :, :5] = np.nan
    encode_cube(ds, EncodeOptions(crf=20)).to_folder(tmp_path / "c")
    out = CliRunner().invoke(app, ["info", str(tmp_path / "c")], env={"COLUMNS": "250"}).output
    for word in ("libvvenc", "KLT group", "video streams", "masks", "manifest", "aux.nc"):
        assert word in out, out


def test_bd_rate_of_a_curve_against_itself_and_a_cheaper_one():
    sys.path.insert(0, "bench")
    from rate_distortion import bd_rate

    r, p = [0.2, 0.5, 1.0, 2.0], [32.0, 38.0, 44.0, 50.0]
    assert bd_rate(r, p, r, p, 30, 50) == pytest.approx(1.0)
    assert bd_rate([x * 0.7 for x in r], p, r, p, 35, 50) == pytest.approx(0.7)
    assert np.isnan(bd_rate(r, [x + 40 for x in p], r, p, 30, 50))  # no overlap
    assert psnr(np.ones(4), np.ones(4)) == float("inf")
