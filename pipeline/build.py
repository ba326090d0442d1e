"""The pipeline for one recipe as plain functions: source -> encoded sample -> shard ->
verified -> published. The CLI calls them in a loop; the Prefect flow wraps each as a task.

Output folder layout::

    OUT/<taco id>.tacozip (or _partNNNN.tacozip + .tacocat/)   the shards
    OUT/verification.json, REPORT.md, report/*.png, README.md  verification, report, card
    OUT/data/<split>.parquet                                   the card's sample tables
    OUT/.work/staging/<cube id>/                                encoded cubes before packing
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline import __version__
from pipeline.codec.manifest import FORMAT_VERSION
from pipeline.confine import safe_name
from pipeline.errors import VerificationError
from pipeline.lock import holds_output_folder
from pipeline.publish.card import write_card
from pipeline.publish.catalog import check_tacocat
from pipeline.publish.fingerprint import RecordingMirror, source_digest
from pipeline.publish.panel import draw_sample_panel, panel_bands  # noqa: F401 (re-exported)
from pipeline.publish.report import PLOTS, write_report
from pipeline.publish.verify import REPORT_JSON, Verification, verify_shards
from pipeline.recipe import Recipe
from pipeline.sources import Mirror, load_cube, mirror_for
from pipeline.sources.provenance import read_marker
from pipeline.taco.pack import StagedSample, encode_sample, pack_shards, stage_sample

WORK = ".work"
FINGERPRINT = ".fingerprint"


def staging_dir(out: str | Path) -> Path:
    return Path(out) / WORK / "staging"


def _resolved_location(location: str) -> str:
    """A local source folder as an absolute, symlink-free path: ``data/x`` and
    ``/home/me/data/x`` are one source (URLs are kept as given)."""
    if "://" in location:
        return location
    return str(Path(location).resolve())


def fingerprint(recipe: Recipe, cube_id: str) -> str:
    """Every setting that changes an encoded cube (the source's content is checked
    separately, see :func:`source_digest`)."""
    source = recipe.source.model_dump(exclude={"cache"})
    source["location"] = _resolved_location(source["location"])
    key = {
        "cube": cube_id,
        "source": source,
        "variables": recipe.variables.model_dump(),
        "codec": recipe.codec.model_dump(),
        "cubecast": __version__,
        "format": FORMAT_VERSION,  # a new format encodes the same settings differently
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _cache_hit(mark: Path, fp: str) -> bool:
    """The staged cube was made with these settings from files that have not changed."""
    try:
        saved = json.loads(mark.read_text())
        if saved.get("settings") != fp:
            return False
        paths = [Path(p) for p in saved["files"]]
        return all(p.is_file() for p in paths) and source_digest(paths) == saved["files"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def encode_step(
    recipe: Recipe,
    cube_id: str,
    out: str | Path,
    mirror: Mirror | None = None,
    force: bool = False,
    threads: int = 0,
) -> StagedSample:
    """Fetch one source cube, encode it at the recipe's settings (``threads`` per encoder,
    0: their own choice) and stage it on disk."""
    return stage_cube(recipe, cube_id, out, mirror, force, threads)[0]


def shared_files(recipe: Recipe) -> set[str]:
    """Source files every cube reads that are not part of any one cube (the split file)."""
    spec = recipe.source
    return {f for f in (spec.split_file, spec.cubes.sample_list, spec.index) if f}


def read_mark(staged: StagedSample) -> dict:
    """The staged cube's ``.fingerprint`` record ({} when missing or unreadable)."""
    try:
        data = json.loads((staged.folder / FINGERPRINT).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_cube(
    recipe: Recipe,
    cube_id: str,
    out: str | Path,
    mirror: Mirror | None = None,
    force: bool = False,
    threads: int = 0,
) -> tuple[StagedSample, bool]:
    """:func:`encode_step`, also saying whether it encoded (``False``: the staged cube was
    already there, made with these settings from files that have not changed). The
    ``.fingerprint`` record is written with the cube, atomically: the settings, the local
    files read (for this cache) and what the source adapter read (:class:`SourceRecord`)."""
    staging = staging_dir(out)
    staged = StagedSample(staging / safe_name(cube_id, "cube id"))  # ids come from the source
    fp = fingerprint(recipe, cube_id)
    mark = staged.folder / FINGERPRINT
    if not force and mark.is_file() and _cache_hit(mark, fp):
        return staged, False
    recording = RecordingMirror(mirror or mirror_for(recipe.source))
    cube = load_cube(recipe, cube_id, recording)  # type: ignore[arg-type]
    staging.mkdir(parents=True, exist_ok=True)
    sample = encode_sample(
        cube.dataset,
        replace(recipe.encode_options(), threads=threads),
        cube_id=cube_id,
        split=cube.split,
        roles=recipe.roles(),
        bbox=cube.bbox,
        workdir=staging,  # streams spool beside their final place: staging links, not copies
    )
    sample.extra.update({"crs": cube.crs, "dataset": recipe.taco.id})
    record = recording.record(cube_id, skip=shared_files(recipe))
    files = source_digest(recording.paths)
    text = json.dumps({"settings": fp, "files": files, "source": record.to_dict()}, sort_keys=True)
    return stage_sample(sample, staging, marks={FINGERPRINT: text}), True


def pack_step(recipe: Recipe, staged: Sequence[StagedSample], out: str | Path) -> list[Path]:
    """Pack staged samples into shards, unless the same samples were already packed with
    the same settings (shards are byte-reproducible, so this only saves the time): an
    unchanged shard stays unchanged and re-publishing uploads nothing."""
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
    return sorted(shards)  # the order shards_in gives a re-run: same report, same card


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
    whole = len(paths) == 1 and Path(paths[0]).is_dir()
    if whole:
        folder = Path(paths[0])
        paths = [str(p) for p in shards_in(folder)]
    else:
        folder = Path(paths[0]).parent
        paths = sorted(paths)  # a stable sample order: an unchanged dataset re-verifies equal
    folder = Path(out) if out else folder
    mirror = mirror or mirror_for(recipe.source, progress=progress)
    # a verification that fails, or stops, leaves no record a publish could take as passed
    (folder / REPORT_JSON).unlink(missing_ok=True)
    if whole:  # a dataset folder: its catalogue and the recipe's selection must match it
        check_tacocat(folder, [Path(p) for p in paths])
    verification = verify_against_sources(recipe, paths, mirror, progress)
    if whole:
        check_selection(recipe, mirror, verification, folder)
    panel = draw_sample_panel(recipe, paths, mirror, folder / PLOTS, verification=verification)
    write_report(verification, folder, title=f"{recipe.taco.title}: verification", panel=panel)
    write_card(recipe, verification, folder, synthetic=read_marker(mirror))  # + data/*.parquet
    verification.record_files(folder)  # what publish will mirror, hashed after it is all written
    verification.write(folder)
    return verification


def verify_against_sources(
    recipe: Recipe, paths: Sequence[str], mirror: Mirror | None = None, progress: bool = True
) -> Verification:
    """Each sample of the shards at ``paths`` decoded and held to its source cube (read
    through ``mirror``, the recipe's by default) and the recipe's thresholds; nothing is
    written."""
    mirror = mirror or mirror_for(recipe.source, progress=progress)
    return verify_shards(
        list(paths),
        lambda sid: load_cube(recipe, sid, mirror).dataset,
        recipe.verify.threshold,
        roles=recipe.roles(),
        progress=progress,
    )


def check_selection(
    recipe: Recipe, mirror: Mirror, verification: Verification, folder: Path
) -> None:
    """The folder holds exactly the cubes the recipe selects: a cube whose shard went
    missing, or one the recipe no longer selects, fails verification."""
    ids, _ = select_cubes(recipe, mirror)
    have = set(verification.samples)
    missing = [c for c in ids if c not in have]
    extra = sorted(have - set(ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} selected cube(s) in no shard ({', '.join(missing[:3])})")
        if extra:
            parts.append(
                f"{len(extra)} cube(s) the recipe does not select ({', '.join(extra[:3])})"
            )
        raise VerificationError(
            f"{folder}: holds {len(have)} cubes, the recipe {recipe.name!r} selects {len(ids)}: "
            f"{'; '.join(parts)}; pack again"
        )


@dataclass
class BuildResult:
    shards: list[Path]
    verification: Verification


@holds_output_folder  # two packs into one folder cannot interleave
def encode_and_pack(
    recipe: Recipe,
    out: str | Path,
    cube_ids: Iterable[str] | None = None,
    mirror: Mirror | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Encode every selected cube of ``recipe`` (one at a time) and pack them into ``out``.

    ``progress`` shows a per-cube bar on a terminal; ``log`` gets one line per cube (the
    CLI prints them where no bar is shown, so a CI log still says what is happening).
    """
    from tqdm.auto import tqdm

    mirror = mirror or mirror_for(recipe.source, progress=progress)
    if cube_ids is None:
        ids, note = select_cubes(recipe, mirror)
        if log:
            log(note)
    else:
        ids = list(cube_ids)
    staged = []
    bar = tqdm(ids, desc="encode", unit="cube", disable=not progress or None, leave=False)
    for i, cid in enumerate(bar, 1):
        bar.set_postfix_str(cid)
        t0 = time.monotonic()
        sample = encode_step(recipe, cid, out, mirror)
        staged.append(sample)
        if log:
            log(f"[{i}/{len(ids)}] {cid}: encoded in {time.monotonic() - t0:.1f} s")
    bar.close()
    if log:
        log(f"packing {len(staged)} cubes into {out}")
    return pack_step(recipe, staged, out)


def select_cubes(recipe: Recipe, mirror: Mirror) -> tuple[list[str], str]:
    """The recipe's cube selection, and one line saying how many of how many and why."""
    from pipeline.sources import adapter_for, select_ids

    ids = select_ids(mirror, recipe.source)
    total = len(adapter_for(recipe.source).list_ids(mirror, recipe.source))
    sel = recipe.source.cubes
    why = []
    if sel.ids or sel.sample_list:
        why.append("recipe lists cube ids" if sel.ids else f"sample_list {sel.sample_list}")
    if sel.count and sel.count < total:
        why.append(f"recipe count = {sel.count}")
    where = recipe.source.location
    if len(ids) < total:
        return ids, f"selected {len(ids)} of {total} cubes in {where}: {'; '.join(why)}"
    return ids, f"selected all {len(ids)} cubes in {where}"


def with_overrides(
    recipe: Recipe,
    crf: float | None = None,
    psnr: float | None = None,
    split_size: str | None = None,
    cubes: int | None = None,
) -> Recipe:
    """The recipe with command-line settings applied, validated like the TOML itself.

    ``crf`` sets a fixed CRF for every group (dropping PSNR targets), ``psnr`` sets one
    PSNR target for every group; group band layouts are kept.
    """
    from pipeline.recipe import parse_recipe

    if crf is None and psnr is None and split_size is None and cubes is None:
        return recipe
    data = recipe.model_dump(exclude_none=True)
    codec = data["codec"]
    if crf is not None or psnr is not None:
        codec.pop("crf", None), codec.pop("psnr", None)
        for g in codec.get("groups", []):
            for k in ("crf", "psnr", "lossless"):
                g.pop(k, None)
        codec.update({"crf": crf} if crf is not None else {"psnr": psnr})
    if split_size is not None:
        data["shards"]["split_size"] = split_size
    if cubes is not None:
        data["source"]["cubes"] = {"count": cubes}
    return parse_recipe(data, f"{recipe.path or recipe.name} (with command-line options)")


@holds_output_folder
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
