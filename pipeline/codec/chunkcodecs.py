"""The lossless carriers that are not video, registered by codec name like the video
codecs (``videocodecs``): a stream of independently compressed chunks of ``keyint`` frames,
found by the manifest's ``chunk_offsets``, so a time window decompresses only its chunks.

Validity masks (``zstd-bitpack``, :mod:`pipeline.codec.masks`), class layers
(``zstd-codes``, :mod:`pipeline.codec.classcodes`) and the correction layers of
error-bounded bands (``zstd-corrections``, :mod:`pipeline.codec.errorbound`) are the
three. The planner, the writers, the decoder, the decode budget and the read costs look a
stream's codec up here, so none of them branches on a codec's name; a codec not registered
here is a video codec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import numpy as np

from pipeline.codec import classcodes, errorbound, masks

Target = str | os.PathLike[str] | BinaryIO
ChunkDecoder = Callable[[bytes | memoryview, int, tuple[int, int, int], str, str, int], np.ndarray]


class ChunkWriter(Protocol):
    offsets: list[int]

    def write(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ChunkCodec:
    """A chunked carrier: its file ending, its writer, its one-chunk decoder and what
    decoding holds.

    ``decode_chunk(blob, frames, (planes, H, W), pix_fmt, stream name, chunk index)``
    returns the chunk's ``(frames, planes, H, W)`` array of ``dtype`` and refuses (one-line
    CorruptStreamError) a chunk that does not hold exactly those frames, before it
    inflates further. ``work_bytes(pix_fmt)``: bytes per pixel of a chunk's frames while it
    is decoded; ``out_bytes``: per pixel of the decoded window.
    """

    name: str
    suffix: str  # the stream file's ending after "<stream name>."
    dtype: np.dtype
    open_writer: Callable[[Target, int, str], ChunkWriter]
    decode_chunk: ChunkDecoder
    work_bytes: Callable[[str], int]

    @property
    def out_bytes(self) -> int:
        return self.dtype.itemsize

    def window_nbytes(self, plane_px: int, n: int, keyint: int, n_frames: int, pix_fmt: str) -> int:
        """Bytes a window of ``n`` frames holds (``plane_px``: planes x H x W): the whole
        chunks it touches (and the one kept from the window before) while decoded, and the
        window's array."""
        chunk_frames = min(n_frames, n + 2 * keyint)
        return plane_px * (self.work_bytes(pix_fmt) * chunk_frames + self.out_bytes * n)


def _mask_writer(target: Target, chunk_frames: int, pix_fmt: str) -> ChunkWriter:
    return masks.MaskWriter(target, chunk_frames)


def _codes_work(pix_fmt: str) -> int:
    """The chunk's raw codes (at most 2 bytes each: an unknown format decodes to nothing)
    and its uint16 codes."""
    return classcodes.CODE_WIDTH.get(pix_fmt, 2) + 2


MASKS = ChunkCodec(
    name=masks.CODEC,
    suffix="bits.zst",
    dtype=np.dtype(bool),
    open_writer=_mask_writer,
    decode_chunk=masks.mask_chunk,
    work_bytes=lambda pix_fmt: 2,  # packed bits, and the unpacked bytes viewed as booleans
)
CLASS_CODES = ChunkCodec(
    name=classcodes.CODEC,
    suffix="codes.zst",
    dtype=np.dtype(np.uint16),
    open_writer=classcodes.CodesWriter,
    decode_chunk=classcodes.codes_chunk,
    work_bytes=_codes_work,
)
CORRECTIONS = ChunkCodec(
    name=errorbound.CODEC,
    suffix=errorbound.SUFFIX,
    dtype=np.dtype(np.int32),
    open_writer=errorbound.CorrectionWriter,
    decode_chunk=errorbound.correction_chunk,
    work_bytes=lambda pix_fmt: 8,  # codes of up to 4 bytes as stored, and as int32
)
_REGISTRY = {c.name: c for c in (MASKS, CLASS_CODES, CORRECTIONS)}


def chunk_codec(name: str) -> ChunkCodec | None:
    """The chunked carrier of this codec name; None for a video codec."""
    return _REGISTRY.get(name)


def chunk_codec_names() -> list[str]:
    return list(_REGISTRY)
