"""One decode window read as consecutive segments side by side, each from a keyframe.

A video decoder's own threads keep about 1.5 of 2 cores busy on small frames (its frame
threads wait on each other's reference frames), and mapping codes to values on the same
cores slows it further. A window that spans several GOPs splits at keyframes instead: each
segment has its own decoders and maps its own chunks on its own thread, so the segments
fill the cores between them (DeepExtremeCubes twin, 495 frames in 2 GOPs of its 368
stored frames: the stream decodes in 0.38 s instead of 0.47 s on 2 cores). Frames are
the same either way: a decoder that starts at a keyframe gives the frames a decoder that
started earlier gives.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.codemap import CodeMap
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.manifest import Manifest, StreamInfo
from pipeline.codec.pyav_engine import DecodeStats
from pipeline.codec.streamchunks import CHUNK, StreamChunks
from pipeline.codec.windowarrays import WindowArrays

MIN_SEGMENT = 64  # frames: a shorter segment is not worth a decoder of its own
MAP_NICE = 10  # the mapping thread's niceness (Linux): 5 to 19 measured alike


def split_frames(
    m: Manifest, streams: Sequence[StreamInfo], start: int, stop: int, parts: int
) -> list[int]:
    """Bounds ``[start, ..., stop]`` of up to ``parts`` segments (divided by the video
    streams' count) of at least MIN_SEGMENT frames, each inner bound a keyframe of every
    video stream (where its ``keyint`` puts them among its stored frames: a stream whose
    keyframes lie elsewhere decodes from the keyframe before, the same frames at more
    cost), nearest to equal shares."""
    video = [s for s in streams if chunk_codec(s.codec) is None]
    parts //= max(1, len(video))  # streams that decode side by side fill the cores already
    if parts < 2 or stop - start < 2 * MIN_SEGMENT:
        return [start, stop]
    keys: set[int] | None = None
    for s in video:
        stored = s.stored_frames(m.n_frames)
        found = {stored[i] for i in range(0, len(stored), max(1, s.keyint))}
        keys = found if keys is None else keys & found
    inner = sorted(f for f in keys or () if start + MIN_SEGMENT <= f <= stop - MIN_SEGMENT)
    bounds = [start]
    for p in range(1, parts):
        target = start + (stop - start) * p // parts
        near = min(inner, key=lambda f: abs(f - target), default=None)
        if near is not None and near - bounds[-1] >= MIN_SEGMENT:
            bounds.append(near)
    return [*bounds, stop]


class Segments:
    """The streams of each segment of one window, opened (and their first frames checked)
    before the window's arrays are allocated."""

    def __init__(
        self,
        enc: EncodedCube,
        streams: Sequence[StreamInfo],
        bounds: Sequence[int],
        stats: DecodeStats,
    ) -> None:
        self.bounds = list(bounds)
        self.readers: list[StreamChunks] = []
        try:
            for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True):
                self.readers.append(StreamChunks(enc, streams, a, b, stats))
        except BaseException:
            self.close()
            raise

    def fill(self, values: WindowArrays, codemap: CodeMap, lo: int) -> None:
        """Every segment into ``values`` (the window from frame ``lo``), side by side:
        segment 0 on this thread, the others on threads of their own, their chunks mapped
        on one thread of lower priority where the decode is threaded."""
        runs = list(zip(self.readers, self.bounds[:-1], self.bounds[1:], strict=True))
        if not all(r.threaded for r in self.readers):
            for run in runs:
                _fill(*run, values.fill, codemap, lo)
            return
        with (
            ThreadPoolExecutor(1, "cubecast-map", initializer=_lower_priority) as mapper,
            ThreadPoolExecutor(max(1, len(runs) - 1), "cubecast-segment") as pool,
        ):

            def fill(*args: Any) -> None:
                mapper.submit(values.fill, *args).result()

            others = [pool.submit(_fill, *run, fill, codemap, lo) for run in runs[1:]]
            try:
                _fill(*runs[0], fill, codemap, lo)
            finally:
                for f in others:
                    f.exception()  # wait for each: none may write the window after this
            for f in others:
                f.result()

    def close(self) -> None:
        for r in self.readers:
            r.close()


def _fill(
    reader: StreamChunks, a: int, b: int, fill: Callable[..., None], codemap: CodeMap, lo: int
) -> None:
    """Frames [a, b) of the window, a chunk at a time, through ``fill`` (WindowArrays')."""
    spans = [(c, min(c + CHUNK, b)) for c in range(a, b, CHUNK)]
    for (c0, c1), decoded in zip(spans, reader.chunks(spans), strict=True):
        fill(codemap, decoded, c0 - lo, c1 - lo)


def _lower_priority() -> None:
    """The mapping thread yields the cores to the decoders, and takes what they leave: at
    the same priority it slowed them (measured, 2 cores). Linux sets niceness per thread;
    elsewhere the thread keeps its priority."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MAP_NICE)
