"""The streams one decode reads, taken a chunk of frames at a time, decoded side by side
and one chunk ahead of the caller.

PyAV releases the GIL while FFmpeg decodes and numpy releases it in its loops, so while
the caller maps one chunk's codes to values, the pool decodes the next chunk of every
stream: the cores stay busy through both steps, and a single-threaded decoder (VVC, kept
so for determinism: see pyav_engine) runs beside the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pipeline.codec.encoded import EncodedCube
from pipeline.codec.manifest import StreamInfo
from pipeline.codec.pyav_engine import DecodeStats, decode_threads
from pipeline.codec.streamframes import StreamFrames

CHUNK = 32  # frames decoded per step: a VVC GOP; its codes stay a few MiB per stream

Pending = list[Future] | int


class StreamChunks:
    """Frames [start, stop) of ``streams``, handed out as chunks in order."""

    def __init__(
        self,
        enc: EncodedCube,
        streams: Sequence[StreamInfo],
        start: int,
        stop: int,
        stats: DecodeStats,
    ) -> None:
        self.readers: list[StreamFrames] = []
        self.pool: ThreadPoolExecutor | None = None
        try:
            for s in streams:
                self.readers.append(StreamFrames(enc, s, start, stop, stats))
        except BaseException:
            self.close()
            raise
        threads = decode_threads()
        if self.readers and threads > 1:
            self.pool = ThreadPoolExecutor(min(len(self.readers), threads), "cubecast-decode")

    def chunks(self, spans: Sequence[tuple[int, int]]) -> Iterator[dict[str, np.ndarray]]:
        """Each span's codes per stream name; the next span is decoding while the caller
        works on this one. Spans must be consecutive, in order."""
        pending = self._submit(spans[0][1] - spans[0][0]) if spans else 0
        for i in range(len(spans)):
            decoded = self._result(pending)
            if i + 1 < len(spans):
                pending = self._submit(spans[i + 1][1] - spans[i + 1][0])
            yield decoded

    def _submit(self, n: int) -> Pending:
        if self.pool is None:
            return n  # taken when asked for
        return [self.pool.submit(r.take, n) for r in self.readers]

    def _result(self, pending: Pending) -> dict[str, np.ndarray]:
        if isinstance(pending, int):
            return {r.stream.name: r.take(pending) for r in self.readers}
        return {r.stream.name: f.result() for r, f in zip(self.readers, pending, strict=True)}

    def close(self) -> None:
        """Wait for chunks in flight (no thread may be inside a reader when it closes)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for r in self.readers:
            r.close()
