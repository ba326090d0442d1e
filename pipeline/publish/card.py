"""The dataset card: README.md with HuggingFace YAML front matter and a body that tells a
user what the data is, how to load it, how it was encoded and how well it verified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.publish.report import band_table, sample_table
from pipeline.publish.verify import Verification
from pipeline.recipe import Recipe
from pipeline.recipe_tables import CodecSpec

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


# The install that gives `open_sample` today. `pip install cubecast` becomes true with the
# first PyPI release (.github/workflows/release.yml); until then the card says both.
INSTALL_RELEASED = "pip install cubecast"
INSTALL_FROM_SOURCE = "pip install .            # in a clone of the cubecast repository"


def shards_by_split(folder: str | Path, v: Verification, shard_names: list[str]) -> dict:
    """Split name -> shard file names, read from the samples each shard holds.

    Samples without a split count as ``train`` (the hub needs a split name); a shard that
    mixes splits is listed under each of them.
    """
    from pipeline.taco.read import _open_archive, sample_ids

    splits: dict[str, list[str]] = {}
    for name in sorted(shard_names):
        archive, fh = _open_archive(Path(folder) / name)
        with archive, fh:
            ids = sample_ids(archive)
        for sid in ids:
            split = str(v.samples.get(sid, {}).get("split") or "train")
            if name not in splits.setdefault(split, []):
                splits[split].append(name)
    order = {"train": 0, "validation": 1, "val": 1, "test": 2}
    return dict(sorted(splits.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


def front_matter(recipe: Recipe, n_samples: int, splits: dict[str, list[str]]) -> dict:
    t = recipe.taco
    tasks = sorted({_TASKS.get(x, "other") for x in t.tasks}) or ["other"]
    return {
        "license": t.licenses[0] if len(t.licenses) == 1 else "other",
        "pretty_name": t.title,
        "tags": sorted({"earth-observation", "taco", "cubecast", *t.keywords}),
        "task_categories": tasks,
        "size_categories": [size_category(n_samples)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": names} for s, names in splits.items()],
            }
        ],
    }


def stream_rows(v: Verification) -> list[str]:
    """One row per stream name with the settings of every sample, not just the first one:
    a PSNR target gives each sample its own CRF."""
    per_stream: dict[str, dict[str, Any]] = {}
    for sid, meta in v.samples.items():
        codec = meta.get("codec") or {}
        streams = json.loads(codec) if isinstance(codec, str) else codec
        for name, s in streams.items():
            row = per_stream.setdefault(
                name, {"codec": set(), "pix_fmt": set(), "engine": set(), "bands": [], "crf": {}}
            )
            row["codec"].add(str(s.get("codec")))
            row["pix_fmt"].add(str(s.get("pix_fmt")))
            if s.get("engine") and s.get("codec") != "zstd-bitpack":  # masks: no video engine
                row["engine"].add(str(s["engine"]))
            row["bands"] = row["bands"] or list(s.get("bands", []))
            lossless = s.get("lossless") or s.get("crf") is None
            row["crf"][sid] = "lossless" if lossless else f"{float(s['crf']):g}"
    lines = [
        "| stream | codec | engine | pix_fmt | bands | CRF per sample |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in per_stream.items():
        crfs = row["crf"]
        values = sorted(set(crfs.values()))
        if len(values) == 1:
            crf = f"{values[0]} (all {len(crfs)})"
        elif len(crfs) <= 6:
            crf = ", ".join(f"{sid}: {c}" for sid, c in crfs.items())
        else:
            nums = sorted(float(c) for c in values if c != "lossless")
            crf = f"{nums[0]:g} to {nums[-1]:g} over {len(crfs)} samples"
            if "lossless" in values:
                crf += " (some lossless)"
        lines.append(
            f"| {name} | {', '.join(sorted(row['codec']))} | "
            f"{', '.join(sorted(row['engine'])) or '-'} | {', '.join(sorted(row['pix_fmt']))} | "
            f"{', '.join(row['bands'])} | {crf} |"
        )
    return lines


def render_card(
    recipe: Recipe, v: Verification, shard_names: list[str], splits: dict | None = None
) -> str:
    """The card's text: front matter, what the data is, then how to load it, how it was
    encoded and how it verified."""
    splits = splits or {"train": sorted(shard_names)}
    meta = yaml.safe_dump(front_matter(recipe, len(v.samples), splits), sort_keys=False)
    sections = [
        f"---\n{meta.rstrip()}\n---",
        _about(recipe, v, shard_names, splits),
        _load_section(recipe, shard_names),
        _encoding_section(recipe, v),
        _verification_section(recipe, v),
    ]
    return "\n\n".join(sections) + "\n"


def _about(
    recipe: Recipe, v: Verification, shard_names: list[str], splits: dict[str, list[str]]
) -> str:
    """Title, description, licence and providers, and which shards hold each split."""
    t = recipe.taco
    split_lines = "\n".join(f"- `{s}`: {', '.join(names)}" for s, names in splits.items())
    return f"""# {t.title}

