"""Validity masks as bit-packed, zstd-compressed chunks of frames.

Cloud and gap masks are mostly whole frames of 0 or 1 and a few large blobs; packed bits
under zstd take about a tenth of the bytes FFV1 needs for the same mask.  Chunks of
``chunk_frames`` frames compress independently, so a time window decompresses only its chunks.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
import zstandard

from pipeline.codec.chunkwriter import ChunkWriter
from pipeline.errors import CorruptStreamError

CODEC = "zstd-bitpack"


class MaskWriter(ChunkWriter):
    """Masks: each chunk's bits packed, then zstd."""

    def __init__(
        self, target: str | os.PathLike[str] | BinaryIO, chunk_frames: int, level: int = 19
    ) -> None:
        super().__init__(target, chunk_frames, level)

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        """frame: bool (planes, H, W) for one time step."""
        return np.asarray(frame, dtype=bool)

    def _chunk_bytes(self, frames: np.ndarray) -> bytes:
        return self._cctx.compress(np.packbits(frames).tobytes())


def decode_masks(
    data: bytes,
    offsets: list[int],
    chunk_frames: int,
    shape: tuple[int, int, int],
    start: int,
    stop: int,
    name: str = "masks",
    n_frames: int | None = None,
) -> np.ndarray:
    """bool (stop - start, planes, H, W) for frames [start, stop).

    Each chunk is decompressed into at most the bytes its frames' bits take, and (when
    ``n_frames``, the cube's length, is given) must take exactly that: a chunk that
    inflates further (a zstd bomb) or falls short is a CorruptStreamError naming the
    stream, before more than that is allocated."""
    first, last = start // chunk_frames, (stop - 1) // chunk_frames
    out = []
    bounds = offsets + [len(data)]
    for c in range(first, last + 1):
        if c >= len(offsets):
            raise CorruptStreamError(f"{name}: mask chunk {c} is missing (truncated stream)")
        frames = chunk_frames
        if n_frames is not None:
            frames = max(0, min(chunk_frames, n_frames - c * chunk_frames))
        blob = data[bounds[c] : bounds[c + 1]]
        out.append(_chunk_bits(blob, frames, shape, name, c, exact=n_frames is not None))
    arr = np.concatenate(out)
    lo = start - first * chunk_frames
    if lo + (stop - start) > len(arr):
        raise CorruptStreamError(f"{name}: mask stream ends before frame {stop}")
    return arr[lo : lo + (stop - start)]


def mask_chunk(
    blob: bytes | memoryview,
    frames: int,
    shape: tuple[int, int, int],
    pix_fmt: str,
    name: str,
    chunk: int,
) -> np.ndarray:
    """bool (frames, planes, H, W) of one chunk that must hold exactly ``frames`` frames
    (``pix_fmt`` is always "bits": the signature is every chunked codec's)."""
    return _chunk_bits(blob, frames, shape, name, chunk, exact=True)


def _chunk_bits(
    blob: bytes | memoryview,
    frames: int,
    shape: tuple[int, int, int],
    name: str,
    chunk: int,
    exact: bool,
) -> np.ndarray:
    planes, h, w = shape
    per_frame = planes * h * w
    most = -(-frames * per_frame // 8)  # packbits of the chunk's frames, rounded up
    raw = _inflate(zstandard.ZstdDecompressor(), blob, most, name, chunk)
    if exact and len(raw) != most:
        raise CorruptStreamError(
            f"{name}: mask chunk {chunk} holds {len(raw)} bytes, {frames} frames of "
            f"{planes} x {h} x {w} take {most} (corrupt stream or manifest from another cube)"
        )
    n = min(frames, (len(raw) * 8) // per_frame) if per_frame else 0
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n * per_frame)
    return bits.reshape(n, planes, h, w).view(bool)  # unpackbits gives 0 and 1 only


def _inflate(
    dctx: zstandard.ZstdDecompressor, blob: bytes | memoryview, most: int, name: str, chunk: int
) -> bytes:
    """One chunk decompressed, reading at most ``most`` + 1 bytes whatever its frame
    header claims; more than ``most`` is refused."""
    try:
        raw = dctx.stream_reader(blob).read(most + 1)
    except zstandard.ZstdError as exc:
        raise CorruptStreamError(f"{name}: mask chunk {chunk} does not decompress ({exc})") from exc
    if len(raw) > most:
        raise CorruptStreamError(
            f"{name}: mask chunk {chunk} inflates past the {most} bytes its frames take "
            "(corrupt or crafted stream)"
        )
    return raw
