"""From decoded stream codes back to channel values.

One implementation for the decoder and for the encoder's own quality check, so the PSNR
the encoder measures is the PSNR a reader gets: a plane's codes map linearly to a band, or
a KLT group's component planes are inverted together into all of the group's bands.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.codec.klt import Klt
from pipeline.codec.manifest import ChannelInfo, Manifest, TransformInfo
from pipeline.codec.quantize import Quantiser, cast_values, from_words


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


class CodeMap:
    """Rebuilds channel values from one window of decoded codes.

    ``decoded`` maps a stream name to its codes, (frames, planes, H, W) uint16. A KLT
    group is inverted once per window, whichever of its bands is asked for first.
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
        self._klts = {n: klt_of(t, self.channels) for n, t in self.transforms.items()}
        # the last window's inverse; the dict is held so its identity is not reused
        self._window: tuple[Mapping[str, np.ndarray], str, np.ndarray] | None = None

    @classmethod
    def from_manifest(cls, m: Manifest) -> CodeMap:
        return cls(
            {c.name: c for c in m.channels},
            {t.name: t for t in m.transforms},
            {s.name: s.bits for s in m.streams},
        )

    def values(self, name: str, decoded: Mapping[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
        c = self.channels[name]
        if c.words:
            return from_words([decoded[w][:, 0] for w in c.words], int(c.offset), dtype)
        if c.transform is None and c.stream is None and c.mask_stream is not None:
            # no valid pixel anywhere (all NaN or nodata): no codes, the mask sets them all
            mask = decoded[c.mask_stream]
            return np.zeros((mask.shape[0], *mask.shape[2:]), dtype=dtype)
        if c.transform is None:
            assert c.stream is not None and c.plane is not None
            q = Quantiser(c.offset, c.scale, self.bits[c.stream])
            return q.from_codes(decoded[c.stream][:, c.plane], dtype)
        bands = self._bands(c.transform, decoded, np.dtype(dtype))
        return cast_values(bands[:, self.transforms[c.transform].channels.index(name)], dtype)

    def _bands(self, transform: str, decoded: Mapping[str, np.ndarray], dtype: np.dtype):
        if self._window is not None and self._window[0] is decoded and self._window[1] == transform:
            return self._window[2]
        t, klt = self.transforms[transform], self._klts[transform]
        # float32 is exact enough (about 140 dB) unless the output itself is 64-bit
        work = np.float64 if dtype.itemsize > 4 else np.float32
        first = decoded[t.components[0].stream]
        comps = np.empty((first.shape[0], len(t.components), *first.shape[2:]), dtype=work)
        for k, p in enumerate(t.components):
            comps[:, k] = decoded[p.stream][:, p.plane]
            comps[:, k] *= work(p.scale)
            comps[:, k] += work(p.offset)
        bands = klt.inverse(comps, work)
        self._window = (decoded, transform, bands)
        return bands
