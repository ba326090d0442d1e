"""From decoded stream codes back to channel values.

One implementation for the decoder and for the encoder's own quality check, so the PSNR
the encoder measures is the PSNR a reader gets: a plane's codes map linearly to a band, or
a KLT group's component planes are inverted together into all of the group's bands.

Values are written straight into the caller's arrays a block of frames at a time: a
block's work arrays stay in cache, and a KLT group is one matrix product per block
(``codes -> values`` is affine, so the component quantisers, the rotation and the band
normalisation fold into one ``(bands x components)`` matrix and one offset per band).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from pipeline.codec.klt import Klt
from pipeline.codec.manifest import ChannelInfo, Manifest, TransformInfo
from pipeline.codec.quantize import Quantiser, cast_values, from_words

BLOCK_BYTES = 1 << 20  # a block's float work array: a few MiB stays in the CPU's cache

Clip = tuple[float | int, float | int]


def klt_of(t: TransformInfo, channels: Mapping[str, ChannelInfo]) -> Klt:
    infos = [channels[n] for n in t.channels]
    return Klt(
        band_offset=np.array([c.offset for c in infos]),
        band_scale=np.array([c.scale for c in infos]),
        mean=np.array(t.mean),
        matrix=np.array(t.matrix),
        comp_offset=np.array([p.offset for p in t.components]),
        step=t.components[0].scale if t.components else 1.0,
    )


def klt_affine(t: TransformInfo, channels: Mapping[str, ChannelInfo]) -> tuple[np.ndarray, ...]:
    """``values = A @ codes + c`` for a KLT group, in float64: the components' own
    quantisers (``offset_k + scale_k * code_k``), the rotation and the band scaling."""
    klt = klt_of(t, channels)
    comp_scale = np.array([p.scale for p in t.components], dtype=np.float64)
    m = np.asarray(klt.matrix, dtype=np.float64)
    a = klt.band_scale[:, None] * m * comp_scale[None, :]
    c = klt.band_offset + klt.band_scale * (klt.mean + m @ klt.comp_offset)
    return a, c


def _block_frames(frame_px: int, planes: int) -> int:
    return max(1, BLOCK_BYTES // max(1, 4 * frame_px * max(planes, 1)))


def _store(values: np.ndarray, out: np.ndarray, clip: Clip | None) -> None:
    """One block of a channel's values into its output: cast to the output's dtype (integers
    rounded and clipped to the type), clipped to the band's valid range where asked, in
    one pass where the dtypes agree."""
    if values.dtype != out.dtype:
        values = cast_values(values, out.dtype)
    if clip is None:
        out[...] = values
        return
    lo, hi = _bounds(clip, out.dtype)
    np.clip(values, lo, hi, out=out)


@functools.lru_cache(maxsize=256)
def _bounds(clip: Clip, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A clip range in the output's dtype (once per band, not once per block)."""
    lo, hi = (np.asarray(b).astype(dtype) for b in clip)
    return lo, hi


CODES, ZERO, SKIP = 0, 1, 2  # how a frame is written: see _states


def _states(n: int, empty: np.ndarray | None, skip: np.ndarray | None) -> np.ndarray | None:
    """Per frame: CODES (its codes mapped), ZERO (the stream stores no codes for it: the
    value of zero codes, once per frame) or SKIP (every pixel is overwritten after: left
    as it is); None where every frame is CODES."""
    if (empty is None or not empty.any()) and (skip is None or not skip.any()):
        return None
    states = np.full(n, CODES, dtype=np.int8)
    if empty is not None:
        states[empty] = ZERO
    if skip is not None:
        states[skip] = SKIP
    return states


