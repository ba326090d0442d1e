"""What one incremental run does: the plan (which cubes to encode, from the target's index
and the source's fingerprints), the disk budget, the default encoder, and the result."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.build import select_cubes, stage_cube
from pipeline.publish.batch import Batch, Fault
from pipeline.publish.commit import Committed
from pipeline.publish.disk import used_bytes
from pipeline.publish.fingerprint import DigestCache, RecordingMirror, source_fingerprint
from pipeline.publish.index import PublishedIndex, settings_hash
from pipeline.recipe import Recipe
from pipeline.sources import Mirror, read_splits
from pipeline.taco.staged import StagedSample

EncodeMany = Callable[[Recipe, list[str], Path], list[tuple[StagedSample, bool]]]


@dataclass
class IncrementalResult:
    target: str
    selected: int = 0
    unchanged: int = 0
    encoded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)  # staged by a stopped run: not re-encoded
    carried: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what the target lacked, put right
    removed: list[str] = field(default_factory=list)  # pruned: no longer selected
    kept: list[str] = field(default_factory=list)  # no longer selected, kept (no prune)
    commits: list[Committed] = field(default_factory=list)
    dry_run: bool = False
    peak_disk: int = 0
    seconds: float = 0.0

    @property
    def bytes_uploaded(self) -> int:
        return sum(c.bytes for c in self.commits)

    @property
    def uploaded(self) -> list[str]:
        return [f for c in self.commits for f in c.files]

    @property
    def cubes(self) -> list[dict[str, Any]]:
        """The quality row of every cube this run verified and committed."""
        return [row for c in self.commits for row in c.rows]

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"{self.target}: would encode {len(self.encoded)} cubes "
                f"({self.unchanged} unchanged of {self.selected} selected)"
                + (f"; would repair: {'; '.join(self.repaired)}" if self.repaired else "")
            )
        repaired = f"; repaired: {'; '.join(self.repaired)}" if self.repaired else ""
        return (
            f"{self.target}: {len(self.encoded)} cubes encoded, {len(self.reused)} reused "
            f"from a stopped run, {len(self.carried)} carried, {self.unchanged} unchanged; "
            f"{len(self.commits)} commit(s), {self.bytes_uploaded:,} bytes uploaded; peak "
            f"disk {self.peak_disk / 1e6:.1f} MB; {self.seconds:.0f} s{repaired}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "bytes_uploaded": self.bytes_uploaded,
            "uploaded": self.uploaded,
            "cubes": self.cubes,
        }


@dataclass
class Options:
    max_disk: int | None = None
    batch_cubes: int = 100
    workers: int = 1
    prune: bool = False
    private: bool = False
    dry_run: bool = False


@dataclass
class Plan:
    todo: list[str]  # changed cubes first (grouped by their old shard), then new ones
    changed: set[str]
    unchanged: list[str]
    gone: list[str]  # published, no longer selected


def plan_run(
    recipe: Recipe,
    mirror: Mirror,
    index: PublishedIndex,
    digests: DigestCache,
    force: set[str] | None = None,
) -> Plan:
    """Which selected cubes need encoding, from the index and the source's fingerprints;
    published cubes in ``force`` are encoded again whatever their fingerprint says."""
    ids, _ = select_cubes(recipe, mirror)
    splits = read_splits(mirror, recipe.source)
    h = settings_hash(recipe)
    new, changed, unchanged = [], [], []
    for cid in ids:
        e = index.cubes.get(cid)
        if e is None:
            new.append(cid)
        elif (
            cid not in (force or set())
            and e.settings == h
            and e.split == (splits.get(cid) or "")
            and source_fingerprint(mirror, e.record, digests) == e.source
        ):
            unchanged.append(cid)
        else:
            changed.append(cid)
    order = {name: i for i, name in enumerate(index.shard_order())}
    changed.sort(key=lambda c: order.get(index.cubes[c].shard, -1))
    gone = sorted(set(index.cubes) - set(ids))
    return Plan(changed + new, set(changed), unchanged, gone)


class Budget:
    """How many more cubes fit in the work folder under ``max_disk``: the largest footprint
    seen per cube (its downloads, the staged cube and its copy in a shard) sets the pace;
    until one cube is measured, cubes go one at a time. What it learns is kept in the work
    folder (``state/budget.json``) for the next run."""

    def __init__(self, root: Path, limit: int | None, saved: Path | None = None) -> None:
        self.root, self.limit, self.saved = root, limit, saved
        self.per_cube = 0
        self.meta = 256 << 10  # a commit's card, report, .tacocat, index: learned per batch
        try:
            data = json.loads(saved.read_text()) if saved else {}
            self.per_cube, self.meta = int(data["per_cube"]), int(data["meta"])
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def save(self) -> None:
        if self.saved is not None:
            self.saved.parent.mkdir(parents=True, exist_ok=True)
            self.saved.write_text(json.dumps({"per_cube": self.per_cube, "meta": self.meta}))

    def free(self, batch: Batch) -> int:
        """Bytes left for more cubes: the cap, less what the folder holds, the open batch's
        shards to come, one commit's metadata, and 5% of the cap for what a run cannot see
        coming (the mirror's file index fetched at start, a stopped run's leftovers)."""
        if self.limit is None:
            return 1 << 62
        reserve = self.meta + self.limit // 20
        return self.limit - used_bytes(self.root) - batch.encoded_bytes - reserve

    def room(self, batch: Batch) -> int:
        if self.limit is None:
            return 1 << 30
        free = self.free(batch)
        if free <= 0:
            return 0
        return 1 if self.per_cube == 0 else int(free // self.per_cube)

    def learn(self, staged: StagedSample, raw: list[Path]) -> None:
        size = sum(used_bytes(p) if p.is_dir() else p.stat().st_size for p in raw if p.exists())
        self.per_cube = max(self.per_cube, size + 2 * used_bytes(staged.folder))
        self.save()

    def learn_meta(self, nbytes: int) -> None:
        """A commit wrote ``nbytes`` besides its shards; the next may write a little more."""
        self.meta = max(self.meta, nbytes * 3 // 2)
        self.save()


def with_cache(recipe: Recipe, raw: Path) -> Recipe:
    """The recipe with downloads cached in the work folder (where they are counted and
    deleted batch by batch) instead of ``~/.cache/cubecast``."""
    spec = recipe.source.model_copy(update={"cache": str(raw)})
    return recipe.model_copy(update={"source": spec})


def serial_encoder(mirror: Mirror, fault: Fault | None = None) -> EncodeMany:
    """Encode cubes one after the other in this process (``fault`` hears of each download
    and each finished encode: tests stop a run there)."""

    def encode(recipe: Recipe, ids: list[str], out: Path) -> list[tuple[StagedSample, bool]]:
        done = []
        for cid in ids:
            m: Mirror = mirror
            if fault is not None:
                m = RecordingMirror(mirror, on_fetch=lambda rel: fault("download", rel))  # type: ignore[assignment]
            staged, encoded = stage_cube(recipe, cid, out, m)
            if encoded and fault is not None:
                fault("encode", cid)
            done.append((staged, encoded))
        return done

    return encode
