"""What the target really holds, against what its index claims.

An index is a claim. A shard deleted, truncated or rewritten on the target, an index edited
to claim a cube that no shard holds, a card or ``.tacocat`` that went missing: a run that
trusted the index would report "unchanged" for ever. Before planning, every shard the index
names is checked against the target's listing (present, same size), its SHA-256 (from the
listing where the target states it, else read and cached on the file's size and time), and
the sample ids its zip directory holds (cached by SHA-256). A shard that fails any check is
dropped from the index, so its cubes are encoded and published again; the metadata files
the index recorded (card, ``.tacocat``, report, verification records) are checked the same
way, and a run with anything to repair commits even when no cube changed.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import CubecastError, PublishError
from pipeline.publish.index import INDEX_FILE, FileEntry, PublishedIndex, ShardEntry
from pipeline.publish.remote import Remote, RemoteFile
from pipeline.taco.rangefile import RangeFile

VERIFY_DIR = "verification"
REQUIRED = ("README.md", ".tacocat/COLLECTION.json")  # what every committed dataset has


@dataclass
class Repair:
    index: PublishedIndex  # the index less what the target does not hold
    broken: dict[str, str] = field(default_factory=dict)  # shard -> what is wrong
    metadata: dict[str, str] = field(default_factory=dict)  # file -> what is wrong
    records: set[int] = field(default_factory=set)  # batches whose record is missing

    @property
    def needed(self) -> bool:
        return bool(self.broken or self.metadata or self.records)

    def lines(self) -> list[str]:
        out = [f"shard {n}: {why}; its cubes are published again" for n, why in self.broken.items()]
        out += [f"{rel}: {why}; written again" for rel, why in self.metadata.items()]
        out += [
            f"verification record of batch {b} is missing; its cubes are verified again"
            for b in sorted(self.records)
        ]
        return out


class _Cache:
    """A small JSON map in the work folder (SHA-256 by file stamp, sample ids by SHA-256)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text())
            self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.data = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps(self.data, sort_keys=True))
        part.replace(self.path)


class RemoteRangeFile(RangeFile):
    """A shard on a publish target, read through the target's ranged reads."""

    def __init__(self, remote: Remote, rel: str, size: int) -> None:
        self.remote, self.rel, self.size, self.pos = remote, rel, size, 0

    def read_range(self, start: int, end: int) -> bytes:
        return self.remote.read_range(self.rel, start, end)


def shard_sample_ids(remote: Remote, rel: str, size: int) -> list[str]:
    """The sample ids a published shard's zip directory holds (a few range reads)."""
    from pipeline.taco.read import sample_ids

    raw = io.BufferedReader(RemoteRangeFile(remote, rel, size), 1 << 16)
    try:
        with zipfile.ZipFile(raw) as archive:  # type: ignore[arg-type]
            return sample_ids(archive)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise PublishError(f"{remote.target}/{rel}: not a readable shard ({exc})") from None


def _sha256(remote: Remote, rel: str, entry: RemoteFile, shas: _Cache) -> str | None:
    """The file's SHA-256: stated by the listing, cached on its stamp, or read."""
    if entry.sha256 is not None:
        return entry.sha256
    stamp = remote.stamp(rel)
    hit = shas.data.get(rel)
    if stamp is not None and isinstance(hit, list) and len(hit) == 2 and hit[0] == stamp:
        return str(hit[1])
    digest = remote.file_sha256(rel, entry)
    if digest is not None and stamp is not None:
        shas.data[rel] = [stamp, digest]
    return digest


def _file_problem(remote: Remote, rel: str, want: FileEntry, have: RemoteFile | None) -> str:
    if have is None:
        return "missing on the target"
    if have.size is not None and have.size != want.size:
        return f"{have.size:,} bytes on the target, {want.size:,} committed"
    if have.blob is not None:
        return "" if have.blob == want.blob else "changed on the target"
    digest = have.sha256 or remote.file_sha256(rel, have)
    return "" if digest == want.sha256 else "changed on the target"


def _shard_problem(
    remote: Remote,
    name: str,
    entry: ShardEntry,
    have: RemoteFile | None,
    shas: _Cache,
    ids_cache: _Cache,
) -> str:
    """What is wrong with a shard the index names ('' if nothing)."""
    if have is None:
        return "missing on the target"
    if have.size is not None and have.size != entry.size:
        return f"{have.size:,} bytes on the target, {entry.size:,} in the index"
    try:
        digest = _sha256(remote, name, have, shas)
        if digest is None:
            return "missing on the target"
        if digest != entry.sha256:
            return "its bytes differ from the index's SHA-256"
        ids = ids_cache.data.get(digest)
        if not isinstance(ids, list):
            ids = shard_sample_ids(remote, name, entry.size)
            ids_cache.data[digest] = ids
        if sorted(ids) != sorted(entry.cubes):
            return "it does not hold the cubes the index lists"
    except CubecastError as exc:
        return str(exc).split(": ", 1)[-1][:160]
    return ""


def reconcile(
    remote: Remote,
    index: PublishedIndex,
    listing: dict[str, RemoteFile],
    state: Path,
    records: set[int] | None = None,
) -> Repair:
    """Check every shard and metadata file ``index`` names against ``listing``; ``records``
    are the batches whose verification record this work folder keeps."""
    shas = _Cache(state / "shard-sha256.json")
    ids_cache = _Cache(state / "shard-ids.json")
    repaired = PublishedIndex.parse(index.to_bytes(), "index")  # a copy
    repair = Repair(repaired)
    for name, entry in sorted(index.shards.items()):
        problem = _shard_problem(remote, name, entry, listing.get(name), shas, ids_cache)
        if problem:
            repair.broken[name] = problem
            repaired.shards.pop(name, None)
            for cid in entry.cubes:
                repaired.cubes.pop(cid, None)
    shas.save()
    ids_cache.save()
    wanted = dict(index.files)
    if not wanted and index.cubes:  # an index written before files were recorded
        for rel in REQUIRED:
            if rel not in listing:
                repair.metadata[rel] = "missing on the target"
    kept = records or set()
    for b in sorted({e.batch for e in repaired.cubes.values()}):
        rel = f"{VERIFY_DIR}/batch-{b:05d}.json"
        if rel not in listing and b not in kept:
            repair.records.add(b)
        wanted.pop(rel, None)
    for rel, want in sorted(wanted.items()):
        if rel.startswith(f"{VERIFY_DIR}/") or rel == INDEX_FILE:
            continue
        problem = _file_problem(remote, rel, want, listing.get(rel))
        if problem:
            repair.metadata[rel] = problem
    return repair
