"""Error-bounded bands (``--max-error E``): the bound, and the correction layer that keeps it.

The video pass codes a band near the PSNR a uniform error of ``E`` would have; the encoder
then decodes its own streams (the reader's decode path, :mod:`pipeline.codec.corrections`)
and stores, per valid pixel, a correction code ``k = round((x - x_video) / step)``. The
reader adds ``step * k`` to the decoded value (before the mask restores NaN/nodata/inf), so
``|x - x_decoded| <= E`` on every valid value:

- float bands: ``step = 2 E (1 - SLACK)``, the sum computed in float64 and cast to the
  band's dtype; the encoder checks every value with exactly this arithmetic, so the cast's
  rounding cannot break the bound unnoticed;
- integer bands: ``step = 2 floor(E) + 1`` in integer arithmetic (exact): ``E < 1`` keeps
  the band exact (an integer error below 1 is 0).

A correction layer is a chunked carrier (:mod:`pipeline.codec.chunkcodecs`) like the class
layers: chunk = 1 byte (the codes' width: 1, 2 or 4 bytes, signed little-endian; plus 0x80
when the codes are stored time fastest), then one zstd frame declaring its content size,
which holds the chunk's codes in C order of ``(frames, planes, H, W)``, or of ``(planes, H,
W, frames)`` with the flag. Most codes are 0, so zstd takes them to a fraction of a bit
each.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from pipeline.codec.chunkwriter import ChunkWriter
from pipeline.codec.zstdframes import inflate_exact
from pipeline.errors import CorruptStreamError, InvalidCubeError

CODEC = "zstd-corrections"
SUFFIX = "k.zst"
PIX_FMT = "k"  # signed codes of 1, 2 or 4 bytes, chosen per chunk
# zstd level: the layer is small next to the video, and read far more often than written
LEVEL = 19
# the float step's margin below 2E: the encoder checks every value anyway, this only keeps
# values that land exactly on the bound off it
SLACK = 1e-4
WIDTHS = (1, 2, 4)
TIME_FASTEST = 0x80  # flag in the width byte: codes stored (planes, H, W, frames)
# a video PSNR above this buys nothing the corrections could not (12-bit codes end near
# 83 dB, VVC's 10 bits near 71)
VIDEO_PSNR_MAX = 75.0
VIDEO_PSNR_MIN = 10.0
_TEXT = re.compile(r"^\s*([-+0-9.eE]+|inf|nan)\s*(%?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MaxError:
    """A bound on every valid value's absolute error: ``value`` in the band's own units,
    or (``relative``) a fraction of each band's valid range (``"0.1%"`` is 1e-3)."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, spec: object, name: str = "max_error") -> MaxError:
        """``0.01``, ``"0.01"`` or ``"0.1%"``; refused in one line naming ``name``: not a
        number, not finite, not above 0, or a percentage above 100."""
        if isinstance(spec, MaxError):
            return spec
        if isinstance(spec, bool):
            raise InvalidCubeError(f"{name} {spec!r}: must be a number above 0, or a percentage")
        if isinstance(spec, int | float):
            value, relative = float(spec), False
        elif isinstance(spec, str) and (m := _TEXT.match(spec)):
            try:
                value = float(m.group(1))
            except ValueError:
                value = math.nan
            relative = m.group(2) == "%"
        else:
            raise InvalidCubeError(
                f"{name} {spec!r}: must be a number above 0 (the band's own units), or a "
                "percentage of each band's valid range such as 0.1%"
            )
        if not math.isfinite(value) or value <= 0:
            raise InvalidCubeError(f"{name} {spec!r}: must be finite and above 0")
        if relative and value > 100:
            raise InvalidCubeError(f"{name} {spec!r}: a percentage of the range is at most 100%")
        return cls(value / 100 if relative else value, relative)

    def __str__(self) -> str:
        return f"{100 * self.value:g}%" if self.relative else f"{self.value:g}"

    def absolute(self, vmin: float | int, vmax: float | int) -> float:
        """The bound in the band's units, for a band whose valid values span vmin..vmax."""
        if not self.relative:
            return self.value
        return self.value * (float(vmax) - float(vmin))


def video_psnr(bound: float, vmin: float | int, vmax: float | int) -> float:
    """The PSNR of a uniform error of +-``bound`` on this band (RMSE bound / sqrt 3): where
    the video pass aims, before an offset."""
    span = float(vmax) - float(vmin)
    if not (span > 0 and bound > 0 and math.isfinite(span)):
        return VIDEO_PSNR_MAX
    psnr = 20 * math.log10(span * math.sqrt(3) / bound)
    return min(max(psnr, VIDEO_PSNR_MIN), VIDEO_PSNR_MAX)


def check_dtype(name: str, dtype: np.dtype) -> None:
    """64-bit integers are refused: their corrections would overflow int64 arithmetic
    (use lossless, which keeps them exact)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and dtype.itemsize > 4:
        raise InvalidCubeError(
            f"band {name!r} ({dtype}): max_error is not supported on 64-bit integers; "
            "use lossless (exact)"
        )


def step_of(bound: float, dtype: np.dtype, magnitude: float = 0.0) -> float:
    """The correction step of a band: 2E less a slack for floats, 2 floor(E) + 1 (an exact
    integer, 1 when E < 1: the band kept exact) for integers. A bound of 0 (a relative
    bound on a constant band) asks for the exact value: the step is the dtype's spacing at
    the band's ``magnitude``."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iub":
        return float(2 * math.floor(bound) + 1)
    if bound <= 0:
        return float(np.spacing(dtype.type(abs(magnitude)))) or float(np.finfo(dtype).tiny)
    return 2 * bound * (1 - SLACK)


