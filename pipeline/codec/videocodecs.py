"""One small registered class per video codec: what it stores, and how ffmpeg is told to.

Like zarr's codec registry: a frozen dataclass per codec, looked up by the encoder's ffmpeg
name, so the planner, the writers and the manifest never branch on a codec's name. Every
codec here is decoded by PyAV's wheels alone (hevc, vvc, dav1d, ffv1), so reading a shard
never needs an ffmpeg binary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from pipeline.codec.ratecontrol import LINEAR, QuantiserScale
from pipeline.codec.settings import VideoSettings, sample_dtype
from pipeline.errors import InvalidCubeError

_REGISTRY: dict[str, VideoCodec] = {}


def register_codec(codec: VideoCodec) -> VideoCodec:
    _REGISTRY[codec.name] = codec
    return codec


def get_codec(name: str) -> VideoCodec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidCubeError(
            f"codec {name!r} is not supported (choose {', '.join(sorted(_REGISTRY))})"
        ) from None


def codec_names(lossy_only: bool = False) -> list[str]:
    return [n for n, c in _REGISTRY.items() if not (lossy_only and c.lossless_only)]


@dataclass(frozen=True)
class VideoCodec:
    """Base: a codec's code depth, plane capacity, engines and ffmpeg options.

    ``bits`` is the depth continuous bands are quantised to for this codec; ``max_planes``
    how many bands one stream can carry; ``max_quality`` the highest CRF/QP value;
    ``relative_cost`` the encode time against x265 preset medium (measured in
    bench/rate_distortion.py), which a recipe's encode-time budget compares against.
    """

    name: str
    bits: int
    max_planes: int
    engines: tuple[str, ...]
    max_quality: int
    relative_cost: float
    lossless_only: bool = False
    # highest PSNR (dB) worth asking of this codec: above it the code depth, not the
    # quantiser, limits quality, so a PSNR-target stream goes to a deeper codec
    psnr_ceiling: float = 200.0
    # smallest frame side the encoder opens (smaller frames are edge-padded to it)
    min_side: int = 1
    pix_fmts: ClassVar[dict[int, str]] = {}
    # the cube's preset -> a cheaper one for rate-model trials, and the dB the cube's preset
    # gains over it at the same quantiser (the trials' PSNR is raised by that much)
    trial_presets: ClassVar[dict[str, tuple[str, float]]] = {}
    # the quantiser in dB of step size, on which PSNR falls about 1 dB per dB
    quantiser_scale: ClassVar[QuantiserScale] = LINEAR
    # dB this codec's trial measures above x265 ultrafast at equal quantiser_scale.u on the
    # same sample, where a PSNR-target search starts it (NDVI at 45 dB, Landsat at 45, 50)
    probe_offset_db: ClassVar[float] = 0.0
    # frame width up to which the encoder keeps one core busy: wavefront threads need three
    # columns of 64 px blocks (NDVI, Landsat, 128 px tiles: 1.0 core of 2; 256 px: 1.4)
    one_core_width: ClassVar[float] = 128

    def trial_settings(self, s: VideoSettings) -> tuple[VideoSettings, float]:
        """Settings a trial encode uses in place of ``s``, and the dB to add to its PSNR."""
        if s.lossless or s.preset not in self.trial_presets:
            return s, 0.0
        preset, gain = self.trial_presets[s.preset]
        return replace(s, preset=preset), gain

    def pix_fmt(self, planes: int) -> str:
        try:
            return self.pix_fmts[planes]
        except KeyError:
            raise InvalidCubeError(f"{self.name} cannot carry {planes} planes per stream") from None

    def options(self, s: VideoSettings) -> dict[str, str]:
        raise NotImplementedError

    def frame_size(self, h: int, w: int) -> tuple[int, int]:
        """The smallest frame the encoder codes safely that holds an h x w one."""
        side = self.min_side + self.min_side % 2
        return max(h, side), max(w, side)

    def frame_bytes(self, planes: np.ndarray, pix_fmt: str) -> bytes | memoryview:
        """Raw planar bytes of one frame as ffmpeg's rawvideo demuxer reads them."""
        return np.ascontiguousarray(planes, dtype=sample_dtype(pix_fmt)).data

    def check_quality(self, value: float) -> None:
        if not 0 <= value <= self.max_quality:
            raise InvalidCubeError(
                f"{self.name}: quality (crf/qp) {value:g} is outside 0..{self.max_quality}"
            )


