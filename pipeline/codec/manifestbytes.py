"""A stored manifest's bytes are untrusted: inflated a little at a time under a size limit,
and parsed JSON measured for depth before anything recurses into it."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ManifestError

MAX_MANIFEST = 64 << 20  # bytes of JSON: far above any real cube, below a decompression bomb
MAX_DEPTH = 64  # JSON nesting: real manifests nest about 8 deep


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (values are decoded recursively
    later, so a crafted depth must be refused first)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


FEED = 512  # compressed bytes per step: at most 64 KiB per byte of output, ~32 MiB a step


def inflate_manifest(data: bytes, source: str) -> bytes:
    """One zstd frame, fed a little at a time so that no more than ``MAX_MANIFEST`` (and
    one step) is inflated whatever the frame claims; its content checksum (which every
    manifest since the checksum was introduced carries) is verified by zstd. A frame that
    ends early, or bytes after it (a flipped checksum flag leaves its 4 bytes there), are
    refused: no single flipped bit of a stored manifest decodes silently."""
    import zstandard

    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    pos = 0
    try:
        while pos < len(data) and not dobj.eof:
            out += dobj.decompress(data[pos : pos + FEED])
            pos += FEED
            if len(out) > MAX_MANIFEST:
                raise ManifestError(f"{source}: manifest is larger than {MAX_MANIFEST >> 20} MiB")
    except zstandard.ZstdError as exc:
        raise ManifestError(f"{source}: manifest does not decompress (corrupt: {exc})") from exc
    if not dobj.eof:
        raise ManifestError(f"{source}: manifest is truncated (its zstd frame does not end)")
    if dobj.unused_data or pos < len(data):
        raise ManifestError(f"{source}: manifest has bytes after its zstd frame (corrupt)")
    return bytes(out)
