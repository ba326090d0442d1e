"""The tables of a recipe file, one strict model each: ``[source]`` (with its
``[source.cubes]`` selection), ``[variables]``, ``[codec]`` (with ``[[codec.groups]]``),
``[verify]``, ``[shards]``, ``[taco]`` and ``[publish]``.

Each table checks what it can alone; checks across tables are :class:`~pipeline.recipe.Recipe`'s.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB)$", re.IGNORECASE)
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
PSNR_MAX = 100.0  # above this the CRF search cannot deliver (x265 tops out near 83 dB)


def _psnr_target(v: float | None) -> float | None:
    if v is not None and v > PSNR_MAX:
        raise ValueError(
            f"{v:g} dB is above {PSNR_MAX:g} dB, which lossy x265 cannot reach; use lossless"
        )
    return v


def _max_error_bound(v: float | str | None) -> float | str | None:
    if v is None:
        return v
    from pipeline.codec.errorbound import MaxError
    from pipeline.errors import InvalidCubeError

    try:
        MaxError.parse(v, "max_error")
    except InvalidCubeError as exc:
        raise ValueError(str(exc)) from None
    return v


def _relative_file(v: str | None) -> str | None:
    """Files named by a recipe are read from the source: no absolute paths, no ``..``."""
    if v is None:
        return v
    from pipeline.confine import safe_relpath
    from pipeline.errors import UnsafePathError

    try:
        return safe_relpath(v, "path")
    except UnsafePathError:
        raise ValueError(f"{v!r} must be a path relative to source.location (no '..')") from None


class StrictModel(BaseModel):
    """Unknown keys are errors, and a loaded recipe is read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CubeSelection(StrictModel):
    """Which cubes to take: explicit ids, the first ``count``, or ids listed in a file."""

    ids: list[str] | None = None
    count: Annotated[int, Field(gt=0)] | None = None
    sample_list: str | None = None

    _sample_list = field_validator("sample_list")(_relative_file)


class SourceSpec(StrictModel):
    adapter: Literal["deepextremecubes", "dynamicearthnet"]
    location: str = Field(
        description="local folder, hf://datasets/ORG/NAME[/sub], http(s):// base URL, "
        "or any fsspec URL"
    )
    pattern: str | None = Field(None, description="glob for cube stores/areas below location")
    cubes: CubeSelection = CubeSelection()
    split_file: str | None = Field(None, description="'<id>,<split>' per line, under location")
    index: str = Field("SHA256SUMS", description="file list (+checksums) for HTTP mirrors")
    revision: str | None = None
    cache: str | None = Field(None, description="download cache folder (default ~/.cache)")

    _split_file = field_validator("split_file")(_relative_file)

    @field_validator("location")
    @classmethod
    def _location_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return os.path.expandvars(os.path.expanduser(v))


class VariablesSpec(StrictModel):
    """Roles by variable name; unnamed image variables are guessed from dtype and attrs."""

    continuous: list[str] = []
    categorical: list[str] = []
    metadata: list[str] = Field([], description="image stacks kept losslessly as metadata")
    drop: list[str] = []

    @model_validator(mode="after")
    def _disjoint(self) -> VariablesSpec:
        seen: dict[str, str] = {}
        for role in ("continuous", "categorical", "metadata", "drop"):
            for name in getattr(self, role):
                if name in seen:
                    raise ValueError(f"{name!r} is listed as both {seen[name]} and {role}")
                seen[name] = role
        return self


