"""One group's source values -> code planes for its streams, and the manifest entries that
say how to turn them back.

A group is quantised to its codec's depth (12 bits for x265/AV1, 10 for VVC, 16 for FFV1),
gaps are filled with each pixel's previous value, and a decorrelated group is rotated onto
its KLT components first. Frames where no channel of the group has a valid pixel are
reported as skippable: they cost nothing in the stream, the mask restores them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xarray as xr

from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.cube import Block, Channel, ChannelStats, CubeLayout, valid_mask
from pipeline.codec.klt import Klt, Moments, fit_klt
from pipeline.codec.manifest import ChannelInfo, ComponentInfo, TransformInfo
from pipeline.codec.planning import LOSSLESS_BITS, GroupPlan, StreamPlan
from pipeline.codec.quantize import Quantiser, TemporalFiller, as_u64, pad_even, to_words
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import X265_CODEC, get_codec

KLT_FILL_BITS = 16  # bands are gap-filled on 16-bit codes before the rotation
X265_CTU = 64


@dataclass
class CubeContext:
    """What every group coder of one cube shares."""

    ds: xr.Dataset
    layout: CubeLayout
    stats: dict[str, ChannelStats]
    moments: dict[tuple[str, ...], Moments]
    skip_empty: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.ds.sizes[self.layout.y_dim], self.ds.sizes[self.layout.x_dim]


def frame_size(shape: tuple[int, int], settings: VideoSettings) -> tuple[int, int]:
    """(H, W) of one plane (a tile) of a stream: the cube's frame, made even. The encoder's
    minimum size applies to the whole stream frame (see stream_size); chunked carriers
    store the frame as it is."""
    h, w = shape
    if chunk_codec(settings.codec) is not None:
        return h, w
    return h + h % 2, w + w % 2


def stream_size(tile: tuple[int, int], tiles: int, settings: VideoSettings) -> tuple[int, int]:
    """(H, W) of a stream's frames: its tiles stacked top to bottom, at least the encoder's
    minimum (16 px for x265, 64 for VVC; see each codec's ``frame_size``).

    Only PyAV's in-process libx265 gets whole 64-px CTUs: it encodes noisy content in
    partial CTUs non-deterministically (errors of half the code range, at times heap
    corruption); the command line's x265 does not, and the padding cost up to 2.5x the
    pixels on small frames. A frame one CTU wide is two (see ``X265.safe_widths``).
    """
    h, w = tiles * tile[0], tile[1]
    codec = get_codec(settings.codec)
    if codec is X265_CODEC and settings.engine == "pyav":
        w = X265_CODEC.safe_widths.get(w + (-w % X265_CTU), w)  # 64: one CTU decodes wrong
        return h + (-h % X265_CTU), w + (-w % X265_CTU)
    return codec.frame_size(h, w)


def stream_frame(
    planes: np.ndarray, tile: tuple[int, int], size: tuple[int, int], tiles: int
) -> np.ndarray:
    """A stream's frame from its (P, h, w) planes: stacked top to bottom, each edge-padded
    to the ``tile`` size, when the stream tiles them (``tiles`` > 1); then edge-padded at
    the bottom and right to the stream's frame ``size``."""
    _, h, w = planes.shape
    if tiles > 1:
        planes = pad_even(planes, (tile[0] - h, tile[1] - w)).reshape(1, -1, tile[1])
    return pad_even(planes, (size[0] - planes.shape[1], size[1] - planes.shape[2]))


def untile(frame: np.ndarray, tiles: int, rows: int) -> np.ndarray:
    """A decoded (1, H, W) frame of a stream that tiles ``tiles`` planes of a cube with
    ``rows`` rows -> (tiles, tile rows, W): the inverse of stream_frame's stacking."""
    if tiles == 1:
        return frame
    tile_rows = rows + rows % 2  # frame_size's tile height
    return frame[0, : tiles * tile_rows].reshape(tiles, tile_rows, frame.shape[-1])


def _integer(ds: xr.Dataset, ch: Channel) -> bool:
    return ds[ch.variable].dtype.kind in "biu"


class GroupCoder:
    """Turns blocks of source values into a group's code planes, block after block.

    It keeps the gap-fill state between blocks, so every group of the cube is fed from one
    read pass.
    """

    def __init__(self, ctx: CubeContext, group: GroupPlan, settings: VideoSettings) -> None:
        self.ctx, self.group, self.settings = ctx, group, settings
        self.shape = ctx.shape
        self.tile = frame_size(self.shape, settings)  # one plane as its stream carries it
        self.klt: Klt | None = None
        if group.kind == "mask":
            self.quantisers: list[Quantiser] = []
            return
        if group.kind == "categorical":
            st = ctx.stats[group.channels[0].name]
            self.quantisers = [Quantiser(offset=st.vmin, scale=1.0, bits=LOSSLESS_BITS)]
            return
        if group.words:  # lossless and wider than 16 bits: the exact bits in 16-bit words
            st = ctx.stats[group.channels[0].name]
            self.word_offset = int(st.vmin) if np.dtype(st.dtype).kind in "iu" else 0
            self.quantisers = [Quantiser(0, 1.0, LOSSLESS_BITS)]
            self.fillers = [TemporalFiller(0xFFFF) for _ in range(group.words)]
            return
        bits = LOSSLESS_BITS if settings.lossless and settings.codec == "ffv1" else None
        bits = bits or get_codec(settings.codec).bits
        if group.decorrelate == "klt":
            names = tuple(c.name for c in group.channels)
            lo = np.array([float(ctx.stats[n].vmin) for n in names])
            hi = np.array([float(ctx.stats[n].vmax) for n in names])
            self.klt = fit_klt(ctx.moments[names], lo, hi, bits)
        if self.klt is not None:
            # 16-bit band codes normalised by 1 / 65535 are exactly the KLT's n = (x - lo) / range
            self.band_q = [
                Quantiser(ctx.stats[c.name].vmin, self._range(c) / 65535, KLT_FILL_BITS)
                for c in group.channels
            ]
            self.quantisers = [q.amplified(settings.gain) for q in self.klt.quantisers(bits)]
        else:
            self.band_q = [
                Quantiser.for_range(
                    ctx.stats[c.name].vmin, ctx.stats[c.name].vmax, bits, _integer(ctx.ds, c)
                ).amplified(settings.gain)
                for c in group.channels
            ]
            self.quantisers = self.band_q
        self.fillers = [TemporalFiller(q.max_code) for q in self.band_q]

    def _range(self, ch: Channel) -> float:
        st = self.ctx.stats[ch.name]
        return float(st.vmax) - float(st.vmin)

    def _valid(self, ch: Channel, vals: np.ndarray) -> np.ndarray | None:
        """None when every pixel is valid (the common case costs no mask)."""
        nodata = self.ctx.layout.nodata[ch.variable]
        if nodata is None and vals.dtype.kind in "biu":
            return None
        valid = valid_mask(vals, nodata)
        return None if valid.all() else valid

    def frames(self, values: Block, n: int) -> Iterator[tuple[bool, np.ndarray]]:
        """(keep, planes) per frame: planes (P, H, W) uint16 (bool for masks) at the cube's
        size (stream_frame lays them out for a stream); keep is False for a frame with
        nothing valid to store."""
        g, (h, w) = self.group, self.shape
        if g.kind == "mask":
            invalid = np.zeros((n, g.n_planes, h, w), dtype=bool)
            for b, ch in enumerate(g.mask_of):
                valid = self._valid(ch, values[ch.name])
                if valid is not None:
                    invalid[:, b] = ~valid
            for b, (ch, sign) in enumerate(g.inf_of, start=len(g.mask_of)):
                vals = values[ch.name]
                invalid[:, b] = np.isposinf(vals) if sign == "+inf" else np.isneginf(vals)
            for frame in invalid:
                yield True, frame
            return
        if g.kind == "categorical":
            q, ch = self.quantisers[0], g.channels[0]
            vals = values[ch.name]
            if vals.dtype.kind == "b":
                vals = vals.view(np.uint8)
            codes = (as_u64(vals) - np.uint64(int(q.offset) % 2**64)).astype(np.uint16)
            for frame in codes:
                yield True, frame[np.newaxis]
            return
        if g.words:
            yield from self._word_frames(values, n)
            return
        codes = np.zeros((n, len(g.channels), h, w), dtype=np.uint16)
        any_valid = np.zeros(n, dtype=bool)
        for p, ch in enumerate(g.channels):
            vals = values[ch.name]
            self.band_q[p].quantise(vals, codes[:, p])
            valid = self._valid(ch, vals)
            any_valid |= True if valid is None else valid.any(axis=(1, 2))
            for i in range(n):  # an all-invalid frame repeats the last: state unchanged
                self.fillers[p].fill(codes[i, p], None if valid is None else valid[i])
        keep = any_valid | (not self.ctx.skip_empty)
        planes = self._components(codes) if self.klt is not None else codes
        for i in range(n):
            yield bool(keep[i]), planes[i]

    def _word_frames(self, values: Block, n: int) -> Iterator[tuple[bool, np.ndarray]]:
        ch = self.group.channels[0]
        vals = values[ch.name]
        words = to_words(vals, self.word_offset, self.group.words).swapaxes(0, 1)
        valid = self._valid(ch, vals)
        for i in range(n):
            v = None if valid is None else valid[i]
            for k, filler in enumerate(self.fillers):
                filler.fill(words[i, k], v)
            keep = v is None or bool(v.any()) or not self.ctx.skip_empty
            yield keep, words[i]

    def _components(self, codes: np.ndarray) -> np.ndarray:
        assert self.klt is not None
        norm = codes.astype(np.float32)
        norm *= np.float32(1 / 65535)
        comps = self.klt.forward(norm)
        out = np.empty(comps.shape, dtype=np.uint16)
        for k, q in enumerate(self.quantisers):
            q.quantise(comps[:, k], out[:, k])
        return out

    # -- manifest entries ------------------------------------------------------------------
    def channel_infos(self, streams: list[StreamPlan]) -> list[ChannelInfo]:
        where = {p: (s.name, i) for s in streams for i, p in enumerate(s.planes)}
        out = []
        for p, ch in enumerate(self.group.channels):
            st = self.ctx.stats[ch.name]
            info = dict(
                name=ch.name,
                variable=ch.variable,
                band_index=ch.band_index,
                valid_min=st.vmin,
                valid_max=st.vmax,
            )
            if self.group.words:
                names = [s.name for s in streams for _ in s.planes]
                out.append(
                    ChannelInfo(
                        **info,
                        stream=names[0],
                        plane=0,
                        offset=self.word_offset,
                        words=names,
                    )
                )
            elif self.klt is not None:
                q = self.band_q[p]
                out.append(
                    ChannelInfo(
                        **info, transform=self.group.name, offset=q.offset, scale=q.scale * 65535
                    )
                )
            else:
                q = self.quantisers[p]
                stream, plane = where[p]
                out.append(
                    ChannelInfo(**info, stream=stream, plane=plane, offset=q.offset, scale=q.scale)
                )
        return out

    def transform_info(self, streams: list[StreamPlan]) -> TransformInfo | None:
        if self.klt is None:
            return None
        where = {p: (s.name, i) for s in streams for i, p in enumerate(s.planes)}
        return TransformInfo(
            name=self.group.name,
            channels=[c.name for c in self.group.channels],
            mean=[float(v) for v in self.klt.mean],
            matrix=[[float(v) for v in row] for row in self.klt.matrix],
            components=[
                ComponentInfo(
                    stream=where[k][0], plane=where[k][1], offset=float(q.offset), scale=q.scale
                )
                for k, q in enumerate(self.quantisers)
            ],
        )


def klt_moments(layout: CubeLayout, groups: list[list[Channel]]) -> dict[tuple[str, ...], Moments]:
    return {tuple(c.name for c in g): Moments(len(g)) for g in groups if len(g) > 1}


def coding_gains(
    moments: dict[tuple[str, ...], Moments], stats: dict[str, ChannelStats]
) -> dict[str, float]:
    """Each candidate group's KLT coding gain, keyed by its first channel."""
    from pipeline.codec.klt import coding_gain

    out = {}
    for names, mom in moments.items():
        cov = mom.covariance()
        scale = np.array([stats[n].vmax - stats[n].vmin for n in names])
        if cov is None or np.any(scale <= 0) or not np.all(np.isfinite(cov)):
            continue
        out[names[0]] = coding_gain(cov / np.outer(scale, scale))
    return out


def psnr_from_mse(mse: float, data_range: float) -> float:
    if mse <= 0:
        return math.inf
    return 20 * math.log10((data_range if data_range > 0 else 1.0) / math.sqrt(mse))
