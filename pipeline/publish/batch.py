"""One batch of an incremental publish, from staged cubes to one commit on the target.

A batch packs its cubes (newly encoded ones, and cubes carried out of shards it replaces)
into new shards, verifies the new cubes from those shards against their sources, and
commits the shards together with everything that describes the whole dataset: the index
(``cubecast-index.json``), ``.tacocat/``, the card, the report and the batch's own
verification record (``verification/batch-NNNNN.json``). Then its local files go: raw
downloads, staged cubes, shards. Kill it anywhere before the commit and nothing is
visible; after the commit, the next run finds the cubes in the index and tidies up.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.build import read_mark
from pipeline.codec.encoded import file_sha256
from pipeline.codec.metrics import compare_encoded
from pipeline.confine import confined, safe_name
from pipeline.errors import PublishError, VerificationError
from pipeline.publish.catalog import stub_from_remote, stub_from_shard, stub_ok
from pipeline.publish.fingerprint import DigestCache, SourceRecord, source_fingerprint
from pipeline.publish.index import (
    CubeEntry,
    PublishedIndex,
    ShardEntry,
    settings_hash,
    settings_of,
)
from pipeline.publish.remote import Remote, RemoteFile
from pipeline.publish.verify import Verification, check_bands, max_error_bounds
from pipeline.recipe import Recipe
from pipeline.sources import Mirror, load_cube
from pipeline.taco.pack import StagedSample, split_bytes, split_groups, write_shard
from pipeline.taco.read import sample_encoded, sample_ids

Fault = Callable[[str, str], None]
VERIFY_DIR = "verification"
SAMPLE_PNG = "report/sample.png"


def _no_fault(step: str, detail: str) -> None:
    return None


@dataclass
class Context:
    """What every batch of one run shares."""

    recipe: Recipe
    remote: Remote
    index: PublishedIndex
    index_bytes: bytes | None  # the index as read or last committed: nobody else wrote since
    listing: dict[str, RemoteFile]  # the target's files
    mirror: Mirror
    digests: DigestCache
    work: Path  # OUT/.work
    fault: Fault = _no_fault
    log: Callable[[str], None] = print

    @property
    def raw(self) -> Path:
        return self.work / "raw"

    @property
    def stubs(self) -> Path:
        return self.work / "stubs"

    @property
    def state(self) -> Path:
        return self.work / "state"


@dataclass
class Batch:
    number: int
    folder: Path
    new: list[StagedSample] = field(default_factory=list)  # encoded (now or by a killed run)
    carried: list[StagedSample] = field(default_factory=list)  # out of shards it replaces
    drop_shards: set[str] = field(default_factory=set)
    drop_cubes: set[str] = field(default_factory=set)
    encoded_bytes: int = 0

    def __len__(self) -> int:
        return len(self.new) + len(self.carried)

    @property
    def samples(self) -> list[StagedSample]:
        return self.new + self.carried  # new first: the report's picture shows a new cube


def batch_file(number: int) -> str:
    return f"{VERIFY_DIR}/batch-{number:05d}.json"


def pack_batch(ctx: Context, batch: Batch) -> dict[str, list[str]]:
    """Write the batch's shards into its folder: ``<id>[_<split>]_bNNNNN[-k].tacozip``,
    one per split (more when a split passes the recipe's split size). Returns shard -> ids."""
    samples = batch.samples
    rows = {s.id: s.metadata() for s in samples}
    groups = split_groups(samples, rows, split_bytes(ctx.recipe.shards.split_size))
    info = ctx.recipe.dataset_info()
    shutil.rmtree(batch.folder, ignore_errors=True)
    batch.folder.mkdir(parents=True)
    out: dict[str, list[str]] = {}
    for split, parts in groups.items():
        base = f"{info.id}_{split}" if split else info.id
        for k, members in enumerate(parts):
            more = f"-{k}" if len(parts) > 1 else ""
            name = safe_name(f"{base}_b{batch.number:05d}{more}.tacozip", "shard name")
            write_shard(members, batch.folder / name, info, rows)
            out[name] = [s.id for s in members]
            ctx.fault("pack", name)
    return out


def verify_batch(ctx: Context, batch: Batch, shards: dict[str, list[str]]) -> Verification:
    """Decode every new cube from the shard as written and hold it to the recipe (carried
    cubes were verified when they were encoded: their sources are not read again)."""
    new = {s.id: s for s in batch.new}
    v = Verification()
    for name in shards:
        path = batch.folder / name
        v.shards[name] = file_sha256(path)
        with zipfile.ZipFile(path) as archive:
            for sid in sample_ids(archive):
                if sid not in new:
                    continue
                enc = sample_encoded(archive, sid, str(path))
                source = load_cube(ctx.recipe, sid, ctx.mirror).dataset
                n = source.sizes[enc.manifest.time_dim]
                if n != enc.manifest.n_frames:
                    raise VerificationError(
                        f"{path}: sample {sid!r} has {enc.manifest.n_frames} frames, its "
                        f"source has {n}"
                    )
                quality = compare_encoded(source, enc, roles=ctx.recipe.roles())
                v.checks += check_bands(
                    sid, quality, ctx.recipe.verify.threshold, max_error_bounds(enc.manifest)
                )
                v.samples[sid] = {"id": sid, **new[sid].metadata()}
    ctx.fault("verify", str(batch.number))
    return v


def next_index(ctx: Context, batch: Batch, shards: dict[str, list[str]]) -> PublishedIndex:
    """The index once this batch is committed."""
    old = ctx.index
    index = PublishedIndex.parse(old.to_bytes(), "index")  # a copy
    for name in batch.drop_shards:
        index.shards.pop(name, None)
    for cid in batch.drop_cubes:
        index.cubes.pop(cid, None)
    where = {cid: name for name, ids in shards.items() for cid in ids}
    h = settings_hash(ctx.recipe)
    for name, ids in shards.items():
        path = batch.folder / name
        split = str(next(s for s in batch.samples if s.id == ids[0]).metadata().get("split") or "")
        index.shards[name] = ShardEntry(
            split, path.stat().st_size, file_sha256(path), batch.number, ids
        )
    for s in batch.new:
        record = SourceRecord.from_dict(read_mark(s).get("source") or {})
        fp = source_fingerprint(ctx.mirror, record, ctx.digests)
        split = str(s.metadata().get("split") or "")
        index.cubes[s.id] = CubeEntry(fp, h, split, where[s.id], batch.number, record)
    for s in batch.carried:
        entry = old.cubes[s.id]
        index.cubes[s.id] = CubeEntry(
            entry.source, entry.settings, entry.split, where[s.id], entry.batch, entry.record
        )
    used = {e.settings for e in index.cubes.values()}
    index.settings = {k: v for k, v in old.settings.items() if k in used}
    index.settings[h] = settings_of(ctx.recipe)
    index.batch = batch.number
    index.check(f"{ctx.remote.target} (batch {batch.number})")
    return index


def batch_verification(ctx: Context, number: int) -> Verification:
    """A committed batch's verification record: from the work folder, else the target."""
    folder = ctx.state / f"batch-{number:05d}"
    if not (folder / "verification.json").is_file():
        raw = ctx.remote.read(batch_file(number))
        if raw is None:
            raise PublishError(f"{ctx.remote.target}: {batch_file(number)} is missing")
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / "verification.json.part"
        part.write_bytes(raw)
        part.replace(folder / "verification.json")
    return Verification.read(folder)


def merged_verification(
    ctx: Context, index: PublishedIndex, number: int, current: Verification
) -> Verification:
    """Every published cube's checks and metadata row, from the batch that verified it."""
    by_batch: dict[int, set[str]] = {}
    for cid, entry in index.cubes.items():
        by_batch.setdefault(entry.batch, set()).add(cid)
    merged = Verification()
    for b, ids in sorted(by_batch.items()):
        v = current if b == number else batch_verification(ctx, b)
        merged.checks += [c for c in v.checks if c.sample in ids]
        merged.samples.update({k: r for k, r in v.samples.items() if k in ids})
    return merged


def ensure_stubs(ctx: Context, index: PublishedIndex, batch: Batch) -> list[Path]:
    """A stub of every shard in the index, in publishing order: cut from the batch's own
    shards, kept from earlier batches, or read from the target."""
    out = []
    for name in index.shard_order():
        stub, local = confined(ctx.stubs, name, "shard"), batch.folder / name
        if local.is_file():
            stub_from_shard(local, stub)
        elif not stub_ok(stub, index.shards[name].size):
            stub_from_remote(ctx.remote, name, index.shards[name].size, stub)
        out.append(stub)
    return out
