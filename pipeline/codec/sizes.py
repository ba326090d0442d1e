"""The sizes a manifest declares, computed without allocating anything: the frames each
stream may have, and the bytes a decode window allocates, checked against the decode
budget (:mod:`pipeline.codec.budget`) before a window is decoded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.codec import budget, jsonvalues
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.framebounds import FrameBounds
from pipeline.codec.groupcoder import stream_size
from pipeline.codec.manifest import Manifest, StreamInfo
from pipeline.codec.settings import VideoSettings, n_planes
from pipeline.errors import CubecastError


def needed_streams(m: Manifest, wanted: Sequence[str]) -> list[StreamInfo]:
    """The streams the ``wanted`` variables are decoded from: their channels', masks' and
    correction layers'."""
    names = [c for v in m.variables if v.name in wanted for c in v.channels]
    needed = {s for c in names for s in m.channel_streams(c)}
    needed |= {m.channel(c).mask_stream for c in names if m.channel(c).mask_stream}
    needed |= {m.channel(c).correction_stream for c in names if m.channel(c).correction_stream}
    return [s for s in m.streams if s.name in needed]


def _most(n: int, pyav: bool) -> int:
    """A loose bound for streams of codecs this version does not know: PyAV's x265 pads to
    whole 64-px CTUs (at least two), the others to their minimum side (up to 66 px)."""
    if pyav:
        return max(128, n + (-n % 64))
    return max(66, n + (-n % 8))


def frame_bounds(m: Manifest, stream: StreamInfo) -> FrameBounds:
    """The frame sizes a stream of this manifest may have: at least its planes (tiled
    planes stacked, each rounded up to even rows), at most the frame its encoder writes
    (even sizes, the codec's minimum side and safe widths, PyAV x265's whole CTUs: the
    padding only grew between versions, so older streams fit too)."""
    h, w = m.frame_shape
    least_h = stream.tiles * (h + h % 2) if stream.tiles > 1 else h
    try:
        settings = VideoSettings(stream.codec, stream.pix_fmt, engine=stream.backend)
        most = stream_size((h + h % 2, w + w % 2), stream.tiles, settings)
    except (CubecastError, KeyError, ValueError):
        pyav = stream.backend == "pyav"
        most = (_most(least_h, pyav), _most(w, pyav))
    most = (max(most[0], least_h), max(most[1], w))
    return FrameBounds(stream.pix_fmt, (least_h, w), most)


def window_nbytes(m: Manifest, wanted: Sequence[str], n: int) -> int:
    """Bytes a window of ``n`` frames of the ``wanted`` variables allocates, as the
    manifest declares it: the streams' codes and masks, each output band (and the stacked
    variable), the KLT groups' work arrays, and every array the manifest's JSON holds
    (coordinates, attributes). Computed without allocating anything."""
    px = m.frame_shape[0] * m.frame_shape[1]
    total = 0
    for s in needed_streams(m, wanted):
        planes = len(s.planes)
        carrier = chunk_codec(s.codec)
        if carrier is not None:  # whole chunks as decompressed, and the window's array
            total += carrier.window_nbytes(planes * px, n, s.keyint, m.n_frames, s.pix_fmt)
        else:  # the window's codes and one decoded frame (padded, in the stream's format)
            bounds = frame_bounds(m, s)
            total += 2 * planes * px * n + 2 * n_planes(s.pix_fmt) * bounds.max_pixels
    for v in m.variables:
        if v.name in wanted:
            bands = len(v.channels)
            total += n * px * np.dtype(v.dtype).itemsize * (bands + (bands if v.band_dim else 0))
            if any(m.channel(c).words for c in v.channels):
                total += 2 * n * px * 8
    for t in m.transforms:
        if any(c in t.channels for v in m.variables if v.name in wanted for c in v.channels):
            total += 2 * n * px * 8 * max(len(t.channels), len(t.components))
    return total + manifest_arrays_nbytes(m)


def manifest_arrays_nbytes(m: Manifest) -> int:
    """Bytes of the arrays the manifest's JSON declares (coordinates, attributes)."""
    parts: list[object] = [m.attrs]
    parts += [(c.values, c.attrs, c.encoding) for c in m.coords.values()]
    parts += [(v.attrs, v.encoding, v.nodata) for v in m.variables]
    if m.aux:
        parts += [m.aux.attrs, m.aux.encodings]
    return jsonvalues.declared_nbytes(parts)


def check_budget(enc: EncodedCube, wanted: Sequence[str], n: int) -> None:
    m = enc.manifest
    h, w = m.frame_shape
    need = window_nbytes(m, wanted, n)
    budget.check(need, enc.source, f"decoding {n} frames of {h} x {w} px ({', '.join(wanted)})")