@dataclass(frozen=True)
class X265(VideoCodec):
    name: str = "libx265"
    bits: int = 12
    max_planes: int = 3
    engines: tuple[str, ...] = ("ffmpeg", "pyav")
    max_quality: int = 51
    relative_cost: float = 1.0
    min_side: int = 16
    pix_fmts: ClassVar[dict[int, str]] = {1: "gray12le", 3: "gbrp12le"}
    # Widths x265 mishandles (measured with ffmpeg 9's and PyAV's libx265, gray and gbrp):
    # 33 to 48 px corrupt its heap at every height tried; at exactly 16, 32 and 64 px
    # (64 from 64 px high) whole blocks decode as a reference frame's, in lossless mode too
    # (errors of 1638-4095 codes of 4095 at CRF 0). Those frames are edge-padded to a width
    # that coded cleanly at every height from 16 to 256 px.
    probe_offset_db: ClassVar[float] = 0.9  # medium against ultrafast: 0.6 to 1.2
    safe_widths: ClassVar[dict[int, int]] = {16: 18, 32: 56, 64: 66} | dict.fromkeys(
        range(33, 49), 56
    )

    def frame_size(self, h: int, w: int) -> tuple[int, int]:
        h, w = super().frame_size(h, w)
        return h, self.safe_widths.get(w, w)

    def options(self, s: VideoSettings) -> dict[str, str]:
        opts = {"preset": s.preset, "tune": "psnr", "x265-params": s.x265_param_string()}
        if not s.lossless and s.crf is not None:
            opts["crf"] = f"{s.crf:g}"
        return opts


