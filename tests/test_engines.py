"""The ffmpeg command-line engine and PyAV decode each other's streams."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.codec.decode import decode_cube
from pipeline.codec.encode import encode_cube
from pipeline.codec.engines import encode_frames
from pipeline.codec.ffmpeg_engine import decode_frames_cli, ffmpeg_exe
from pipeline.codec.metrics import compare
from pipeline.codec.options import EncodeOptions
from pipeline.codec.pyav_engine import decode_frames
from pipeline.codec.settings import VideoSettings
from tests.conftest import s2_like

pytestmark = pytest.mark.skipif(
    ffmpeg_exe() is None, reason="no ffmpeg binary (install imageio-ffmpeg or put ffmpeg on PATH)"
)


def _frames(n_planes: int, t: int = 10, h: int = 64, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = 1500 + 800 * np.sin(xx / 9.0)[None] * np.cos(yy / 7.0)[None]
    out = np.stack([base + 40 * k + 30 * p for k in range(t) for p in range(n_planes)])
    return out.reshape(t, n_planes, h, w).astype(np.uint16)


@pytest.mark.parametrize(
    "codec, pix_fmt, planes, tol",
    [("libx265", "gray12le", 1, 40), ("libx265", "gbrp12le", 3, 40), ("ffv1", "gray16le", 1, 0)],
)
def test_ffmpeg_encodes_pyav_decodes(codec, pix_fmt, planes, tol):
    frames = _frames(planes)
    s = VideoSettings(
        codec,
        pix_fmt,
        crf=8 if codec == "libx265" else None,
        lossless=codec == "ffv1",
        engine="ffmpeg",
    )
    data = encode_frames(iter(frames), 64, 64, s)
    got = np.stack([f for _, f in decode_frames(data, planes)])
    assert got.shape == frames.shape
    assert np.abs(got.astype(int) - frames.astype(int)).max() <= tol


@pytest.mark.parametrize("pix_fmt, planes", [("gray12le", 1), ("gbrp12le", 3)])
def test_pyav_encodes_ffmpeg_decodes(pix_fmt, planes):
    frames = _frames(planes)
    data = encode_frames(iter(frames), 64, 64, VideoSettings("libx265", pix_fmt, crf=8))
    via_pyav = np.stack([f for _, f in decode_frames(data, planes)])
    via_cli = np.stack([f for _, f in decode_frames_cli(data, planes, pix_fmt, 64, 64)])
    np.testing.assert_array_equal(via_cli, via_pyav)


def test_cube_round_trip_with_the_ffmpeg_engine():
    ds = s2_like(t=10, h=32, w=30)
    enc = encode_cube(ds, EncodeOptions(crf=8, engine="ffmpeg"))
    for q in compare(ds, decode_cube(enc)):
        assert q.exact if q.role == "categorical" else q.psnr > 40, q


def test_av1_through_ffmpeg_decodes_in_pyav():
    """libaom-av1 is not in PyAV's wheels: ffmpeg encodes it, PyAV (dav1d) decodes it."""
    ds = s2_like(t=10, h=32, w=30)
    opts = EncodeOptions(
        crf=10, codec="libaom-av1", engine="ffmpeg", preset="ultrafast", decorrelate="none"
    )
    enc = encode_cube(ds, opts)
    lossy = [s for s in enc.manifest.streams if s.kind == "continuous"]
    assert lossy and {s.codec for s in lossy} == {"libaom-av1"}
    assert {s.pix_fmt for s in lossy} <= {"gbrp12le", "gray12le"}
    for q in compare(ds, decode_cube(enc)):
        assert q.exact if q.role == "categorical" else q.psnr > 40, q


def test_auto_engine_is_the_command_line_when_ffmpeg_exists():
    from pipeline.codec.codecchoice import resolve_engine

    assert resolve_engine("auto") == "ffmpeg"
    assert resolve_engine("pyav") == "pyav"


def test_av1_without_the_ffmpeg_engine_is_refused():
    from pipeline.errors import InvalidCubeError

    with pytest.raises(InvalidCubeError, match="engine='ffmpeg'"):
        encode_cube(s2_like(t=4), EncodeOptions(codec="libaom-av1", engine="pyav"))
