"""What a published dataset holds, kept in the dataset itself: ``cubecast-index.json``.

Every incremental commit writes it together with the shards it describes, so the repo's own
index is the one record of what is published: cube id -> source fingerprint, settings hash,
split, shard and batch, and shard -> its cubes, size and SHA-256. A run on any machine reads
it first and encodes only what it does not hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.confine import safe_name, safe_relpath
from pipeline.errors import PublishError
from pipeline.publish.fingerprint import SourceRecord
from pipeline.recipe import Recipe

INDEX_FILE = "cubecast-index.json"
FORMAT = "cubecast-index"
VERSION = 1
MAX_INDEX_BYTES = 128 << 20  # about 300,000 cubes; a larger file is refused before parsing
MAX_BATCH = 10**8  # batch numbers name shards and records: bounded, never negative
MAX_DEPTH = 16  # the index nests 5 deep; deeper is crafted (json recursion)


def _shard_name(name: str, where: str) -> str:
    """A shard name from an index: a plain ``.tacozip`` file name (it is joined to the
    target's root and to the work folder)."""
    clean = safe_name(str(name), f"{where}: shard name")
    if not clean.endswith(".tacozip"):
        raise ValueError(f"shard name {name!r} does not end in .tacozip")
    return clean


def _depth(text: bytes) -> int:
    """How deep ``text``'s JSON nests, counted without parsing (strings skipped)."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                break
        elif ch in (0x5D, 0x7D):
            depth -= 1
    return deepest


@dataclass(frozen=True)
class FileEntry:
    """A metadata file a commit wrote (card, ``.tacocat``, report, verification records):
    its size, SHA-256 and git blob id, so a later run can tell it is still what was
    committed from a listing that states either."""

    size: int
    sha256: str
    blob: str

    @classmethod
    def of(cls, data: bytes) -> FileEntry:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return cls(len(data), hashlib.sha256(data).hexdigest(), blob)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "blob": self.blob}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        return cls(int(d["size"]), str(d["sha256"]), str(d["blob"]))


def settings_of(recipe: Recipe) -> dict[str, Any]:
    """Every setting that changes a published sample: how the adapter reads the source,
    which variables go where, the codec settings, the dataset id and the cube format. Not
    the source's location (the same files on another mirror are the same cubes)."""
    from pipeline.codec.manifest import FORMAT_VERSION

    source = recipe.source
    return {
        "adapter": source.adapter,
        "pattern": getattr(source, "pattern", None),
        "variables": recipe.variables.model_dump(mode="json"),
        "codec": recipe.codec.model_dump(mode="json"),
        "dataset": recipe.taco.id,
        "format": FORMAT_VERSION,
    }


def settings_hash(recipe: Recipe) -> str:
    text = json.dumps(settings_of(recipe), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CubeEntry:
    source: str  # fingerprint of the files the cube was made from
    settings: str  # settings_hash of the recipe that encoded it
    split: str
    shard: str
    batch: int
    record: SourceRecord = field(default_factory=SourceRecord)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "settings": self.settings,
            "split": self.split,
            "shard": self.shard,
            "batch": self.batch,
            **self.record.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CubeEntry:
        return cls(
            str(d["source"]),
            str(d["settings"]),
            str(d.get("split") or ""),
            str(d["shard"]),
            int(d["batch"]),
            SourceRecord.from_dict(d),
        )


@dataclass
class ShardEntry:
    split: str
    size: int
    sha256: str
    batch: int
    cubes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "size": self.size,
            "sha256": self.sha256,
            "batch": self.batch,
            "cubes": self.cubes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardEntry:
        cubes = d["cubes"]
        if not isinstance(cubes, list) or not all(isinstance(c, str) for c in cubes):
            raise ValueError("shard cubes must be a list of ids")
        return cls(
            str(d.get("split") or ""), int(d["size"]), str(d["sha256"]), int(d["batch"]), cubes
        )


@dataclass
class PublishedIndex:
    dataset: str
    batch: int = 0  # the last committed batch
    cubes: dict[str, CubeEntry] = field(default_factory=dict)
    shards: dict[str, ShardEntry] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash -> settings
    files: dict[str, FileEntry] = field(default_factory=dict)  # metadata files committed

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "dataset": self.dataset,
            "batch": self.batch,
            "settings": self.settings,
            "shards": {k: v.to_dict() for k, v in sorted(self.shards.items())},
            "cubes": {k: v.to_dict() for k, v in sorted(self.cubes.items())},
            "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
        }
        return (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def parse(cls, raw: bytes, where: str) -> PublishedIndex:
        """The index in ``raw``; anything else is refused in one line naming ``where``."""
        if len(raw) > MAX_INDEX_BYTES:
            raise PublishError(f"{where}: larger than {MAX_INDEX_BYTES >> 20} MiB; not an index")
        if _depth(raw) > MAX_DEPTH:
            raise PublishError(f"{where}: nests deeper than {MAX_DEPTH} levels; not an index")
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            if int(data.get("version", 0)) > VERSION:
                raise PublishError(
                    f"{where}: index version {data['version']} is newer than this cubecast "
                    f"reads ({VERSION}); upgrade cubecast"
                )
            index = cls(
                dataset=str(data["dataset"]),
                batch=int(data["batch"]),
                cubes={
                    safe_name(str(k), f"{where}: cube id"): CubeEntry.from_dict(v)
                    for k, v in data["cubes"].items()
                },
                shards={
                    _shard_name(k, where): ShardEntry.from_dict(v)
                    for k, v in data["shards"].items()
                },
                settings=dict(data.get("settings") or {}),
                files={
                    safe_relpath(str(k), f"{where}: file name"): FileEntry.from_dict(v)
                    for k, v in (data.get("files") or {}).items()
                },
            )
            batches = [index.batch] + [e.batch for e in index.cubes.values()]
            for e in index.cubes.values():
                _shard_name(e.shard, where)
            for sh in index.shards.values():
                batches.append(sh.batch)
                if not 0 <= sh.size < 1 << 50 or len(sh.sha256) != 64:
                    raise ValueError("shard size or sha256 out of range")
            if not all(0 <= b <= MAX_BATCH for b in batches):
                raise ValueError(f"batch numbers must lie in 0..{MAX_BATCH}")
        except PublishError:
            raise
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise PublishError(
                f"{where}: not a cubecast index ({exc.__class__.__name__}: {str(exc)[:120]})"
            ) from None
        index.check(where)
        return index

    def check(self, where: str) -> None:
        """Every cube in the shard its entry names, every shard's cubes indexed, once."""
        seen: dict[str, str] = {}
        for name, shard in self.shards.items():
            for cid in shard.cubes:
                if cid in seen:
                    raise PublishError(f"{where}: cube {cid!r} is in {seen[cid]} and in {name}")
                seen[cid] = name
        for cid, entry in self.cubes.items():
            if seen.get(cid) != entry.shard:
                raise PublishError(f"{where}: cube {cid!r} names shard {entry.shard}, not its own")
        extra = sorted(set(seen) - set(self.cubes))
        if extra:
            raise PublishError(f"{where}: shards hold cubes the index does not list: {extra[:3]}")

    def shard_order(self) -> list[str]:
        """Shards in the order they were published (batch, then name)."""
        return sorted(self.shards, key=lambda n: (self.shards[n].batch, n))
