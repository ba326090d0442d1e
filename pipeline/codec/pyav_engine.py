"""In-process video engine (PyAV): planar uint16 frames in, Matroska bytes out, and back.

Frames are (planes, H, W) arrays.  For 3-plane streams plane 0 lands in x265's luma slot
(gbrp's G), which is where the encoder spends its mode decisions, so the planner puts the
most informative band (or principal component) first.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, BinaryIO, Protocol

import av
import numpy as np

from pipeline.codec.framebounds import FrameBounds
from pipeline.codec.packetindex import PacketIndex
from pipeline.codec.rawcarrier import decode_packets
from pipeline.codec.settings import VideoSettings, sample_dtype
from pipeline.codec.videocodecs import get_codec
from pipeline.errors import CorruptStreamError, CubecastError

# Plane p of ours -> index in PyAV's (H, W, 3) RGB ndarray for gbrp formats.
_GBRP_INDEX = (1, 2, 0)
CONTAINER = "matroska"


def _to_frame(planes: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """Copy planes straight into the frame's buffers; gbrp's plane order G, B, R is our
    plane order 0, 1, 2, so no interleaved (H, W, 3) copy is needed."""
    dtype = sample_dtype(pix_fmt)
    h, w = planes.shape[1:]
    frame = av.VideoFrame(w, h, pix_fmt)
    if all(p.line_size == w * dtype.itemsize for p in frame.planes):
        for p in range(planes.shape[0]):
            frame.planes[p].update(np.ascontiguousarray(planes[p], dtype=dtype))
        return frame
    if planes.shape[0] == 1:  # padded rows: let PyAV handle the line stride
        arr = planes[0]
    else:
        arr = np.empty(planes.shape[1:] + (3,), dtype=planes.dtype)
        for p, idx in enumerate(_GBRP_INDEX):
            arr[..., idx] = planes[p]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(arr, dtype=dtype), format=pix_fmt)


_PLANAR = frozenset(
    ("gray", "gray10le", "gray12le", "gray16le", "gbrp", "gbrp10le", "gbrp12le", "gbrp16le")
)


def frame_planes(frame: av.VideoFrame, planes: int) -> list[np.ndarray]:
    """The frame's planes as (H, W) arrays viewing the decoder's buffers (no copy): the
    caller copies them straight into its output. VVC's band is its luma plane."""
    fmt = frame.format.name
    dtype = sample_dtype(fmt)
    h, w = frame.height, frame.width
    if fmt.startswith("yuv420p") or fmt in _PLANAR:
        count = 1 if fmt.startswith("yuv420p") else planes
        return [
            np.frombuffer(frame.planes[p], dtype=dtype).reshape(h, -1)[:, :w] for p in range(count)
        ]
    arr = frame.to_ndarray()
    if planes == 1:
        return [arr]
    return [arr[..., idx] for idx in _GBRP_INDEX]


def _from_frame(frame: av.VideoFrame, planes: int) -> np.ndarray:
    views = frame_planes(frame, planes)
    out = np.empty((len(views), *views[0].shape), dtype=views[0].dtype)
    for p, v in enumerate(views):
        out[p] = v
    return out


class StreamWriter(Protocol):
    """An open encoder: frames go in one at a time, the stream is complete after close()."""

    def write(self, planes: np.ndarray) -> None: ...

    def close(self) -> None: ...


StreamTarget = str | os.PathLike[str] | BinaryIO


class PyAVWriter:
    """Encodes into a Matroska file (or file object) as frames arrive; nothing is buffered
    beyond the encoder's own lookahead."""

    def __init__(self, target: StreamTarget, height: int, width: int, settings: VideoSettings):
        target = os.fspath(target) if isinstance(target, (str, os.PathLike)) else target
        self.settings = settings
        self._container = av.open(target, "w", format=CONTAINER)
        stream = self._container.add_stream(settings.codec, rate=1)
        stream.width, stream.height = width, height
        stream.pix_fmt = settings.pix_fmt
        stream.options = get_codec(settings.codec).options(settings)
        if settings.codec == "ffv1" and settings.threads:
            stream.thread_count = settings.threads
        self._stream = stream
        self.frames = 0

    def write(self, planes: np.ndarray) -> None:
        frame = _to_frame(planes, self.settings.pix_fmt)
        frame.pts = self.frames
        frame.time_base = Fraction(1, 1)
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()


@dataclass
class DecodeStats:
    """How much work a decode did; tests use it to check that seeking skips frames."""

    frames_decoded: int = 0  # video frames
    seeks: list[int] = field(default_factory=list)
    # chunked streams' chunks decompressed, as (stream, chunk index)
    chunks_decoded: list[tuple[str, int]] = field(default_factory=list)


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def decode_threads() -> int:
    """``CUBECAST_DECODE_THREADS``, else the usable cores: threads per video decoder, and
    streams a decode reads side by side (pipeline.codec.streamchunks). Processes that decode
    side by side (a loader's workers) set 1, so they do not compete for the cores with
    each other's threads. Set explicitly because FFmpeg's own choice (cores + 1 frame
    threads) measured 20 % slower on 2 cores with streams decoding side by side."""
    text = os.environ.get("CUBECAST_DECODE_THREADS", "").strip()
    if not text or text == "0":
        return usable_cores()
    if not text.isdigit():
        raise CubecastError(f"CUBECAST_DECODE_THREADS={text!r}: must be a whole number")
    return int(text)


