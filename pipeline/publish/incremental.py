"""Incremental publishing: a dataset larger than one machine, in batches, resumable anywhere.

The target's own index (``cubecast-index.json``, see :mod:`pipeline.publish.index`) says
what is published. A run reads it, fingerprints each selected cube's source files as the
mirror states them (no download), and encodes only cubes that are new, whose files or
split changed, or whose settings changed. Cubes go download -> encode -> pack -> verify ->
commit in batches; each batch is one commit (shards, index, ``.tacocat``, card together)
after which its raw files, staged cubes and shards are deleted, so the work folder holds
one batch at a time and stays under ``max_disk``. A changed cube's old shard is rewritten
in the batch that re-encodes it: the other cubes of that shard are carried over from the
published shard (downloaded, not encoded) and the old shard is deleted in the same commit.

A run killed at any point leaves the target at its last commit; the next run, here or on
a fresh machine, reads the index and goes on. On the same work folder no cube is encoded
twice (staged cubes are reused); a fresh machine redoes at most the uncommitted batch.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pipeline.build import WORK, shared_files, staging_dir
from pipeline.confine import confined
from pipeline.errors import CubecastError, PublishError
from pipeline.lock import clean_stale, folder_lock
from pipeline.publish.batch import Batch, Context, Fault
from pipeline.publish.commit import Committed, close_batch, raw_files
from pipeline.publish.connect import open_remote
from pipeline.publish.disk import DiskSampler, parse_size, used_bytes
from pipeline.publish.fingerprint import DigestCache, base_mirror
from pipeline.publish.index import INDEX_FILE, PublishedIndex
from pipeline.publish.reconcile import reconcile
from pipeline.publish.runplan import (
    Budget,
    EncodeMany,
    IncrementalResult,
    Options,
    Plan,
    plan_run,
    serial_encoder,
    with_cache,
)
from pipeline.recipe import Recipe
from pipeline.sources import mirror_for
from pipeline.taco.pack import split_bytes
from pipeline.taco.staged import StagedSample, restage, shard_rows

log_ = logging.getLogger(__name__)


def index_batches(index: PublishedIndex) -> set[int]:
    return {e.batch for e in index.cubes.values()}


__all__ = ["IncrementalResult", "publish_incremental"]


class Run:
    """One run: read the target, plan, then batches until every selected cube is there."""

    def __init__(
        self,
        recipe: Recipe,
        target: str,
        out: Path,
        opts: Options,
        encode_many: EncodeMany | None,
        fault: Fault | None,
        log: Callable[[str], None],
    ) -> None:
        self.recipe, self.out, self.opts, self.log = recipe, out, opts, log
        self.result = IncrementalResult(target)
        remote = open_remote(target, opts.private)
        listing, raw = remote.snapshot()
        where = f"{remote.target}/{INDEX_FILE}"
        index = PublishedIndex.parse(raw, where) if raw else PublishedIndex(recipe.taco.id)
        if index.dataset != recipe.taco.id:
            raise PublishError(
                f"{where}: holds dataset {index.dataset!r}, the recipe publishes "
                f"{recipe.taco.id!r}; publish to another repo or change taco.id"
            )
        state = out / WORK / "state"
        kept = {b for b in index_batches(index) if (state / f"batch-{b:05d}").is_dir()}
        self.repair = reconcile(remote, index, listing, state, kept)
        for line in self.repair.lines():
            log(f"{remote.target}: {line}")
        mirror = mirror_for(recipe.source, progress=False, max_disk=opts.max_disk, disk_root=out)
        digests = DigestCache(out / WORK / "digests.json")
        self.ctx = Context(
            recipe, remote, self.repair.index, raw, listing, mirror, digests, out / WORK
        )
        if fault is not None:
            self.ctx.fault = fault
        self.ctx.log = log
        self.encode_many = encode_many or serial_encoder(mirror, fault)
        self.budget = Budget(out, opts.max_disk, out / WORK / "state" / "budget.json")
        cache = getattr(base_mirror(mirror), "cache", None)
        shared = shared_files(recipe)
        self.shared = {(Path(cache) / rel).resolve() for rel in shared} if cache else set()

    def go(self) -> IncrementalResult:
        suspect = {c for c, e in self.ctx.index.cubes.items() if e.batch in self.repair.records}
        plan = plan_run(self.recipe, self.ctx.mirror, self.ctx.index, self.ctx.digests, suspect)
        self.ctx.digests.save()
        r = self.result
        r.selected = len(plan.todo) + len(plan.unchanged)
        r.unchanged = len(plan.unchanged)
        r.repaired = self.repair.lines()
        (r.removed if self.opts.prune else r.kept).extend(plan.gone)
        self.log(
            f"{r.target}: {len(self.ctx.index.cubes)} cubes published; of {r.selected} "
            f"selected, {len(plan.todo) - len(plan.changed)} new, {len(plan.changed)} changed,"
            f" {r.unchanged} unchanged"
            + (f"; {len(plan.gone)} no longer selected, kept" if r.kept else "")
        )
        if self.opts.dry_run:
            r.dry_run = True
            r.encoded = list(plan.todo)
            return r
        self.tidy(plan)
        self.loop(plan)
        shutil.rmtree(self.ctx.raw, ignore_errors=True)  # every selected cube is published
        self.ctx.digests.save()
        return r

    def tidy(self, plan: Plan) -> None:
        """Leftovers of a stopped run: its unfinished batch and carried cubes go; its staged
        cubes stay if they are still to publish (they will not be encoded again), else they
        go with their downloads (their batch was committed before the run stopped)."""
        for name in ("batch", "carry"):
            shutil.rmtree(self.ctx.work / name, ignore_errors=True)
        todo = set(plan.todo)
        staging = staging_dir(self.out)
        clean_stale(staging, (".",))  # encoder spools, half-written staged cubes
        for folder in sorted(staging.iterdir()) if staging.is_dir() else []:
            if folder.is_dir() and not folder.name.startswith(".") and folder.name not in todo:
                for p in raw_files(self.ctx, folder, self.shared):
                    p.unlink(missing_ok=True)
                shutil.rmtree(folder, ignore_errors=True)

    def new_batch(self) -> Batch:
        return Batch(self.ctx.index.batch + 1, self.ctx.work / "batch")

    def loop(self, plan: Plan) -> None:
        batch = self.new_batch()
        if self.opts.prune:
            for shard in self.shards_of(plan.gone):
                batch = self.carry(batch, shard, plan)
        pending = deque(plan.todo)
        limit = split_bytes(self.recipe.shards.split_size)
        while pending:
            room = self.budget.room(batch)
            if room == 0:
                if not len(batch):
                    raise CubecastError(self.too_small())
                batch = self.close(batch)
                continue
            # the task runner keeps ``workers`` cubes encoding; a group as large as the disk and
            # the batch allow leaves no worker idle while a slower cube of its group finishes
            take = min(room, self.opts.batch_cubes - len(batch), len(pending))
            group = [pending.popleft() for _ in range(max(take, 1))]
            for shard in self.shards_of([c for c in group if c in plan.changed]):
                batch = self.carry(batch, shard, plan)
            for staged, encoded in self.encode_many(self.recipe, group, self.out):
                self.add(batch, staged, encoded)
            if len(batch) >= self.opts.batch_cubes or batch.encoded_bytes >= limit:
                batch = self.close(batch)
        if len(batch) or batch.drop_shards or (self.repair.needed and not self.result.commits):
            self.close(batch)  # a repair commits even when no cube changed

    def add(self, batch: Batch, staged: StagedSample, encoded: bool) -> None:
        batch.new.append(staged)
        batch.encoded_bytes += sum(f.stat().st_size for f in staged.files())
        self.budget.learn(staged, raw_files(self.ctx, staged.folder, self.shared))
        (self.result.encoded if encoded else self.result.reused).append(staged.id)
        how = "encoded" if encoded else "staged by an earlier run, not encoded again"
        self.log(f"batch {batch.number}: {staged.id} {how}")

    def shards_of(self, cubes: list[str]) -> list[str]:
        """The published shards holding ``cubes`` (each once, in publishing order)."""
        index = self.ctx.index
        names = {index.cubes[c].shard for c in cubes if c in index.cubes}
        return [n for n in index.shard_order() if n in names]

    def carry(self, batch: Batch, shard: str, plan: Plan) -> Batch:
        """Replace published ``shard`` in this batch: its cubes that stay are carried over
        into the batch (read from the shard, not encoded), its changed or pruned ones go."""
        if shard in batch.drop_shards or shard not in self.ctx.index.shards:
            return batch
        entry = self.ctx.index.shards[shard]
        if len(batch) and self.budget.free(batch) < 2 * entry.size:
            batch = self.close(batch)
        leaving = plan.changed | (set(plan.gone) if self.opts.prune else set())
        folder = self.ctx.work / "carry"
        local = self.ctx.remote.download(shard, confined(folder / "shards", shard, "shard"))
        rows = shard_rows(local)
        for cid in entry.cubes:
            if cid in leaving:
                batch.drop_cubes.add(cid)
                continue
            staged = restage(local, cid, rows[cid], folder / "cubes")
            batch.carried.append(staged)
            batch.encoded_bytes += sum(f.stat().st_size for f in staged.files())
            self.result.carried.append(cid)
        local.unlink()
        batch.drop_shards.add(shard)
        self.log(f"batch {batch.number}: rewriting {shard} without its changed cubes")
        return batch

    def close(self, batch: Batch) -> Batch:
        t0 = time.monotonic()
        done = close_batch(self.ctx, batch, self.shared)
        self.result.commits.append(done)
        self.budget.learn_meta(done.bytes - self.shard_bytes(done))
        self.log(
            f"batch {done.number}: {done.cubes} cubes encoded, {done.carried} carried -> "
            f"{', '.join(done.shards)}; commit {done.commit or '-'} ({done.bytes:,} bytes) "
            f"in {time.monotonic() - t0:.1f} s"
        )
        return self.new_batch()

    def shard_bytes(self, done: Committed) -> int:
        index = self.ctx.index
        return sum(index.shards[n].size for n in done.shards if n in index.shards)

    def too_small(self) -> str:
        used = used_bytes(self.out)
        cube = f"{self.budget.per_cube:,}" if self.budget.per_cube else "an unknown number of"
        return (
            f"max_disk {self.opts.max_disk:,} bytes is too small: the work folder {self.out} "
            f"uses {used:,} bytes, a commit's card, report and index need about "
            f"{self.budget.meta:,} and one cube {cube} bytes (its downloads, the encoded "
            "cube and its copy in a shard)"
        )


def publish_incremental(
    recipe: Recipe,
    target: str,
    out: str | Path,
    *,
    max_disk: str | int | None = None,
    batch_cubes: int = 100,
    workers: int = 1,
    prune: bool = False,
    encode_many: EncodeMany | None = None,
    fault: Fault | None = None,
    log: Callable[[str], None] | None = None,
    dry_run: bool = False,
) -> IncrementalResult:
    """Publish ``recipe``'s selected cubes to ``target`` incrementally (see the module).

    ``out`` is the work folder (downloads, staged cubes, one batch's shards); ``max_disk``
    caps it (``"10GB"``); a batch holds at most ``batch_cubes`` cubes and one shard per
    split of the recipe's split size; ``encode_many`` gets as many cubes at a time as the
    disk and the batch allow (default: one after the other here; the flow passes its task
    runner's, which encodes ``workers`` at once).
    ``prune`` deletes published cubes that are no longer selected (kept otherwise).
    ``dry_run`` reads the target, reconciles and plans, and stops: nothing is encoded.
    ``fault(step, detail)`` is called at each step (download, encode, pack, verify, upload,
    commit, committed): tests stop a run there.
    """
    if batch_cubes < 1 or workers < 1:
        raise CubecastError("batch_cubes and workers must be at least 1")
    opts = Options(parse_size(max_disk, "max_disk"), batch_cubes, workers, prune)
    opts.private = recipe.publish.private
    opts.dry_run = dry_run
    out = Path(out).resolve()
    t0 = time.monotonic()
    with folder_lock(out, "cubecast incremental publish"), DiskSampler(out, 0.25) as disk:
        recipe = with_cache(recipe, out / WORK / "raw")
        result = Run(recipe, target, out, opts, encode_many, fault, log or log_.info).go()
    result.peak_disk = disk.peak
    result.seconds = time.monotonic() - t0
    return result