@dataclass(frozen=True)
class Vvc(VideoCodec):
    """H.266 through libvvenc: 10-bit 4:2:0 only, so one band per stream in the luma plane
    with constant chroma (which costs a few bytes a frame). ``qpa`` (perceptual QP
    adaptation) is off and the intra period follows ``keyint``: the defaults are tuned for
    viewers, not for PSNR."""

    name: str = "libvvenc"
    bits: int = 10
    max_planes: int = 1
    engines: tuple[str, ...] = ("ffmpeg",)
    max_quality: int = 63
    relative_cost: float = 5.0
    psnr_ceiling: float = 58.0
    # vvenc 1.15 fails ("Error submitting video frame") on noisy frames under 40 px a
    # side, and codes small frames better padded to 64 than at their own size (measured)
    min_side: int = 64
    pix_fmts: ClassVar[dict[int, str]] = {1: "yuv420p10le"}
    # vvenc faster for fast: 2x quicker; fast gained 0.24-0.60 dB at equal QP (NDVI,
    # Landsat, 1024 px twin), 1-5 % more bytes
    trial_presets: ClassVar[dict[str, tuple[str, float]]] = {"medium": ("fast", 0.3)}
    probe_offset_db: ClassVar[float] = -6.4  # -5.4 to -7.5
    one_core_width: ClassVar[float] = math.inf  # run single-threaded (see options)

    def options(self, s: VideoSettings) -> dict[str, str]:
        if s.lossless:
            raise InvalidCubeError("libvvenc has no lossless mode: use libx265 or ffv1")
        preset = VVC_PRESET_OF.get(s.preset, "fast")
        # vvenc's own thread pool (ffmpeg 9, vvenc 1.15) fails or cuts streams short at
        # random, about one encode in three on 2 cores, measured; single-threaded it has not
        # failed and its output is deterministic. Streams of a cube still encode in parallel.
        opts = {
            "preset": preset,
            "qpa": "0",
            "period": str(max(s.keyint, 1)),
            "vvenc-params": "threads=0",
        }
        if s.crf is not None:
            opts["qp"] = str(round(s.crf))
        return opts

    def frame_bytes(self, planes: np.ndarray, pix_fmt: str) -> bytes | memoryview:
        h, w = planes.shape[1:]
        chroma = np.full(2 * (h // 2) * (w // 2), 1 << (self.bits - 1), dtype="<u2")
        luma = np.ascontiguousarray(planes[0], dtype="<u2")
        return luma.tobytes() + chroma.tobytes()


# x265 preset names onto vvenc's five: medium -> fast, which measured 5-7x x265 medium's
# time for 15-20 % fewer bits than x265 (vvenc's own medium costs twice that for 1-2 %)
VVC_PRESET_OF = {
    "ultrafast": "faster",
    "superfast": "faster",
    "veryfast": "faster",
    "faster": "faster",
    "fast": "faster",
    "medium": "fast",
    "slow": "medium",
    "slower": "slow",
    "veryslow": "slower",
    "placebo": "slower",
}


@dataclass(frozen=True)
class Aom(VideoCodec):
    name: str = "libaom-av1"
    bits: int = 12
    max_planes: int = 3
    engines: tuple[str, ...] = ("ffmpeg",)
    max_quality: int = 63
    relative_cost: float = 2.5
    pix_fmts: ClassVar[dict[int, str]] = {1: "gray12le", 3: "gbrp12le"}
    # cpu-used 6 for 5 (medium): 1.3x quicker; 5 gains 0.03 to 0.8 dB at equal CRF (NDVI,
    # Landsat, DEC twin), and the cube's measurement corrects the rest
    trial_presets: ClassVar[dict[str, tuple[str, float]]] = {"medium": ("veryfast", 0.15)}
    # libaom's step grows about linearly with its CRF: PSNR + 28 log10(CRF + 1) held
    # within 0.5 dB from CRF 1 to 14 on Landsat's KLT group (34 to 61 dB)
    quantiser_scale: ClassVar[QuantiserScale] = QuantiserScale(28.0)
    probe_offset_db: ClassVar[float] = 12.0  # 10.3 to 13.3

    def options(self, s: VideoSettings) -> dict[str, str]:
        opts = {
            "cpu-used": str(AOM_CPU_USED.get(s.preset, 4)),
            "g": str(s.keyint),
            "keyint_min": str(min(s.keyint, 8)),
            "row-mt": "1",
            "b:v": "0",
            "tune": "psnr",
        }
        if s.lookahead is not None:
            opts["lag-in-frames"] = str(s.lookahead)
        if s.threads:
            opts["threads"] = str(s.threads)
        if s.lossless:
            opts["lossless"] = "1"
        elif s.crf is not None:
            opts["crf"] = f"{round(s.crf)}"
        return opts


# x265 preset names mapped onto libaom's speed levels (0 slowest .. 8 fastest). medium is
# cpu-used 5, not 4: at equal CRF 2.0x quicker on NDVI, 1.2x on Landsat and the DEC twin,
# for 0.0-0.5 dB (about 0-3 % of the bytes at equal PSNR); that time pays for landing on
# the floor (pipeline.codec.landing), whose re-encodes save 1-19 % (docs/BENCHMARKS.md)
AOM_CPU_USED = {
    "ultrafast": 8,
    "superfast": 7,
    "veryfast": 6,
    "faster": 6,
    "fast": 5,
    "medium": 5,
    "slow": 3,
    "slower": 2,
}


@dataclass(frozen=True)
class Ffv1(VideoCodec):
    """Lossless: continuous bands marked lossless; class layers (8 or 16 bit) where asked
    (``class_codec="ffv1"``) and in cubes of format version 2."""

    name: str = "ffv1"
    bits: int = 16
    max_planes: int = 1
    engines: tuple[str, ...] = ("ffmpeg", "pyav")
    max_quality: int = 0
    relative_cost: float = 0.2
    lossless_only: bool = True
    pix_fmts: ClassVar[dict[int, str]] = {1: "gray16le"}

    def options(self, s: VideoSettings) -> dict[str, str]:
        return {"level": "3", "coder": "1", "context": "1", "slicecrc": "1", "g": "1"}


X265_CODEC = register_codec(X265())
VVC_CODEC = register_codec(Vvc())
AOM_CODEC = register_codec(Aom())
FFV1_CODEC = register_codec(Ffv1())
