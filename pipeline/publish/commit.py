"""Closing a batch: pack, verify, describe the whole dataset, commit once, clean up."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.build import read_mark
from pipeline.confine import confined
from pipeline.errors import VerificationError
from pipeline.publish.batch import (
    SAMPLE_PNG,
    VERIFY_DIR,
    Batch,
    Context,
    batch_file,
    ensure_stubs,
    merged_verification,
    next_index,
    pack_batch,
    verify_batch,
)
from pipeline.publish.card import write_card
from pipeline.publish.catalog import write_tacocat
from pipeline.publish.index import INDEX_FILE, FileEntry, PublishedIndex
from pipeline.publish.panel import draw_sample_panel
from pipeline.publish.remote import RemoteFile
from pipeline.publish.report import PLOTS, write_report
from pipeline.publish.sample_tables import TABLES_DIR
from pipeline.publish.targets import publishable_files
from pipeline.publish.verify import Verification
from pipeline.sources.provenance import read_marker
from pipeline.taco.staged import StagedSample

SINGLE_SHOT = ("verification.json",)  # what a single-shot publish left that no batch rewrites


@dataclass
class Committed:
    number: int
    commit: str | None
    shards: list[str]
    cubes: int
    carried: int
    bytes: int  # sizes of the files the commit added
    files: list[str] = field(default_factory=list)  # what it added
    rows: list[dict[str, Any]] = field(default_factory=list)  # its new cubes' quality


def write_metadata(
    ctx: Context, batch: Batch, index: PublishedIndex, v: Verification, shards: list[str]
) -> None:
    """The batch's verification record, then the card, report, ``.tacocat`` and index of
    the whole dataset as this commit leaves it."""
    folder = batch.folder
    record = folder / batch_file(batch.number)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(v.to_json())
    merged = merged_verification(ctx, index, batch.number, v)
    write_card(  # and the sample tables it points at (data/<split>.parquet)
        ctx.recipe,
        merged,
        folder,
        shard_of={cid: e.shard for cid, e in index.cubes.items()},
        shards=index.shard_order(),
        target=ctx.remote.target,
        synthetic=read_marker(ctx.mirror),
    )
    panel: Path | None = None
    if SAMPLE_PNG in ctx.listing:  # published with the first batch: linked, not drawn again
        panel = folder / SAMPLE_PNG
    elif batch.new:  # the first shard starts with a new cube (new cubes are packed first)
        first = [str(folder / shards[0])]
        panel = draw_sample_panel(
            ctx.recipe, first, ctx.mirror, folder / PLOTS, verification=merged
        )
    title = f"{ctx.recipe.taco.title}: verification"
    write_report(merged, folder, title=title, panel=panel)
    write_tacocat(ensure_stubs(ctx, index, batch), folder)
    index.files = committed_files(ctx, index, folder)
    (folder / INDEX_FILE).write_bytes(index.to_bytes())


def committed_files(ctx: Context, index: PublishedIndex, folder: Path) -> dict[str, FileEntry]:
    """The metadata files the dataset holds once this commit lands: those it writes, and
    the verification records of earlier batches that still verify a published cube."""
    files = {
        rel: FileEntry.of((folder / rel).read_bytes())
        for rel in publishable_files(folder)
        if not rel.endswith(".tacozip") and rel != INDEX_FILE
    }
    records = {batch_file(e.batch) for e in index.cubes.values()}
    for rel, entry in ctx.index.files.items():
        if rel in records and rel not in files:
            files[rel] = entry
    return files


def commit_files(ctx: Context, batch: Batch, index: PublishedIndex) -> tuple[list[str], list[str]]:
    """What the commit adds (everything in the batch folder, shards first) and deletes:
    the shards it replaces, and shards, ``.tacocat`` files, sample tables of a split that
    is gone and single-shot records that no longer belong to the dataset (an earlier
    layout, or a killed batch on a folder target)."""
    adds = publishable_files(batch.folder)
    added = set(adds)
    records = {batch_file(e.batch) for e in index.cubes.values()}
    stale = {
        p
        for p in ctx.listing
        if (p.endswith(".tacozip") and p not in index.shards)
        or (p.startswith(".tacocat/") and p not in added)
        or (p.startswith(f"{VERIFY_DIR}/") and p not in records)  # no cube verified there
        or (p.startswith(f"{TABLES_DIR}/") and p.endswith(".parquet") and p not in added)
        or p in SINGLE_SHOT
    }
    deletes = sorted(((batch.drop_shards & set(ctx.listing)) | stale) - added)
    return adds, deletes


def raw_files(ctx: Context, staged: Path, shared: set[Path]) -> list[Path]:
    """The downloads a staged cube was made from: files in the work folder's raw cache
    (never a local mirror's own files), less the files every cube reads."""
    files = read_mark(StagedSample(staged)).get("files") or {}
    raw = ctx.raw.resolve()
    out = []
    for p in map(Path, files):
        if p.is_relative_to(raw) and p not in shared:
            out.append(p)
    return out


def cleanup(ctx: Context, batch: Batch, shared: set[Path]) -> None:
    """A committed batch's local files go: raw downloads, staged cubes, carried cubes,
    shards; the stubs of the shards it replaced too."""
    for s in batch.new:
        for p in raw_files(ctx, s.folder, shared):
            p.unlink(missing_ok=True)
        shutil.rmtree(s.folder, ignore_errors=True)
    for s in batch.carried:
        shutil.rmtree(s.folder, ignore_errors=True)
    for name in batch.drop_shards:
        confined(ctx.stubs, name, "shard").unlink(missing_ok=True)
    shutil.rmtree(batch.folder, ignore_errors=True)
    ctx.digests.save()


def close_batch(ctx: Context, batch: Batch, shared: set[Path]) -> Committed:
    """Pack, verify, describe and commit one batch; then clean up after it."""
    shards = pack_batch(ctx, batch)
    v = verify_batch(ctx, batch, shards)
    if batch.new and not v.passed:  # carried cubes were verified when they were encoded
        raise VerificationError(f"batch {batch.number}: {v.summary()}; nothing of it published")
    index = next_index(ctx, batch, shards)
    write_metadata(ctx, batch, index, v, list(shards))
    adds, deletes = commit_files(ctx, batch, index)

    def on_upload(rel: str) -> None:
        ctx.fault("upload", rel) if rel else ctx.fault("commit", str(batch.number))

    message = (
        f"cubecast batch {batch.number}: {len(batch.new)} cubes encoded, "
        f"{len(batch.carried)} carried, {len(shards)} shard(s)"
    )
    # the target checks nobody committed since ctx.index_bytes was read (the hub through
    # parent_commit, a folder under its lease), so a run that lost a race commits nothing
    commit = ctx.remote.commit(batch.folder, adds, deletes, message, on_upload, ctx.index_bytes)
    ctx.fault("committed", commit or "")
    nbytes = sum((batch.folder / rel).stat().st_size for rel in adds)
    kept = ctx.state / f"batch-{batch.number:05d}"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(batch.folder / batch_file(batch.number), kept / "verification.json")
    ctx.index, ctx.index_bytes = index, index.to_bytes()
    ctx.listing = {p: v for p, v in ctx.listing.items() if p not in set(deletes)}
    ctx.listing.update({rel: RemoteFile((batch.folder / rel).stat().st_size) for rel in adds})
    cleanup(ctx, batch, shared)
    return Committed(
        batch.number,
        commit,
        list(shards),
        len(batch.new),
        len(batch.carried),
        nbytes,
        adds,
        v.quality_rows(),
    )
