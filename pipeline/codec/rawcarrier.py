"""The raw carrier: a video stream's packets back to back, no container.

Matroska costs about 8 bytes a frame (a SimpleBlock's header, cluster headers, cues) and a
header of a few hundred bytes: a third of the bytes of a stream of 8 x 12 px frames. The raw
carrier stores the packets as the Matroska demuxer gives them (HEVC/VVC NAL units with
4-byte lengths, AV1 OBUs; HEVC/VVC keyframes without the parameter sets the extradata
holds), after one compact packet index at the head of the file: each packet's size, the
frame it shows, the keyframes and the codec's extradata (hvcC / vvcC / av1C). At the head
rather than in the manifest: base64 in the manifest's JSON cost 12 % more bytes (874
against 783 on the hourly field), and a range reader still finds a window's packets with
one read of the head.

An encode writes the raw carrier for a stream only where the file is smaller than its
Matroska file (:func:`to_raw`); the decoder feeds the packets to an ``av.CodecContext``
(:func:`decode_packets`), seeking to the last keyframe at or before a window's first frame
as the Matroska demuxer does. The index is untrusted input: :func:`read_index` checks
every count and size against the stream's frames and the file's length before anything of
their size is allocated, and names the stream in its one-line error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import zstandard

from pipeline.errors import CorruptStreamError

CARRIER = "raw"
MATROSKA = "matroska"
MAX_EXTRADATA = 1 << 20  # bytes: real extradata is tens to hundreds
MAX_VARINT = 9  # bytes of one varint: values below 2^63
# bytes the packed index may inflate to: per packet a size, a frame and a keyframe delta
# (at most MAX_VARINT bytes each), the counts, and the extradata
_PER_PACKET = 3 * MAX_VARINT

# the FFmpeg decoder of each encoder whose bitstream says its frame size (AV1: dav1d where
# PyAV has it, as av.open picks). FFV1 takes its frame size from the container alone, so
# FFV1 streams stay Matroska.
_DECODERS = {"libx265": "hevc", "libvvenc": "vvc"}


def carries(codec: str) -> bool:
    """Whether streams of this encoder may be written in the raw carrier."""
    return codec in _DECODERS or codec == "libaom-av1"


def decoder_name(codec: str, name: str = "stream") -> str:
    if codec == "libaom-av1":
        return "libdav1d" if "libdav1d" in av.codecs_available else "av1"
    try:
        return _DECODERS[codec]
    except KeyError:
        raise CorruptStreamError(
            f"{name}: codec {codec!r} is never written raw (corrupt manifest)"
        ) from None


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


def demux(path: str | os.PathLike[str]) -> tuple[PacketIndex, list[bytes]]:
    """A Matroska stream's packets (payloads, in decode order) and their index."""
    sizes, frames, keys, payloads = [], [], [], []
    with av.open(os.fspath(path), "r", format="matroska") as c:
        vs = c.streams.video[0]
        extradata = bytes(vs.codec_context.extradata or b"")
        ticks = Fraction(1, 1) / (vs.time_base or Fraction(1, 1000))
        for p in c.demux(vs):
            if p.size == 0 or p.pts is None:
                continue
            if p.is_keyframe:
                keys.append(len(sizes))
            frames.append(round(p.pts / ticks))
            sizes.append(p.size)
            payloads.append(bytes(p))
    if frames:  # frames as positions among the stored frames: the first shows 0
        low = min(frames)
        frames = [f - low for f in frames]
    return PacketIndex(sizes, frames, keys, extradata), payloads


# encoders whose packets are NAL units with 4-byte lengths (hvcC / vvcC)
_NAL_CODECS = frozenset(("libx265", "libvvenc"))
MIN_SHARED_NAL = 4  # bytes: shorter units are not looked up in the extradata


def strip_shared_nals(packet: bytes, extradata: bytes) -> bytes:
    """The packet without the NAL units that the extradata holds byte for byte (parameter
    sets and SEI the encoder repeats at each keyframe: the decoder reads them from the
    extradata when it opens). A packet that does not parse as 4-byte-length NAL units is
    left whole."""
    out, pos = bytearray(), 0
    while pos < len(packet):
        if pos + 4 > len(packet):
            return packet
        n = int.from_bytes(packet[pos : pos + 4], "big")
        unit = packet[pos + 4 : pos + 4 + n]
        if len(unit) != n or n == 0:
            return packet
        if not (n >= MIN_SHARED_NAL and unit in extradata):
            out += packet[pos : pos + 4 + n]
        pos += 4 + n
    return bytes(out) if out else packet


def to_raw(path: Path, codec: str) -> bool:
    """Rewrite the Matroska stream at ``path`` (of encoder ``codec``) as the raw carrier
    where that file is smaller; whether it did (else the file is left as it is). A stream
    that does not demux as one frame a packet, shown once each, stays Matroska. HEVC and
    VVC keyframes lose the NAL units the extradata holds (:func:`strip_shared_nals`)."""
    try:
        index, payloads = demux(path)
    except (av.FFmpegError, OSError, IndexError):
        return False
    if not index.sizes or sorted(index.frames) != list(range(len(index.sizes))):
        return False
    if not index.keys or index.keys[0] != 0:
        return False
    if codec in _NAL_CODECS and index.extradata:
        for k in index.keys:
            payloads[k] = strip_shared_nals(payloads[k], index.extradata)
        sizes = [len(p) for p in payloads]
        index = PacketIndex(sizes, index.frames, index.keys, index.extradata)
    top = head(index)
    if len(top) + index.nbytes >= path.stat().st_size:
        return False
    tmp = path.with_name(path.name + ".raw")
    with open(tmp, "wb") as fh:
        fh.write(top)
        for p in payloads:
            fh.write(p)
    tmp.replace(path)
    return True


def decode_packets(
    data: bytes | memoryview,
    index: PacketIndex,
    codec: str,
    first: int,
    threads: int,
    max_pixels: int | None,
    name: str = "stream",
) -> Iterator[av.VideoFrame]:
    """Decoded frames (``pts``: the stored frame each shows) from the keyframe at or
    before stored frame ``first`` on, in display order as the decoder gives them."""
    cc = av.CodecContext.create(decoder_name(codec, name), "r")
    if index.extradata:
        cc.extradata = index.extradata
    if max_pixels is not None:
        cc.options = {"max_pixels": str(max_pixels)}
    if cc.name == "vvc":
        cc.thread_count = 1  # deterministic only unthreaded: see pyav_engine._open_video
    else:
        cc.thread_type = "AUTO"
        cc.thread_count = threads
    view = memoryview(data)
    offsets = index.offsets
    start = index.seek_packet(first)
    try:
        for i in range(start, len(index.sizes)):
            packet = av.Packet(view[offsets[i] : offsets[i] + index.sizes[i]])
            packet.pts = index.frames[i]
            packet.time_base = Fraction(1, 1)
            yield from cc.decode(packet)
        yield from cc.decode(None)
    finally:
        # a decoder left mid-stream (a reader closed early) is flushed, which waits for
        # its threads without holding the GIL: freeing it with frames in flight holds the
        # GIL while joining threads that may need it (a deadlock, found by bench/fuzz.py)
        if cc.is_open:
            cc.flush_buffers()