{t.description}

- Version: {t.version}
- Licence: {", ".join(t.licenses)}
- Providers: {", ".join(t.providers)}
- Samples: {len(v.samples)} cubes in {len(shard_names)} TACO shard(s), one set per split:

{split_lines}"""


def _load_section(recipe: Recipe, shard_names: list[str]) -> str:
    """How to read the shards straight from the hub, down to one band of one sample."""
    base = f"https://huggingface.co/datasets/{recipe.publish.repo_id}/resolve/main"
    first = sorted(shard_names)[0] if shard_names else f"{recipe.taco.id}.tacozip"
    first_band = recipe.codec.groups[0].bands[0] if recipe.codec.groups else "B04"
    return f"""## Load

The metadata (bbox, time, split, PSNR, bpppb) reads with `tacoreader` alone; decoding a
cube's video streams back into an `xarray.Dataset` needs the cubecast reader:

```bash
{INSTALL_RELEASED}   # once cubecast is released on PyPI
{INSTALL_FROM_SOURCE}, until then
```

```python
import tacoreader
from pipeline.taco.read import open_sample

url = "{base}/{first}"
ds = tacoreader.load(url)                      # or the list of all shards above
cube = open_sample(url, 0)                     # -> xarray.Dataset, first sample
one = open_sample(url, 0, variables=["{first_band}"])  # fetches only that stream
```

The format (sample layout, manifest schema, quantisation, masks) is documented in cubecast's
`docs/FORMAT.md`, for anyone writing their own decoder."""


def _rate(c: CodecSpec) -> str:
    """How the quantiser was chosen: a PSNR target per band group, or a fixed CRF."""
    if c.psnr is not None or any(g.psnr is not None for g in c.groups):
        targets = ", ".join(
            f"{g.name}: {g.psnr or c.psnr} dB" if (g.psnr or c.psnr) else f"{g.name}: CRF {c.crf:g}"
            for g in c.groups
        )
        return f"at the cheapest CRF meeting a PSNR target per band group ({targets or c.psnr})"
    return f"at a fixed CRF ({c.crf:g} unless a band group sets its own)"


def _encoding_section(recipe: Recipe, v: Verification) -> str:
    """The recipe's codec settings, then the ones each stream of each sample really used."""
    c = recipe.codec
    return f"""## Encoding

Continuous bands are video streams (codec {c.codec}: per band group the codec
- VVC at 10 bits or x265/AV1 at 12 bits - that met the target in the fewest bytes; preset
{c.preset}, keyframe every {c.keyint} frames) {_rate(c)}; bands whose
detail correlates are decorrelated first (a KLT per group, stored with the sample). Class
layers are lossless FFV1 and validity masks bit-packed zstd. Everything that is not a
(time, y, x) stack is stored losslessly. Every stream decodes with PyAV alone.

Settings actually used, per stream and sample:

{chr(10).join(stream_rows(v))}"""


def _verification_section(recipe: Recipe, v: Verification) -> str:
    """The threshold, the verdict and the per-sample and per-band tables."""
    verdict = "PASS" if v.passed else "FAIL"
    return f"""## Verification

Every sample was decoded from the published shards and compared with its source; the
threshold is {recipe.verify.psnr_min} dB per band (PSNR over valid pixels, range = max - min
of the original band), class layers and masks bit-exact. Verdict: **{verdict}**.

{sample_table(v)}

{band_table(v)}

See `REPORT.md` for plots."""


def write_card(recipe: Recipe, v: Verification, folder: str | Path) -> Path:
    folder = Path(folder)
    shards = sorted(p.name for p in folder.glob("*.tacozip"))
    splits = shards_by_split(folder, v, shards)
    path = folder / CARD
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(render_card(recipe, v, shards, splits))
    tmp.replace(path)
    return path
