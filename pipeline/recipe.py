"""Dataset recipes: one declarative TOML file per dataset, validated once here.

A recipe names where the cubes come from, how each variable is treated, the codec settings
per band group, the quality the published shards must reach, and the dataset's metadata.
Everything downstream takes the typed :class:`Recipe`, never the raw TOML.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.codec.planning import EncodeOptions, GroupSpec
from pipeline.errors import RecipeError
from pipeline.taco.pack import DatasetInfo

RECIPES_ENV = "CUBECAST_RECIPES"
_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB)$", re.IGNORECASE)
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # a folder name and a Prefect artifact key
PSNR_MAX = 100.0  # above this the CRF search cannot deliver (x265 tops out near 83 dB)


def _psnr_target(v: float | None) -> float | None:
    if v is not None and v > PSNR_MAX:
        raise ValueError(
            f"{v:g} dB is above {PSNR_MAX:g} dB, which lossy x265 cannot reach; use lossless"
        )
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CubeSelection(_Strict):
    """Which cubes to take: explicit ids, the first ``count``, or ids listed in a file."""

    ids: list[str] | None = None
    count: Annotated[int, Field(gt=0)] | None = None
    sample_list: str | None = None

    _sample_list = field_validator("sample_list")(_relative_file)


class SourceSpec(_Strict):
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


class VariablesSpec(_Strict):
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


class GroupRecipe(_Strict):
    name: str
    bands: Annotated[list[str], Field(min_length=1, max_length=16)]
    crf: Annotated[float, Field(ge=0, le=63)] | None = None
    psnr: Annotated[float, Field(gt=0)] | None = None
    lossless: bool | None = None

    _psnr = field_validator("psnr")(_psnr_target)


class CodecSpec(_Strict):
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
    keyint: Annotated[int, Field(ge=1, le=1000)] = 250  # x265's own default
    x265_params: str = ""
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    groups: list[GroupRecipe] = []

    _psnr = field_validator("psnr")(_psnr_target)

    @field_validator("x265_params")
    @classmethod
    def _known_x265_params(cls, v: str) -> str:
        from pipeline.validate import x265_params_problem

        problem = x265_params_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _av1_needs_ffmpeg(self) -> CodecSpec:
        if self.codec in ("libaom-av1", "libvvenc") and self.engine == "pyav":
            raise ValueError(
                f'codec {self.codec!r} needs engine = "ffmpeg" (PyAV\'s wheels only decode it)'
            )
        return self


class VerifySpec(_Strict):
    psnr_min: Annotated[float, Field(gt=0, le=120)]
    bands: dict[str, Annotated[float, Field(gt=0, le=120)]] = {}

    def threshold(self, band: str) -> float:
        return self.bands.get(band, self.psnr_min)


class ShardSpec(_Strict):
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


class TacoSpec(_Strict):
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


class PublishSpec(_Strict):
    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
    private: bool = False
    schedule: str = Field("0 3 * * 1", description="cron for the Prefect deployment")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"{v!r} is not a 5-field cron expression")
        return v


class Recipe(_Strict):
    name: str
    source: SourceSpec
    variables: VariablesSpec = VariablesSpec()
    codec: CodecSpec = CodecSpec()
    verify: VerifySpec
    shards: ShardSpec = ShardSpec()
    taco: TacoSpec
    publish: PublishSpec
    path: str | None = Field(None, description="where the recipe was loaded from")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"{v!r}: use lower-case letters, digits and '-' (the name becomes the output "
                'folder and Prefect artifact keys); set name = "..." or rename the file'
            )
        return v

    @model_validator(mode="after")
    def _verify_bands_exist(self) -> Recipe:
        known = set(self.variables.continuous) | {b for g in self.codec.groups for b in g.bands}
        unknown = sorted(set(self.verify.bands) - known)
        if unknown and known:
            raise ValueError(
                f"verify.bands names {', '.join(map(repr, unknown))}, not a continuous band of "
                f"this recipe (known: {', '.join(sorted(known))})"
            )
        return self

    @model_validator(mode="after")
    def _groups_are_continuous(self) -> Recipe:
        other = set(self.variables.categorical) | set(self.variables.metadata)
        other |= set(self.variables.drop)
        for g in self.codec.groups:
            bad = [b for b in g.bands if b in other]
            if bad:
                raise ValueError(f"group {g.name!r} lists non-continuous bands {bad}")
        return self

    def encode_options(self, **overrides: object) -> EncodeOptions:
        c = self.codec
        groups = tuple(
            GroupSpec(tuple(g.bands), name=g.name, crf=g.crf, psnr=g.psnr, lossless=g.lossless)
            for g in c.groups
        )
        opts = EncodeOptions(
            crf=c.crf,
            preset=c.preset,
            psnr=c.psnr,
            groups=groups,
            keyint=c.keyint,
            x265_params=c.x265_params,
            workers=c.workers,
            codec=c.codec,
            engine=c.engine,
            decorrelate=c.decorrelate,
            max_cost=c.max_cost,
        )
        from dataclasses import replace

        return replace(opts, **overrides) if overrides else opts

    def roles(self) -> dict[str, str]:
        v = self.variables
        roles = {n: "continuous" for n in v.continuous}
        roles |= {n: "categorical" for n in v.categorical}
        roles |= {n: "metadata" for n in v.metadata}
        return roles

    def dataset_info(self) -> DatasetInfo:
        t = self.taco
        return DatasetInfo(
            id=t.id,
            version=t.version,
            title=t.title,
            description=t.description,
            licenses=tuple(t.licenses),
            providers=tuple(t.providers),
            tasks=tuple(t.tasks),
            keywords=tuple(t.keywords),
        )


def recipe_search_path() -> list[Path]:
    """Where recipe names are looked up, first match wins: $CUBECAST_RECIPES (a user's own
    folders), ./datasets, then the recipes shipped with the package (``pipeline/recipes``
    in a wheel, built from the repository's ``datasets/``; the source tree's ``datasets/``
    in a checkout or editable install)."""
    here = Path(__file__).resolve().parent
    dirs = [Path(p) for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "datasets", here / "recipes", here.parent / "datasets"]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i]]


def recipe_dirs() -> list[Path]:
    """The folders of :func:`recipe_search_path` that exist."""
    return [d for d in recipe_search_path() if d.is_dir()]


def available_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<top level>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_recipe(data: dict, origin: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{origin}: {_format_errors(exc)}") from None


def load_recipe(name_or_path: str | os.PathLike[str], **source_overrides: str) -> Recipe:
    """Load a recipe by file path or by name (``dynamicearthnet`` -> ``datasets/....toml``).

    ``source_overrides`` replace keys of ``[source]`` (e.g. ``location`` to point the recipe
    at another mirror) before validation.
    """
    p = Path(name_or_path)
    if not p.is_file():
        known = available_recipes()
        if str(name_or_path) not in known:
            names = ", ".join(known) or "none found"
            looked = ", ".join(str(d) for d in recipe_search_path())
            raise RecipeError(
                f"{name_or_path}: no such recipe file, and not a recipe name "
                f"(available: {names}; looked in {looked}; add folders with ${RECIPES_ENV})"
            )
        p = known[str(name_or_path)]
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"{p}: cannot read recipe ({exc})") from None
    data.setdefault("name", p.stem)
    if source_overrides:
        given = {k: v for k, v in source_overrides.items() if v}
        data["source"] = {**data.get("source", {}), **given}
    recipe = parse_recipe(data, str(p))
    return recipe.model_copy(update={"path": str(p)})
