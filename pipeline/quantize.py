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
        """Float codes, not yet rounded."""
        work = _work_dtype(values.dtype)
        codes = values.astype(work)
        codes -= work.type(self.offset)
        if self.scale != 1.0:
            codes /= work.type(self.scale)
        return codes

    def codes_to_uint(self, codes: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(codes), 0, self.max_code).astype(np.uint16)

    def quantise(self, values: np.ndarray, out: np.ndarray) -> None:
        """Integer codes of ``values`` into the uint16 array ``out``, in place where it can
        (a lookup table for 16-bit inputs measured twice as slow as these float passes)."""
        codes = self.to_codes(values)
        np.rint(codes, out=codes)
        np.clip(codes, 0, self.max_code, out=codes)
        with np.errstate(invalid="ignore"):  # NaN at invalid pixels: gap-filled after this
            np.copyto(out, codes, casting="unsafe")

    def from_codes(self, codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        work = _work_dtype(dtype)
        values = codes.astype(work)
        if self.scale != 1.0:
            values *= work.type(self.scale)
        values += work.type(self.offset)
        return cast_values(values, dtype)


def cast_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values into the band's dtype: integers rounded and clipped to the type."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """float32 where it is exact enough: integers up to 16 bits are exact in it, and for
    float32 data (v - offset) rounds once relative to the result, not to v. Wider types
    need float64."""
    dtype = np.dtype(dtype)
    if (dtype.kind in "biu" and dtype.itemsize <= 2) or (dtype.kind == "f" and dtype.itemsize <= 4):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


class TemporalFiller:
    """Fills invalid pixels of integer code frames with that pixel's previous code.

    Pixels never valid so far take the mean of the frame's valid codes, or mid-range.
    """

    def __init__(self, max_code: int) -> None:
        self._mid = (max_code + 1) // 2
        self._last: np.ndarray | None = None
        self._seen = False

    def fill(self, codes: np.ndarray, valid: np.ndarray | None) -> None:
        """Fill ``codes`` in place; ``valid=None`` means every pixel is valid."""
        if valid is None or valid.all():
            self._last, self._seen = codes, True
            return
        invalid = ~valid
        any_valid = bool(valid.any())
        if not self._seen and any_valid:
            codes[invalid] = int(np.rint(codes[valid].mean()))
        elif self._last is None:
            codes[invalid] = self._mid
        else:
            codes[invalid] = self._last[invalid]
        self._last = codes
        self._seen = self._seen or any_valid


def pad_even(frame: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """Pad the last two axes by edge replication (x265 needs even sizes)."""
    py, px = pad
    if not (py or px):
        return frame
    widths = [(0, 0)] * (frame.ndim - 2) + [(0, py), (0, px)]
    return np.pad(frame, widths, mode="edge")
