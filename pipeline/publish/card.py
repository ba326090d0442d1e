"""The dataset card: README.md with HuggingFace YAML front matter and a body that tells a
user what the data is (and, for a synthetic twin, that it is not the real dataset), how to
load it, how it was encoded and how well it verified.

The card's ``configs`` point at the per-split sample tables (:mod:`.sample_tables`), which
``datasets`` and the hub's viewer read; the ``.tacozip`` shards are described in the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.publish.card_load import load_section
from pipeline.publish.card_sections import encoding_section, stream_rows, verification_section
from pipeline.publish.sample_tables import hub_split, ordered, split_of, write_sample_tables
from pipeline.publish.verify import Verification
from pipeline.recipe import Recipe
from pipeline.sources.provenance import Synthetic

__all__ = ["CARD", "Published", "render_card", "stream_rows", "write_card"]

CARD = "README.md"
# recipe task names -> HuggingFace task categories
_TASKS = {
    "segmentation": "image-segmentation",
    "semantic-segmentation": "image-segmentation",
    "instance-segmentation": "image-segmentation",
    "panoptic-segmentation": "image-segmentation",
    "classification": "image-classification",
    "scene-classification": "image-classification",
    "regression": "time-series-forecasting",
    "detection": "object-detection",
    "object-detection": "object-detection",
    "super-resolution": "image-to-image",
}


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


@dataclass(frozen=True)
class Published:
    """What the card says beside the verification: which shard holds each sample (shards in
    publishing order), the sample tables, where the dataset is published (``None``: not
    known yet) and, for a synthetic twin, what generated it."""

    shard_of: dict[str, str]
    shards: list[str]
    tables: dict[str, str] = field(default_factory=dict)  # split -> data/<split>.parquet
    target: str | None = None
    synthetic: Synthetic | None = None

    def splits(self, v: Verification) -> dict[str, list[str]]:
        """Split -> its shards in publishing order (a shard mixing splits is under each)."""
        rank = {name: i for i, name in enumerate(self.shards)}
        out: dict[str, set[str]] = {}
        for sid, shard in self.shard_of.items():
            out.setdefault(split_of(v.samples.get(sid, {})), set()).add(shard)

        def key(name: str) -> tuple[int, str]:
            return rank.get(name, len(rank)), name

        return ordered({split: sorted(names, key=key) for split, names in out.items()})


def samples_in(folder: str | Path, shard_names: list[str]) -> dict[str, str]:
    """Sample id -> the shard of ``folder`` holding it, read from the shards' zip directories."""
    from pipeline.taco.read import _open_archive, sample_ids

    out: dict[str, str] = {}
    for name in shard_names:
        archive, fh = _open_archive(Path(folder) / name)
        with archive, fh:
            out.update({sid: name for sid in sample_ids(archive)})
    return out


def _licence(recipe: Recipe, synthetic: Synthetic | None) -> str:
    """The recipe's licence for real data; for a twin, the licence of the cubecast code that
    generated it (the twin holds nothing of the real dataset)."""
    if synthetic is None:
        lic = recipe.taco.licenses
        return lic[0] if len(lic) == 1 else "other"
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        name = (metadata("cubecast").get("License") or "").strip().lower()
    except PackageNotFoundError:
        name = ""
    return name if name in {"mit", "apache-2.0", "bsd-3-clause"} else "other"


def front_matter(recipe: Recipe, v: Verification, pub: Published) -> dict[str, Any]:
    t, syn = recipe.taco, pub.synthetic
    tasks = sorted({_TASKS.get(x, "other") for x in t.tasks}) or ["other"]
    tags = {"earth-observation", "taco", "cubecast"}
    # a twin carries no keyword of the real data (a "planetscope" tag would find it there)
    tags |= {"synthetic"} if syn else set(t.keywords)
    return {
        "license": _licence(recipe, syn),
        "pretty_name": f"{t.title}, synthetic twin" if syn else t.title,
        "tags": sorted(tags),
        "task_categories": tasks,
        "size_categories": [size_category(len(v.samples))],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": hub_split(s), "path": p} for s, p in pub.tables.items()],
            }
        ],
    }


