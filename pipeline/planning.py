"""Stream planning: which channels share a video stream, and with which codec settings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pipeline.cube import Channel, ChannelStats, CubeLayout
from pipeline.errors import InvalidCubeError
from pipeline.manifest import StreamKind
from pipeline.maskcodec import CODEC as MASK_CODEC
from pipeline.video import AV1, LOSSY_CODECS, VideoSettings

LOSSY_BITS = 12
LOSSLESS_BITS = 16


@dataclass(frozen=True)
class GroupSpec:
    """A named band group with optional settings of its own (from a recipe)."""

    channels: tuple[str, ...]
    name: str | None = None
    crf: float | None = None
    psnr: float | None = None
    lossless: bool | None = None


@dataclass(frozen=True)
class EncodeOptions:
    crf: float = 12.0
    preset: str = "medium"
    lossless: bool = False
    psnr: float | None = None
    groups: tuple[GroupSpec, ...] = ()
    keyint: int = 64
    x265_params: str = ""
    threads: int = 0
    workers: int = 1
    # "ffmpeg": the ffmpeg command line, one process per stream; "pyav": in-process;
    # "auto": ffmpeg when a binary is found (see resolve_engine), else pyav
    engine: str = "auto"
    codec: str = "libx265"  # or "libaom-av1" (12-bit AV1; needs the ffmpeg engine)


@dataclass
class StreamPlan:
    name: str
    kind: StreamKind
    channels: list[Channel]
    settings: VideoSettings
    psnr_target: float | None = None
    mask_of: list[Channel] = field(default_factory=list)


def _stream_name(names: Sequence[str], taken: set[str]) -> str:
    base = "_".join(re.sub(r"[^A-Za-z0-9]+", "", n) or "band" for n in names)[:48] or "stream"
    name, i = base.lower(), 1
    while name in taken:
        name, i = f"{base.lower()}{i}", i + 1
    taken.add(name)
    return name


def _continuous_groups(
    continuous: list[Channel], groups: Sequence[GroupSpec]
) -> list[tuple[list[Channel], GroupSpec | None]]:
    by_name = {c.name: c for c in continuous}
    out: list[tuple[list[Channel], GroupSpec | None]] = []
    used: set[str] = set()
    for g in groups:
        chans = []
        for n in g.channels:
            if n not in by_name:
                raise InvalidCubeError(
                    f"band group {list(g.channels)} names {n!r}, which is not a continuous "
                    f"channel of this cube (have: {', '.join(by_name) or 'none'})"
                )
            if n in used:
                raise InvalidCubeError(f"channel {n!r} appears in more than one band group")
            used.add(n)
            chans.append(by_name[n])
        if not 1 <= len(chans) <= 3:
            raise InvalidCubeError(f"band group {list(g.channels)} must have 1 to 3 channels")
        out.append((chans, g))
    rest = [c for c in continuous if c.name not in used]
    for i in range(0, len(rest), 3):
        out.append((rest[i : i + 3], None))
    return out


ENGINES = ("auto", "ffmpeg", "pyav")


def resolve_engine(engine: str) -> str:
    """``auto`` means the ffmpeg command line whenever a binary exists.

    Each ffmpeg process holds one x265 encoder. In one process, PyAV's libx265 lets
    encoders disturb each other: the first encode of a noisy cube in a process matches
    the command line's, later ones differ from run to run, and two encoders alive at once
    have crashed (SIGSEGV in flush). The command line was also 7% faster on a 1024 px cube.
    """
    if engine not in ENGINES:
        raise InvalidCubeError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    from pipeline.ffmpeg_backend import ffmpeg_exe

    return "ffmpeg" if ffmpeg_exe() else "pyav"


def plan_streams(
    layout: CubeLayout,
    stats: dict[str, ChannelStats],
    options: EncodeOptions,
) -> list[StreamPlan]:
    taken: set[str] = set()
    plans: list[StreamPlan] = []
    if options.codec not in LOSSY_CODECS:
        raise InvalidCubeError(
            f"codec {options.codec!r} is not supported (choose {' or '.join(LOSSY_CODECS)})"
        )
    engine = resolve_engine(options.engine)
    if options.codec == AV1 and engine != "ffmpeg":
        raise InvalidCubeError(
            f"codec {AV1!r} is not in PyAV's wheels: encode it with engine='ffmpeg' "
            "(PyAV decodes it)"
        )
    base = VideoSettings(
        codec=options.codec,
        pix_fmt="gray12le",
        crf=options.crf,
        preset=options.preset,
        keyint=options.keyint,
        x265_params=options.x265_params,
        threads=options.threads,
        engine=engine,
    )
    ffv1 = VideoSettings(
        codec="ffv1",
        pix_fmt="gray16le",
        crf=None,
        lossless=True,
        keyint=1,
        threads=options.threads,
        engine=engine,
    )
    continuous = [c for c in layout.channels if c.role == "continuous"]
    for chans, spec in _continuous_groups(continuous, options.groups):
        lossless = options.lossless if spec is None or spec.lossless is None else spec.lossless
        target = options.psnr if spec is None or spec.psnr is None else spec.psnr
        if lossless:
            for c in chans:
                plans.append(StreamPlan(_stream_name([c.name], taken), "continuous", [c], ffv1))
            continue
        crf = options.crf if spec is None or spec.crf is None else spec.crf
        split = chans if len(chans) == 2 else None
        for sub in ([c] for c in split) if split else [chans]:
            pix = "gbrp12le" if len(sub) == 3 else "gray12le"
            name = spec.name if spec and spec.name and not split else None
            name = name or _stream_name([c.name for c in sub], taken)
            taken.add(name)
            settings = replace(base, pix_fmt=pix, crf=crf)
            plans.append(StreamPlan(name, "continuous", list(sub), settings, target))

    for c in (c for c in layout.channels if c.role == "categorical"):
        st = stats[c.name]
        pix = "gray" if st.vmax - st.vmin <= 255 else "gray16le"
        if st.vmax - st.vmin > 65535:
            raise InvalidCubeError(
                f"categorical variable {c.variable!r} spans {st.vmin:g}..{st.vmax:g}: more than "
                "65536 classes cannot be stored losslessly"
            )
        plans.append(
            StreamPlan(
                _stream_name([c.name], taken), "categorical", [c], replace(ffv1, pix_fmt=pix)
            )
        )

    masked = [c for c in continuous if stats[c.name].n_invalid > 0]
    if masked:
        mask = VideoSettings(
            codec=MASK_CODEC, pix_fmt="bits", crf=None, lossless=True, keyint=options.keyint
        )
        plans.append(StreamPlan(_stream_name(["masks"], taken), "mask", [], mask, mask_of=masked))
    return plans
