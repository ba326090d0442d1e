"""Validity masks as bit-packed, zstd-compressed chunks of frames.

Cloud and gap masks are mostly whole frames of 0 or 1 and a few large blobs; packed bits
under zstd take about a tenth of the bytes FFV1 needs for the same mask.  Chunks of
``chunk_frames`` frames compress independently, so a time window decompresses only its chunks.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import zstandard

from pipeline.errors import CorruptStreamError

CODEC = "zstd-bitpack"


def encode_masks(
    frames: Iterable[np.ndarray], chunk_frames: int, level: int = 19
) -> tuple[bytes, list[int]]:
    """frames: bool (planes, H, W) per time step.  Returns bytes and chunk start offsets."""
    cctx = zstandard.ZstdCompressor(level=level)
    parts: list[bytes] = []
    offsets: list[int] = []
    pos = 0
    buf: list[np.ndarray] = []

    def flush() -> None:
        nonlocal pos
        blob = cctx.compress(np.packbits(np.stack(buf)).tobytes())
        offsets.append(pos)
        parts.append(blob)
        pos += len(blob)
        buf.clear()

    for frame in frames:
        buf.append(np.asarray(frame, dtype=bool))
        if len(buf) == chunk_frames:
            flush()
    if buf:
        flush()
    return b"".join(parts), offsets


def decode_masks(
    data: bytes,
    offsets: list[int],
    chunk_frames: int,
    shape: tuple[int, int, int],
    start: int,
    stop: int,
    name: str = "masks",
) -> np.ndarray:
    """bool (stop - start, planes, H, W) for frames [start, stop)."""
    planes, h, w = shape
    per_frame = planes * h * w
    dctx = zstandard.ZstdDecompressor()
    first, last = start // chunk_frames, (stop - 1) // chunk_frames
    out = []
    bounds = offsets + [len(data)]
    for c in range(first, last + 1):
        if c >= len(offsets):
            raise CorruptStreamError(f"{name}: mask chunk {c} is missing (truncated stream)")
        try:
            raw = dctx.decompress(data[bounds[c] : bounds[c + 1]])
        except zstandard.ZstdError as exc:
            raise CorruptStreamError(f"{name}: mask chunk {c} does not decompress ({exc})") from exc
        n = min(chunk_frames, (len(raw) * 8) // per_frame)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n * per_frame)
        out.append(bits.reshape(n, planes, h, w).astype(bool))
    arr = np.concatenate(out)
    lo = start - first * chunk_frames
    if lo + (stop - start) > len(arr):
        raise CorruptStreamError(f"{name}: mask stream ends before frame {stop}")
    return arr[lo : lo + (stop - start)]
