"""Per-split sample tables, ``data/<split>.parquet``: one row per published cube in plain
columns (id, shard, time range, bounds, variables, sizes, quality).

``datasets.load_dataset`` and the hub's viewer cannot read ``.tacozip`` shards; pointed at
these tables by the card's ``configs`` they list the dataset, and a reader picks a row's
``shard`` and ``id`` to decode the cube with ``open_sample``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.confine import safe_name
from pipeline.errors import PublishError
from pipeline.publish.verify import Verification

TABLES_DIR = "data"
SPLIT_ORDER = {"train": 0, "validation": 1, "val": 1, "test": 2}
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("time_start", pa.string()),
        ("time_end", pa.string()),
        ("bbox_west", pa.float64()),
        ("bbox_south", pa.float64()),
        ("bbox_east", pa.float64()),
        ("bbox_north", pa.float64()),
        ("crs", pa.string()),
        ("shape", pa.string()),
        ("n_bands", pa.int64()),
        ("variables", pa.string()),
        ("psnr_min", pa.float64()),  # null: every band lossless
        ("bpppb", pa.float64()),
        ("ratio", pa.float64()),
        ("raw_bytes", pa.int64()),
        ("encoded_bytes", pa.int64()),
        ("passed", pa.bool_()),
        # read costs (pipeline.codec.readcost): the share of the sample's bytes its costliest
        # band reads alone, and the frames the worst 8-frame window decodes
        ("band_read_share", pa.float64()),
        ("window_frames", pa.int64()),
    ]
)


def split_of(row: dict[str, Any]) -> str:
    """A sample's split; none counts as ``train`` (the hub needs a split name)."""
    return str(row.get("split") or "train")


def hub_split(split: str) -> str:
    """The split's name as the hub accepts it (word characters and dots only)."""
    return re.sub(r"[^\w.]", "_", split).strip(".") or "train"


def table_path(split: str) -> str:
    """Where a split's table lies in the dataset (a relative POSIX path)."""
    return f"{TABLES_DIR}/{safe_name(hub_split(split), 'split name')}.parquet"


def ordered(splits: dict[str, Any]) -> dict[str, Any]:
    """train, validation, test, then the rest by name."""
    return dict(sorted(splits.items(), key=lambda kv: (SPLIT_ORDER.get(kv[0], 3), kv[0])))


def _number(value: Any, kind: type) -> Any:
    """A finite number as ``kind``, else null (NaN bounds, an infinite PSNR, a missing field)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return kind(x) if math.isfinite(x) else None


def _row(sid: str, meta: dict[str, Any], shard: str, passed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": sid, "split": split_of(meta), "shard": shard, "passed": passed}
    for f in SCHEMA:
        if f.name in out:
            continue
        value = meta.get(f.name)
        if pa.types.is_floating(f.type):
            out[f.name] = _number(value, float)
        elif pa.types.is_integer(f.type):
            out[f.name] = _number(value, int)
        else:
            out[f.name] = "" if value is None else str(value)
    return out


def sample_rows(v: Verification, shard_of: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Split -> one row per sample, sorted by id; ``shard_of`` names each sample's shard."""
    failed = {c.sample for c in v.checks if not c.passed}
    splits: dict[str, list[dict[str, Any]]] = {}
    for sid in sorted(v.samples):
        row = _row(sid, v.samples[sid], shard_of.get(sid, ""), sid not in failed)
        splits.setdefault(row["split"], []).append(row)
    return ordered(splits)


def write_sample_tables(
    folder: str | Path, v: Verification, shard_of: dict[str, str]
) -> dict[str, str]:
    """Write ``data/<split>.parquet`` for every split (each under a temporary name, then
    renamed); tables of splits the dataset no longer has are removed. Split -> path."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    written: dict[str, str] = {}
    for split, rows in sample_rows(v, shard_of).items():
        rel = table_path(split)
        if rel in written.values():
            raise PublishError(f"splits {split!r} and another both name the table {rel}")
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), part)
        part.replace(path)
        written[split] = rel
    for old in sorted((folder / TABLES_DIR).glob("*.parquet")):
        if f"{TABLES_DIR}/{old.name}" not in written.values():
            old.unlink()
    return written
