"""The card's "Load" section: how to install the reader, and how to read the sample tables
and the shards from where the dataset really is (the hub, a folder, a URL)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

from pipeline.publish.hub import HF_TARGET
from pipeline.publish.sample_tables import TABLES_DIR
from pipeline.sources.hub_auth import hub_endpoint

DISTRIBUTION = "cubecast"


def project_url(label: str) -> str | None:
    """A ``Project-URL`` of the installed cubecast distribution (``Repository``, ...)."""
    try:
        entries = metadata(DISTRIBUTION).get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    for entry in entries:
        name, _, url = entry.partition(",")
        if name.strip().lower() == label.lower() and url.strip():
            return url.strip()
    return None


def install_line() -> str:
    """The install that gives ``open_sample``: cubecast has no PyPI release yet, so the
    repository its own metadata names, as a pip direct reference."""
    repo = project_url("Repository")
    if repo is None:  # cubecast run from a tree that is not installed: no URL to claim
        return "pip install .   # in a clone of the cubecast repository"
    return f'pip install "cubecast @ git+{repo}"'


def shard_url(target: str | None, name: str) -> str:
    """Where a reader opens shard ``name``: its hub URL, its path in a published folder, its
    fsspec URL; ``None`` (not published yet) gives the path inside the dataset folder."""
    if target is None:
        return name
    m = HF_TARGET.match(target)
    if m:
        return f"{hub_endpoint()}/datasets/{m['repo']}/resolve/main/{name}"
    if "://" in target:
        return f"{target.rstrip('/')}/{name}"
    return str(Path(target) / name)


def dataset_location(target: str | None) -> str:
    """What ``datasets.load_dataset`` is given: the repo id on the hub, else the folder."""
    if target is None:
        return "path/to/this/folder"
    m = HF_TARGET.match(target)
    return m["repo"] if m else target.rstrip("/")


def load_section(target: str | None, shard: str, sample: str, band: str) -> str:
    """Reading the sample tables with ``datasets``, then one cube of ``shard`` with cubecast."""
    where = "this folder's" if target is None else "the"
    docs = project_url("Documentation")
    docs = f" ({docs})" if docs else ""
    note = ""
    if target is None:
        note = "\n# paths are relative to the dataset folder (give its location or URL instead)"
    return f"""## Load

### The sample table

`{TABLES_DIR}/<split>.parquet` lists every cube, one row per sample: `id`, `split`, `shard`
(the `.tacozip` file holding it), `time_start`/`time_end`, the EPSG:4326 bounds
(`bbox_west` ... `bbox_north`) and native `crs`, `shape`, `variables`, `raw_bytes`,
`encoded_bytes`, `psnr_min`, `bpppb`, `ratio` and `passed`. The card's `configs` point at
these tables, so `datasets` and the hub's viewer read them:

```python
from datasets import load_dataset

table = load_dataset("{dataset_location(target)}")  # one split per table
row = table["train"][0]                  # row["shard"] and row["id"] locate the cube
```

### The cubes

The cubes themselves are TACO shards (`*.tacozip`, listed per split above; `.tacocat/`
consolidates their metadata). Their metadata reads with `tacoreader` alone; decoding a
cube's video streams back into an `xarray.Dataset` needs the cubecast reader. cubecast has
no release on PyPI yet, so install it from its repository:

```bash
{install_line()}
```

```python
import tacoreader
from cubecast import open_sample

url = "{shard_url(target, shard)}"{note}
ds = tacoreader.load(url)                # {where} shards: metadata only
cube = open_sample(url, "{sample}")      # -> xarray.Dataset
one = open_sample(url, "{sample}", variables=["{band}"])  # fetches only that stream
```

The format (sample layout, manifest schema, quantisation, masks) is documented in cubecast's
`docs/FORMAT.md`{docs}, for anyone writing their own decoder."""
