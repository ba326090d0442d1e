"""What reading part of an encoded cube costs: bytes fetched and frames decoded for the
whole cube, for one band and for a short time window, read from the video streams' own
packet index (sizes and keyframes, demuxed without decoding) and from the chunked streams'
``chunk_offsets`` (masks, class layers: a window decompresses the chunks it touches, whole).
``cubecast info`` and the dataset card show it beside the cube's bits, so the ``access``
option's trade is visible."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av

from pipeline.codec import packetindex, rawcarrier
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.manifest import Manifest, StreamInfo
from pipeline.codec.sizes import needed_streams
from pipeline.errors import CorruptStreamError

WINDOW = 8  # frames: a typical training sample's time window


@dataclass(frozen=True)
class Packets:
    """One video stream's packets in decode order: the cube frame each shows, its bytes,
    and whether it is a keyframe (a seek lands on one)."""

    frames: list[int]
    sizes: list[int]
    keys: list[bool]
    head: int = 0  # bytes every read needs first (a raw-carrier file's packet index)

    @property
    def decoded(self) -> int:
        """Frames a whole read decodes."""
        return len(self.frames)

    def window_cost(self, start: int, stop: int) -> tuple[int, int]:
        """(bytes, frames decoded) to read frames [start, stop): a seek lands on the last
        keyframe showing a frame at or before ``start`` (the stream's start if none), and
        decoding runs until every wanted frame's packet is in. Decode order matters: VVC
        codes a GOP's keyframe first and the frames before it after it."""
        wanted = [i for i, f in enumerate(self.frames) if start <= f < stop]
        if not wanted:
            return 0, 0
        before = [i for i, f in enumerate(self.frames) if self.keys[i] and f <= start]
        first = max(before, key=self.frames.__getitem__) if before else 0
        first = min(first, min(wanted))
        last = max(wanted)
        return self.head + sum(self.sizes[first : last + 1]), last - first + 1


@dataclass(frozen=True)
class Chunks:
    """A chunked stream's chunks: their bytes, ``keyint`` frames each (the last fewer)."""

    sizes: list[int]
    keyint: int
    n_frames: int

    @property
    def decoded(self) -> int:
        return self.n_frames

    def window_cost(self, start: int, stop: int) -> tuple[int, int]:
        """(bytes, frames decompressed) to read frames [start, stop): its chunks, whole."""
        k = self.keyint
        first, last = start // k, (stop - 1) // k
        return sum(self.sizes[first : last + 1]), min(self.n_frames, (last + 1) * k) - first * k


def chunks(stream: StreamInfo, n_frames: int) -> Chunks:
    """The stream's chunk index, from the manifest (nothing is read)."""
    starts = stream.chunk_offsets or [0]
    ends = [*starts[1:], stream.nbytes]
    sizes = [max(0, b - a) for a, b in zip(starts, ends, strict=True)]
    return Chunks(sizes, stream.keyint, n_frames)


@dataclass(frozen=True)
class ReadCost:
    what: str
    nbytes: int
    frames: int  # frames decoded in the stream that decodes most
    share: float  # of the cube's bytes


def packets(enc: EncodedCube, stream: StreamInfo) -> Packets:
    """The stream's packet index, from its container or a raw-carrier file's head (nothing
    is decoded). A raw stream's head is read by every window."""
    if stream.carrier == rawcarrier.CARRIER:
        name = f"{enc.source}:{stream.file}"
        n = len(stream.stored_frames(enc.manifest.n_frames))
        index = packetindex.read_index(enc.read_file(stream.file), n, name)
        keys = set(index.keys)
        return Packets(index.frames, index.sizes, [i in keys for i in range(n)], index.start)
    data = enc.file_path(stream.file) or io.BytesIO(enc.read_file(stream.file))
    frames, sizes, keys = [], [], []
    try:
        with av.open(str(data) if not isinstance(data, io.BytesIO) else data, "r") as c:
            vs = c.streams.video[0]
            ticks = Fraction(1, 1) / (vs.time_base or Fraction(1, 1000))
            for p in c.demux(vs):
                if p.size == 0 or p.pts is None:
                    continue
                frames.append(round(p.pts / ticks))
                sizes.append(p.size)
                keys.append(bool(p.is_keyframe))
    except av.FFmpegError as exc:
        raise CorruptStreamError(f"{enc.source}:{stream.file}: packets unreadable ({exc})") from exc
    return Packets(frames, sizes, keys)


def _bands(m: Manifest) -> list[str]:
    return [v.name for v in m.variables if v.role == "continuous"]


def read_costs(enc: EncodedCube, window: int = WINDOW) -> list[ReadCost]:
    """Whole cube; the costliest single band variable; the costliest ``window``-frame
    window (over every start) of the whole cube's streams."""
    m = enc.manifest
    total = max(enc.nbytes, 1)
    index = {
        s.name: chunks(s, m.n_frames) if chunk_codec(s.codec) else packets(enc, s)
        for s in m.streams
    }
    most = max((p.decoded for p in index.values()), default=0)
    out = [ReadCost("whole cube", total, most, 1.0)]
    band_costs = []
    for name in _bands(m):
        streams = needed_streams(m, [name])
        nbytes = sum(s.nbytes for s in streams)
        frames = max((index[s.name].decoded for s in streams), default=0)
        band_costs.append(ReadCost(f"one band ({name})", nbytes, frames, nbytes / total))
    if band_costs:
        out.append(max(band_costs, key=lambda c: c.nbytes))
    n = min(window, m.n_frames)
    worst = (0, 0)
    for start in range(0, m.n_frames - n + 1):
        costs = [p.window_cost(start, start + n) for p in index.values()]
        cost = (sum(b for b, _ in costs), max((f for _, f in costs), default=0))
        worst = max(worst, cost, key=lambda c: (c[1], c[0]))
    out.append(ReadCost(f"{n}-frame window (worst)", worst[0], worst[1], worst[0] / total))
    return out


def access_fields(enc: EncodedCube, window: int = WINDOW) -> dict[str, float | int]:
    """A sample's read costs as plain fields for its verification row and sample table:
    the share of its bytes the costliest band reads alone, and the frames the worst
    ``window``-frame window decodes."""
    costs = read_costs(enc, window)
    band = next((c for c in costs if c.what.startswith("one band")), None)
    win = costs[-1]
    return {
        "band_read_share": round(band.share, 4) if band else 1.0,
        "window_frames": win.frames,
    }
