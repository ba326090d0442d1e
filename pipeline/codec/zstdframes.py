"""Inflating a zstd chunk read from a shard, bounded before it allocates.

Every chunked layer (class codes, error-bound corrections) knows how many bytes its
frames take; a chunk whose zstd frame declares anything else (or nothing) is refused before
a byte is inflated, so a crafted chunk that claims gigabytes costs nothing."""

from __future__ import annotations

import zstandard

from pipeline.errors import CorruptStreamError


def inflate_exact(body: bytes | memoryview, expected: int, where: str, what: str) -> bytes:
    """The ``expected`` bytes ``body`` inflates to; ``where`` names the chunk and ``what``
    says what its bytes hold, in the error."""
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise CorruptStreamError(f"{where} is not a zstd frame ({exc})") from exc
    if declared != expected:
        said = "no size" if declared < 0 else f"{declared} bytes"
        raise CorruptStreamError(
            f"{where} declares {said}; its {what} take {expected} bytes (corrupt or crafted stream)"
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(body, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise CorruptStreamError(f"{where} does not decompress ({exc})") from exc
    if len(raw) != expected:
        raise CorruptStreamError(f"{where} holds {len(raw)} bytes, not {expected}")
    return raw
