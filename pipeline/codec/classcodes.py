"""Class layers (categorical codes) as zstd-compressed chunks of frames, losslessly.

Class layers (SCL, cloud masks, QA bits) are few values in large flat areas: zstd on the
raw codes takes half the bytes FFV1 needs, or less, and decodes about 40 times faster
(DeepExtremeCubes twin, 495 x 128 x 128: SCL 391 KB against 801 KB, 3 ms against 130 ms).
Chunks of ``chunk_frames`` frames compress independently, so a time window decompresses
only its chunks. A 16-bit layer's chunk maps its codes to a palette of the values present
where they are at most 256 (Landsat BQA: 14.1 KB against 17.4 KB as 16-bit codes, 19.1 KB
as byte planes); an 8-bit layer's chunk stores its codes as they are (a palette saved
0.03 %, and the decoder's table lookup would cost four times the decompression).

Chunk layout (docs/FORMAT.md, "Class layers"): ``k`` (u16 LE, 0..256), ``k`` palette
entries (u16 LE, increasing), then one zstd frame declaring its content size: the
chunk's (frames, planes, H, W) palette indices (u8) when ``k`` > 0, else its codes (u8 for
``gray`` streams, u16 LE for ``gray16le``).
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from pipeline.codec.chunkwriter import ChunkWriter
from pipeline.codec.zstdframes import inflate_exact
from pipeline.errors import CorruptStreamError

CODEC = "zstd-codes"
# zstd level: 19 took 1.2 s per 8 MB layer (DeepExtremeCubes SCL) for 391 KB; 16 took
# 0.6 s for 406 KB, 12 0.1 s for 587 KB; 22 gave the same bytes as 19, slower. A cube is
# encoded once and read many times, and its lossy bands take minutes to encode.
LEVEL = 19
MAX_PALETTE = 256
_HEADER = np.dtype("<u2")
CODE_WIDTH = {"gray": 1, "gray16le": 2}


def code_width(pix_fmt: str, name: str = "stream") -> int:
    """Bytes per code of a stream's pixel format: ``gray`` (8-bit codes) or ``gray16le``."""
    try:
        return CODE_WIDTH[pix_fmt]
    except KeyError:
        raise CorruptStreamError(
            f"{name}: pix_fmt {pix_fmt!r} is not one of {', '.join(CODE_WIDTH)} "
            f"for {CODEC} (corrupt manifest)"
        ) from None


class CodesWriter(ChunkWriter):
    """Class layers: each chunk's palette header, then its codes (or palette indices) under
    zstd."""

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        chunk_frames: int,
        pix_fmt: str,
        level: int = LEVEL,
    ) -> None:
        self._width = code_width(pix_fmt)
        super().__init__(target, chunk_frames, level)

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        """frame: (planes, H, W) codes of one time step, below 2^(8 x code width)."""
        return np.array(frame, dtype=np.uint8 if self._width == 1 else "<u2")

    def _chunk_bytes(self, frames: np.ndarray) -> bytes:
        codes = frames
        palette = np.zeros(0, dtype=_HEADER)
        if self._width == 2:
            present = np.unique(codes)
            if len(present) <= MAX_PALETTE:
                palette = present.astype(_HEADER)
                codes = np.searchsorted(present, codes).astype(np.uint8)
        header = np.array([len(palette)], dtype=_HEADER).tobytes() + palette.tobytes()
        return header + self._cctx.compress(codes.data)


def codes_chunk(
    blob: bytes | memoryview,
    frames: int,
    shape: tuple[int, int, int],
    pix_fmt: str,
    name: str,
    chunk: int,
) -> np.ndarray:
    """uint16 (frames, planes, H, W) codes of one chunk.

    The zstd frame's declared size must be exactly what ``frames`` frames of ``shape``
    take, checked before anything is decompressed: a crafted chunk that claims gigabytes
    (or declares nothing) is a CorruptStreamError naming the stream and chunk."""
    where = f"{name}: class chunk {chunk}"
    blob = memoryview(blob)
    palette = _palette(blob, where)
    width = 1 if palette is not None else code_width(pix_fmt, name)
    expected = frames * int(np.prod(shape)) * width
    body = blob[_HEADER.itemsize * (1 + (0 if palette is None else len(palette))) :]
    what = f"{frames} frames of {' x '.join(map(str, shape))} codes"
    raw = inflate_exact(body, expected, where, what)
    dtype = np.uint8 if width == 1 else np.dtype("<u2")
    codes = np.frombuffer(raw, dtype=dtype).reshape(frames, *shape)
    if palette is None:
        return codes.astype(np.uint16, copy=False)
    if len(palette) < MAX_PALETTE and codes.size and int(codes.max()) >= len(palette):
        raise CorruptStreamError(f"{where} indexes past its {len(palette)}-entry palette")
    return palette[codes]


def _palette(blob: memoryview, where: str) -> np.ndarray | None:
    """The chunk's palette (None when it stores codes), its length and order checked."""
    if len(blob) < _HEADER.itemsize:
        raise CorruptStreamError(f"{where} is truncated ({len(blob)} bytes)")
    k = int(np.frombuffer(blob[: _HEADER.itemsize], dtype=_HEADER)[0])
    end = _HEADER.itemsize * (1 + k)
    if k > MAX_PALETTE or len(blob) < end:
        raise CorruptStreamError(
            f"{where}: a palette of {k} entries (at most {MAX_PALETTE}) does not fit the chunk"
        )
    if k == 0:
        return None
    palette = np.frombuffer(blob[_HEADER.itemsize : end], dtype=_HEADER).astype(np.uint16)
    if np.any(palette[1:] <= palette[:-1]):
        raise CorruptStreamError(f"{where}: palette entries are not increasing")
    return palette