def runs(states: np.ndarray | None, n: int) -> list[tuple[int, int, int]]:
    """Frames [0, n) as runs [lo, hi) of one state each (all of them one run for None)."""
    if states is None:
        return [(0, n, CODES)]
    edges = (np.flatnonzero(states[1:] != states[:-1]) + 1).tolist()
    bounds = [0, *edges, n]
    return [(a, b, int(states[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _take(lut: np.ndarray, codes: np.ndarray, out: np.ndarray) -> None:
    """``out = lut[codes]`` in one pass (the table holds every value of the codes' dtype)."""
    if out.flags.c_contiguous:
        np.take(lut, codes, out=out, mode="clip")
    else:
        out[...] = np.take(lut, codes, mode="clip")


class CodeMap:
    """Rebuilds channel values from one window of decoded codes.

    ``decoded`` maps a stream name to its codes, (frames, planes, H, W) uint16 (masks:
    bool). :meth:`fill` writes several channels at once, so a KLT group shared by them is
    inverted once.
    """

    def __init__(
        self,
        channels: Mapping[str, ChannelInfo],
        transforms: Mapping[str, TransformInfo],
        bits: Mapping[str, int],
    ) -> None:
        self.channels = dict(channels)
        self.transforms = dict(transforms)
        self.bits = dict(bits)
        self._affine = {n: klt_affine(t, self.channels) for n, t in self.transforms.items()}
        self._luts: dict[tuple, np.ndarray] = {}

    @classmethod
    def from_manifest(cls, m: Manifest) -> CodeMap:
        return cls(
            {c.name: c for c in m.channels},
            {t.name: t for t in m.transforms},
            {s.name: s.bits for s in m.streams},
        )

    def values(self, name: str, decoded: Mapping[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
        """One channel's values, (frames, H, W) of ``dtype``."""
        out = np.empty(self.frames_shape(name, decoded), dtype=dtype)
        self.fill({name: out}, decoded)
        return out

    def frames_shape(self, name: str, decoded: Mapping[str, np.ndarray]) -> tuple[int, ...]:
        c = self.channels[name]
        if c.words:
            src = decoded[c.words[0]]
        elif c.transform is not None:
            src = decoded[self.transforms[c.transform].components[0].stream]
        elif c.stream is not None:
            src = decoded[c.stream]
        else:
            assert c.mask_stream is not None
            src = decoded[c.mask_stream]
        return (src.shape[0], *src.shape[2:])

    def fill(
        self,
        outputs: Mapping[str, np.ndarray],
        decoded: Mapping[str, np.ndarray],
        clips: Mapping[str, Clip] | None = None,
        empty: Mapping[str, np.ndarray] | None = None,
        skip: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Write each named channel's values into its (frames, H, W) output array (a view
        is fine), clipped to ``clips[name]`` where given. ``empty[stream]`` flags the
        frames a stream does not store (their codes are zeros): they take the value zero
        codes map to, written once per frame instead of computed per pixel.
        ``skip[name]`` flags frames of an output the caller overwrites whole (masked in
        every pixel): they are not written."""
        clips, empty, skip = clips or {}, empty or {}, skip or {}
        groups: dict[str, list[str]] = {}
        for name, out in outputs.items():
            c = self.channels[name]
            if c.transform is not None:
                groups.setdefault(c.transform, []).append(name)
            elif c.words:
                words = [decoded[w][:, 0] for w in c.words]
                _store(from_words(words, int(c.offset), out.dtype), out, clips.get(name))
            elif c.stream is None:
                # no valid pixel anywhere (all NaN or nodata): no codes, the mask sets them all
                out[...] = 0
            else:
                assert c.plane is not None
                n = out.shape[0]
                states = _states(n, empty.get(c.stream), skip.get(name))
                self._fill_plane(c, decoded[c.stream], out, clips.get(name), states)
        for transform, names in groups.items():
            self._fill_group(transform, names, decoded, outputs, clips, empty, skip)

    def _fill_plane(
        self,
        c: ChannelInfo,
        codes: np.ndarray,
        out: np.ndarray,
        clip: Clip | None,
        states: np.ndarray | None = None,
    ) -> None:
        """A plane's codes to values through a table of every code's value (the same
        arithmetic, once per code value instead of once per pixel: one pass)."""
        assert c.stream is not None and c.plane is not None
        q = Quantiser(c.offset, c.scale, self.bits[c.stream])
        if codes.dtype not in (np.uint8, np.uint16):  # no table: per block
            step = _block_frames(codes.shape[-1] * codes.shape[-2], 1)
            for t0 in range(0, codes.shape[0], step):
                block = codes[t0 : t0 + step, c.plane]
                _store(q.from_codes(block, out.dtype), out[t0 : t0 + step], clip)
            return
        key = (c.name, codes.dtype, out.dtype, clip)
        lut = self._luts.get(key)
        if lut is None:
            every = np.arange(1 << (8 * codes.dtype.itemsize), dtype=codes.dtype)
            lut = np.empty(len(every), dtype=out.dtype)
            _store(q.from_codes(every, out.dtype), lut, clip)
            self._luts[key] = lut
        for a, b, state in runs(states, codes.shape[0]):
            if state == ZERO:
                out[a:b] = lut[0]
            elif state == CODES:
                _take(lut, codes[a:b, c.plane], out[a:b])

    def _fill_group(
        self,
        transform: str,
        names: list[str],
        decoded: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        clips: Mapping[str, Clip],
        empty: Mapping[str, np.ndarray],
        skip: Mapping[str, np.ndarray],
    ) -> None:
        t = self.transforms[transform]
        # float32 is exact enough (about 140 dB) unless an output itself is 64-bit
        wide = any(outputs[n].dtype.itemsize > 4 for n in names)
        work = np.dtype(np.float64 if wide else np.float32)
        rows = [t.channels.index(n) for n in names]
        a, c = (x[rows].astype(work) for x in self._affine[transform])
        planes = [(p.stream, p.plane) for p in t.components]
        streams = {s for s, _ in planes}
        one = decoded[planes[0][0]] if len(streams) == 1 else None
        in_order = one is not None and [p for _, p in planes] == list(range(one.shape[1]))
        n_frames, h, w = self.frames_shape(names[0], decoded)
        k = len(planes)
        step = _block_frames(h * w, k + len(rows))
        outs = [outputs[n] for n in names]
        bounds = [clips.get(n) for n in names]
        # frames none of the group's streams stores (zero codes: one value per band), and
        # frames every wanted band of the group has masked whole
        states = _states(
            n_frames, _every([empty.get(s) for s in streams]), _every([skip.get(n) for n in names])
        )
        for r0, r1, state in runs(states, n_frames):
            if state == SKIP:
                continue
            if state == ZERO:
                values = [np.empty((1, 1, 1), dtype=o.dtype) for o in outs]
                _group_values(np.zeros((1, k, 1, 1), np.uint16), a, c, values, bounds)
                for out, value in zip(outs, values, strict=True):
                    out[r0:r1] = value[0, 0, 0]
                continue
            for t0 in range(r0, r1, step):
                t1 = min(t0 + step, r1)
                if in_order:
                    assert one is not None
                    codes = one[t0:t1]
                else:
                    codes = np.stack([decoded[s][t0:t1, p] for s, p in planes], axis=1)
                _group_values(codes, a, c, [o[t0:t1] for o in outs], bounds)


def _group_values(
    codes: np.ndarray,
    a: np.ndarray,
    c: np.ndarray,
    outs: list[np.ndarray],
    clips: list[Clip | None],
) -> None:
    """One block of a KLT group's (frames, components, H, W) codes into its bands'
    (frames, H, W) outputs: one BLAS call for the block."""
    f, k, h, w = codes.shape
    x = codes.reshape(f, k, h * w).astype(a.dtype)
    y = np.matmul(a, x)  # (frames, bands, pixels)
    y += c[None, :, None]
    for j, (out, clip) in enumerate(zip(outs, clips, strict=True)):
        _store(y[:, j].reshape(f, h, w), out, clip)


def _every(flags: list[np.ndarray | None]) -> np.ndarray | None:
    """Frames flagged in every one of ``flags`` (None where one of them is None)."""
    if not flags or any(f is None for f in flags):
        return None
    return np.logical_and.reduce(flags)
