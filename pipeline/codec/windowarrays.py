"""The output arrays of one decode window, filled a chunk of frames at a time.

Each wanted variable gets one array for the whole window, allocated once; every chunk of
decoded codes is written straight into its slice of them (codes mapped back, clipped to
the valid range, invalid pixels set to nodata or NaN, infinities restored from their mask
bits, error-bounded bands corrected), so no per-chunk arrays are stacked or copied afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.codec import errorbound, jsonvalues
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.codemap import Clip, CodeMap, runs
from pipeline.codec.manifest import Manifest, VariableInfo


class WindowArrays:
    """One array per wanted image variable, in the manifest's canonical dims
    (time[, band], y, x), and per channel the (time, y, x) view it is written through.
    ``first``: the window's first frame in the cube (which frames the streams store)."""

    def __init__(self, m: Manifest, wanted: Sequence[str], n_frames: int, first: int = 0) -> None:
        self.m, self.first = m, first
        self.stored = _stored(m, first, n_frames)
        h, w = m.frame_shape
        self.arrays: dict[str, tuple[VariableInfo, np.ndarray]] = {}
        self.outputs: dict[str, np.ndarray] = {}
        self.clips: dict[str, Clip] = {}
        self.fill_values: dict[str, object] = {}
        for v in m.variables:
            if v.name not in wanted:
                continue
            bands = () if v.band_dim is None else (len(v.channels),)
            arr = np.empty((n_frames, *bands, h, w), dtype=np.dtype(v.dtype))
            nodata = jsonvalues.from_json(v.nodata)
            for i, cname in enumerate(v.channels):
                self.outputs[cname] = arr if v.band_dim is None else arr[:, i]
                c = m.channel(cname)
                if v.role == "continuous" and c.valid_min is not None:
                    self.clips[cname] = (c.valid_min, c.valid_max)
                fill = np.nan if nodata is None and arr.dtype.kind == "f" else nodata
                self.fill_values[cname] = fill
            self.arrays[v.name] = (v, arr)

    def fill(self, codemap: CodeMap, decoded: Mapping[str, np.ndarray], lo: int, hi: int) -> None:
        """Frames [lo, hi) of the window from their decoded codes. Frames a channel masks
        in every pixel take its fill value once, its codes left unmapped."""
        outputs = {name: out[lo:hi] for name, out in self.outputs.items()}
        empty = {name: ~stored[lo:hi] for name, stored in self.stored.items()}
        covered = {}
        for cname in outputs:
            c = self.m.channel(cname)
            if c.mask_stream is not None and c.correction_stream is None:
                bits = decoded[c.mask_stream][:, c.mask_bit]
                covered[cname] = bits.reshape(len(bits), -1).all(axis=1)
        codemap.fill(outputs, decoded, self.clips, empty, covered)
        for cname, out in outputs.items():
            c = self.m.channel(cname)
            if c.correction_stream is not None:  # error-bounded: before the mask, as encoded
                assert c.correction_plane is not None and c.correction_step is not None
                k = decoded[c.correction_stream][:, c.correction_plane]
                errorbound.apply(out, k, c.correction_step)
            if c.mask_stream is None:
                continue
            bits = decoded[c.mask_stream]
            fill = np.array(self.fill_values[cname], dtype=out.dtype)
            for a, b, state in runs(covered.get(cname), len(out)):
                if state:  # masked whole
                    out[a:b] = fill
                else:
                    np.copyto(out[a:b], fill, where=bits[a:b, c.mask_bit])
            for bit, inf in ((c.posinf_bit, np.inf), (c.neginf_bit, -np.inf)):
                if bit is not None:
                    np.copyto(out, np.array(inf, dtype=out.dtype), where=bits[:, bit])

    def canonical(self) -> dict[str, tuple[VariableInfo, np.ndarray, list[str]]]:
        """Variable name -> (its info, its array, the array's dims)."""
        out = {}
        for name, (v, arr) in self.arrays.items():
            dims = [self.m.time_dim, self.m.y_dim, self.m.x_dim]
            if v.band_dim is not None:
                dims.insert(1, v.band_dim)
            out[name] = (v, arr, dims)
        return out


def _stored(m: Manifest, first: int, n_frames: int) -> dict[str, np.ndarray]:
    """Per video stream that leaves frames out, which of the window's frames it stores
    (the frames it does not decode to zeros: see StreamFrames)."""
    out = {}
    for s in m.streams:
        if s.frames is not None and chunk_codec(s.codec) is None:
            stored = np.zeros(n_frames, dtype=bool)
            for a, b in s.frames:
                stored[max(a - first, 0) : max(b - first, 0)] = True
            out[s.name] = stored
    return out
