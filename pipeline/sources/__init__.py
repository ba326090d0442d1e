"""Where cubes come from: a dataset's files -> ``xarray.Dataset`` cubes, one at a time.

An adapter knows one file layout (``deepextremecubes``, ``dynamicearthnet``). It lists cube
ids in a :class:`Mirror` (``mirror``: a local folder, HTTP(S) base URL or fsspec URL, with
``download`` fetching over HTTP with retries, resume and checksums) and loads one cube
lazily, so memory holds one cube (or, for image stacks read frame by frame, a few frames).
Adding a dataset with a known layout needs only a recipe; a new layout needs one adapter
module, registered in :func:`_adapters` and named in the recipe's ``source.adapter`` choices.

Stand-ins for the real archives: ``twins`` writes synthetic source trees with the real
layouts, from ``synthetic``'s surfaces and clouds; ``sample_data`` loads the small real arrays
in ``shared/data``; ``demo`` picks the cubes ``cubecast demo-codec`` encodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import xarray as xr

from pipeline.errors import SourceError
from pipeline.recipe import Recipe, SourceSpec
from pipeline.sources.mirror import Mirror, open_mirror


@dataclass
class SourceCube:
    id: str
    dataset: xr.Dataset
    bbox: tuple[float, float, float, float] | None  # west, south, east, north (EPSG:4326)
    crs: str
    time_range: tuple[str, str]
    split: str | None = None


class Adapter(Protocol):
    def list_ids(self, mirror: Mirror, spec: SourceSpec) -> list[str]: ...

    def load(self, mirror: Mirror, spec: SourceSpec, cube_id: str) -> xr.Dataset: ...


def _adapters() -> dict[str, Callable[[], Adapter]]:
    from pipeline.sources.deepextremecubes import DeepExtremeCubes
    from pipeline.sources.dynamicearthnet import DynamicEarthNet

    return {"deepextremecubes": DeepExtremeCubes, "dynamicearthnet": DynamicEarthNet}


def adapter_for(spec: SourceSpec) -> Adapter:
    return _adapters()[spec.adapter]()


def mirror_for(
    spec: SourceSpec,
    progress: bool = True,
    max_disk: int | None = None,
    disk_root: str | os.PathLike[str] | None = None,
) -> Mirror:
    """The recipe's mirror; ``max_disk`` bytes bound the disk use of ``disk_root`` (default
    the cache) while an HTTP mirror downloads (see :func:`~pipeline.sources.mirror.open_mirror`)."""
    return open_mirror(
        spec.location,
        spec.cache,
        index=spec.index,
        revision=spec.revision,
        progress=progress,
        max_disk=max_disk,
        disk_root=disk_root,
    )


def _read_lines(mirror: Mirror, name: str) -> list[str]:
    p = mirror.fetch(name)  # recipe validation keeps ``name`` relative to the source
    try:
        text = p.read_text()
    except OSError as exc:
        raise SourceError(f"{name}: cannot read ({exc})") from exc
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def read_splits(mirror: Mirror, spec: SourceSpec) -> dict[str, str]:
    """``<id>,<split>`` lines (a header line ``id,split`` is allowed)."""
    if not spec.split_file:
        return {}
    splits: dict[str, str] = {}
    for n, line in enumerate(_read_lines(mirror, spec.split_file), 1):
        parts = [p.strip() for p in line.replace("\t", ",").split(",")]
        if len(parts) != 2:
            raise SourceError(f"{spec.split_file}: line {n} is not '<id>,<split>': {line!r}")
        if (parts[0], parts[1]) != ("id", "split"):
            splits[parts[0]] = parts[1]
    return splits


def select_ids(mirror: Mirror, spec: SourceSpec) -> list[str]:
    """The recipe's cube selection applied to what the mirror holds, in a stable order."""
    available = adapter_for(spec).list_ids(mirror, spec)
    if not available:
        raise SourceError(f"{spec.location}: no {spec.adapter} cubes found")
    sel = spec.cubes
    wanted = list(sel.ids or [])
    if sel.sample_list:
        wanted += _read_lines(mirror, sel.sample_list)
    if wanted:
        missing = [i for i in wanted if i not in available]
        if missing:
            raise SourceError(
                f"{spec.location}: cubes not found: {', '.join(missing[:5])}"
                + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        ids = list(dict.fromkeys(wanted))
    else:
        ids = available
    return ids[: sel.count] if sel.count else ids


def describe(cube_id: str, ds: xr.Dataset, split: str | None) -> SourceCube:
    from pipeline.taco.pack import crs_string, footprint

    crs = crs_string(ds)
    t = ds["time"].values
    return SourceCube(
        id=cube_id,
        dataset=ds,
        bbox=footprint(ds),
        crs=crs,
        time_range=(str(t[0])[:10], str(t[-1])[:10]),
        split=split,
    )


# cubes up to this size are read into memory once: an encode reads its cube several times
# (stats, sample trials, the pass, the PSNR check, the quality report), and re-reading a
# compressed store each time cost more CPU than the encode's own Python side (a 109 MiB
# DEC twin: 38 s -> 27 s to stage, 27 -> 8 CPU s besides the encoders); larger ones stream
IN_MEMORY_BYTES = 256 << 20


def load_cube(recipe: Recipe, cube_id: str, mirror: Mirror | None = None) -> SourceCube:
    spec = recipe.source
    mirror = mirror or mirror_for(spec)
    ds = adapter_for(spec).load(mirror, spec, cube_id)
    drop = [v for v in recipe.variables.drop if v in ds.variables]
    if drop:
        ds = ds.drop_vars(drop)
    if ds.nbytes <= IN_MEMORY_BYTES:
        ds = ds.load()
    return describe(cube_id, ds, read_splits(mirror, spec).get(cube_id))


def cube_ids(recipe: Recipe, mirror: Mirror | None = None) -> list[str]:
    return select_ids(mirror or mirror_for(recipe.source), recipe.source)


def open_source(recipe: Recipe, progress: bool = True) -> Iterator[SourceCube]:
    """The recipe's cubes, loaded one at a time as the caller asks for them."""
    mirror = mirror_for(recipe.source, progress=progress)
    for cid in cube_ids(recipe, mirror):
        yield load_cube(recipe, cid, mirror)
