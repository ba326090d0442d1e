"""Which engine runs the encoders and which lossy codecs a group may try.

``auto`` engine means the ffmpeg command line when a binary exists; ``auto`` codec means
the candidates the engine runs within the encode-time budget, the PSNR target and the
padding a codec's minimum frame size would add.
"""

from __future__ import annotations

from pipeline.codec.options import AUTO, EncodeOptions
from pipeline.codec.videocodecs import X265_CODEC, get_codec
from pipeline.errors import InvalidCubeError

# VVC padded from 33 x 49 to 64 x 64 px still took 0.95x x265's bits on an hourly field
# (unpadded 34 x 50 took 1.11x); a frame that would grow more than this goes to x265
MAX_PADDING = 4

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
    from pipeline.codec.ffmpeg_engine import ffmpeg_exe

    return "ffmpeg" if ffmpeg_exe() else "pyav"


def codec_candidates(
    options: EncodeOptions,
    engine: str,
    target: float | None,
    shape: tuple[int, int] = (0, 0),
) -> list[str]:
    """Lossy codecs a group may use, best guess first.

    An explicit codec is checked against the engine; ``auto`` keeps the candidates the
    engine can run, within the encode-time budget, below their PSNR ceiling (VVC's 10 bits
    cannot reach the highest targets; 12-bit x265 can) and whose minimum frame size does
    not pad the cube's ``shape`` to more than ``MAX_PADDING`` times its pixels.
    """
    if options.codec != AUTO:
        codec = get_codec(options.codec)
        if engine not in codec.engines:
            raise InvalidCubeError(
                f"codec {codec.name!r} is not in PyAV's wheels: encode it with "
                "engine='ffmpeg' (PyAV decodes it)"
            )
        return [codec.name]
    out = []
    for name in options.candidates:
        codec = get_codec(name)
        if engine not in codec.engines or codec.relative_cost > options.max_cost:
            continue
        if target is not None and target > codec.psnr_ceiling:
            continue
        padded = max(shape[0], codec.min_side) * max(shape[1], codec.min_side)
        if padded > MAX_PADDING * max(shape[0] * shape[1], 1):
            continue
        out.append(name)
    return out or [X265_CODEC.name]
