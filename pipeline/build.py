"""The pipeline for one recipe as plain functions: source -> encoded sample -> shard ->
verified -> published. The CLI calls them in a loop; the Prefect flow wraps each as a task.

Output folder layout::

    OUT/<taco id>.tacozip (or _partNNNN.tacozip + .tacocat/)   the shards
    OUT/verification.json, REPORT.md, report/*.png, README.md  verification, report, card
    OUT/.work/staging/<cube id>/                                encoded cubes before packing
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import __version__
from pipeline.card import write_card
from pipeline.packing import StagedSample, encode_sample, pack_shards, stage_sample
from pipeline.recipe import Recipe
from pipeline.report import write_report
from pipeline.sources import Mirror, load_cube, mirror_for
from pipeline.verify import Verification, verify_shards

WORK = ".work"
FINGERPRINT = ".fingerprint"


def staging_dir(out: str | Path) -> Path:
    return Path(out) / WORK / "staging"


def fingerprint(recipe: Recipe, cube_id: str) -> str:
    """Everything that changes an encoded cube: a staged cube with the same print is reused."""
    key = {
        "cube": cube_id,
        "source": recipe.source.model_dump(exclude={"cache"}),
        "variables": recipe.variables.model_dump(),
        "codec": recipe.codec.model_dump(),
        "cubecast": __version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def encode_step(
    recipe: Recipe,
    cube_id: str,
    out: str | Path,
    mirror: Mirror | None = None,
    force: bool = False,
) -> StagedSample:
    """Fetch one source cube, encode it at the recipe's settings and stage it on disk."""
    staging = staging_dir(out)
    staged = StagedSample(staging / cube_id)
    fp = fingerprint(recipe, cube_id)
    mark = staged.folder / FINGERPRINT
    if not force and mark.is_file() and mark.read_text() == fp:
        return staged
    cube = load_cube(recipe, cube_id, mirror)
    staging.mkdir(parents=True, exist_ok=True)
    sample = encode_sample(
        cube.dataset,
        recipe.encode_options(),
        cube_id=cube_id,
        split=cube.split,
        roles=recipe.roles(),
        bbox=cube.bbox,
        workdir=staging,  # streams spool beside their final place: staging links, not copies
    )
    sample.extra.update({"crs": cube.crs, "dataset": recipe.taco.id})
    staged = stage_sample(sample, staging)
    (staged.folder / FINGERPRINT).write_text(fp)
    return staged


def pack_step(recipe: Recipe, staged: Sequence[StagedSample], out: str | Path) -> list[Path]:
    """Pack staged samples into shards, unless the same samples were already packed with
    the same settings: shards are not byte-reproducible (ZIP times), and an unchanged shard
    must stay unchanged so that re-publishing uploads nothing."""
    out = Path(out)
    prints = []
    for s in staged:
        mark = s.folder / FINGERPRINT
        prints.append(mark.read_text() if mark.is_file() else s.id)
    key = json.dumps(
        {"samples": prints, "info": str(recipe.dataset_info()), "size": recipe.shards.split_size}
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    mark = out / WORK / "pack.fingerprint"
    existing = shards_in(out)
    if existing and mark.is_file() and mark.read_text() == digest:
        return existing
    shards = pack_shards(staged, out, recipe.dataset_info(), recipe.shards.split_size)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(digest)
    return shards


def shards_in(out: str | Path) -> list[Path]:
    return sorted(Path(out).glob("*.tacozip"))


def verify_step(
    recipe: Recipe,
    shards: Sequence[str | Path] | str | Path,
    out: str | Path | None = None,
    mirror: Mirror | None = None,
    progress: bool = True,
) -> Verification:
    """Verify shards against their sources; write verification.json, the report and the card
    next to them (or into ``out``)."""
    paths = [str(p) for p in (shards if isinstance(shards, list | tuple) else [shards])]
    if len(paths) == 1 and Path(paths[0]).is_dir():
        folder = Path(paths[0])
        paths = [str(p) for p in shards_in(folder)]
    else:
        folder = Path(paths[0]).parent
    folder = Path(out) if out else folder
    mirror = mirror or mirror_for(recipe.source, progress=progress)
    verification = verify_shards(
        paths,
        lambda sid: load_cube(recipe, sid, mirror).dataset,
        recipe.verify.threshold,
        roles=recipe.roles(),
        progress=progress,
    )
    verification.write(folder)
    write_report(verification, folder, title=f"{recipe.taco.title}: verification")
    write_card(recipe, verification, folder)
    return verification


@dataclass
class BuildResult:
    shards: list[Path]
    verification: Verification


def encode_and_pack(
    recipe: Recipe,
    out: str | Path,
    cube_ids: Iterable[str] | None = None,
    mirror: Mirror | None = None,
    progress: bool = True,
) -> list[Path]:
    """Encode every selected cube of ``recipe`` (one at a time) and pack them into ``out``."""
    from pipeline.sources import select_ids

    mirror = mirror or mirror_for(recipe.source, progress=progress)
    ids = list(cube_ids) if cube_ids is not None else select_ids(mirror, recipe.source)
    staged = [encode_step(recipe, cid, out, mirror) for cid in ids]
    return pack_step(recipe, staged, out)


def build(
    recipe: Recipe,
    out: str | Path,
    cube_ids: Iterable[str] | None = None,
    progress: bool = True,
) -> BuildResult:
    """Encode, pack and verify every selected cube of ``recipe`` into ``out``."""
    mirror = mirror_for(recipe.source, progress=progress)
    shards = encode_and_pack(recipe, out, cube_ids, mirror, progress)
    return BuildResult(shards, verify_step(recipe, shards, out, mirror, progress))
