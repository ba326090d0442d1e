"""The raw carrier's packet index: each packet's size, the frame it shows, the keyframes and
the codec's extradata, packed as zstd-compressed varints at the head of a raw stream's file
(:mod:`pipeline.codec.rawcarrier`). Untrusted on reading: :func:`read_index` checks every
count and size against the stream's frames and the file's length before anything of their
size is allocated, and names the stream in its one-line error."""

from __future__ import annotations

from dataclasses import dataclass

import zstandard

from pipeline.errors import CorruptStreamError

MAX_EXTRADATA = 1 << 20  # bytes: real extradata is tens to hundreds
MAX_VARINT = 9  # bytes of one varint: values below 2^63
# bytes the packed index may inflate to: per packet a size, a frame and a keyframe delta
# (at most MAX_VARINT bytes each), the counts, and the extradata
_PER_PACKET = 3 * MAX_VARINT


@dataclass(frozen=True)
class PacketIndex:
    """A raw stream's packets in decode order: their bytes, the stored frame (0-based,
    in the stream's stored frames) each shows, which are keyframes, and the extradata."""

    sizes: list[int]
    frames: list[int]
    keys: list[int]  # packet positions, increasing; the first is 0
    extradata: bytes
    start: int = 0  # the first packet's byte offset in the file (after the head)

    @property
    def offsets(self) -> list[int]:
        """Each packet's byte offset in the file."""
        out, pos = [], self.start
        for n in self.sizes:
            out.append(pos)
            pos += n
        return out

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def seek_packet(self, first: int) -> int:
        """The packet a decode of frames from ``first`` on starts at: the keyframe showing
        the latest frame at or before ``first`` (the stream's start if none)."""
        best = 0
        for k in self.keys:
            if self.frames[k] <= first and self.frames[k] >= self.frames[best]:
                best = k
        return best


def _varint(n: int, out: bytearray) -> None:
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> CorruptStreamError:
        return CorruptStreamError(f"{self.name}: corrupt packet index ({what})")

    def varint(self, limit: int, what: str) -> int:
        """One varint, at most ``limit``."""
        value = shift = 0
        for i in range(MAX_VARINT):
            if self.pos >= len(self.data):
                raise self.fail(f"ends inside {what}")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if value > limit:
                    raise self.fail(f"{what} {value} exceeds {limit}")
                return value
            if i == MAX_VARINT - 1:
                break
        raise self.fail(f"{what} is longer than {MAX_VARINT} bytes")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"{what} of {n} bytes runs past its end")
        got = self.data[self.pos : self.pos + n]
        self.pos += n
        return got


def pack(index: PacketIndex) -> bytes:
    """The index as stored: one zstd frame (content size declared) of varints: packet
    count; each packet's size; each packet's shown frame minus its position, zigzagged;
    keyframe count and the gaps between keyframe positions (the first from 0); extradata
    length and bytes."""
    out = bytearray()
    _varint(len(index.sizes), out)
    for n in index.sizes:
        _varint(n, out)
    for i, f in enumerate(index.frames):
        _varint(_zigzag(f - i), out)
    _varint(len(index.keys), out)
    last = 0
    for k in index.keys:
        _varint(k - last, out)
        last = k
    _varint(len(index.extradata), out)
    out += index.extradata
    return zstandard.ZstdCompressor(level=19, write_content_size=True).compress(bytes(out))


def head(index: PacketIndex) -> bytes:
    """The raw file's head: the packed index's length as a varint, then the index."""
    blob = pack(index)
    out = bytearray()
    _varint(len(blob), out)
    return bytes(out) + blob


def _budget(n_frames: int) -> int:
    """Bytes an index of ``n_frames`` packets may inflate to."""
    return _PER_PACKET * (n_frames + 1) + 3 * MAX_VARINT + MAX_EXTRADATA


def read_index(data: bytes | memoryview, n_frames: int, name: str) -> PacketIndex:
    """The index at the head of a raw file of ``n_frames`` stored frames, checked against
    the file (:func:`unpack`); its packets start after it (``PacketIndex.start``)."""
    r = _Reader(data, name)
    # a zstd frame of the budget's bytes is at most a little longer than them
    length = r.varint(_budget(n_frames) + 1024, "index length")
    if length > len(data) - r.pos:
        raise r.fail(f"its {length} bytes run past the file's {len(data)}")
    start = r.pos + length
    index = unpack(bytes(data[r.pos : start]), len(data) - start, n_frames, name)
    return PacketIndex(index.sizes, index.frames, index.keys, index.extradata, start)


def unpack(blob: bytes, nbytes: int, n_frames: int, name: str) -> PacketIndex:
    """The packed index, checked before anything of its size is allocated: exactly
    ``n_frames`` packets (the stream's stored frames), each at least one byte, together
    exactly the ``nbytes`` after the head; each frame shown once; keyframes increasing, the
    first packet one of them; extradata of at most ``MAX_EXTRADATA`` bytes; nothing after
    it."""
    budget = _budget(n_frames)
    try:
        params = zstandard.get_frame_parameters(blob)
        size = params.content_size
        if size == zstandard.CONTENTSIZE_UNKNOWN or size > budget:
            raise CorruptStreamError(
                f"{name}: corrupt packet index (declares {size} bytes, at most {budget} for "
                f"{n_frames} frames)"
            )
        dobj = zstandard.ZstdDecompressor().decompressobj()
        raw = dobj.decompress(blob)
        if len(raw) != size or not dobj.eof or dobj.unused_data:
            raise CorruptStreamError(
                f"{name}: corrupt packet index (inflates to {len(raw)} bytes, declares {size})"
            )
    except zstandard.ZstdError as exc:
        raise CorruptStreamError(f"{name}: corrupt packet index (zstd: {exc})") from None
    r = _Reader(raw, name)
    count = r.varint(n_frames, "packet count")
    if count != n_frames:
        raise r.fail(f"{count} packets for {n_frames} stored frames")
    sizes, total = [], 0
    for i in range(count):
        n = r.varint(nbytes, f"packet {i}'s size")
        if n < 1:
            raise r.fail(f"packet {i} is empty")
        total += n
        if total > nbytes:
            raise r.fail(f"packets run past the file's {nbytes} bytes at packet {i}")
        sizes.append(n)
    if total != nbytes:
        raise r.fail(f"packets hold {total} bytes, the file has {nbytes}")
    frames, seen = [], bytearray(count)
    for i in range(count):
        z = r.varint(2 * count, f"packet {i}'s frame")
        f = i + (z >> 1 if not z & 1 else -(z >> 1) - 1)
        if not 0 <= f < count or seen[f]:
            raise r.fail(f"packet {i} shows frame {f}: outside 0..{count - 1} or shown twice")
        seen[f] = 1
        frames.append(f)
    n_keys = r.varint(count, "keyframe count")
    keys, pos = [], 0
    for j in range(n_keys):
        pos += r.varint(count, f"keyframe {j}'s gap")
        if pos >= count or (keys and pos <= keys[-1]):
            raise r.fail(f"keyframe {j} at packet {pos}: not increasing within {count}")
        keys.append(pos)
    if count and (not keys or keys[0] != 0):
        raise r.fail("the first packet is not a keyframe")
    extradata = r.take(r.varint(MAX_EXTRADATA, "extradata length"), "extradata")
    if r.pos != len(raw):
        raise r.fail(f"{len(raw) - r.pos} bytes after its end")
    return PacketIndex(sizes, frames, keys, extradata)
