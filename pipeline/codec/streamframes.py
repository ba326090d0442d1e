"""Consecutive frames of one stream, decoded as a decode's windows ask for them: video
through PyAV, chunked carriers (masks, class layers) a chunk at a time."""

from __future__ import annotations

import bisect
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from pipeline.codec import packetindex, rawcarrier
from pipeline.codec.chunkcodecs import ChunkCodec, chunk_codec
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.groupcoder import untile
from pipeline.codec.manifest import StreamInfo
from pipeline.codec.pyav_engine import DecodeStats, decode_frames, frame_planes
from pipeline.codec.settings import n_planes
from pipeline.codec.sizes import frame_bounds
from pipeline.errors import CorruptStreamError


class ChunkFrames:
    """Frames of a chunked stream: each chunk the windows reach is decompressed once (the
    last one is kept for the next window) and must hold exactly its frames."""

    def __init__(
        self,
        codec: ChunkCodec,
        data: bytes,
        stream: StreamInfo,
        shape: tuple[int, int, int],
        n_frames: int,
        name: str,
        stats: DecodeStats,
    ) -> None:
        self.codec, self.data, self.shape, self.name = codec, memoryview(data), shape, name
        self.offsets = stream.chunk_offsets or [0]
        self.keyint, self.pix_fmt, self.n_frames = stream.keyint, stream.pix_fmt, n_frames
        self.stats = stats
        self._kept: tuple[int, np.ndarray] | None = None

    def take(self, lo: int, hi: int) -> np.ndarray:
        """Frames [lo, hi) as (hi - lo, planes, H, W) of the codec's dtype: a view of the
        chunk where one chunk holds them all (nothing writes to decoded codes)."""
        k = self.keyint
        if lo // k == (hi - 1) // k:
            frames = self.chunk(lo // k)
            if len(frames) >= hi - lo // k * k:
                return frames[lo - lo // k * k : hi - lo // k * k]
        out = np.empty((hi - lo, *self.shape), dtype=self.codec.dtype)
        for c in range(lo // k, (hi - 1) // k + 1):
            frames = self.chunk(c)
            a, b = max(lo, c * k), min(hi, c * k + len(frames))
            out[a - lo : b - lo] = frames[a - c * k : b - c * k]
        return out

    def chunk(self, c: int) -> np.ndarray:
        """Chunk ``c``'s frames, (frames, planes, H, W)."""
        if self._kept is not None and self._kept[0] == c:
            return self._kept[1]
        if c >= len(self.offsets):
            raise CorruptStreamError(f"{self.name}: chunk {c} is missing (truncated stream)")
        a = self.offsets[c]
        b = self.offsets[c + 1] if c + 1 < len(self.offsets) else len(self.data)
        if not 0 <= a < b <= len(self.data):
            raise CorruptStreamError(
                f"{self.name}: chunk {c} at bytes {a}..{b} is outside the stream's "
                f"{len(self.data)} bytes (corrupt chunk_offsets)"
            )
        frames = min(self.keyint, self.n_frames - c * self.keyint)
        blob = self.data[a:b]
        got = self.codec.decode_chunk(blob, frames, self.shape, self.pix_fmt, self.name, c)
        self.stats.chunks_decoded.append((self.name, c))
        self._kept = (c, got)
        return got


def _mapped(path: Path) -> bytes | memoryview:
    """The file's bytes, memory-mapped read-only (they stay mapped while referenced)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""
        return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))


class StreamFrames:
    """Consecutive frames of one stream from ``start`` on, decoded as they are asked for.

    Video streams keep their decoder open between windows (so a cube read window after
    window is decoded once), and read the stream from its file where the cube is on disk.
    Frames the stream does not store (nothing valid in them) come back as zeros: the mask
    marks every pixel of them invalid. Chunked streams (a codec of ``chunkcodecs``)
    decompress the chunks the windows cover.
    """

    def __init__(
        self, enc: EncodedCube, stream: StreamInfo, start: int, stop: int, stats: DecodeStats
    ) -> None:
        m = enc.manifest
        self.stream, self.start, self.pos, self.stop = stream, start, start, stop
        self.shape = (len(stream.planes), *m.frame_shape)
        self.name = f"{enc.source}:{stream.file}"
        self.n_frames = m.n_frames
        self._frames: Iterator[tuple[int, av.VideoFrame]] = iter(())
        self._chunks: ChunkFrames | None = None
        codec = chunk_codec(stream.codec)
        if codec is not None:
            data = enc.read_file(stream.file)
            self._chunks = ChunkFrames(
                codec, data, stream, self.shape, m.n_frames, self.name, stats
            )
            # the first chunk now: one that does not hold the manifest's frames is refused
            # before any window is allocated
            self._chunks.chunk(start // stream.keyint)
            return
        self._stored = stream.stored_frames(m.n_frames)
        self._stored_set = set(self._stored)
        first = bisect.bisect_left(self._stored, start)
        last = bisect.bisect_left(self._stored, stop)
        source: bytes | memoryview | Path | None = enc.file_path(stream.file)
        packets = None
        if stream.carrier == rawcarrier.CARRIER:
            # mapped where the file is on disk (checked against the manifest), read where
            # it is not: a window's packets are the pages the decoder touches
            source = _mapped(source) if source is not None else enc.read_file(stream.file)
            packets = packetindex.read_index(source, len(self._stored), self.name)
        elif source is None:
            source = enc.read_file(stream.file)
        self._first: tuple[int, av.VideoFrame] | None = None
        if last > first:
            self._frames = decode_frames(
                source,
                n_planes(stream.pix_fmt),
                first,
                last,
                name=self.name,
                stats=stats,
                expect=frame_bounds(m, stream),
                raw=True,
                packets=packets,
                codec=stream.codec,
            )
            # the first frame now: a stream whose frames are not the manifest's size or
            # pixel format is refused before any window is allocated
            self._first = next(self._frames, None)

    def _next(self) -> tuple[int, av.VideoFrame] | None:
        if self._first is not None:
            got, self._first = self._first, None
            return got
        return next(self._frames, None)

    def take(self, n: int) -> np.ndarray:
        """The next n frames as (n, planes, H, W): bool for masks, uint16 codes otherwise."""
        lo, hi = self.pos, self.pos + n
        self.pos = hi
        if self._chunks is not None:
            return self._chunks.take(lo, hi)
        h, w = self.shape[1:]
        out = np.empty((n, *self.shape), dtype=np.uint16)
        for i in range(n):
            if lo + i not in self._stored_set:
                out[i] = 0
                continue
            got = self._next()
            if got is None:
                raise CorruptStreamError(
                    f"{self.name}: decoded {lo - self.start + i} frames of "
                    f"{self.stop - self.start} expected (truncated stream or manifest from "
                    "another cube)"
                )
            self._copy(got[1], out[i])
        return out

    def _copy(self, frame: av.VideoFrame, dest: np.ndarray) -> None:
        """The frame's planes straight from the decoder's buffers into ``dest`` (planes,
        H, W): tiled planes are cut from the one plane that stacks them."""
        planes, h, w = dest.shape
        views = frame_planes(frame, n_planes(self.stream.pix_fmt))
        if self.stream.tiles > 1:
            dest[...] = untile(views[0][np.newaxis], self.stream.tiles, h)[:planes, :h, :w]
            return
        for p in range(planes):
            dest[p] = views[p][:h, :w]

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()
