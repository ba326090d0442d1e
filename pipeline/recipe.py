"""Dataset recipes: one declarative TOML file per dataset, validated once here.

A recipe names where the cubes come from, how each variable is treated, the codec settings
per band group, the quality the published shards must reach, and the dataset's metadata.
Everything downstream takes the typed :class:`Recipe`, never the raw TOML. Each TOML table
has its model in :mod:`pipeline.recipe_tables`; here are the checks across tables, and
finding and loading recipe files.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.codec.options import EncodeOptions, GroupSpec
from pipeline.errors import RecipeError
from pipeline.recipe_tables import (
    PSNR_MAX,
    CodecSpec,
    PublishSpec,
    ShardSpec,
    SourceSpec,
    StrictModel,
    TacoSpec,
    VariablesSpec,
    VerifySpec,
)
from pipeline.taco.pack import DatasetInfo

__all__ = [
    "PSNR_MAX",
    "RECIPES_ENV",
    "Recipe",
    "SourceSpec",
    "available_recipes",
    "load_recipe",
    "parse_recipe",
    "recipe_dirs",
    "recipe_search_path",
]

RECIPES_ENV = "CUBECAST_RECIPES"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # a folder name and a Prefect artifact key


class Recipe(StrictModel):
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
            GroupSpec(
                tuple(g.bands),
                name=g.name,
                crf=g.crf,
                psnr=g.psnr,
                lossless=g.lossless,
                max_error=g.max_error,
            )
            for g in c.groups
        )
        opts = EncodeOptions(
            crf=c.crf,
            preset=c.preset,
            psnr=c.psnr,
            max_error=c.max_error,
            groups=groups,
            keyint=c.keyint,
            access=c.access,
            x265_params=c.x265_params,
            workers=c.workers,
            codec=c.codec,
            engine=c.engine,
            decorrelate=c.decorrelate,
            max_cost=c.max_cost,
            hedge=c.hedge,
        )
        from dataclasses import replace

        return replace(opts, **overrides) if overrides else opts

    def without_hedge(self) -> Recipe:
        """This recipe with hedged final encodes off (pipeline.codec.hedge)."""
        return self.model_copy(update={"codec": self.codec.model_copy(update={"hedge": False})})

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
    except RecursionError:
        raise RecipeError(f"{origin}: nested too deeply") from None


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
    except RecursionError:
        raise RecipeError(f"{p}: cannot read recipe (nested too deeply)") from None
    data.setdefault("name", p.stem)
    if source_overrides:
        given = {k: v for k, v in source_overrides.items() if v}
        if not isinstance(data.get("source", {}), dict):
            raise RecipeError(f"{p}: source: must be a table ([source])")
        data["source"] = {**data.get("source", {}), **given}
    recipe = parse_recipe(data, str(p))
    return recipe.model_copy(update={"path": str(p)})