class GroupRecipe(StrictModel):
    name: str
    bands: Annotated[list[str], Field(min_length=1, max_length=16)]
    crf: Annotated[float, Field(ge=0, le=63)] | None = None
    psnr: Annotated[float, Field(gt=0)] | None = None
    lossless: bool | None = None
    max_error: float | str | None = None  # 0.01 (band units) or "0.1%" of the valid range

    _psnr = field_validator("psnr")(_psnr_target)
    _max_error = field_validator("max_error")(_max_error_bound)

    @model_validator(mode="after")
    def _bound_or_lossless(self) -> GroupRecipe:
        if self.lossless and self.max_error is not None:
            raise ValueError("max_error with lossless: lossless bands are exact already")
        return self

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        from pipeline.codec.groupnames import group_name_problem

        problem = group_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class CodecSpec(StrictModel):
    # auto: under a PSNR target, per group the candidate with the fewest bytes on a sample
    codec: Literal["auto", "libvvenc", "libx265", "libaom-av1"] = "auto"
    engine: Literal["auto", "pyav", "ffmpeg"] = "auto"
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"
    ] = "medium"
    crf: Annotated[float, Field(ge=0, le=63)] = 12.0
    decorrelate: Literal["auto", "klt", "none"] = "auto"
    # encode-time budget for codec = "auto", in multiples of x265 medium's time
    max_cost: Annotated[float, Field(gt=0)] = 8.0
    psnr: Annotated[float, Field(gt=0)] | None = None
    # every valid value within this of the source: 0.01 (band units) or "0.1%" of its range
    max_error: float | str | None = None
    keyint: Annotated[int, Field(ge=1, le=1000)] = 250  # x265's own default
    # what a reader can read alone, paid for in bits: "whole" cubes, short time "windows"
    # (a keyframe every 16 frames at most), single "bands" (a stream per band), or both
    access: Literal["whole", "windows", "bands", "windows+bands"] = "whole"
    x265_params: str = ""
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # a small PSNR-target group's final encode also one step coarser on the core its encoder
    # leaves idle; the publish flow turns it off when it encodes as many cubes as cores
    hedge: bool = True
    groups: list[GroupRecipe] = []

    _psnr = field_validator("psnr")(_psnr_target)
    _max_error = field_validator("max_error")(_max_error_bound)

    @field_validator("x265_params")
    @classmethod
    def _known_x265_params(cls, v: str) -> str:
        from pipeline.validate import x265_params_problem

        problem = x265_params_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _distinct_group_names(self) -> CodecSpec:
        """Group names become stream files and TACO child ids (dots read as '_', one
        file on a case-insensitive disk): two groups must not name the same files."""
        from pipeline.codec.groupnames import check_group_names
        from pipeline.errors import InvalidCubeError

        try:
            check_group_names([g.name for g in self.groups], "group")
        except InvalidCubeError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _av1_needs_ffmpeg(self) -> CodecSpec:
        if self.codec in ("libaom-av1", "libvvenc") and self.engine == "pyav":
            raise ValueError(
                f'codec {self.codec!r} needs engine = "ffmpeg" (PyAV\'s wheels only decode it)'
            )
        return self


class VerifySpec(StrictModel):
    psnr_min: Annotated[float, Field(gt=0, le=120)]
    bands: dict[str, Annotated[float, Field(gt=0, le=120)]] = {}

    def threshold(self, band: str) -> float:
        return self.bands.get(band, self.psnr_min)


class ShardSpec(StrictModel):
    split_size: str = "4GB"

    @field_validator("split_size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not _SIZE.match(v.strip()):
            raise ValueError(f"{v!r} is not a size like '512MB' or '4GB'")
        return v.strip().upper().replace(" ", "")


TacoTask = Literal[
    "regression",
    "classification",
    "scene-classification",
    "detection",
    "object-detection",
    "segmentation",
    "semantic-segmentation",
    "instance-segmentation",
    "panoptic-segmentation",
    "similarity-search",
    "generative",
    "image-captioning",
    "super-resolution",
    "denoising",
    "inpainting",
    "colorization",
    "style-transfer",
    "deblurring",
    "dehazing",
    "foundation-model",
    "other",
]  # the task vocabulary tacotoolbox accepts


class TacoSpec(StrictModel):
    id: str
    version: str = "0.1.0"
    title: str
    description: str
    licenses: Annotated[list[str], Field(min_length=1)]
    providers: Annotated[list[str], Field(min_length=1)]
    tasks: list[TacoTask] = []
    keywords: list[str] = []

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"{v!r}: use lower-case letters, digits, '-' and '_'")
        return v


class PublishSpec(StrictModel):
    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    private: bool = False
    schedule: str = Field("0 3 * * 1", description="cron for the Prefect deployment")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"{v!r} is not a 5-field cron expression")
        return v