def _extent(v: Verification) -> str:
    """The time range and cube shapes the samples really have."""
    rows = v.samples.values()
    starts = sorted(str(r["time_start"])[:10] for r in rows if r.get("time_start"))
    ends = sorted(str(r["time_end"])[:10] for r in rows if r.get("time_end"))
    shapes = sorted({str(r["shape"]) for r in rows if r.get("shape")})
    when = f"{starts[0]} to {ends[-1]}" if starts and ends else "no time axis"
    return f"{when}; cubes of {', '.join(shapes) or 'unknown'} (time x y x x) pixels"


def _splits(v: Verification, pub: Published) -> str:
    lines = []
    for split, shards in pub.splits(v).items():
        n = sum(1 for sid in pub.shard_of if split_of(v.samples.get(sid, {})) == split)
        table = f", table `{pub.tables[split]}`" if split in pub.tables else ""
        cubes = f"{n} cube" + ("" if n == 1 else "s")
        lines.append(f"- `{split}`: {cubes}{table}, shard(s) {', '.join(shards)}")
    return "\n".join(lines)


def _what(recipe: Recipe, syn: Synthetic | None) -> str:
    """Synthetic data says so, by generator and seed; real data names its source."""
    t = recipe.taco
    if syn is None:
        sources = [p for p in t.providers if p.lower() != "cubecast"] or list(t.providers)
        return f"""{t.description}

- Source data: {", ".join(sources)}; licence {", ".join(t.licenses)}
- Encoded, verified and published with cubecast"""
    args = ", ".join(f"{k}={v}" for k, v in sorted(syn.params.items()))
    return f"""**Synthetic data: this is not {syn.imitates}.** Every cube was generated by
`{syn.generator}` (seed {syn.seed}{", " + args if args else ""}), a synthetic twin
that imitates the file layout, data types and attributes of {syn.imitates}, its content
drawn from seeded noise. It holds no imagery, labels or measurements of the real dataset;
it exists to test and demonstrate cubecast's encoding, verification and publishing.

- Generated by: `{syn.generator}`, seed {syn.seed}
- Imitates: {syn.imitates} (cubecast recipe `{recipe.name}`)
- Licence: `{_licence(recipe, syn)}`, the licence of the cubecast code that generated it"""


def _about(recipe: Recipe, v: Verification, pub: Published) -> str:
    """Title, what the data is, its extent, and what each split holds."""
    t, syn = recipe.taco, pub.synthetic
    title = f"{t.title}: synthetic twin" if syn else t.title
    return f"""# {title}

{_what(recipe, syn)}
- Version: {t.version}
- Extent: {_extent(v)}
- Samples: {len(v.samples)} cubes in {len(pub.shards)} TACO shard(s); per split:

{_splits(v, pub)}"""


def render_card(recipe: Recipe, v: Verification, pub: Published) -> str:
    """The card's text: front matter, what the data is, then how to load it, how it was
    encoded and how it verified."""
    meta = yaml.safe_dump(front_matter(recipe, v, pub), sort_keys=False)
    splits = list(pub.splits(v).values())  # the example opens a shard of the first split
    first = splits[0][0] if splits else f"{recipe.taco.id}.tacozip"
    held = sorted(sid for sid, shard in pub.shard_of.items() if shard == first)
    band = recipe.codec.groups[0].bands[0] if recipe.codec.groups else "B04"
    sections = [
        f"---\n{meta.rstrip()}\n---",
        _about(recipe, v, pub),
        load_section(pub.target, first, held[0] if held else "SAMPLE_ID", band),
        encoding_section(recipe, v),
        verification_section(recipe, v),
    ]
    return "\n\n".join(sections) + "\n"


def write_card(
    recipe: Recipe,
    v: Verification,
    folder: str | Path,
    *,
    shard_of: dict[str, str] | None = None,
    shards: list[str] | None = None,
    target: str | None = None,
    synthetic: Synthetic | None = None,
) -> Path:
    """Write the sample tables, then the card, into ``folder`` (each under a temporary name,
    renamed). ``shards`` default to the folder's, and ``shard_of`` to what they hold."""
    folder = Path(folder)
    shards = sorted(p.name for p in folder.glob("*.tacozip")) if shards is None else shards
    shard_of = samples_in(folder, shards) if shard_of is None else shard_of
    tables = write_sample_tables(folder, v, shard_of)
    pub = Published(shard_of, shards, tables, target, synthetic)
    path = folder / CARD
    part = path.with_name(path.name + ".part")
    part.write_text(render_card(recipe, v, pub))
    part.replace(path)
    return path
