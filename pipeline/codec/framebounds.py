"""The frames a manifest allows a stream: its pixel format and a size between the planes
it must hold and the frame its encoder writes (with the encoders' padding). The decoder
checks every frame (and the stream's header) against them, and gives FFmpeg a
``max_pixels`` so a crafted stream cannot make it allocate more."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import CorruptStreamError


@dataclass(frozen=True)
class FrameBounds:
    """The frames a manifest allows a stream: its pixel format, and a size from
    ``least`` (the planes it must hold) to ``most`` (with the encoders' padding), (H, W)."""

    pix_fmt: str
    least: tuple[int, int]
    most: tuple[int, int]

    @property
    def max_pixels(self) -> int:
        """FFmpeg's ``max_pixels`` for these frames: decoders check their buffers with the
        width aligned to the stride (up to 64 px) and some with aligned rows, so 128 px of
        slack a side; the exact size is checked on every frame."""
        return (self.most[0] + 128) * (self.most[1] + 128)

    def too_large(self, name: str) -> str:
        (lh, lw), (mh, mw) = self.least, self.most
        return (
            f"{name}: frames are larger than the manifest's {lw}x{lh} allows (up to {mw}x{mh} "
            "padded; FFmpeg refused to allocate them: corrupt stream or manifest from another "
            "cube)"
        )

    def check(self, name: str, width: int, height: int, pix_fmt: str | None) -> None:
        (lh, lw), (mh, mw) = self.least, self.most
        if not (lh <= height <= mh and lw <= width <= mw) or pix_fmt not in (None, self.pix_fmt):
            shown = f" {pix_fmt}" if pix_fmt else ""
            raise CorruptStreamError(
                f"{name}: frames are {width}x{height}{shown}, the manifest says {lw}x{lh} "
                f"(up to {mw}x{mh} padded) {self.pix_fmt} (corrupt stream or manifest from "
                "another cube)"
            )
