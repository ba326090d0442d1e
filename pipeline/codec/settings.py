"""What a stream writer is told: codec, pixel format, quantiser and keyframe settings.

Shared by the codec classes (``videocodecs``) and both engines, so none of them imports another
for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VideoSettings:
    codec: str  # a registered codec name (pipeline.codec.videocodecs)
    pix_fmt: str
    crf: float | None = 20.0
    preset: str = "medium"
    lossless: bool = False
    keyint: int = 64
    x265_params: str = ""
    threads: int = 0
    # frames the encoder looks ahead (x265 rc-lookahead, libaom lag-in-frames); None: its own
    lookahead: int | None = None
    engine: str = "pyav"  # or "ffmpeg": the command-line backend (pipeline.codec.ffmpeg_engine)
    # amplitude of the codes (<= 1): the codec's error in codes stays about what its quantiser
    # makes it, so scaling the codes by ``gain`` moves PSNR by 20 log10(gain) dB, a step finer
    # than any integer quantiser (pipeline.codec.landing)
    gain: float = 1.0

    def x265_param_string(self) -> str:
        params = [
            "log-level=error",
            f"keyint={self.keyint}",
            f"min-keyint={min(self.keyint, 8)}",
            "open-gop=0",
        ]
        if self.threads:
            params.append(f"pools={self.threads}")
        if self.lookahead is not None and "rc-lookahead" not in self.x265_params:
            params.append(f"rc-lookahead={self.lookahead}")
        if self.lossless:
            params.append("lossless=1")
        if self.x265_params:
            params.append(self.x265_params)
        return ":".join(params)


def n_planes(pix_fmt: str) -> int:
    return 3 if pix_fmt.startswith(("gbrp", "yuv444")) else 1


def sample_dtype(pix_fmt: str) -> np.dtype:
    """8-bit formats hold bytes; every deeper one little-endian uint16."""
    return np.dtype(np.uint8 if pix_fmt in ("gray", "gbrp") else "<u2")
