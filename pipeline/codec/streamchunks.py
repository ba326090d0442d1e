"""The streams one decode reads, taken a chunk of frames at a time, decoded side by side
and a few chunks ahead of the caller.

PyAV releases the GIL while FFmpeg decodes and numpy releases it in its loops, so while
the caller maps one chunk's codes to values, each stream's own thread decodes the next
chunks: the cores stay busy through both steps, and a single-threaded decoder (VVC, kept
so for determinism: see pyav_engine) runs beside the others. Each stream runs up to
``AHEAD`` chunks ahead: one chunk ahead, the decoder stood idle whenever mapping a chunk
took longer than decoding the next one (the mapping shares the cores with it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.codec.encoded import EncodedCube
from pipeline.codec.manifest import StreamInfo
from pipeline.codec.pyav_engine import DecodeStats, decode_threads
from pipeline.codec.streamframes import StreamFrames

CHUNK = 32  # frames decoded per step: a VVC GOP; its codes stay a few MiB per stream
AHEAD = 3  # chunks a stream's thread may decode before the caller takes them


class _Failed:
    """A stream thread's exception, handed to the caller in place of its chunk."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


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
        self.threads: list[threading.Thread] = []
        self._stop = threading.Event()
        try:
            for s in streams:
                self.readers.append(StreamFrames(enc, s, start, stop, stats))
        except BaseException:
            self.close()
            raise
        # at most this many streams decode at once (each decoder has threads of its own)
        self._busy = threading.Semaphore(max(1, decode_threads()))
        self.threaded = decode_threads() > 1

    def chunks(self, spans: Sequence[tuple[int, int]]) -> Iterator[dict[str, np.ndarray]]:
        """Each span's codes per stream name; the next spans are decoding while the caller
        works on this one. Spans must be consecutive, in order."""
        sizes = [hi - lo for lo, hi in spans]
        if not self.threaded or not self.readers:
            for n in sizes:
                yield {r.stream.name: r.take(n) for r in self.readers}
            return
        queues: list[queue.Queue] = []
        for r in self.readers:
            q: queue.Queue = queue.Queue(maxsize=AHEAD)
            t = threading.Thread(
                target=self._produce, args=(r, q, sizes), name="cubecast-decode", daemon=True
            )
            queues.append(q)
            self.threads.append(t)
            t.start()
        for _ in sizes:
            yield {r.stream.name: _got(q.get()) for r, q in zip(self.readers, queues, strict=True)}

    def _produce(self, reader: StreamFrames, q: queue.Queue, sizes: list[int]) -> None:
        """One stream's chunks into its queue, in order, until done, failed or closed."""
        for n in sizes:
            if self._stop.is_set():
                return
            item: np.ndarray | _Failed
            try:
                with self._busy:
                    if self._stop.is_set():
                        return
                    item = reader.take(n)
            except BaseException as exc:  # handed to the caller, who raises it
                item = _Failed(exc)
            while not self._stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failed):
                return

    def close(self) -> None:
        """Stop the stream threads and wait for them (no thread may be inside a reader
        when it closes)."""
        self._stop.set()
        for t in self.threads:
            t.join()
        for r in self.readers:
            r.close()


def _got(item: np.ndarray | _Failed) -> np.ndarray:
    if isinstance(item, _Failed):
        raise item.exc
    return item
