"""What a caller asks of the encoder: :class:`EncodeOptions` and recipe band groups
(:class:`GroupSpec`), checked when made so a bad value is refused with its name."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.codec.classcodes import CODEC as CLASS_CODEC
from pipeline.codec.errorbound import MaxError
from pipeline.codec.videocodecs import AOM_CODEC, FFV1_CODEC, VVC_CODEC, X265_CODEC, codec_names
from pipeline.errors import InvalidCubeError

AUTO = "auto"
DECORRELATE = ("auto", "klt", "none")
# what a reader can read alone, paid for in bits (docs/BENCHMARKS.md, "Access"): "whole"
# cubes (long GOPs, KLT groups), short time "windows" (a keyframe every WINDOW_KEYINT frames),
# single "bands" (one stream per band, no KLT across bands), or both
ACCESS = ("whole", "windows", "bands", "windows+bands")
WINDOW_KEYINT = 16
# class layers' lossless carriers: zstd chunks (smaller, faster to decode), or FFV1 as
# cubes of format version 2 had them
CLASS_CODECS = (CLASS_CODEC, FFV1_CODEC.name)
# video streams' carriers: "auto" writes a stream's packets without a container (the raw
# carrier, pipeline.codec.rawcarrier) where that is smaller than its Matroska file;
# "matroska" keeps every stream in Matroska (cubes that format version 3-4 readers decode)
CARRIERS = ("auto", "matroska")


@dataclass(frozen=True)
class GroupSpec:
    """A named band group with optional settings of its own (from a recipe)."""

    channels: tuple[str, ...]
    name: str | None = None
    crf: float | None = None
    psnr: float | None = None
    lossless: bool | None = None
    # a bound on every valid value's absolute error (``0.01``, or ``"0.1%"`` of each band's
    # valid range): see pipeline.codec.errorbound
    max_error: MaxError | float | str | None = None

    def __post_init__(self) -> None:
        label = f"group {self.name or list(self.channels)}"
        _normalise_max_error(self, f"{label} max_error", bool(self.lossless))


@dataclass(frozen=True)
class EncodeOptions:
    crf: float = 12.0  # the codec's own quantiser: x265/AV1 CRF, VVC QP
    preset: str = "medium"  # x265 preset names; mapped onto VVC's and libaom's speeds
    lossless: bool = False
    psnr: float | None = None
    groups: tuple[GroupSpec, ...] = ()
    keyint: int = 250  # x265's default; a seek decodes at most this many extra frames
    x265_params: str = ""
    threads: int = 0
    workers: int = 1
    # "ffmpeg": the ffmpeg command line, one process per stream; "pyav": in-process;
    # "auto": ffmpeg when a binary is found (see resolve_engine), else pyav
    engine: str = "auto"
    # a registered lossy codec, or "auto": with a PSNR target, the candidate that meets it
    # in the fewest bytes on a sample; at a fixed CRF, VVC where the engine has it
    codec: str = AUTO
    candidates: tuple[str, ...] = (VVC_CODEC.name, AOM_CODEC.name, X265_CODEC.name)
    # encode-time budget for "auto": candidates slower than this many times x265 medium
    # are not tried
    max_cost: float = 8.0
    decorrelate: str = AUTO  # "klt", "none", or "auto": KLT where the bands correlate
    skip_empty: bool = True  # frames with no valid pixel are not stored in video streams
    # a small PSNR-target group's final stream is also encoded one step coarser on the core
    # its encoder leaves idle, and the smaller that meets the floor kept (pipeline.codec.hedge);
    # off where every core is already busy (a flow encoding as many cubes as it has cores)
    hedge: bool = True
    access: str = "whole"
    class_codec: str = CLASS_CODEC  # one of CLASS_CODECS
    # error-bounded mode: |x - x_decoded| <= E on every valid value of every continuous band
    # (``0.01`` in the band's units, or ``"0.1%"`` of each band's valid range); the video is
    # aimed at the PSNR of a uniform error of E less one of ``max_error_offsets`` (dB):
    # from 0 toward the cheaper neighbour while the total bytes (video + corrections) fall
    max_error: MaxError | float | str | None = None
    max_error_offsets: tuple[float, ...] = (-12.0, -6.0, 0.0, 6.0, 12.0, 18.0, 24.0, 30.0)
    carrier: str = AUTO  # one of CARRIERS

    @property
    def stream_keyint(self) -> int:
        """The video streams' keyframe interval: ``keyint``, at most ``WINDOW_KEYINT`` where
        time windows are to be read alone."""
        return min(self.keyint, WINDOW_KEYINT) if "windows" in self.access else self.keyint

    @property
    def band_streams(self) -> bool:
        """Every band in a stream of its own (no KLT group, no three-plane stream)."""
        return "bands" in self.access

    def __post_init__(self) -> None:
        """Refuse values the encoder would misread (a keyint of 0 writes an undecodable
        cube), naming the field: the API gets the checks the CLI and recipes have."""
        _check_quality("crf", self.crf, "psnr", self.psnr)
        for g in self.groups:
            label = f"group {g.name or list(g.channels)}"
            _check_quality(f"{label} crf", g.crf, f"{label} psnr", g.psnr)
        _normalise_max_error(self, "max_error", self.lossless)
        if not self.max_error_offsets or not all(
            _is_number(o) and -30 <= o <= 60 for o in self.max_error_offsets
        ):
            raise InvalidCubeError(
                f"max_error_offsets {self.max_error_offsets!r}: one or more dB from -30 to 60"
            )
        _check_int("keyint", self.keyint, 1)
        _check_int("workers", self.workers, 1)
        _check_int("threads", self.threads, 0)
        if not (isinstance(self.max_cost, int | float) and self.max_cost > 0):
            raise InvalidCubeError(f"max_cost {self.max_cost!r}: must be a number above 0")
        if self.preset not in PRESETS:
            raise InvalidCubeError(f"preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.access not in ACCESS:
            raise InvalidCubeError(f"access {self.access!r} is not one of {', '.join(ACCESS)}")
        if self.class_codec not in CLASS_CODECS:
            raise InvalidCubeError(
                f"class_codec {self.class_codec!r} is not one of {', '.join(CLASS_CODECS)}"
            )
        if self.carrier not in CARRIERS:
            raise InvalidCubeError(f"carrier {self.carrier!r} is not one of {', '.join(CARRIERS)}")
        if self.decorrelate not in DECORRELATE:
            raise InvalidCubeError(
                f"decorrelate {self.decorrelate!r} is not one of {', '.join(DECORRELATE)}"
            )
        lossy = codec_names(lossy_only=True)
        for c in (self.codec, *self.candidates):
            if c != AUTO and c not in lossy:
                raise InvalidCubeError(
                    f"codec {c!r} is not supported (choose auto, {', '.join(lossy)})"
                )


PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow", "placebo",
)  # fmt: skip
CRF_MAX = 63.0  # VVC QP and AV1 CRF; x265's CRF stops at 51 (checked per codec)
PSNR_CEILING = 100.0  # recipe.PSNR_MAX: no lossy codec gets near it


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_quality(crf_name: str, crf: float | None, psnr_name: str, psnr: float | None) -> None:
    if crf is not None and not (_is_number(crf) and 0 <= crf <= CRF_MAX):
        raise InvalidCubeError(f"{crf_name} {crf!r}: must be a number from 0 to {CRF_MAX:g}")
    if psnr is not None and not (_is_number(psnr) and 0 < psnr <= PSNR_CEILING):
        raise InvalidCubeError(
            f"{psnr_name} {psnr!r}: a PSNR floor must be above 0 and at most "
            f"{PSNR_CEILING:g} dB (use lossless above that)"
        )


def _normalise_max_error(owner: GroupSpec | EncodeOptions, name: str, lossless: bool) -> None:
    """``max_error`` parsed into a :class:`MaxError` (in place: the dataclasses are frozen),
    refused with ``lossless`` (exact already)."""
    value = owner.max_error
    if value is None:
        return
    parsed = MaxError.parse(value, name)
    if lossless:
        raise InvalidCubeError(f"{name} {parsed}: lossless bands are exact, drop one of the two")
    object.__setattr__(owner, "max_error", parsed)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidCubeError(f"{name} {value!r}: must be an integer of at least {low}")
