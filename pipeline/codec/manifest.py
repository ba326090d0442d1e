"""The manifest: everything needed to turn an encoded cube's streams back into a Dataset.

It is plain JSON so that any reader (a browser, duckdb, another language) can inspect a cube
without our code; pydantic validates it once when it is read.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.codec.manifestbytes import MAX_DEPTH, MAX_MANIFEST, inflate_manifest, json_depth
from pipeline.errors import ManifestError

FORMAT = "cubecast-cube"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_SIDE = 1 << 20  # any one dimension's length
MAX_FRAME = 1 << 30  # pixels in one frame: a reader allocates frames of this size
# 2: KLT transforms, skipped empty frames, compact coordinates; 3: class layers as zstd
# chunks (``zstd-codes``), which a version-2 reader cannot decode; 4: correction layers of
# error-bounded bands (``zstd-corrections``), which a version-3 reader would leave out (its
# values off by up to the video's error); 5: video streams in the raw carrier (``carrier:
# raw``: packets without a container, after their index), which a version-4 reader would
# open as Matroska and refuse. A cube is written as the oldest version that reads it:
# version 3 without corrections or raw streams.
FORMAT_VERSION = 5
BASE_VERSION = 3
CORRECTION_VERSION = 4
RAW_CARRIER_VERSION = 5

Role = Literal["continuous", "categorical"]
Carrier = Literal["matroska", "raw"]
StreamKind = Literal["continuous", "categorical", "mask", "correction"]
_T = TypeVar("_T")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CoordInfo(_Model):
    dims: list[str]
    dtype: str
    values: Any
    attrs: dict[str, Any] = Field(default_factory=dict)
    encoding: dict[str, Any] = Field(default_factory=dict)


class ChannelInfo(_Model):
    """One 2-D plane per time step: a band of a variable, or the whole variable."""

    name: str
    variable: str
    band_index: int | None = None
    # where the channel's codes are: a stream plane, or (``transform`` set) the components
    # of a KLT group, in which case offset/scale normalise the band for that transform
    stream: str | None = None
    plane: int | None = None
    transform: str | None = None
    # an exact integer for integer bands (64-bit values beyond 2^53 stay exact)
    offset: int | float = 0.0
    scale: float = 1.0
    # lossless bands wider than one 16-bit plane: the streams holding their 16-bit words,
    # least significant first (plane 0 of each); the value's bit pattern is
    # (sum word_k << 16k) + offset, modulo 2^(8 * itemsize). Floats: offset 0, IEEE bits.
    words: list[str] | None = None
    mask_stream: str | None = None
    mask_bit: int | None = None
    # bits of the mask stream that mark +inf / -inf pixels (restored after masking)
    posinf_bit: int | None = None
    neginf_bit: int | None = None
    valid_min: int | float | None = None
    valid_max: int | float | None = None
    # PSNR (dB) over the whole cube as the encoder measured it on the decoded streams, where
    # it did (groups with a PSNR target); None otherwise, and for a band that came back exact
    psnr: float | None = None
    # the PSNR floor (dB) the band was encoded to meet, where it had one
    psnr_floor: float | None = None
    # error-bounded bands (``--max-error``): the bound on every valid value's absolute error
    # in the band's units, the largest error the encoder measured on the decoded cube, and
    # where its correction codes are (value += correction_step * code, see errorbound.py)
    max_error: float | None = None
    max_error_reached: float | None = None
    correction_stream: str | None = None
    correction_plane: int | None = None
    correction_step: float | None = None

    @model_validator(mode="after")
    def _sane_correction(self) -> ChannelInfo:
        for name in ("max_error", "max_error_reached", "correction_step"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"channel {self.name!r}: {name} {v} is not a finite number >= 0")
        if self.correction_stream is not None and (
            self.correction_plane is None
            or self.correction_plane < 0
            or not self.correction_step
            or self.max_error is None
        ):
            raise ValueError(
                f"channel {self.name!r}: a correction stream needs a plane, a step above 0 "
                "and a max_error"
            )
        return self


class VariableInfo(_Model):
    name: str
    dims: list[str]
    dtype: str
    role: Role
    band_dim: str | None = None
    channels: list[str]
    nodata: Any = None
    attrs: dict[str, Any] = Field(default_factory=dict)
    encoding: dict[str, Any] = Field(default_factory=dict)


class ComponentInfo(_Model):
    """One KLT component: a stream plane, quantised as ``value = offset + scale * code``."""

    stream: str
    plane: int
    offset: float
    scale: float


class TransformInfo(_Model):
    """A group's KLT (see pipeline/codec/klt.py): with n_b = (x_b - offset_b) / scale_b,
    components c = (n - mean) @ matrix; decoding inverts it: n = mean + c @ matrix.T."""

    name: str
    kind: Literal["klt"] = "klt"
    channels: list[str]
    mean: list[float]
    matrix: list[list[float]]  # [band][component], orthonormal columns
    components: list[ComponentInfo]


class StreamInfo(_Model):
    name: str
    file: str
    kind: StreamKind
    codec: str
    pix_fmt: str
    planes: list[str]
    bits: int
    lossless: bool = False
    crf: float | None = None
    # the codes' amplitude under a PSNR target (pipeline.codec.landing); informative only:
    # each channel's or component's scale already holds it
    gain: float = Field(default=1.0, gt=0, le=1)
    preset: str | None = None
    x265_params: str = ""
    keyint: int
    backend: str = "pyav"  # the engine that wrote it: "pyav" or "ffmpeg"
    nbytes: int = 0
    sha256: str = ""
    # chunked streams (masks, zstd class layers): each chunk's byte offset in the file
    chunk_offsets: list[int] | None = None
    # frames stored, as [start, stop) runs of cube frame indices; None = every frame.
    # Frames left out had no valid pixel in any of the stream's bands.
    frames: list[tuple[int, int]] | None = None
    # planes stacked top to bottom in each frame, each tile H rounded up to even rows
    tiles: int = Field(default=1, ge=1)
    # video streams: "matroska", or "raw" (the codec's packets back to back after their
    # index, no container: pipeline/codec/rawcarrier.py, docs/FORMAT.md "Raw carrier")
    carrier: Carrier = "matroska"

    @model_validator(mode="after")
    def _tiles_are_its_planes(self) -> StreamInfo:
        if self.tiles > 1 and self.tiles != len(self.planes):
            raise ValueError(f"tiles {self.tiles} but {len(self.planes)} planes")
        return self

    def stored_frames(self, n_frames: int) -> list[int]:
        if self.frames is None:
            return list(range(n_frames))
        return [i for a, b in self.frames for i in range(a, b)]


class AuxInfo(_Model):
    """Variables that are not (time, y, x) image stacks, stored losslessly as netCDF."""

    file: str
    variables: list[str]
    nbytes: int
    sha256: str
    attrs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    encodings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Manifest(_Model):
    format: Literal["cubecast-cube"] = FORMAT
    version: int = BASE_VERSION
    cube_id: str
    time_dim: str
    y_dim: str
    x_dim: str
    sizes: dict[str, int]
    pad: tuple[int, int] = (0, 0)
    coords: dict[str, CoordInfo]
    attrs: dict[str, Any] = Field(default_factory=dict)
    variables: list[VariableInfo]
    channels: list[ChannelInfo]
    streams: list[StreamInfo]
    transforms: list[TransformInfo] = Field(default_factory=list)
    aux: AuxInfo | None = None
    data_vars_order: list[str]

    def _named(self, items: list[_T], name: str, what: str) -> _T:
        for item in items:
            if item.name == name:  # type: ignore[attr-defined]
                return item
        raise ManifestError(f"manifest of cube {self.cube_id!r} has no {what} {name!r}")

    def stream(self, name: str) -> StreamInfo:
        return self._named(self.streams, name, "stream")

    def channel(self, name: str) -> ChannelInfo:
        return self._named(self.channels, name, "channel")

    def transform(self, name: str) -> TransformInfo:
        return self._named(self.transforms, name, "transform")

    def channel_lossless(self, name: str) -> bool:
        return all(self.stream(s).lossless for s in self.channel_streams(name))

    def channel_streams(self, name: str) -> list[str]:
        """Streams a channel's values are decoded from (all components of its KLT)."""
        c = self.channel(name)
        if c.transform is not None:
            return list(dict.fromkeys(p.stream for p in self.transform(c.transform).components))
        if c.words:
            return list(c.words)
        return [c.stream] if c.stream is not None else []

    def variable(self, name: str) -> VariableInfo:
        return self._named(self.variables, name, "image variable")

    @model_validator(mode="after")
    def _sane_sizes(self) -> Manifest:
        """Sizes a reader can allocate, and every named dimension present: a crafted
        manifest is refused here rather than by MemoryError or KeyError mid-decode."""
        for dim in (self.time_dim, self.y_dim, self.x_dim):
            if dim not in self.sizes:
                raise ValueError(f"dimension {dim!r} has no entry in sizes")
        for dim, n in self.sizes.items():
            if not 0 <= n <= MAX_SIDE:
                raise ValueError(f"size of {dim!r} is {n}, outside 0..{MAX_SIDE}")
        h, w = self.frame_shape
        if h * w > MAX_FRAME:
            raise ValueError(f"frames of {h} x {w} pixels exceed {MAX_FRAME} pixels")
        for s in self.streams:
            last = 0
            for a, b in s.frames or []:
                if not last <= a < b <= self.n_frames:
                    raise ValueError(
                        f"stream {s.name!r}: frame run [{a}, {b}) is not an increasing run "
                        f"within {self.n_frames} frames"
                    )
                last = b
            if not 1 <= s.bits <= 16 or s.keyint < 1:
                raise ValueError(f"stream {s.name!r}: bits {s.bits} or keyint {s.keyint}")
        return self

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.sizes[self.y_dim], self.sizes[self.x_dim]

    @property
    def n_frames(self) -> int:
        return self.sizes[self.time_dim]

    def to_json(self) -> str:
        """Compact: no indentation, defaults left out (a small cube's manifest is a
        noticeable share of its bytes)."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        data = {"format": FORMAT, "version": self.version, **data}
        return json.dumps(data, separators=(",", ":"), allow_nan=False)

    def to_bytes(self) -> bytes:
        """The stored form: the JSON above, zstd-compressed (level 19) with zstd's content
        checksum, so a flipped bit anywhere in it is refused on reading (streams carry
        their SHA-256 in the manifest; a shard's row carries the manifest's). On a 100 x
        100 px cube the manifest is otherwise a tenth of the bytes; ``zstd -d`` reads it."""
        import zstandard

        cctx = zstandard.ZstdCompressor(level=19, write_checksum=True)
        return cctx.compress(self.to_json().encode())

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest") -> Manifest:
        """Read a manifest as stored (zstd-compressed JSON) or as plain JSON text."""
        if isinstance(text, bytes) and text[:4] == ZSTD_MAGIC:
            text = inflate_manifest(text, source)
        if len(text) > MAX_MANIFEST:
            raise ManifestError(f"{source}: manifest is larger than {MAX_MANIFEST >> 20} MiB")
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{source}: not valid JSON ({exc})") from exc
        except RecursionError:
            raise ManifestError(f"{source}: JSON nested too deeply") from None
        if json_depth(raw) > MAX_DEPTH:
            raise ManifestError(f"{source}: JSON nested deeper than {MAX_DEPTH} levels")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ManifestError(f"{source}: not a cubecast manifest (format != {FORMAT!r})")
        if raw.get("version", 0) > FORMAT_VERSION:
            raise ManifestError(
                f"{source}: manifest version {raw.get('version')} is newer than this cubecast "
                f"supports ({FORMAT_VERSION}); upgrade cubecast"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ManifestError(f"{source}: invalid manifest at {loc}: {first['msg']}") from exc
