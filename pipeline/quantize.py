"""Mapping band values to integer codes for the video planes, and back.

Integer bands whose valid range fits the code space keep their exact values (scale 1);
everything else is scaled linearly over the band's valid [min, max].  Invalid pixels are
replaced before encoding by the last value seen at that pixel, so a cloud or a gap repeats
the previous frame and costs the encoder almost nothing; the validity mask travels
losslessly in its own stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quantiser:
    offset: float
    scale: float
    bits: int

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    @classmethod
    def for_range(cls, vmin: float, vmax: float, bits: int, integer: bool) -> Quantiser:
        max_code = (1 << bits) - 1
        span = vmax - vmin
        if integer and span <= max_code:
            return cls(offset=vmin, scale=1.0, bits=bits)
        return cls(offset=vmin, scale=(span / max_code) if span > 0 else 1.0, bits=bits)

    def to_codes(self, values: np.ndarray) -> np.ndarray:
        """Float codes (not yet rounded) so that fills can be computed before rounding."""
        return (values.astype(np.float64) - self.offset) / self.scale

    def codes_to_uint(self, codes: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(codes), 0, self.max_code).astype(np.uint16)

    def from_codes(self, codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
        values = codes.astype(np.float64) * self.scale + self.offset
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(dtype)
        return values.astype(dtype)


class TemporalFiller:
    """Fills invalid pixels with that pixel's previous (possibly filled) code.

    Pixels never valid so far take the mean of the frame's valid codes, or mid-range.
    """

    def __init__(self, shape: tuple[int, int], max_code: int) -> None:
        self._last = np.full(shape, max_code / 2.0)
        self._seen = False

    def fill(self, codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if valid.all():
            self._last = codes
            self._seen = True
            return codes
        out = codes.copy()
        invalid = ~valid
        if not self._seen and valid.any():
            self._last = np.full(codes.shape, float(codes[valid].mean()))
        out[invalid] = self._last[invalid]
        self._last = out
        self._seen = self._seen or bool(valid.any())
        return out


def pad_even(frame: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """Pad the last two axes by edge replication (x265 needs even sizes)."""
    py, px = pad
    if not (py or px):
        return frame
    widths = [(0, 0)] * (frame.ndim - 2) + [(0, py), (0, px)]
    return np.pad(frame, widths, mode="edge")