def _open_video(
    data: bytes | StreamTarget, name: str, expect: FrameBounds | None
) -> av.container.InputContainer:
    """The stream's container, opened with FFmpeg's ``max_pixels`` from ``expect``: its
    header's frame size checked, its decoder's threads set."""
    options = None if expect is None else {"max_pixels": str(expect.max_pixels)}
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        if isinstance(source, (str, os.PathLike)):
            source = os.fspath(source)
        container = av.open(
            source, "r", format=CONTAINER, stream_options=[options] if options else None
        )
    except (av.FFmpegError, OSError) as exc:
        raise CorruptStreamError(f"{name}: not a readable video stream ({exc})") from exc
    try:
        if not container.streams.video:
            raise CorruptStreamError(f"{name}: the file holds no video stream")
        vstream = container.streams.video[0]
        if expect is not None:
            cc = vstream.codec_context
            if cc.width and cc.height:  # the container's own header, before any decoding
                expect.check(name, cc.width, cc.height, None)
            cc.options = dict(options or {})
        if vstream.codec_context.name == "vvc":
            # FFmpeg's VVC decoder (PyAV 18's and ffmpeg 9's) gives different frames from
            # run to run when threaded: up to 169 of 1023 codes off, measured. One thread
            # is deterministic and matches the reference decode.
            vstream.thread_count = 1
        else:
            vstream.thread_type = "AUTO"
            vstream.thread_count = decode_threads()
    except BaseException:
        container.close()
        raise
    return container


def decode_frames(
    data: bytes | memoryview | StreamTarget,
    n_planes_: int,
    start: int = 0,
    stop: int | None = None,
    name: str = "stream",
    stats: DecodeStats | None = None,
    expect: FrameBounds | None = None,
    raw: bool = False,
    packets: PacketIndex | None = None,
    codec: str = "",
) -> Iterator[tuple[int, Any]]:
    """Yield (frame index, planes) for frames in [start, stop); with ``raw``, (frame index,
    the decoded av.VideoFrame) for a caller that copies its planes into place itself
    (:func:`frame_planes`).

    With start > 0 the demuxer seeks to the nearest keyframe at or before start, so a window
    late in a long cube costs at most one GOP of extra decoding. With ``expect``, FFmpeg
    refuses to allocate frames larger than its largest size, and every frame (and the
    stream's header) must have its pixel format and a size within its bounds: a
    CorruptStreamError naming the stream otherwise. With ``packets`` (a checked
    :class:`~pipeline.codec.packetindex.PacketIndex`), ``data`` is a raw-carrier stream of
    ``codec``: its packets go straight to a decoder, from the keyframe the index names.
    """
    stats = stats if stats is not None else DecodeStats()
    expected = None
    try:
        for idx, frame in _frames(data, name, expect, start, stats, packets, codec):
            stats.frames_decoded += 1
            if expect is not None:
                expect.check(name, frame.width, frame.height, frame.format.name)
            if expected is not None and idx != expected:
                raise CorruptStreamError(
                    f"{name}: frame {expected} is missing (next decoded frame is {idx})"
                )
            expected = idx + 1
            if idx < start:
                continue
            if stop is not None and idx >= stop:
                break
            yield idx, frame if raw else _from_frame(frame, n_planes_)
    except av.FFmpegError as exc:
        if expect is not None and "max_pixels" in str(exc):
            raise CorruptStreamError(expect.too_large(name)) from exc
        raise CorruptStreamError(f"{name}: stream does not decode ({exc})") from exc


def _frames(
    data: bytes | memoryview | StreamTarget,
    name: str,
    expect: FrameBounds | None,
    start: int,
    stats: DecodeStats,
    packets: PacketIndex | None,
    codec: str,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(frame index, frame) as the decoder gives them, from the keyframe at or before
    ``start``: demuxed from Matroska, or fed from a raw carrier's packets."""
    if packets is not None:
        if isinstance(data, str | os.PathLike):
            with open(os.fspath(data), "rb") as fh:
                data = fh.read()
        elif not isinstance(data, bytes | memoryview):
            data = data.read()
        if start > 0:
            stats.seeks.append(start)
        max_pixels = None if expect is None else expect.max_pixels
        for frame in decode_packets(
            data, packets, codec, start, decode_threads(), max_pixels, name
        ):
            if frame.pts is None:
                raise CorruptStreamError(f"{name}: a decoded frame has no timestamp")
            yield int(frame.pts), frame
        return
    with _open_video(data, name, expect) as container:
        vstream = container.streams.video[0]
        tb = vstream.time_base or Fraction(1, 1000)
        frame_ticks = Fraction(1, 1) / tb  # rate=1 frame per second of stream time
        if start > 0:
            container.seek(int(start * frame_ticks), stream=vstream, backward=True)
            stats.seeks.append(start)
        for frame in container.decode(vstream):
            yield round(frame.pts / frame_ticks), frame