def apply(out: np.ndarray, k: np.ndarray, step: float) -> None:
    """``out += step * k`` in place, as the reader does it (and the encoder checks it):
    integers exactly (clipped to the dtype), floats in float64, then cast."""
    if out.dtype.kind in "iu":
        info = np.iinfo(out.dtype)
        y = out.astype(np.int64) + np.int64(int(step)) * k.astype(np.int64)
        np.clip(y, info.min, info.max, out=y)
        out[...] = y
    elif out.dtype.kind == "b":
        return
    else:
        y = out.astype(np.float64) + step * k.astype(np.float64)
        fmax = float(np.finfo(out.dtype).max)
        np.clip(y, -fmax, fmax, out=y)
        out[...] = y.astype(out.dtype)


def correction_codes(
    x: np.ndarray, video: np.ndarray, valid: np.ndarray, step: float, bound: float, name: str
) -> tuple[np.ndarray, float]:
    """int32 codes for one block (0 on invalid pixels) and the largest error left on its
    valid values, found with :func:`apply`'s own arithmetic. A value no code brings within
    the bound (a bound below the dtype's precision there) is refused, naming the band."""
    x64 = np.where(valid, x, 0).astype(np.float64)
    r = x64 - np.where(valid, video, 0).astype(np.float64)
    q = np.rint(r / step)
    if q.size and float(np.abs(q).max()) > 2**31 - 2:
        raise InvalidCubeError(
            f"band {name!r}: max_error {bound:g} is too small for this band's range "
            "(corrections past 2^31 steps); use a larger bound or lossless"
        )
    k = q.astype(np.int32)
    got, err = _decoded_error(x64, video, k, step)
    bad = valid & (err > bound)
    if bad.any():
        for delta in (1, -1):
            trial = k + np.int32(delta) * bad
            _, terr = _decoded_error(x64, video, trial, step)
            better = bad & (terr <= bound)
            k = np.where(better, trial, k)
            bad &= ~better
            err = np.where(better, terr, err)
    if bad.any():
        i = np.argwhere(bad)[0]
        raise InvalidCubeError(
            f"band {name!r}: max_error {bound:g} is below the precision of its "
            f"{video.dtype} values near {float(x64[tuple(i)]):g}; use a larger bound or lossless"
        )
    reached = float(err[valid].max()) if valid.any() else 0.0
    return np.where(valid, k, 0).astype(np.int32), reached


def _decoded_error(
    x64: np.ndarray, video: np.ndarray, k: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray]:
    got = np.array(video, copy=True)
    apply(got, k, step)
    return got, np.abs(x64 - got.astype(np.float64))


# -- the correction layer: chunks of codes -------------------------------------------------
class CorrectionWriter(ChunkWriter):
    """Correction codes of one time step at a time, (planes, H, W) int32; each chunk is its
    narrowest width byte, then zstd of its codes."""

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        chunk_frames: int,
        pix_fmt: str = PIX_FMT,
        level: int = LEVEL,
    ) -> None:
        super().__init__(target, chunk_frames, level)

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        return np.asarray(frame, dtype=np.int32)

    def _chunk_bytes(self, frames: np.ndarray) -> bytes:
        """The smaller of the codes in frame order and pixel by pixel (time fastest: a
        smooth field's corrections repeat along time, 0.79x the bytes on an hourly field;
        NaN-gapped NDVI prefers frame order)."""
        lo, hi = (int(frames.min()), int(frames.max())) if frames.size else (0, 0)
        width = next(w for w in WIDTHS if -(1 << (8 * w - 1)) <= lo and hi < 1 << (8 * w - 1))
        codes = frames.astype(f"<i{width}")
        by_frame = self._cctx.compress(codes.tobytes())
        by_pixel = self._cctx.compress(np.ascontiguousarray(np.moveaxis(codes, 0, -1)).tobytes())
        if len(by_pixel) < len(by_frame):
            return bytes([width | TIME_FASTEST]) + by_pixel
        return bytes([width]) + by_frame


def correction_chunk(
    blob: bytes | memoryview,
    frames: int,
    shape: tuple[int, int, int],
    pix_fmt: str,
    name: str,
    chunk: int,
) -> np.ndarray:
    """int32 (frames, planes, H, W) codes of one chunk. Its width byte and the zstd frame's
    declared size are checked against what ``frames`` frames of ``shape`` take before
    anything is inflated: a crafted chunk is a CorruptStreamError naming the stream."""
    where = f"{name}: correction chunk {chunk}"
    blob = memoryview(blob)
    if len(blob) < 1:
        raise CorruptStreamError(f"{where} is empty (truncated stream)")
    width, by_pixel = blob[0] & ~TIME_FASTEST, bool(blob[0] & TIME_FASTEST)
    if width not in WIDTHS:
        raise CorruptStreamError(f"{where}: code width {width} is not one of 1, 2, 4 (corrupt)")
    expected = frames * int(np.prod(shape)) * width
    what = f"{frames} frames of {' x '.join(map(str, shape))} {width}-byte codes"
    raw = inflate_exact(blob[1:], expected, where, what)
    codes = np.frombuffer(raw, dtype=f"<i{width}")
    if by_pixel:
        return np.moveaxis(codes.reshape(*shape, frames), -1, 0).astype(np.int32)
    return codes.reshape(frames, *shape).astype(np.int32)
