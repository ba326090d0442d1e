"""Mapping band values to integer codes for the video planes, and back.

Integer bands whose valid range fits the code space keep their exact values (scale 1);
everything else is scaled linearly over the band's valid [min, max].  Invalid pixels are
replaced before encoding by the last value seen at that pixel, so a cloud or a gap repeats
the previous frame and costs the encoder almost nothing; the validity mask travels
losslessly in its own stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

F32_SAFE = 1e37  # ranges beyond this are computed in float64 (float32 ends at 3.4e38)


@dataclass(frozen=True)
class Quantiser:
    """``code = (value - offset) / scale``; ``offset`` is an exact int for integer bands, so
    64-bit values beyond 2^53 are shifted without rounding."""

    offset: float | int
    scale: float
    bits: int

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    @property
    def factored(self) -> bool:
        """True when ``offset + scale * max_code`` overflows float64 (a range such as
        -1e308..1e308): then codes are ``value / scale - offset / scale`` and values
        ``(code + offset / scale) * scale``, which stay finite."""
        return not math.isfinite(abs(float(self.offset)) + self.scale * self.max_code)

    @classmethod
    def for_range(cls, vmin: float | int, vmax: float | int, bits: int, integer: bool) -> Quantiser:
        max_code = (1 << bits) - 1
        span = vmax - vmin  # exact for Python ints
        if integer and span <= max_code:
            return cls(offset=vmin, scale=1.0, bits=bits)
        scale = span / max_code
        if not math.isfinite(scale):  # max - min overflows float64
            scale = vmax / max_code - vmin / max_code
        return cls(offset=vmin, scale=scale if scale > 0 else 1.0, bits=bits)

    def amplified(self, gain: float) -> Quantiser:
        """The same mapping with codes ``gain`` times as large (a gain below 1 leaves the top
        of the code space unused)."""
        return self if gain == 1.0 else Quantiser(self.offset, self.scale / gain, self.bits)

    def work_dtype(self, dtype: np.dtype) -> np.dtype:
        """float32 where it is exact enough: integers up to 16 bits are exact in it, and for
        float32 data (v - offset) rounds once relative to the result, not to v. Wider types,
        and ranges near float32's limit (3.4e38), need float64."""
        dtype = np.dtype(dtype)
        narrow = (dtype.kind in "biu" and dtype.itemsize <= 2) or (
            dtype.kind == "f" and dtype.itemsize <= 4
        )
        if narrow and abs(float(self.offset)) + self.scale * self.max_code < F32_SAFE:
            return np.dtype(np.float32)
        return np.dtype(np.float64)

    def to_codes(self, values: np.ndarray) -> np.ndarray:
        """Float codes, not yet rounded."""
        if _wide_int(values.dtype):  # exact difference in uint64, then scaled
            codes = (as_u64(values) - np.uint64(int(self.offset) % 2**64)).astype(np.float64)
            if self.scale != 1.0:
                codes /= self.scale
            return codes
        work = self.work_dtype(values.dtype)
        codes = values.astype(work)
        if self.factored:
            codes /= work.type(self.scale)
            codes -= work.type(self.offset / self.scale)
            return codes
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
        with np.errstate(invalid="ignore", over="ignore"):  # invalid pixels: gap-filled after
            np.rint(codes, out=codes)
            np.clip(codes, 0, self.max_code, out=codes)
            np.copyto(out, codes, casting="unsafe")

    def from_codes(self, codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if _wide_int(dtype):
            return self._wide_from_codes(codes, dtype)
        work = self.work_dtype(dtype)
        values = codes.astype(work)
        if self.factored:
            values += work.type(self.offset / self.scale)
            values *= work.type(self.scale)
            return cast_values(values, dtype)
        if self.scale != 1.0:
            values *= work.type(self.scale)
        values += work.type(self.offset)
        return cast_values(values, dtype)

    def _wide_from_codes(self, codes: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """64-bit integers: the scaled code is rounded, then added to the exact offset in
        uint64 arithmetic (float64 alone cannot hold values beyond 2^53 exactly)."""
        delta = codes.astype(np.float64)
        if self.scale != 1.0:
            delta *= self.scale
        np.rint(delta, out=delta)
        offset = int(self.offset)
        np.clip(delta, 0, _float_below(int(np.iinfo(dtype).max) - offset), out=delta)
        out = delta.astype(np.uint64) + np.uint64(offset % 2**64)
        return out.view(np.int64) if dtype.kind == "i" else out


def _wide_int(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize == 8


def as_u64(values: np.ndarray) -> np.ndarray:
    """Integers as their two's-complement uint64 bit patterns (sign-extended)."""
    if values.dtype.kind == "u":
        return values.astype(np.uint64)
    return values.astype(np.int64).view(np.uint64)


def _float_below(n: int) -> float:
    """The largest float64 that is at most the integer ``n``."""
    f = float(n)
    return float(np.nextafter(f, -np.inf)) if int(f) > n else f


def cast_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values into the band's dtype: integers rounded and clipped to the type."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = float(info.min), _float_below(int(info.max))
        return np.clip(np.rint(values), lo, hi).astype(dtype)
    if dtype.kind == "f" and values.dtype.itemsize > dtype.itemsize:
        fmax = float(np.finfo(dtype).max)  # a rounding step past the largest value: not inf
        return np.clip(values, -fmax, fmax).astype(dtype)
    return values.astype(dtype)


# -- lossless words: a band's exact bit pattern in 16-bit code planes ---------------------
def words_needed(dtype: np.dtype, vmin: float | int, vmax: float | int) -> int:
    """16-bit planes a lossless band needs: 0 where one quantised plane is exact already
    (integers spanning at most 65535), else enough words for the integer span, or the whole
    bit pattern of a float."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return max(dtype.itemsize // 2, 1)
    span = int(vmax) - int(vmin)
    return 0 if span <= 0xFFFF else -(-span.bit_length() // 16)


def to_words(values: np.ndarray, offset: int, words: int) -> np.ndarray:
    """(words, ...) uint16 planes of ``bits(value) - offset`` mod 2^64, least significant
    word first; floats use their IEEE bit pattern (offset 0)."""
    if values.dtype.kind == "f":
        u = values.view(f"u{values.dtype.itemsize}").astype(np.uint64)
    else:
        u = as_u64(values)
    u = u - np.uint64(offset % 2**64)
    return np.stack(
        [((u >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.uint16) for k in range(words)]
    )


def from_words(planes: list[np.ndarray], offset: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`to_words`: the exact values of a lossless wide band."""
    dtype = np.dtype(dtype)
    u = np.zeros(planes[0].shape, dtype=np.uint64)
    for k, p in enumerate(planes):
        u |= p.astype(np.uint64) << np.uint64(16 * k)
    u += np.uint64(offset % 2**64)
    if dtype.kind == "f":
        return u.astype(f"u{dtype.itemsize}").view(dtype)
    if dtype.kind == "i":
        return u.view(np.int64).astype(dtype)
    return u.astype(dtype)


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
