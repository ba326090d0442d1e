"""The dataset card: README.md with HuggingFace YAML front matter and a body that tells a
user what the data is, how to load it, how it was encoded and how well it verified."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.recipe import Recipe
from pipeline.report import band_table, codec_summary, sample_table
from pipeline.verify import Verification

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


def front_matter(recipe: Recipe, n_samples: int, shard_names: list[str]) -> dict:
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
                "data_files": [{"split": "train", "path": sorted(shard_names)}],
            }
        ],
    }


def render_card(recipe: Recipe, v: Verification, shard_names: list[str]) -> str:
    t = recipe.taco
    repo = recipe.publish.repo_id
    first = sorted(shard_names)[0] if shard_names else f"{t.id}.tacozip"
    codec_rows = ["| stream | codec | CRF | pix_fmt | bands |", "|---|---|---|---|---|"]
    for name, s in codec_summary(v).items():
        codec_rows.append(
            f"| {name} | {s.get('codec')} | {s.get('crf') if s.get('crf') is not None else '-'} "
            f"| {s.get('pix_fmt')} | {', '.join(s.get('bands', []))} |"
        )
    targets = ", ".join(f"{g.name}: {g.psnr or recipe.codec.psnr} dB" for g in recipe.codec.groups)
    first_band = recipe.codec.groups[0].bands[0] if recipe.codec.groups else "B04"
    verdict = "PASS" if v.passed else "FAIL"
    meta = yaml.safe_dump(front_matter(recipe, len(v.samples), shard_names), sort_keys=False)
    body = f"""---
{meta.rstrip()}
---

# {t.title}

{t.description}

- Version: {t.version}
- Licence: {", ".join(t.licenses)}
- Providers: {", ".join(t.providers)}
- Samples: {len(v.samples)} cubes in {len(shard_names)} TACO shard(s)

## Load

```python
import tacoreader
from pipeline import open_sample   # pip install cubecast

url = "https://huggingface.co/datasets/{repo}/resolve/main/{first}"
ds = tacoreader.load(url)
cube = open_sample(url, 0)                     # -> xarray.Dataset, first sample
one = open_sample(url, 0, variables=["{first_band}"])  # fetches only that stream
```

## Encoding

Continuous bands are 12-bit x265 video streams (preset {recipe.codec.preset}, keyframe every
{recipe.codec.keyint} frames) at the cheapest CRF meeting a PSNR target per band group
({targets or f"{recipe.codec.psnr} dB"}); class layers are lossless FFV1 and validity masks
bit-packed zstd. Everything that is not a (time, y, x) stack is stored losslessly.

{chr(10).join(codec_rows)}

## Verification

Every sample was decoded from the published shards and compared with its source; the
threshold is {recipe.verify.psnr_min} dB per band (PSNR over valid pixels, range = max - min
of the original band), class layers and masks bit-exact. Verdict: **{verdict}**.

{sample_table(v)}

{band_table(v)}

See `REPORT.md` for plots.
"""
    return body


def write_card(recipe: Recipe, v: Verification, folder: str | Path) -> Path:
    folder = Path(folder)
    shards = sorted(p.name for p in folder.glob("*.tacozip"))
    path = folder / CARD
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(render_card(recipe, v, shards))
    tmp.replace(path)
    return path
