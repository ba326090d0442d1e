"""Streams of independently compressed chunks of frames (masks, class layers): frames are
buffered until a chunk is full, then the chunk is compressed and appended, so a reader's
time window inflates only its chunks and the writer holds one chunk at most."""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
import zstandard


class ChunkWriter:
    """Appends compressed chunks to a file as frames arrive; ``offsets`` after close().
    Subclasses say how a frame is held (:meth:`_frame`) and how a chunk becomes bytes
    (:meth:`_chunk_bytes`)."""

    def __init__(
        self, target: str | os.PathLike[str] | BinaryIO, chunk_frames: int, level: int
    ) -> None:
        self._own = isinstance(target, (str, os.PathLike))
        self._file: BinaryIO = open(target, "wb") if self._own else target  # type: ignore[arg-type]
        self._cctx = zstandard.ZstdCompressor(level=level)
        self._chunk = chunk_frames
        self._buf: list[np.ndarray] = []
        self._pos = 0
        self.offsets: list[int] = []

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        return np.asarray(frame)

    def _chunk_bytes(self, frames: np.ndarray) -> bytes:
        raise NotImplementedError

    def write(self, frame: np.ndarray) -> None:
        """frame: (planes, H, W) of one time step."""
        self._buf.append(self._frame(frame))
        if len(self._buf) == self._chunk:
            self._flush()

    def _flush(self) -> None:
        blob = self._chunk_bytes(np.stack(self._buf))
        self.offsets.append(self._pos)
        self._file.write(blob)
        self._pos += len(blob)
        self._buf.clear()

    def close(self) -> None:
        if self._buf:
            self._flush()
        if self._own:
            self._file.close()
