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
from fractions import Fraction
from pathlib import Path

import av

from pipeline.codec.packetindex import PacketIndex, head
from pipeline.errors import CorruptStreamError

CARRIER = "raw"
MATROSKA = "matroska"

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
